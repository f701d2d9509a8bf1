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

from service.adapters.postgres import queries
from service.adapters.postgres.errors import postgres_errors
from service.adapters.postgres.pool import Connection
from service.adapters.postgres.rows import states_from_rows
from service.application.ports import (
    EventMessage,
    Loaded,
    RekeyedHashes,
    StoredAnswer,
    ToSave,
    UnkeyedHashes,
)
from service.contract.v1 import OutcomeV1
from service.domain.apply import CommandKey, ProcessedRecord
from service.domain.commands import Delivery
from service.domain.events import event_id_for
from service.domain.identifiers import is_erased
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
        lookups: Sequence[SubjectKey] = (),
        forwarders: bool = False,
    ) -> Loaded:
        with postgres_errors():
            return await self._load(keys, commands, deliveries, lookups, forwarders)

    async def _load(
        self,
        keys: Sequence[SubjectKey],
        commands: Sequence[CommandKey],
        deliveries: set[Delivery],
        lookups: Sequence[SubjectKey],
        with_forwarders: bool,
    ) -> Loaded:
        conn = self._connection
        if keys:
            locking = [*keys, *lookups] if lookups else keys
            rows = await conn.fetch(
                queries.LOCK_BATCH,
                [k.tenant for k in keys],
                [k.subject_id for k in keys],
                [k.tenant for k in locking],
                [k.subject_id for k in locking],
                [t for t, _ in commands],
                [c for _, c in commands],
            )
            locked = [row for row in rows if row["part"] == 1]
            logged = [row for row in rows if row["part"] == 2]
            now: datetime = locked[0]["now"]
        else:
            locked = []
            now = await conn.fetchval(queries.NOW)
            logged = list(
                await conn.fetch(
                    queries.LOAD_PROCESSED, [t for t, _ in commands], [c for _, c in commands]
                )
            )
        forwarders: dict[SubjectKey, list[str]] = {}
        if any(row["merged_into"] is not None for row in locked) or with_forwarders:
            locked.extend(await self._lock_targets(conn, locked))
            if with_forwarders:
                forwarders = await self._lock_forwarders(conn, locked)
        processed, answers = await self._processed(conn, logged, deliveries)
        return Loaded(states_from_rows(locked), processed, answers, now, forwarders)

    @staticmethod
    async def _lock(conn: Connection, keys: Sequence[SubjectKey]) -> list[Any]:
        return list(
            await conn.fetch(
                queries.LOCK_SUBJECTS_WITH_RULES,
                [k.tenant for k in keys],
                [k.subject_id for k in keys],
            )
        )

    async def _lock_targets(self, conn: Connection, locked: list[Any]) -> list[Any]:
        """Lock the targets of the forwards among `locked`, and theirs, to the ends.

        Stored forwards are one hop deep, so this is one round trip unless a merge
        committed between two reads; the locks then serialise with it.
        """
        have = {(row["tenant"], row["subject_id"]) for row in locked}
        added: list[Any] = []
        frontier = locked
        while True:
            wanted = sorted(
                {
                    SubjectKey(row["tenant"], row["merged_into"])
                    for row in frontier
                    if row["merged_into"] is not None
                    and (row["tenant"], row["merged_into"]) not in have
                }
            )
            if not wanted:
                return added
            frontier = await self._lock(conn, wanted)
            have.update((k.tenant, k.subject_id) for k in wanted)
            have.update((row["tenant"], row["subject_id"]) for row in frontier)
            added.extend(frontier)

    async def _lock_forwarders(
        self, conn: Connection, locked: list[Any]
    ) -> dict[SubjectKey, list[str]]:
        ends = sorted(
            {
                SubjectKey(row["tenant"], row["subject_id"])
                for row in locked
                if not row["merged_into"]
            }
        )
        rows = await conn.fetch(
            queries.LOCK_FORWARDERS, [k.tenant for k in ends], [k.subject_id for k in ends]
        )
        found: dict[SubjectKey, list[str]] = {}
        for row in rows:
            found.setdefault(SubjectKey(row["tenant"], row["merged_into"]), []).append(
                row["subject_id"]
            )
        locked.extend(rows)
        return found

    async def _processed(
        self, conn: Connection, rows: Sequence[Any], deliveries: set[Delivery]
    ) -> tuple[dict[CommandKey, ProcessedRecord], dict[CommandKey, StoredAnswer]]:
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
            payload = row["payload"]
            events.setdefault((row["tenant"], row["command_id"]), []).append(
                EventMessage(
                    row["tenant"], row["subject_id"], None if payload is None else payload.encode()
                )
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
        conn = self._connection
        if result.discarded:
            discarded = sorted(result.discarded)
            await conn.execute(
                queries.DISCARD_SUBJECTS,
                [k.tenant for k in discarded],
                [k.subject_id for k in discarded],
            )
        if not (result.changed or result.processed):
            return
        changed = result.changed
        replaced = result.replaced
        # One row per (subject, topic, channel): the final rule of the batch. A subject whose
        # rule set is rewritten whole gets all its final rules, after its old ones are gone.
        final = {
            (key, rule.topic, rule.channel): state.rules[(rule.topic, rule.channel)]
            for key, rule in result.upserted_rules
            if key not in replaced
            and (state := changed.get(key)) is not None
            and (rule.topic, rule.channel) in state.rules
        }
        created = [k for k in changed if is_erased(k.subject_id)]
        if replaced or created:
            created.sort()
            ordered = sorted(replaced)
            await conn.execute(
                queries.IDENTITY_BEFORE,
                [k.tenant for k in ordered],
                [k.subject_id for k in ordered],
                [k.tenant for k in created],
                [k.subject_id for k in created],
            )
            for key in ordered:
                state = changed.get(key)
                if state is not None:
                    final.update(((key, r.topic, r.channel), r) for r in state.rules.values())
        await conn.execute(
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
                {
                    "tenant": s.key.tenant,
                    "subject_id": s.key.subject_id,
                    "version": s.version,
                    "merged_into": s.merged_into,
                    "erased": s.erased,
                }
                for s in changed.values()
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
                    "addressed_as": h.addressed_as,
                    "related": h.related,
                    "actor": h.source.actor,
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
                }
                for e in batch.events
            ]
            + [
                {
                    "tenant": t.tenant,
                    "subject_id": t.subject_id,
                    "version": t.version,
                    "command_id": t.command_id,
                    "event_id": event_id_for(t.tenant, t.subject_id, t.version),
                    "effective_at": t.effective_at,
                }
                for t in result.tombstones
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
                }
                for p in result.processed
            ],
            [e.payload.decode() for e in batch.events] + [None] * len(result.tombstones),
            [payload.decode() for payload in batch.processed_outcomes],
        )
        if result.repointed or result.erasures:
            await conn.execute(
                queries.IDENTITY_AFTER,
                [{"tenant": t, "old": old, "new": new} for t, old, new in result.repointed],
                [
                    {
                        "tenant": e.tenant,
                        "name": e.subject_id,
                        "replacement": e.replacement,
                        "erased_at": e.erased_at,
                        "command_id": e.command_id,
                    }
                    for e in result.erasures
                ],
            )

    async def unkeyed_of(self, names: Sequence[SubjectKey]) -> UnkeyedHashes:
        with postgres_errors():
            rows = await self._connection.fetch(
                queries.UNKEYED_OF_ERASED,
                [k.tenant for k in names],
                [k.subject_id for k in names],
            )
        return UnkeyedHashes(
            processed=[
                (r["tenant"], r["command_id"], r["content_hash"]) for r in rows if r["part"] == 1
            ],
            import_ids=[(r["tenant"], r["command_id"]) for r in rows if r["part"] == 2],
        )

    async def rekey(self, names: Sequence[SubjectKey], rekeyed: RekeyedHashes) -> None:
        with postgres_errors():
            await self._connection.execute(
                queries.REKEY_ERASED,
                [k.tenant for k in names],
                [k.subject_id for k in names],
                [
                    {"tenant": t, "command_id": c, "new_id": i, "new_hash": h}
                    for t, c, i, h in rekeyed.processed
                ],
                [{"tenant": t, "old": o, "new": n} for t, o, n in rekeyed.import_ids],
            )


class PostgresTombstoneLog:
    """Forgets erased identifiers' tombstones once published (``ports.TombstoneLog``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def forget_published(self, tombstones: Sequence[EventMessage]) -> None:
        with postgres_errors():
            await self._pool.execute(
                queries.FORGET_TOMBSTONES,
                [t.tenant for t in tombstones],
                [t.subject_id for t in tombstones],
            )


def _delivery(row: Any) -> Delivery:
    return Delivery(row["source_topic"], row["source_partition"], row["source_offset"])
