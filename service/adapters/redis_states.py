"""The cache's writer and reader for the Redis deployment the client talks to.

A standalone server and a cluster get different implementations behind the same methods
(``write``; ``read_one``, ``read_many``, ``read_many_rules``): the standalone ones send one
script call per batch, the cluster ones one per hash slot. Callers pick neither.
"""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster

from service.adapters.redis_cache import RedisStateCache
from service.adapters.redis_client import RedisClient
from service.adapters.redis_cluster_cache import ClusterStateCache
from service.adapters.redis_cluster_reader import ClusterStateReader
from service.adapters.redis_reader import RedisStateReader


def state_cache(
    redis: RedisClient, prefix: str, ttl_seconds: int = 0, unknown_ttl_seconds: int = 0
) -> RedisStateCache | ClusterStateCache:
    if isinstance(redis, RedisCluster):
        return ClusterStateCache(redis, prefix, ttl_seconds, unknown_ttl_seconds)
    return RedisStateCache(redis, prefix, ttl_seconds, unknown_ttl_seconds)


def state_reader(redis: RedisClient, prefix: str) -> RedisStateReader | ClusterStateReader:
    if isinstance(redis, RedisCluster):
        return ClusterStateReader(redis, ClusterStateCache(redis, prefix))
    return RedisStateReader(redis, RedisStateCache(redis, prefix))
