"""Set-based reads of subject states for the read path (cache misses of SDK and API).

Separate from the command store on purpose: the read path never locks, never writes, and
must answer for thousands of subjects in one round trip when a campaign filter misses Redis.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.adapters.postgres import queries
from service.adapters.postgres.rows import states_from_rows
from service.domain.model import SubjectKey, SubjectState


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
                queries.LOAD_STATES, [k.tenant for k in asked], [k.subject_id for k in asked]
            )
            if asked
            else []
        )
        found = states_from_rows(rows)
        return {k: found[k] if k in found else SubjectState.empty(k) for k in dict.fromkeys(keys)}
