"""The consent history as the proof-of-consent export reads it (`application/history.py`).

Read-only and lock-free: an export never holds up the worker that appends to the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from service.adapters.postgres import history_queries
from service.application.history import ConsentRecord, HistoryCursor, StoredSubject


def _storable(text: str) -> bool:
    # PostgreSQL text cannot hold NUL: no such subject can exist, and asking must not fail.
    return "\x00" not in text


class PostgresHistoryReader:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def find_subjects(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> dict[str, StoredSubject]:
        asked = [s for s in subject_ids if _storable(s)]
        if not asked or not _storable(tenant):
            return {}
        rows = await self._pool.fetch(history_queries.FIND_SUBJECTS, tenant, asked)
        return {
            row["subject_id"]: StoredSubject(
                row["subject_id"], row["merged_into"], row["erased_at"]
            )
            for row in rows
        }

    async def records(
        self, tenant: str, subject_id: str, after: HistoryCursor | None, limit: int
    ) -> list[ConsentRecord]:
        if not _storable(tenant) or not _storable(subject_id):
            return []
        rows = await self._pool.fetch(
            history_queries.HISTORY_PAGE,
            tenant,
            subject_id,
            None if after is None else after.effective_at,
            None if after is None else after.id,
            limit,
        )
        return [_record(row) for row in rows]


def _record(row: Any) -> ConsentRecord:
    return ConsentRecord(
        id=int(row["id"]),
        subject_id=row["subject_id"],
        addressed_as=row["addressed_as"],
        command_id=row["command_id"],
        action=row["action"],
        topic=row["topic"],
        channel=row["channel"],
        related=row["related"],
        occurred_at=row["occurred_at"],
        effective_at=row["effective_at"],
        source_channel=row["source_channel"],
        source_app=row["source_app"],
        source_ip=row["source_ip"],
        source_user_agent=row["source_user_agent"],
        reason=row["reason"],
        erased_at=row["erased_at"],
        actor=row["actor"],
    )
