"""The deny list of revoked page links (``application/page_links.py``), in PostgreSQL."""

from __future__ import annotations

import asyncpg

from service.adapters.postgres.errors import postgres_errors

IS_REVOKED = "SELECT EXISTS (SELECT 1 FROM revoked_links WHERE token_id = $1)"
REVOKE = """
INSERT INTO revoked_links (token_id, revoked_by) VALUES ($1, $2)
ON CONFLICT (token_id) DO NOTHING
RETURNING token_id
"""


class PostgresRevokedLinks:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def is_revoked(self, token_id: str) -> bool:
        with postgres_errors():
            return bool(await self._pool.fetchval(IS_REVOKED, token_id))

    async def revoke(self, token_id: str, *, revoked_by: str) -> bool:
        with postgres_errors():
            return await self._pool.fetchval(REVOKE, token_id, revoked_by[:128]) is not None
