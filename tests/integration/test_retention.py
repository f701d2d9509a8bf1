"""Retention on the real PostgreSQL and Kafka: old log entries go, recent ones and the
consent history stay, and the topic's retention is read from the broker."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.sizes import KafkaTopicRetention
from service.adapters.kafka.topics import ensure_topics
from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.retention import PostgresPrunableLogs
from service.application.retention import RetentionJob, RetentionPolicy
from service.bootstrap import contract_topics
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command

pytestmark = pytest.mark.integration


async def test_old_entries_are_pruned_and_the_consent_history_kept(settings: Settings) -> None:
    async with Service(settings, with_worker=True), ContractClient(settings) as client:
        for i in range(12):
            await client.apply(command(f"r-{i}", [("opt_out", "marketing", "email")]))
    await ensure_topics(KafkaConnection(settings.kafka_bootstrap), contract_topics(settings))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, settings.topic_commands, {"retention.ms": "3600000"}
                )
            ]
        )
    finally:
        await admin.close()
    topic = KafkaTopicRetention(KafkaConnection(settings.kafka_bootstrap), settings.topic_commands)
    assert await topic.retention_seconds() == 3600

    pool = await create_pool(settings.database_dsn, settings.database_schema, 1)
    try:
        # Eight of the twelve entries (and their events) are made two hours old.
        await pool.execute(
            "UPDATE processed_commands SET processed_at = now() - interval '2 hours'"
            " WHERE command_id IN (SELECT command_id FROM processed_commands"
            " ORDER BY command_id LIMIT 8)"
        )
        await pool.execute(
            "UPDATE preference_events SET effective_at = now() - interval '2 hours'"
            " WHERE command_id IN (SELECT command_id FROM processed_commands"
            " WHERE processed_at < now() - interval '1 hour')"
        )
        # Configured shorter than the topic keeps: the topic's hour wins.
        job = RetentionJob(PostgresPrunableLogs(pool), topic, RetentionPolicy(60, 3, 60, 0))
        assert await job.run_once() == (8, 8)
        assert await pool.fetchval("SELECT count(*) FROM processed_commands") == 4
        assert await pool.fetchval("SELECT count(*) FROM preference_events") == 4
        assert await pool.fetchval("SELECT count(*) FROM consent_history") == 12
        assert await job.run_once() == (0, 0)
    finally:
        await pool.close()
