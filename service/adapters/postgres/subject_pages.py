"""Pages of stored subjects for the maintenance commands (``application/subject_pages.py``).

Keyset pagination on the primary key (tenant, subject_id): each page starts where the last
one ended, through the index, so the millionth page costs what the first did (``OFFSET``
would read and drop every row before it). Pages follow the database's own order of the key
(its collation), taken from the query's ``ORDER BY``, never re-sorted in Python, whose
order of strings can differ: the next page's start would then skip or repeat rows.

One statement per page returns the subjects and their rules (one row per rule, or one row of
NULLs). With ``events``, it also returns the stored payload of each subject's current
version, as the worker wrote it, and then reads the rules only of live subjects without
one: the others need none.

Reads never lock: the worker goes on while a walk runs, and the use cases re-read what
moved (``marks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

import asyncpg

from service.adapters.postgres.errors import postgres_errors
from service.adapters.postgres.rows import rule_from_row
from service.application.subject_pages import Mark, Scope, StoredSubject
from service.domain.model import SubjectKey, SubjectState

COUNT = """
SELECT count(*) FROM subjects s
WHERE ($1::text IS NULL OR s.tenant = $1::text) AND (s.version > 0 OR $2::boolean)
"""

_PAGE = """
WITH page AS (
    SELECT s.tenant, s.subject_id, s.version, s.merged_into, s.erased_at, s.updated_at
    FROM subjects s
    WHERE ($1::text IS NULL OR s.tenant = $1::text)
      AND ($2::text IS NULL OR (s.tenant, s.subject_id) > ($2::text, $3::text))
      AND (s.version > 0 OR $5::boolean)
    ORDER BY s.tenant, s.subject_id
    LIMIT $4
)
"""

_NAMED = """
WITH page AS (
    SELECT s.tenant, s.subject_id, s.version, s.merged_into, s.erased_at, s.updated_at
    FROM subjects s
    JOIN unnest($1::text[], $2::text[]) AS u(t, sid) ON s.tenant = u.t AND s.subject_id = u.sid
)
"""

_WITH_RULES = """
SELECT p.tenant, p.subject_id, p.version, p.merged_into, p.erased_at IS NOT NULL AS erased,
       p.updated_at, NULL::text AS payload,
       r.topic, r.channel, r.action, r.occurred_at, r.source_channel, r.command_id
FROM page p
LEFT JOIN rules r ON r.tenant = p.tenant AND r.subject_id = p.subject_id
ORDER BY p.tenant, p.subject_id
"""

_WITH_EVENTS = """
SELECT p.tenant, p.subject_id, p.version, p.merged_into, p.erased_at IS NOT NULL AS erased,
       p.updated_at, e.payload::text AS payload,
       r.topic, r.channel, r.action, r.occurred_at, r.source_channel, r.command_id
FROM page p
LEFT JOIN preference_events e
    ON e.tenant = p.tenant AND e.subject_id = p.subject_id AND e.version = p.version
    AND p.merged_into IS NULL AND p.erased_at IS NULL
LEFT JOIN rules r
    ON r.tenant = p.tenant AND r.subject_id = p.subject_id
    AND e.payload IS NULL AND p.merged_into IS NULL AND p.erased_at IS NULL
ORDER BY p.tenant, p.subject_id
"""

PAGE_STATES = _PAGE + _WITH_RULES
PAGE_SNAPSHOTS = _PAGE + _WITH_EVENTS
NAMED_STATES = _NAMED + _WITH_RULES
NAMED_SNAPSHOTS = _NAMED + _WITH_EVENTS

# The keys as arrays joined to the table, as the read path reads: on a large table the
# planner probes the primary key once per key; on a small one it may hash the whole table,
# which is then cheaper.
MARKS = """
SELECT s.tenant, s.subject_id, s.version, s.merged_into IS NULL AND s.erased_at IS NULL AS live
FROM subjects s
JOIN unnest($1::text[], $2::text[]) AS u(t, sid) ON s.tenant = u.t AND s.subject_id = u.sid
"""


class PostgresSubjectPages:
    """``events``: read the stored event payloads (republish) rather than every rule
    (rebuild)."""

    def __init__(self, pool: asyncpg.Pool, *, events: bool) -> None:
        self._pool = pool
        self._page_sql = PAGE_SNAPSHOTS if events else PAGE_STATES
        self._named_sql = NAMED_SNAPSHOTS if events else NAMED_STATES

    async def check(self) -> None:
        """Raise ``DependencyUnavailable`` unless PostgreSQL answers: a command fails on it
        before it touches anything else."""
        with postgres_errors():
            await self._pool.fetchval("SELECT 1 FROM subjects LIMIT 1")

    async def count(self, scope: Scope) -> int:
        with postgres_errors():
            return int(await self._pool.fetchval(COUNT, scope.tenant, scope.include_unknown))

    async def page(self, scope: Scope, after: SubjectKey | None, limit: int) -> list[StoredSubject]:
        with postgres_errors():
            rows = await self._pool.fetch(
                self._page_sql,
                scope.tenant,
                None if after is None else after.tenant,
                None if after is None else after.subject_id,
                limit,
                scope.include_unknown,
            )
        return subjects_from_rows(rows)

    async def load(self, keys: Sequence[SubjectKey]) -> list[StoredSubject]:
        if not keys:
            return []
        with postgres_errors():
            rows = await self._pool.fetch(
                self._named_sql, [k.tenant for k in keys], [k.subject_id for k in keys]
            )
        return subjects_from_rows(rows)

    async def marks(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, Mark]:
        if not keys:
            return {}
        with postgres_errors():
            rows = await self._pool.fetch(
                MARKS, [k.tenant for k in keys], [k.subject_id for k in keys]
            )
        return {
            SubjectKey(r["tenant"], r["subject_id"]): (int(r["version"]), bool(r["live"]))
            for r in rows
        }


def subjects_from_rows(rows: Sequence[Any]) -> list[StoredSubject]:
    """One subject per run of rows with the same key (the statements order rows by key)."""
    found: list[StoredSubject] = []
    for (tenant, subject_id), run in groupby(rows, key=lambda r: (r["tenant"], r["subject_id"])):
        group = list(run)
        first = group[0]
        rules = {
            (r["topic"], r["channel"]): rule_from_row(r) for r in group if r["topic"] is not None
        }
        state = SubjectState.adopting(
            SubjectKey(tenant, subject_id),
            int(first["version"]),
            rules,
            first["merged_into"],
            bool(first["erased"]),
        )
        payload: str | None = first["payload"]
        updated_at: datetime = first["updated_at"]
        found.append(
            StoredSubject(state, updated_at, None if payload is None else payload.encode())
        )
    return found
