"""The command pipeline's unit of work on PostgreSQL: one transaction per batch.

It only loads and saves. `load` creates and locks the touched subjects and reads their
rules and the processed-command log; `save` writes rules, versions, consent history, events
and the log in one statement. Deciding is the use case's job, encoding the contract's.
Driver exceptions leave it translated (``errors.py``): the use case's caller decides between
retrying and isolating a record without knowing asyncpg.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import asyncpg
import orjson

from service.adapters.postgres import queries
from service.adapters.postgres.errors import postgres_errors
from service.adapters.postgres.pool import Connection
from service.adapters.postgres.rows import states_from_rows
from service.application.ports import EventMessage, Loaded, StoredAnswer, ToSave
from service.contract.v1 import OutcomeV1
from service.domain.apply import CommandKey, ProcessedRecord
from service.domain.commands import Delivery
from service.domain.model import SubjectKey


class PostgresCommandUnitOfWork:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: Any = None
        self._transaction: Any = None

    async def __aenter__(self) -> Self:
        with postgres_errors():
            self._conn = await self._pool.acquire()
            self._transaction = self._conn.transaction()
            try:
                await self._transaction.start()
            except BaseException:
                await self._pool.release(self._conn)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conn is not None
        try:
            with postgres_errors():
                if exc_type is None:
                    await self._transaction.commit()
                else:
                    await self._transaction.rollback()
        finally:
            await self._pool.release(self._conn)
            self._conn = None

    @property
    def _connection(self) -> Connection:
        assert self._conn is not None, "use the unit of work as `async with`"
        conn: Connection = self._conn
        return conn

    async def load(
        self,
        keys: Sequence[SubjectKey],
        commands: Sequence[CommandKey],
        deliveries: set[Delivery],
    ) -> Loaded:
        with postgres_errors():
            return await self._load(keys, commands, deliveries)

    async def _load(
        self,
        keys: Sequence[SubjectKey],
        commands: Sequence[CommandKey],
        deliveries: set[Delivery],
    ) -> Loaded:
        conn = self._connection
        if keys:
            tenants = [k.tenant for k in keys]
            subject_ids = [k.subject_id for k in keys]
            await conn.execute(queries.ENSURE_SUBJECTS, tenants, subject_ids)
            locked = await conn.fetch(queries.LOCK_SUBJECTS_WITH_RULES, tenants, subject_ids)
            now: datetime = locked[0]["now"]
        else:
            locked = []
            now = await conn.fetchval(queries.NOW)
        processed, answers = await self._load_processed(conn, commands, deliveries)
        return Loaded(states_from_rows(locked), processed, answers, now)

    async def _load_processed(
        self, conn: Connection, commands: Sequence[CommandKey], deliveries: set[Delivery]
    ) -> tuple[dict[CommandKey, ProcessedRecord], dict[CommandKey, StoredAnswer]]:
        rows = await conn.fetch(
            queries.LOAD_PROCESSED, [t for t, _ in commands], [c for _, c in commands]
        )
        if not rows:
            return {}, {}
        processed = {
            (row["tenant"], row["command_id"]): ProcessedRecord(
                command_id=row["command_id"],
                content_hash=row["content_hash"],
                delivery=_delivery(row),
                outcome=OutcomeV1.model_validate_json(row["outcome"]).to_domain(),
            )
            for row in rows
        }
        redelivered = {
            (row["tenant"], row["command_id"]): row for row in rows if _delivery(row) in deliveries
        }
        if not redelivered:
            return processed, {}
        events: dict[CommandKey, list[EventMessage]] = {}
        for row in await conn.fetch(
            queries.LOAD_EVENTS_OF_COMMANDS,
            [t for t, _ in redelivered],
            [c for _, c in redelivered],
        ):
            events.setdefault((row["tenant"], row["command_id"]), []).append(
                EventMessage(row["tenant"], row["subject_id"], row["payload"].encode())
            )
        answers = {
            key: StoredAnswer(row["outcome"].encode(), tuple(events.get(key, ())))
            for key, row in redelivered.items()
        }
        return processed, answers

    async def save(self, batch: ToSave) -> None:
        with postgres_errors():
            await self._save(batch)

    async def _save(self, batch: ToSave) -> None:
        result = batch.result
        if not (result.changed or result.processed):
            return
        # One row per (subject, topic, channel): the final rule of the batch.
        final = {
            (key, rule.topic, rule.channel): result.changed[key].rules[(rule.topic, rule.channel)]
            for key, rule in result.upserted_rules
        }
        await self._connection.execute(
            queries.STORE_BATCH,
            [
                {
                    "tenant": key.tenant,
                    "subject_id": key.subject_id,
                    "topic": r.topic,
                    "channel": r.channel,
                    "action": r.action,
                    "occurred_at": r.occurred_at,
                    "source_channel": r.source_channel,
                    "command_id": r.command_id,
                }
                for (key, _, _), r in final.items()
            ],
            [
                {"tenant": s.key.tenant, "subject_id": s.key.subject_id, "version": s.version}
                for s in result.changed.values()
            ],
            [
                {
                    "tenant": h.key.tenant,
                    "subject_id": h.key.subject_id,
                    "command_id": h.command_id,
                    "action": h.action,
                    "topic": h.topic,
                    "channel": h.channel,
                    "occurred_at": h.occurred_at,
                    "effective_at": h.effective_at,
                    "source_channel": h.source.channel,
                    "source_app": h.source.app,
                    "source_ip": h.source.ip,
                    "source_user_agent": h.source.user_agent,
                    "reason": h.reason,
                }
                for h in result.history
            ],
            [
                {
                    "tenant": e.event.tenant,
                    "subject_id": e.event.subject_id,
                    "version": e.event.version,
                    "command_id": e.event.command_id,
                    "event_id": e.event.event_id,
                    "effective_at": e.event.effective_at,
                    "payload": orjson.Fragment(e.payload),
                }
                for e in batch.events
            ],
            [
                {
                    "command_id": p.command_id,
                    "content_hash": p.content_hash,
                    "tenant": p.outcome.tenant,
                    "subject_id": p.outcome.subject_id,
                    "source_topic": p.delivery.topic,
                    "source_partition": p.delivery.partition,
                    "source_offset": p.delivery.offset,
                    "outcome": orjson.Fragment(payload),
                }
                for p, payload in zip(result.processed, batch.processed_outcomes, strict=True)
            ],
        )


def _delivery(row: Any) -> Delivery:
    return Delivery(row["source_topic"], row["source_partition"], row["source_offset"])
