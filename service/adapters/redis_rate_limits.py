"""Rate-limit counters and repeat markers in Redis (``application/rate_limits.py``).

The counters are the ``limits`` library's sliding-window counters (two keys per rule and
key, one atomic script per hit) on its async Redis storage, over redis-py. The repeat
markers are one hash per subject, with a TTL: ``HSETNX`` answers whether a marker is new.
Every key starts with ``{OPTOUT_REDIS_PREFIX}:limits:``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, parse
from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.exceptions import RedisError

from service.adapters.redis_client import RedisClient, reconnecting
from service.application.rate_limits import ALLOWED, Rule, Verdict

FAILURES: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)


def parse_limits(configured: Mapping[Rule, str]) -> dict[Rule, RateLimitItem]:
    """``{rule: "20/hour"}`` as ``limits`` items; a value it cannot read names its rule."""
    items: dict[Rule, RateLimitItem] = {}
    for rule, text in configured.items():
        try:
            items[rule] = parse(text)
        except ValueError:
            raise ValueError(
                f"OPTOUT_RATE_LIMIT_{rule.upper()}: {text!r} is not a limit such as 20/hour"
            ) from None
    return items


def storage_uri(redis_url: str, *, cluster: bool) -> str:
    """The service's Redis URL as ``limits`` names it (``async+redis://``, ``+cluster``)."""
    parts = urlsplit(redis_url)
    if cluster:
        return urlunsplit(("async+redis+cluster", *parts[1:]))
    return urlunsplit((f"async+{parts.scheme}", *parts[1:]))


class RedisLimitStore:
    def __init__(
        self,
        redis: RedisClient,
        redis_url: str,
        *,
        prefix: str,
        limits: Mapping[Rule, RateLimitItem],
        cluster: bool = False,
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:limits"
        self._limits = dict(limits)
        uri = storage_uri(redis_url, cluster=cluster)
        self._storage: RedisStorage
        if cluster:
            # TLS for a cluster goes in the options: `limits` names one cluster scheme.
            self._storage = RedisClusterStorage(
                uri,
                implementation="redispy",
                key_prefix=self._prefix,
                socket_connect_timeout=2,
                socket_timeout=2,
                ssl=urlsplit(redis_url).scheme == "rediss",
                **reconnecting(),
            )
        else:
            self._storage = RedisStorage(
                uri,
                implementation="redispy",
                key_prefix=self._prefix,
                socket_connect_timeout=2,
                socket_timeout=2,
                **reconnecting(),
            )
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)

    def __repr__(self) -> str:
        return f"RedisLimitStore(prefix={self._prefix!r}, rules={sorted(self._limits)!r})"

    async def hit(self, rule: Rule, key: str, cost: int = 1) -> Verdict:
        item = self._limits.get(rule)
        if item is None:  # the rule is switched off
            return ALLOWED
        if await self._limiter.hit(item, rule, key, cost=cost):
            return ALLOWED
        stats = await self._limiter.get_window_stats(item, rule, key)
        return Verdict(False, max(1, math.ceil(stats.reset_time - time.time())))

    async def mark_once(self, group: str, marker: str, seconds: int) -> bool:
        key = f"{self._prefix}:absorb:{group}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.hsetnx(key, marker, b"1")
        pipe.expire(key, seconds)
        new, _ = await pipe.execute()
        return bool(new)

    async def unmark(self, group: str) -> None:
        await self._redis.delete(f"{self._prefix}:absorb:{group}")
