"""Kafka over SASL_SSL with SCRAM credentials and ACLs, on a broker of this module's own.

One JVM broker for the module (``tests/support/secure_kafka.py``): TLS with a CA of the
test's own, SCRAM-SHA-512 users, ``StandardAuthorizer`` (no ACL: no access). Each test grants
the ACLs that the README lists for the principal it plays, on its own topics.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.outgoing import OutgoingRecord
from service.adapters.kafka.producer import KafkaOutput
from service.adapters.kafka.topics import ensure_topics
from service.application.errors import DependencyUnavailable
from service.bootstrap import contract_topics
from service.client.sdk import OptoutClient
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.ports import free_port
from tests.support.secure_kafka import Grant, SecureKafka, secure_kafka

pytestmark = pytest.mark.integration

OPTOUT = str(Path(sys.executable).with_name("optout"))
USERS = ["worker", "intake", "reader", "operator"]


@pytest.fixture(scope="module")
def broker() -> Iterator[SecureKafka]:
    with secure_kafka(free_port(), free_port(), USERS) as kafka:
        yield kafka


def as_user(
    settings: Settings, broker: SecureKafka, user: str, password: str | None = None
) -> Settings:
    return settings.model_copy(update=broker.settings_for(user, password))


def worker_grants(s: Settings) -> list[Grant]:
    """The worker's ACLs as the README gives them."""
    outputs = [s.topic_preferences, s.topic_outcomes, s.topic_dlq]
    return [
        Grant("worker", ["Read", "Describe", "Create", "DescribeConfigs"], [s.topic_commands]),
        Grant("worker", ["Read", "Describe", "Create"], [s.commands_bulk_topic]),
        Grant("worker", ["Write", "Describe", "Create", "DescribeConfigs"], outputs),
        Grant("worker", ["Read"], groups=[s.consumer_group]),
    ]


async def test_worker_processes_a_command_over_sasl_ssl_with_its_own_acls(
    broker: SecureKafka, settings: Settings
) -> None:
    worker = as_user(settings, broker, "worker")
    await asyncio.to_thread(
        broker.grant,
        [
            *worker_grants(settings),
            Grant("reader", ["Read", "Describe"], [settings.topic_preferences]),
        ],
    )
    # The worker creates the topics itself (CREATE on its topics), then consumes and writes.
    async with Service(worker, with_worker=True) as service:
        assert service.container is not None
        await asyncio.wait_for(service.container.worker_started.wait(), 60)
        async with ContractClient(as_user(settings, broker, "admin")) as contract:
            doc = command("email:sasl@example.com", [("opt_out", "marketing", "email")])
            outcome = await contract.apply(doc, within_s=60)
            assert outcome["status"] == "applied", outcome
            event = await contract.event("email:sasl@example.com", 1, within_s=60)
            assert event["subject_id"] == "email:sasl@example.com"
        # A sender's SDK follows the preferences topic with a principal that may only read it.
        reader = as_user(settings, broker, "reader")
        async with await OptoutClient.connect(reader) as client:
            assert client.follower is not None
            assert len(client.follower.partitions) == settings.topic_partitions
            decision = await client.is_allowed("email:sasl@example.com", "marketing", "email")
            assert not decision.allowed


async def test_a_producer_only_principal_writes_commands_and_nothing_else(
    broker: SecureKafka, settings: Settings
) -> None:
    admin = KafkaConnection.from_settings(as_user(settings, broker, "admin"))
    await ensure_topics(admin, contract_topics(settings))
    await asyncio.to_thread(
        broker.grant, [Grant("intake", ["Write", "Describe"], [settings.topic_commands])]
    )
    intake = KafkaConnection.from_settings(as_user(settings, broker, "intake"))
    # The channels' start: the topics they use exist, so nothing needs creating.
    assert (
        await ensure_topics(
            intake, [t for t in contract_topics(settings) if t.name == settings.topic_commands]
        )
        == []
    )
    output = KafkaOutput(intake, client_id="optout-intake")
    await output.start()
    try:
        await output.send_all([OutgoingRecord(settings.topic_commands, b"k", b"a command", ())])
        with pytest.raises(DependencyUnavailable) as refused:
            await output.send_all(
                [OutgoingRecord(settings.topic_preferences, b"k", b"a forged event", ())]
            )
        assert refused.value.cause == "TopicAuthorizationFailedError"
    finally:
        await output.stop()
    # The command arrived (positive control); the forged event did not.
    assert await records(admin, settings.topic_commands, settings.topic_partitions) == [
        b"a command"
    ]
    assert await records(admin, settings.topic_preferences, settings.topic_partitions) == []
    # A topic it may not see is one it may not create either: one line says so.
    with pytest.raises(PermissionError, match="may not create it"):
        await ensure_topics(intake, contract_topics(settings))


async def records(kafka: KafkaConnection, topic: str, partitions: int) -> list[bytes]:
    """Every record value of `topic`, read from the beginning to the end."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[bytes] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for batch in (await consumer.getmany(tp, timeout_ms=500)).values():
                    found += [r.value or b"" for r in batch]
        return found
    finally:
        await consumer.stop()


def run_lag(settings: Settings) -> subprocess.CompletedProcess[str]:
    env: dict[str, Any] = {**os.environ, **settings.as_environment()}
    return subprocess.run(
        [OPTOUT, "lag"], capture_output=True, text=True, timeout=120, env=env, check=False
    )


async def test_a_wrong_password_fails_with_one_clear_line(
    broker: SecureKafka, settings: Settings
) -> None:
    admin = KafkaConnection.from_settings(as_user(settings, broker, "admin"))
    await ensure_topics(admin, contract_topics(settings))
    await asyncio.to_thread(
        broker.grant,
        [
            Grant("operator", ["Read", "Describe"], [settings.topic_commands]),
            Grant("operator", ["Describe"], groups=[settings.consumer_group]),
        ],
    )
    # Positive control: the operator's own password reads the lag. On a fresh broker the
    # first group request creates the offsets topic, and the coordinator answers a moment later.
    for _ in range(30):
        right = await asyncio.to_thread(run_lag, as_user(settings, broker, "operator"))
        if "GroupCoordinatorNotAvailable" not in right.stderr:
            break
        await asyncio.sleep(1)
    assert right.returncode == 0, right.stderr
    assert settings.consumer_group in right.stdout

    wrong = await asyncio.to_thread(run_lag, as_user(settings, broker, "operator", "not-it"))
    assert wrong.returncode == 1
    assert wrong.stdout == ""
    assert wrong.stderr.splitlines() == [
        f"optout lag: Kafka at {broker.bootstrap} could not be asked (authentication failed"
        " as 'operator' with SCRAM-SHA-512: wrong user name or password)"
    ]
    assert "not-it" not in wrong.stderr

    # The worker says the same at start (its log line and /readyz), and keeps retrying.
    async with Service(as_user(settings, broker, "worker", "not-it"), with_worker=True) as service:
        assert service.container is not None
        checks = await service.container.readiness.check()
        why = checks["kafka"]
        assert why is not None
        assert why.startswith(
            "worker not started: kafka unreachable (authentication failed as 'worker'"
            " with SCRAM-SHA-512: wrong user name or password)"
        )
        assert "not-it" not in why
        assert not service.container.worker_started.is_set()
