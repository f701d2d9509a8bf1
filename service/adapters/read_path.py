"""The read path's sources assembled: Redis first, PostgreSQL on a miss, Redis refilled.

Shared by the HTTP API (through the composition root) and the SDK, which builds its own
connections and must not load the worker's wiring.
"""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from service.adapters.postgres.state_reader import PostgresStateReader
from service.adapters.redis_cache import RedisStateCache
from service.adapters.redis_reader import RedisStateReader
from service.application.decisions import DecisionService, LocalStates
from service.application.telemetry import NO_TELEMETRY, ReadTelemetry
from service.domain.catalog import Catalog


def build_decisions(
    catalog: Catalog,
    pool: asyncpg.Pool,
    redis: Redis,
    *,
    redis_prefix: str,
    cache_ttl_seconds: int,
    fill_ttl_seconds: int,
    unknown_ttl_seconds: int,
    local: LocalStates | None = None,
    telemetry: ReadTelemetry = NO_TELEMETRY,
) -> DecisionService:
    cache = RedisStateCache(redis, redis_prefix, cache_ttl_seconds)
    filler = RedisStateCache(redis, redis_prefix, fill_ttl_seconds, unknown_ttl_seconds)
    return DecisionService(
        catalog, RedisStateReader(redis, cache), filler, PostgresStateReader(pool), local, telemetry
    )
