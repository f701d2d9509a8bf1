"""Composition root: the one place that turns settings into pools, clients and wiring.

Entrypoints call it; nothing here is imported by the layers it assembles. The SDK builds its
own read-path connections (``service.client``) so that a sender never loads the worker.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import structlog
from redis.exceptions import RedisClusterException, RedisError

from service.adapters.catalog_file import configured_catalog
from service.adapters.kafka.broker import build_broker
from service.adapters.kafka.consumer import WorkerState, register_worker
from service.adapters.kafka.contract_publisher import ContractPublisher
from service.adapters.kafka.producer import KafkaOutput
from service.adapters.kafka.topics import KafkaTopic, ensure_topics
from service.adapters.postgres.migrator import migrate
from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.unit_of_work import PostgresCommandUnitOfWork
from service.adapters.read_path import build_decisions
from service.adapters.redis_client import RedisClient, create_redis, eviction_problem, ping
from service.adapters.redis_states import state_cache
from service.application.decisions import DecisionService
from service.application.health import Readiness
from service.application.process_commands import ProcessCommands
from service.domain.catalog import Catalog
from service.settings import Settings

log = structlog.get_logger(__name__)


def contract_topics(settings: Settings) -> list[KafkaTopic]:
    n, rf = settings.topic_partitions, settings.topic_replication
    return [
        KafkaTopic(settings.topic_commands, n, rf),
        KafkaTopic(settings.topic_preferences, n, rf, {"cleanup.policy": "compact"}),
        KafkaTopic(settings.topic_outcomes, n, rf),
        KafkaTopic(settings.topic_dlq, n, rf),
    ]


@dataclass
class Container:
    settings: Settings
    catalog: Catalog
    pool: asyncpg.Pool
    redis: RedisClient
    readiness: Readiness
    decisions: DecisionService
    worker_state: WorkerState | None = None


def decisions_for(
    settings: Settings, catalog: Catalog, pool: asyncpg.Pool, redis: RedisClient
) -> DecisionService:
    return build_decisions(
        catalog,
        pool,
        redis,
        redis_prefix=settings.redis_prefix,
        fill_ttl_seconds=settings.cache_fill_ttl_seconds,
        unknown_ttl_seconds=settings.cache_unknown_ttl_seconds,
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
    """The HTTP API's dependencies, and with `with_worker` the consumer and its outputs.

    The API alone opens no Kafka client: it reads Redis and PostgreSQL only, and its
    readiness checks just those.
    """
    pool = await create_pool(
        settings.database_dsn, settings.database_schema, settings.database_pool_size
    )
    stack.push_async_callback(pool.close)
    redis = create_redis(settings.redis_dsn, cluster=settings.redis_cluster)
    stack.push_async_callback(redis.aclose)
    catalog = configured_catalog(settings.catalog_file)
    with suppress(RedisError, RedisClusterException, OSError):
        if (problem := await eviction_problem(redis)) is not None:
            log.error("redis_eviction_policy_unsafe", detail=problem)
    readiness = Readiness()
    container = Container(
        settings, catalog, pool, redis, readiness, decisions_for(settings, catalog, pool, redis)
    )

    async def postgres_probe() -> str | None:
        return None if await pool.fetchval("SELECT 1") == 1 else "unexpected answer"

    async def redis_probe() -> str | None:
        if not await ping(redis):
            return "no PONG"
        return await eviction_problem(redis)

    readiness.add("postgresql", postgres_probe)
    readiness.add("redis", redis_probe)
    if with_worker:
        container.worker_state = await _start_worker(settings, stack, container)
    return container


async def _start_worker(
    settings: Settings, stack: AsyncExitStack, container: Container
) -> WorkerState:
    await ensure_topics(settings.kafka_bootstrap, contract_topics(settings))
    broker = build_broker(settings.kafka_bootstrap)
    state = WorkerState()
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
    pool = container.pool
    process = ProcessCommands(
        lambda: PostgresCommandUnitOfWork(pool),
        state_cache(container.redis, settings.redis_prefix, settings.cache_ttl_seconds),
        publisher,
        container.catalog,
        max_record_bytes=settings.max_record_bytes,
        max_future=timedelta(seconds=settings.max_future_seconds),
        max_lanes=settings.worker_lanes,
    )
    register_worker(
        broker,
        topic=settings.topic_commands,
        group_id=settings.consumer_group,
        max_records=settings.batch_max_records,
        wait_seconds=settings.batch_wait_seconds,
        process=process,
        state=state,
        backoff_max_seconds=settings.retry_backoff_max_seconds,
    )

    async def kafka_probe() -> str | None:
        return None if await broker.ping(timeout=2.0) else "broker unreachable"

    async def consumer_probe() -> str | None:
        if state.failing:
            return f"batch retrying: {state.failing}"
        return None if state.assigned else "no partitions assigned"

    container.readiness.add("kafka", kafka_probe)
    container.readiness.add("consumer", consumer_probe)
    await broker.start()
    stack.push_async_callback(broker.stop)
    return state
