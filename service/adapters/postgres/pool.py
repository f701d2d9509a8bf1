"""asyncpg pool bound to the service's schema, with json and jsonb handled by orjson."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


async def _init_connection(conn: asyncpg.Connection) -> None:
    for json_type in ("json", "jsonb"):
        await conn.set_type_codec(
            json_type,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: the service never changes a pooled session (settings
    come from the connection's startup, no LISTEN, advisory lock or held cursor), and
    asyncpg still rolls back a transaction left open. Its default reset query cost every
    transaction one more round trip."""


async def create_pool(dsn: str, schema: str, size: int) -> asyncpg.Pool:
    pool: asyncpg.Pool[Any] | None = await asyncpg.create_pool(
        dsn,
        # No connection at creation: a process started while PostgreSQL is down still starts
        # (readiness says so), and the first use connects.
        min_size=0,
        max_size=size,
        server_settings={
            "search_path": schema,
            "application_name": "optout",
            "plan_cache_mode": "force_custom_plan",
        },
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool
