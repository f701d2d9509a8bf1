"""The cache as ``optout cache rebuild`` refills it: the worker's compare-and-set write, and
deleting the keys of subjects whose rows are gone.

The write is the cache of ``redis_states.state_cache`` unchanged (the standalone script, or
the per-slot calls on a cluster), so a rebuild obeys the same version rule as the worker.
Deleting names the same keys the cache writes; on a cluster redis-py splits the ``DEL`` by
hash slot. Failures leave translated like the cache's: an unreachable Redis (or cluster) is
``DependencyUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from redis.exceptions import RedisClusterException

from service.adapters.redis_cache import translate
from service.adapters.redis_client import RedisClient, ping
from service.adapters.redis_states import state_cache
from service.application.errors import DependencyUnavailable
from service.domain.model import SubjectKey, SubjectState


class RedisCacheRefill:
    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        ttl_seconds: int = 0,
        unknown_ttl_seconds: int = 0,
    ) -> None:
        self._redis = redis
        self._cache = state_cache(redis, prefix, ttl_seconds, unknown_ttl_seconds)

    async def check(self) -> None:
        """Raise ``DependencyUnavailable`` unless Redis (every primary of a cluster) answers:
        a walk should fail before its first page, not after it."""
        with _redis_errors():
            if not await ping(self._redis):
                raise DependencyUnavailable("redis", "no PONG")

    async def write(self, states: Sequence[SubjectState]) -> int:
        with _redis_errors():
            return await self._cache.write(states)

    async def forget(self, keys: Sequence[SubjectKey]) -> int:
        if not keys:
            return 0
        with _redis_errors():
            return int(await self._redis.delete(*[self._cache.key(k) for k in keys]))


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except RedisClusterException as exc:
        # The cluster client's own failures: no node answered, the slots could not be mapped.
        raise DependencyUnavailable("redis", type(exc).__name__) from exc
    except DependencyUnavailable:
        raise
    except Exception as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc
