"""The read path's sources assembled: Redis first, PostgreSQL on a miss, Redis refilled.

Shared by the HTTP API (through the composition root) and the SDK, which builds its own
connections and must not load the worker's wiring.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg
import structlog
from redis.exceptions import NoPermissionError, ResponseError

from service.adapters.postgres.state_reader import PostgresStateReader
from service.adapters.redis_client import RedisClient
from service.adapters.redis_states import state_cache, state_reader
from service.application.decisions import DecisionService, LocalStates, StateFiller
from service.application.errors import Refused
from service.application.telemetry import NO_TELEMETRY, ReadTelemetry
from service.domain.catalog import Catalog
from service.domain.model import SubjectState

log = structlog.get_logger(__name__)


def _forbidden(exc: BaseException | None) -> bool:
    """Redis refused for want of permission: a plain command answers NoPermissionError, one
    inside the cache's script a ResponseError naming the ACL."""
    if isinstance(exc, NoPermissionError):
        return True
    return isinstance(exc, ResponseError) and "can't run this command" in str(exc)


class _FillUnlessForbidden:
    """The refill of a reader that may hold read-only Redis credentials (the SDK's: a Redis
    ACL user limited to reads). The first write Redis refuses for permission switches the
    refill off for good, logged once: the answer was read from PostgreSQL either way."""

    def __init__(self, filler: StateFiller) -> None:
        self._filler: StateFiller | None = filler

    async def write(self, states: Iterable[SubjectState]) -> int:
        if self._filler is None:
            return 0
        try:
            return await self._filler.write(states)
        except Refused as exc:
            if not _forbidden(exc.__cause__):
                raise
            log.warning("cache_fill_forbidden", detail="read-only Redis credentials: no refill")
            self._filler = None
            return 0


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
    read_only: bool = False,
) -> DecisionService:
    """``identifier_key`` (``OPTOUT_IDENTIFIER_KEY``) lets a check on an erased identifier
    find its suppression; without it such a check fails rather than answer the default.
    ``read_only``: the credentials may be read-only (the SDK's); a refused refill is skipped."""
    filler: StateFiller = state_cache(redis, redis_prefix, fill_ttl_seconds, unknown_ttl_seconds)
    if read_only:
        filler = _FillUnlessForbidden(filler)
    return DecisionService(
        catalog,
        state_reader(redis, redis_prefix),
        filler,
        PostgresStateReader(pool, identifier_key),
        local,
        telemetry,
    )
