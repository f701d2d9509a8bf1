"""Set-based reads of subject states for the read path (cache misses of SDK and API).

Separate from the command store on purpose: the read path never locks, never writes, and
must answer for thousands of subjects in one round trip when a campaign filter misses Redis.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.adapters.postgres.rows import rule_from_row
from service.domain.model import Rule, SubjectKey, SubjectState

# One statement for one or many subjects: subjects that are unknown simply have no row.
LOAD_STATES = """
SELECT s.tenant, s.subject_id, s.version, r.topic, r.channel, r.action, r.occurred_at,
       r.source_channel, r.command_id
FROM subjects s
JOIN unnest($1::text[], $2::text[]) AS u(t, sid) ON s.tenant = u.t AND s.subject_id = u.sid
LEFT JOIN rules r ON r.tenant = s.tenant AND r.subject_id = s.subject_id
"""


def _storable(key: SubjectKey) -> bool:
    # PostgreSQL text cannot hold NUL: such a subject cannot exist, and asking must not fail.
    return "\x00" not in key.tenant and "\x00" not in key.subject_id


class PostgresStateReader:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load_states(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]:
        """The state of every asked subject; an unknown one is the empty version-0 state."""
        asked = [k for k in dict.fromkeys(keys) if _storable(k)]
        rows = (
            await self._pool.fetch(
                LOAD_STATES, [k.tenant for k in asked], [k.subject_id for k in asked]
            )
            if asked
            else []
        )
        versions: dict[SubjectKey, int] = {}
        rules: dict[SubjectKey, dict[tuple[str, str], Rule]] = {}
        for row in rows:
            key = SubjectKey(row["tenant"], row["subject_id"])
            versions[key] = int(row["version"])
            if row["topic"] is not None:
                rules.setdefault(key, {})[(row["topic"], row["channel"])] = rule_from_row(row)
        return {
            key: SubjectState(key, versions[key], rules.get(key, {}))
            if key in versions
            else SubjectState.empty(key)
            for key in dict.fromkeys(keys)
        }
