"""Composition root: the one place that turns settings into pools, clients and wiring."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import structlog
from faststream.kafka import KafkaBroker
from redis.asyncio import Redis

from service.adapters.kafka.broker import build_broker
from service.adapters.kafka.contract_publisher import ContractPublisher
from service.adapters.kafka.producer import KafkaOutput
from service.adapters.kafka.topics import TopicSpec, ensure_topics
from service.adapters.postgres.command_store import PostgresCommandStore
from service.adapters.postgres.migrator import migrate
from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.state_reader import PostgresStateReader
from service.adapters.redis_cache import RedisStateCache
from service.adapters.redis_client import create_redis
from service.adapters.redis_reader import RedisStateReader
from service.application.decisions import DecisionService
from service.application.health import Readiness
from service.application.process_commands import ProcessCommands
from service.domain.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from service.entrypoints.worker import WorkerState, register_worker
from service.settings import Settings

log = structlog.get_logger(__name__)


def contract_topics(settings: Settings) -> list[TopicSpec]:
    n, rf = settings.topic_partitions, settings.topic_replication
    return [
        TopicSpec(settings.topic_commands, n, rf),
        TopicSpec(settings.topic_preferences, n, rf, {"cleanup.policy": "compact"}),
        TopicSpec(settings.topic_outcomes, n, rf),
        TopicSpec(settings.topic_dlq, n, rf),
    ]


@dataclass
class Container:
    settings: Settings
    catalog: Catalog
    pool: asyncpg.Pool
    redis: Redis
    broker: KafkaBroker | None  # the worker's; `optout api` starts no Kafka client
    cache: RedisStateCache
    store: PostgresCommandStore
    readiness: Readiness
    decisions: DecisionService
    worker_state: WorkerState | None = None


def load_configured_catalog(settings: Settings) -> Catalog:
    return load_catalog(settings.catalog_file) if settings.catalog_file else DEFAULT_CATALOG


def build_decisions(
    settings: Settings, catalog: Catalog, pool: asyncpg.Pool, redis: Redis
) -> DecisionService:
    """The read path's use cases; shared by the HTTP API and the SDK."""
    cache = RedisStateCache(redis, settings.redis_prefix, settings.cache_ttl_seconds)
    filler = RedisStateCache(redis, settings.redis_prefix, settings.cache_fill_ttl_seconds)
    return DecisionService(
        catalog, RedisStateReader(redis, cache), filler, PostgresStateReader(pool)
    )


async def run_migrations(settings: Settings) -> list[str]:
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        return await migrate(conn, settings.database_schema)
    finally:
        await conn.close()


async def build_container(
    settings: Settings, stack: AsyncExitStack, *, with_worker: bool
) -> Container:
    pool = await create_pool(
        settings.database_dsn, settings.database_schema, settings.database_pool_size
    )
    stack.push_async_callback(pool.close)
    redis = create_redis(settings.redis_dsn)
    stack.push_async_callback(redis.aclose)
    catalog = load_configured_catalog(settings)
    cache = RedisStateCache(redis, settings.redis_prefix, settings.cache_ttl_seconds)
    store = PostgresCommandStore(
        pool, catalog, max_future=timedelta(seconds=settings.max_future_seconds)
    )
    readiness = Readiness()
    decisions = build_decisions(settings, catalog, pool, redis)
    container = Container(settings, catalog, pool, redis, None, cache, store, readiness, decisions)

    async def postgres_probe() -> str | None:
        return None if await pool.fetchval("SELECT 1") == 1 else "unexpected answer"

    async def redis_probe() -> str | None:
        return None if await redis.ping() else "no PONG"

    readiness.add("postgresql", postgres_probe)
    readiness.add("redis", redis_probe)

    if with_worker:
        broker = container.broker = build_broker(settings.kafka_bootstrap)

        async def kafka_probe() -> str | None:
            return None if await broker.ping(timeout=2.0) else "broker unreachable"

        readiness.add("kafka", kafka_probe)
        await ensure_topics(settings.kafka_bootstrap, contract_topics(settings))
        state = WorkerState()
        container.worker_state = state
        output = KafkaOutput(settings.kafka_bootstrap)
        await output.start()
        # The exit stack unwinds in reverse: the consumer stops before its producer closes.
        stack.push_async_callback(output.stop)
        publisher = ContractPublisher(
            output,
            preferences=settings.topic_preferences,
            outcomes=settings.topic_outcomes,
            dlq=settings.topic_dlq,
        )
        process = ProcessCommands(
            store, cache, publisher, settings.max_record_bytes, max_lanes=settings.worker_lanes
        )
        register_worker(
            broker,
            topic=settings.topic_commands,
            group_id=settings.consumer_group,
            max_records=settings.batch_max_records,
            wait_ms=settings.batch_wait_ms,
            process=process,
            state=state,
            backoff_max_s=settings.retry_backoff_max_seconds,
        )

        async def consumer_probe() -> str | None:
            if state.failing:
                return f"batch retrying: {state.failing}"
            return None if state.assigned else "no partitions assigned"

        readiness.add("consumer", consumer_probe)
        await broker.start()
        stack.push_async_callback(broker.stop)
    return container
