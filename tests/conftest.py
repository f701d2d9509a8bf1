"""Fixtures shared by the integration tests.

Every test gets its own topic names, PostgreSQL schema, Redis key prefix and consumer
group, so tests run in any order (and in parallel) against one shared stack.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr
from redis.asyncio import Redis

from service.adapters.postgres.migrator import migrate
from service.settings import Settings
from tests.support.ports import free_port
from tests.support.services import Endpoints, service_endpoints


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    with service_endpoints() as found:
        yield found


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def settings(endpoints: Endpoints, unique: str) -> AsyncIterator[Settings]:
    """Settings isolated for one test; its schema is migrated and dropped afterwards."""
    isolated = Settings(
        kafka_bootstrap=endpoints.kafka_bootstrap,
        database_url=SecretStr(endpoints.database_url),
        redis_url=SecretStr(endpoints.redis_url),
        database_schema=f"t_{unique}",
        redis_prefix=f"t:{unique}",
        topic_commands=f"t.{unique}.commands",
        topic_preferences=f"t.{unique}.preferences",
        topic_outcomes=f"t.{unique}.outcomes",
        topic_dlq=f"t.{unique}.dlq",
        topic_sender_receipts=f"t.{unique}.sender-receipts",
        topic_partitions=3,
        consumer_group=f"g.{unique}",
        http_port=free_port(),
        admin_port=free_port(),
        log_format="console",
    )
    conn = await asyncpg.connect(endpoints.database_url)
    try:
        await migrate(conn, isolated.database_schema)
    finally:
        await conn.close()
    yield isolated
    conn = await asyncpg.connect(endpoints.database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{isolated.database_schema}" CASCADE')
    finally:
        await conn.close()
    redis = Redis.from_url(endpoints.redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{isolated.redis_prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
    admin = AIOKafkaAdminClient(bootstrap_servers=endpoints.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        mine = [t for t in existing if t.startswith(f"t.{unique}.")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
