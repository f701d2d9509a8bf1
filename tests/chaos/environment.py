"""Where a run happens: servers of its own (restartable), or the shared stack (isolated names).

With servers of its own the run may restart PostgreSQL, Redis and Kafka and flush Redis
whole; on the shared stack only the run's own Redis keys are ever flushed, and no server is
touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from service.adapters.postgres.migrator import migrate
from service.adapters.redis_client import create_redis
from service.settings import Settings
from tests.support.ports import free_port
from tests.support.throwaway import (
    ThrowawayKafka,
    ThrowawayPostgres,
    ThrowawayRedis,
    throwaway_kafka,
    throwaway_postgres,
    throwaway_redis,
)


@dataclass
class Environment:
    settings: Settings
    postgres: ThrowawayPostgres | None = None
    redis: ThrowawayRedis | None = None
    kafka: ThrowawayKafka | None = None

    @property
    def own_servers(self) -> bool:
        return self.postgres is not None

    async def flush_redis(self, settings: Settings) -> None:
        """FLUSHALL on a Redis of the run's own; on the shared one, the run's keys only."""
        redis = create_redis(settings.redis_dsn)
        try:
            if self.redis is not None:
                await redis.flushall()
                return
            keys = [
                k async for k in redis.scan_iter(match=f"{settings.redis_prefix}:*", count=1000)
            ]
            for i in range(0, len(keys), 1000):
                await redis.delete(*keys[i : i + 1000])
        finally:
            await redis.aclose()


def isolated(settings: Settings, name: str) -> Settings:
    """Settings with topics, group, schema and Redis prefix of their own."""
    tag = f"{name}_{uuid.uuid4().hex[:8]}"
    return settings.model_copy(
        update={
            "database_schema": f"chaos_{tag}",
            "redis_prefix": f"chaos:{tag}",
            "topic_commands": f"chaos.{tag}.commands",
            "topic_preferences": f"chaos.{tag}.preferences",
            "topic_outcomes": f"chaos.{tag}.outcomes",
            "topic_dlq": f"chaos.{tag}.dlq",
            "consumer_group": f"chaos.{tag}",
            "log_format": "json",
        }
    )


async def prepare(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        await migrate(conn, settings.database_schema)
    finally:
        await conn.close()


async def cleanup(settings: Settings) -> None:
    """Drop what `isolated` names created (used on the shared stack)."""
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(settings.database_dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE')
        finally:
            await conn.close()
    with contextlib.suppress(Exception):
        await Environment(settings).flush_redis(settings)
    with contextlib.suppress(Exception):
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            prefix = settings.topic_commands.rsplit(".", 1)[0] + "."
            mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def own_servers() -> AsyncIterator[Environment]:
    """PostgreSQL, Redis and a Kafka broker started for this run, removed afterwards."""
    with contextlib.ExitStack() as stack:
        pg, redis, kafka = await asyncio.gather(
            asyncio.to_thread(stack.enter_context, throwaway_postgres(free_port())),
            asyncio.to_thread(stack.enter_context, throwaway_redis(free_port())),
            asyncio.to_thread(stack.enter_context, throwaway_kafka(free_port(), free_port())),
        )
        settings = Settings(
            kafka_bootstrap=kafka.bootstrap,
            database_url=SecretStr(pg.url),
            redis_url=SecretStr(redis.url),
            log_format="json",
        )
        yield Environment(settings, postgres=pg, redis=redis, kafka=kafka)
