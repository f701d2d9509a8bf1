"""Batched deletion of old processed-log entries and events (``application/retention``).

Each call is one short statement: the rows are picked through the BRIN indexes of 0005 and
deleted by their physical address, at most `rows` at a time.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from service.adapters.postgres.errors import postgres_errors

_PRUNE_PROCESSED = """
DELETE FROM processed_commands
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM processed_commands WHERE processed_at < $1 LIMIT $2
))
"""

_PRUNE_EVENTS = """
DELETE FROM preference_events
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM preference_events WHERE effective_at < $1 LIMIT $2
))
"""


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class PostgresPrunableLogs:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def now(self) -> datetime:
        with postgres_errors():
            moment: datetime = await self._pool.fetchval("SELECT now()")
        return moment

    async def prune_processed(self, before: datetime, rows: int) -> int:
        with postgres_errors():
            return _count(await self._pool.execute(_PRUNE_PROCESSED, before, rows))

    async def prune_events(self, before: datetime, rows: int) -> int:
        with postgres_errors():
            return _count(await self._pool.execute(_PRUNE_EVENTS, before, rows))
