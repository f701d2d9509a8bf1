"""Redis connection factory, and the server setting the cache depends on.

The cache is only a cache: any key may be evicted, and a miss is read from PostgreSQL. What
must never happen is Redis refusing the worker's writes because memory is full, which it
does under `maxmemory` with `noeviction` (the default) or a `volatile-*` policy, since the
worker's keys carry no expiry. So with a memory limit the policy must be `allkeys-*`, on
every primary of a cluster.

A connection the server closed (Redis restarted, an idle connection dropped) fails its next
command with ``ConnectionError`` and is reopened; redis-py retries nothing unless told, so
the first read after a Redis restart answered 503 although Redis was back. Each command now
gets ``RECONNECT_RETRIES`` more tries on a fresh connection, a few milliseconds apart. Only
``ConnectionError`` is retried: a timeout is not, so a slow Redis never doubles a read's
wait. A retried write is safe: the cache's writes are version-guarded scripts (an older
state never replaces a newer one), and a rate-limit hit counted twice errs on the strict
side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, overload

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

SAFE_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random"})

RedisClient: TypeAlias = Redis | RedisCluster

RECONNECT_RETRIES = 2


def reconnecting() -> dict[str, Any]:
    """The client options that retry a command on a fresh connection (see above)."""
    return {
        "retry": Retry(
            ExponentialWithJitterBackoff(base=0.005, cap=0.05),
            RECONNECT_RETRIES,
            supported_errors=(RedisConnectionError,),
        ),
    }


@overload
def create_redis(url: str, *, cluster: Literal[False] = False) -> Redis: ...
@overload
def create_redis(url: str, *, cluster: Literal[True]) -> RedisCluster: ...
@overload
def create_redis(url: str, *, cluster: bool) -> RedisClient: ...
def create_redis(url: str, *, cluster: bool = False) -> RedisClient:
    """A standalone client, or with ``cluster`` a Redis Cluster client that discovers every
    node from the one in the URL (``OPTOUT_REDIS_CLUSTER``)."""
    if cluster:
        return RedisCluster.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=10,
            **reconnecting(),
        )
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=10,
        **reconnecting(),
    )


async def ping(redis: RedisClient) -> bool:
    """PONG from the server, or from every primary of a cluster (a cluster missing one
    cannot serve that primary's keys)."""
    if isinstance(redis, RedisCluster):
        return bool(await redis.ping(target_nodes=RedisCluster.PRIMARIES))
    return bool(await redis.ping())


async def eviction_problem(redis: RedisClient) -> str | None:
    """Why Redis could refuse the worker's writes when full, or None when it cannot.

    A server that does not allow CONFIG (some managed offerings) cannot be checked; that is
    not an error, the README tells operators what to set.
    """
    try:
        if not isinstance(redis, RedisCluster):
            return _problem(await redis.config_get("maxmemory", "maxmemory-policy"))
        await redis.initialize()
        for node in redis.get_primaries():
            found = await redis.config_get("maxmemory", "maxmemory-policy", target_nodes=node)
            if (problem := _problem(found)) is not None:
                return f"primary {node.name}: {problem}"
    except ResponseError:
        return None
    return None


def _problem(found: Mapping[Any, Any]) -> str | None:
    text = {_text(k): _text(v) for k, v in found.items()}
    limit = int(text.get("maxmemory", "0") or 0)
    policy = text.get("maxmemory-policy", "noeviction")
    if limit > 0 and policy not in SAFE_POLICIES:
        return f"maxmemory-policy {policy} can refuse writes when full; set allkeys-lru"
    return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
