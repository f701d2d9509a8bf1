"""Where the real services are: the Makefile's local stack, or testcontainers.

By default the tests use the stack that ``make test`` brought up (addresses from the
settings). With ``OPTOUT_TESTCONTAINERS=1`` and a reachable Docker engine the same three
services are started in containers for the session instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis.asyncio import Redis

from service.adapters.redis_cache import RedisStateCache
from service.adapters.redis_reader import RedisStateReader
from service.domain.model import SubjectKey, SubjectState
from service.settings import Settings


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    database_url: str
    redis_url: str
    containers: bool


def _docker_reachable() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return False
    return True


@contextmanager
def service_endpoints() -> Iterator[Endpoints]:
    if os.environ.get("OPTOUT_TESTCONTAINERS") == "1" and _docker_reachable():
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.redis import RedisContainer

        with (
            KafkaContainer().with_kraft() as kafka,
            PostgresContainer("postgres:16", driver=None) as pg,
            RedisContainer("redis:7") as redis,
        ):
            host = redis.get_container_host_ip()
            port = redis.get_exposed_port(6379)
            yield Endpoints(
                kafka_bootstrap=kafka.get_bootstrap_server(),
                database_url=pg.get_connection_url(),
                redis_url=f"redis://{host}:{port}/0",
                containers=True,
            )
        return
    base = Settings()
    yield Endpoints(
        kafka_bootstrap=base.kafka_bootstrap,
        database_url=base.database_dsn,
        redis_url=base.redis_dsn,
        containers=False,
    )


async def cached_in_redis(redis: Redis, settings: Settings, key: SubjectKey) -> SubjectState | None:
    """The state the worker cached for a subject, read as the read path reads it."""
    cache = RedisStateCache(redis, settings.redis_prefix)
    return await RedisStateReader(redis, cache).read_one(key)
