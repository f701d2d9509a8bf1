"""Redis connection factory, and the server setting the cache depends on.

The cache is only a cache: any key may be evicted, and a miss is read from PostgreSQL. What
must never happen is Redis refusing the worker's writes because memory is full, which it
does under `maxmemory` with `noeviction` (the default) or a `volatile-*` policy, since the
worker's keys carry no expiry. So with a memory limit the policy must be `allkeys-*`.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

SAFE_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random"})


def create_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=10,
    )


async def eviction_problem(redis: Redis) -> str | None:
    """Why Redis could refuse the worker's writes when full, or None when it cannot.

    A server that does not allow CONFIG (some managed offerings) cannot be checked; that is
    not an error, the README tells operators what to set.
    """
    try:
        found = await redis.config_get("maxmemory", "maxmemory-policy")
    except ResponseError:
        return None
    text = {_text(k): _text(v) for k, v in found.items()}
    limit = int(text.get("maxmemory", "0") or 0)
    policy = text.get("maxmemory-policy", "noeviction")
    if limit > 0 and policy not in SAFE_POLICIES:
        return f"maxmemory-policy {policy} can refuse writes when full; set allkeys-lru"
    return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
