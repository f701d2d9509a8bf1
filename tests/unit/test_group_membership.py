"""The worker's place in its consumer group: how long a silent member keeps its partitions,
how often a live one says so, and static membership, from settings to the consumer."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from service.adapters.kafka.consumer import GroupMembership, WorkerState, register_worker
from service.application.records import RawRecord
from service.settings import Settings


async def _nothing(records: Sequence[RawRecord]) -> None:
    return None


def _consumer_arguments(membership: GroupMembership | None) -> dict[str, object]:
    broker = KafkaBroker("127.0.0.1:1")  # never started: only the subscriber is built
    subscriber = register_worker(
        broker,
        topic="commands",
        group_id="group",
        max_records=10,
        wait_seconds=0.005,
        process=_nothing,
        state=WorkerState(),
        backoff_max_seconds=1.0,
        membership=membership,
    )
    arguments: dict[str, object] = subscriber._connection_args
    return arguments


def test_the_configured_membership_reaches_the_consumer() -> None:
    arguments = _consumer_arguments(
        GroupMembership(session_timeout_ms=2_500, heartbeat_interval_ms=500, instance_id="w-1")
    )
    assert arguments["session_timeout_ms"] == 2_500
    assert arguments["heartbeat_interval_ms"] == 500
    assert arguments["group_instance_id"] == "w-1"


def test_the_default_moves_a_killed_workers_partitions_sooner_than_the_clients() -> None:
    """aiokafka's own default session is 10 s; ours fits a broker's default minimum (6 s)."""
    default = _consumer_arguments(None)
    assert 6_000 <= int(str(default["session_timeout_ms"])) < 10_000
    assert int(str(default["heartbeat_interval_ms"])) * 3 <= int(str(default["session_timeout_ms"]))
    assert default["group_instance_id"] is None
    settings = Settings()
    assert settings.consumer_session_timeout_seconds * 1000 == GroupMembership().session_timeout_ms


def test_heartbeats_must_fit_three_times_in_the_session() -> None:
    with pytest.raises(ValidationError, match="at most a third"):
        Settings(consumer_session_timeout_seconds=2.0, consumer_heartbeat_interval_seconds=1.0)
    Settings(consumer_session_timeout_seconds=3.0, consumer_heartbeat_interval_seconds=1.0)
