"""The read path's sources assembled: Redis first, PostgreSQL on a miss, Redis refilled.

Shared by the HTTP API (through the composition root) and the SDK, which builds its own
connections and must not load the worker's wiring.
"""

from __future__ import annotations

import asyncpg

from service.adapters.postgres.state_reader import PostgresStateReader
from service.adapters.redis_client import RedisClient
from service.adapters.redis_states import state_cache, state_reader
from service.application.decisions import DecisionService, LocalStates
from service.application.telemetry import NO_TELEMETRY, ReadTelemetry
from service.domain.catalog import Catalog


def build_decisions(
    catalog: Catalog,
    pool: asyncpg.Pool,
    redis: RedisClient,
    *,
    redis_prefix: str,
    fill_ttl_seconds: int,
    unknown_ttl_seconds: int,
    identifier_key: bytes | None = None,
    local: LocalStates | None = None,
    telemetry: ReadTelemetry = NO_TELEMETRY,
) -> DecisionService:
    """``identifier_key`` (``OPTOUT_IDENTIFIER_KEY``) lets a check on an erased identifier
    find its suppression; without it such a check fails rather than answer the default."""
    filler = state_cache(redis, redis_prefix, fill_ttl_seconds, unknown_ttl_seconds)
    return DecisionService(
        catalog,
        state_reader(redis, redis_prefix),
        filler,
        PostgresStateReader(pool, identifier_key),
        local,
        telemetry,
    )
