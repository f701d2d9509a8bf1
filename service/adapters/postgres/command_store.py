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

from service.adapters.postgres import queries
from service.adapters.postgres.pool import Connection
from service.contract.encode import event_json, outcome_json
from service.contract.v1 import OutcomeV1, PreferenceChangedV1
from service.domain.apply import BatchResult, ProcessedRecord, apply_batch
from service.domain.catalog import Catalog
from service.domain.commands import Delivery, Malformed, Received
from service.domain.events import AppliedChange, Outcome, PreferenceChanged
from service.domain.model import Rule, SubjectKey, SubjectState


class PostgresCommandStore:
    def __init__(self, pool: asyncpg.Pool, catalog: Catalog, max_future: timedelta) -> None:
        self._pool = pool
        self._catalog = catalog
        self._max_future = max_future

    async def apply(self, records: Sequence[Received | Malformed]) -> BatchResult:
        keys = sorted({r.command.key for r in records if isinstance(r, Received)})
        tenants = [k.tenant for k in keys]
        subject_ids = [k.subject_id for k in keys]
        command_ids = list(
            {r.command.command_id if isinstance(r, Received) else r.command_id for r in records}
        )
        async with self._pool.acquire() as conn, conn.transaction():
            if keys:
                await conn.execute(queries.ENSURE_SUBJECTS, tenants, subject_ids)
            locked = await conn.fetch(queries.LOCK_SUBJECTS, tenants, subject_ids)
            now: datetime = (
                locked[0]["now"] if locked else await conn.fetchval("SELECT clock_timestamp()")
            )
            rule_rows = await conn.fetch(queries.LOAD_RULES, tenants, subject_ids) if keys else []
            processed = await self._load_processed(conn, command_ids, records)
            states = _states(locked, rule_rows)
            result = apply_batch(
                self._catalog,
                states,
                processed,
                records,
                now=now,
                effective_at=now,
                max_future=self._max_future,
            )
            await self._store(conn, result)
        return result

    async def mark_published(self, events: Sequence[PreferenceChanged]) -> None:
        if not events:
            return
        await self._pool.execute(
            queries.MARK_PUBLISHED,
            [e.tenant for e in events],
            [e.subject_id for e in events],
            [e.version for e in events],
        )

    async def load_state(self, subject: SubjectKey) -> SubjectState:
        rows = await self._pool.fetch(queries.LOAD_SUBJECT, subject.tenant, subject.subject_id)
        if not rows:
            return SubjectState.empty(subject)
        rules = {(r["topic"], r["channel"]): _rule(r) for r in rows if r["topic"] is not None}
        return SubjectState(subject, int(rows[0]["version"]), rules)

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

    async def _store(self, conn: Connection, result: BatchResult) -> None:
        if result.upserted_rules:
            # One row per (subject, topic, channel): the final rule of the batch.
            final: dict[tuple[SubjectKey, str, str], Rule] = {}
            for key, rule in result.upserted_rules:
                final[(key, rule.topic, rule.channel)] = result.changed[key].rules[
                    (rule.topic, rule.channel)
                ]
            rows = [(k, r) for (k, _, _), r in final.items()]
            await conn.execute(
                queries.UPSERT_RULES,
                [k.tenant for k, _ in rows],
                [k.subject_id for k, _ in rows],
                [r.topic for _, r in rows],
                [r.channel for _, r in rows],
                [r.action for _, r in rows],
                [r.occurred_at for _, r in rows],
                [r.source_channel for _, r in rows],
                [r.command_id for _, r in rows],
            )
        if result.changed:
            changed = list(result.changed.values())
            await conn.execute(
                queries.BUMP_VERSIONS,
                [s.key.tenant for s in changed],
                [s.key.subject_id for s in changed],
                [s.version for s in changed],
            )
        if result.history:
            h = result.history
            await conn.execute(
                queries.INSERT_HISTORY,
                [e.key.tenant for e in h],
                [e.key.subject_id for e in h],
                [e.command_id for e in h],
                [e.action for e in h],
                [e.topic for e in h],
                [e.channel for e in h],
                [e.occurred_at for e in h],
                [e.effective_at for e in h],
                [e.source.channel for e in h],
                [e.source.app for e in h],
                [e.source.ip for e in h],
                [e.source.user_agent for e in h],
                [e.reason for e in h],
            )
        if result.events:
            ev = result.events
            await conn.execute(
                queries.INSERT_EVENTS,
                [e.tenant for e in ev],
                [e.subject_id for e in ev],
                [e.version for e in ev],
                [e.command_id for e in ev],
                [e.event_id for e in ev],
                [e.effective_at for e in ev],
                [event_json(e).decode() for e in ev],
            )
        if result.processed:
            p = result.processed
            await conn.execute(
                queries.UPSERT_PROCESSED,
                [x.command_id for x in p],
                [x.content_hash for x in p],
                [x.outcome.tenant for x in p],
                [x.outcome.subject_id for x in p],
                [x.delivery.topic for x in p],
                [x.delivery.partition for x in p],
                [x.delivery.offset for x in p],
                [outcome_json(x.outcome).decode() for x in p],
            )


def _delivery(row: Any) -> Delivery:
    return Delivery(row["source_topic"], row["source_partition"], row["source_offset"])


def _rule(row: Any) -> Rule:
    return Rule(
        topic=row["topic"],
        channel=row["channel"],
        action=row["action"],
        occurred_at=row["occurred_at"],
        source_channel=row["source_channel"],
        command_id=row["command_id"],
    )


def _states(locked: Sequence[Any], rule_rows: Sequence[Any]) -> dict[SubjectKey, SubjectState]:
    rules: dict[SubjectKey, dict[tuple[str, str], Rule]] = {}
    for row in rule_rows:
        key = SubjectKey(row["tenant"], row["subject_id"])
        rules.setdefault(key, {})[(row["topic"], row["channel"])] = _rule(row)
    states = {}
    for row in locked:
        key = SubjectKey(row["tenant"], row["subject_id"])
        states[key] = SubjectState(key, int(row["version"]), rules.get(key, {}))
    return states


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
