"""Applies a batch of commands in one PostgreSQL transaction.

Load (lock the touched subjects, read their rules and the processed-command log), decide
(the pure ``apply_batch``), store (rules, versions, consent history, events, the log): a
handful of set-based statements per batch, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from service.adapters.postgres import queries
from service.adapters.postgres.pool import Connection
from service.adapters.postgres.rows import states_from_rows
from service.application.ports import AppliedBatch
from service.contract.encode import EncodedEvent, encode_events, outcome_json
from service.contract.v1 import OutcomeV1, PreferenceChangedV1
from service.domain.apply import BatchResult, ProcessedRecord, apply_batch
from service.domain.catalog import Catalog
from service.domain.commands import Delivery, Malformed, Received
from service.domain.events import AppliedChange, Outcome, PreferenceChanged
from service.domain.model import Rule


class PostgresCommandStore:
    def __init__(self, pool: asyncpg.Pool, catalog: Catalog, max_future: timedelta) -> None:
        self._pool = pool
        self._catalog = catalog
        self._max_future = max_future

    async def apply(self, records: Sequence[Received | Malformed]) -> AppliedBatch:
        keys = sorted({r.command.key for r in records if isinstance(r, Received)})
        tenants = [k.tenant for k in keys]
        subject_ids = [k.subject_id for k in keys]
        command_ids = list(
            {r.command.command_id if isinstance(r, Received) else r.command_id for r in records}
        )
        async with self._pool.acquire() as conn, conn.transaction():
            if keys:
                await conn.execute(queries.ENSURE_SUBJECTS, tenants, subject_ids)
                locked = await conn.fetch(queries.LOCK_SUBJECTS_WITH_RULES, tenants, subject_ids)
                now: datetime = locked[0]["now"]
            else:
                locked = []
                now = await conn.fetchval("SELECT clock_timestamp()")
            processed = await self._load_processed(conn, command_ids, records)
            states = states_from_rows(locked)
            result = apply_batch(
                self._catalog,
                states,
                processed,
                records,
                now=now,
                effective_at=now,
                max_future=self._max_future,
            )
            new_events = encode_events(result.events)
            await self._store(conn, result, new_events)
        return AppliedBatch(result, [*encode_events(result.republish), *new_events])

    async def _load_processed(
        self,
        conn: Connection,
        command_ids: list[str],
        records: Sequence[Received | Malformed],
    ) -> dict[str, ProcessedRecord]:
        rows = await conn.fetch(queries.LOAD_PROCESSED, command_ids)
        if not rows:
            return {}
        deliveries = {r.delivery for r in records}
        replayed = [row["command_id"] for row in rows if _delivery(row) in deliveries]
        events: dict[str, list[PreferenceChanged]] = {}
        if replayed:
            for row in await conn.fetch(queries.LOAD_EVENTS_OF_COMMANDS, replayed):
                events.setdefault(row["command_id"], []).append(_event(row["payload"]))
        return {
            row["command_id"]: ProcessedRecord(
                command_id=row["command_id"],
                content_hash=row["content_hash"],
                delivery=_delivery(row),
                outcome=_outcome(row["outcome"]),
                events=tuple(events.get(row["command_id"], ())),
            )
            for row in rows
        }

    async def _store(
        self, conn: Connection, result: BatchResult, events: list[EncodedEvent]
    ) -> None:
        if not (result.changed or result.processed):
            return
        # One row per (subject, topic, channel): the final rule of the batch.
        final = {
            (key, rule.topic, rule.channel): result.changed[key].rules[(rule.topic, rule.channel)]
            for key, rule in result.upserted_rules
        }
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
                for e in events
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
                    "outcome": orjson.Fragment(outcome_json(p.outcome)),
                }
                for p in result.processed
            ],
        )


def _delivery(row: Any) -> Delivery:
    return Delivery(row["source_topic"], row["source_partition"], row["source_offset"])


def _outcome(document: dict[str, Any]) -> Outcome:
    wire = OutcomeV1.model_validate(document)
    return Outcome(
        command_id=wire.command_id,
        tenant=wire.tenant,
        subject_id=wire.subject_id,
        status=wire.status,
        reason=wire.reason,
        detail=wire.detail,
        version=wire.version,
        effective_at=wire.effective_at,
    )


def _event(document: dict[str, Any]) -> PreferenceChanged:
    wire = PreferenceChangedV1.model_validate(document)
    return PreferenceChanged(
        event_id=wire.event_id,
        tenant=wire.tenant,
        subject_id=wire.subject_id,
        version=wire.version,
        effective_at=wire.effective_at,
        command_id=wire.command_id,
        source_channel=wire.source.channel,
        source_app=wire.source.app,
        changes=tuple(
            AppliedChange(c.action, c.topic, c.channel, c.occurred_at) for c in wire.changes
        ),
        preferences=tuple(
            Rule(p.topic, p.channel, p.action, p.occurred_at, p.source_channel, p.command_id)
            for p in wire.preferences
        ),
    )
