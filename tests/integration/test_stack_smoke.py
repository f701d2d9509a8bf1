"""The three real services answer, and the migrated schema round-trips."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import KafkaTopic, ensure_topics
from service.settings import Settings

pytestmark = pytest.mark.integration


async def test_kafka_record_is_produced_and_consumed(settings: Settings) -> None:
    topic = settings.topic_commands
    assert await ensure_topics(
        KafkaConnection(settings.kafka_bootstrap), [KafkaTopic(topic, 1)]
    ) == [topic]
    assert (
        await ensure_topics(KafkaConnection(settings.kafka_bootstrap), [KafkaTopic(topic, 1)]) == []
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k", b"hello")


async def test_postgres_round_trip_through_migrated_schema(settings: Settings) -> None:
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert next(r["version"] for r in versions) == "0001_core"
        await conn.execute("INSERT INTO subjects (tenant, subject_id) VALUES ($1, $2)", "t", "s1")
        row = await conn.fetchrow("SELECT tenant, subject_id, version FROM subjects")
        assert row is not None
        assert tuple(row) == ("t", "s1", 0)
    finally:
        await conn.close()


async def test_redis_round_trip(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_dsn)
    try:
        key = f"{settings.redis_prefix}:smoke"
        await redis.set(key, b"v", ex=60)
        assert await redis.get(key) == b"v"
    finally:
        await redis.aclose()
