"""The latency waterfall: a batch's time from its oldest record's Kafka timestamp to its
outcomes acknowledged, in consecutive steps, reported once per batch.

The worker's batch handler is driven as faststream would drive it, on a fake consumer, with
the real use case (on the in-memory fakes of ``test_process_commands.py``) and the real Kafka
publisher on an output that acknowledges at once, so every step is marked by the code that
marks it in production.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry

from service.adapters.kafka.consumer import WorkerState, register_worker
from service.adapters.kafka.contract_publisher import ContractPublisher
from service.adapters.kafka.producer import KafkaOutput, OutgoingRecord
from service.adapters.kafka.sizes import SizeLimits
from service.adapters.prometheus_metrics import PrometheusMetrics
from service.application.process_commands import ProcessCommands
from service.application.records import RawRecord
from service.application.waterfall import STEPS, BatchClock, Step
from service.domain.catalog import DEFAULT_CATALOG
from tests.unit.test_process_commands import FakeCache, FakeDatabase, FakeUnitOfWork, command

TOPIC = "commands"
ALL_STEPS = list(STEPS)
WITHOUT_EVENTS = [s for s in STEPS if s not in ("redis", "event_ack")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_steps_run_from_the_end_of_the_one_before() -> None:
    clock = FakeClock()
    batch = BatchClock(fetch_seconds=0.25, now=clock)
    clock.now = 100.5
    batch.mark("queued")
    batch.mark("decode", at=100.75)
    clock.now = 101.0
    batch.mark("postgresql")
    assert batch.steps() == [
        ("fetch", 0.25),
        ("queued", 0.5),
        ("decode", 0.25),
        ("postgresql", 0.25),
    ]


def test_no_step_is_negative() -> None:
    """A record stamped ahead of the worker's clock, or a mark read before the previous one
    (lanes side by side), counts as no time rather than negative time."""
    clock = FakeClock()
    batch = BatchClock(fetch_seconds=-3.0, now=clock)
    batch.mark("queued", at=99.0)
    clock.now = 100.5
    batch.mark("decode")
    assert batch.steps() == [("fetch", 0.0), ("queued", 0.0), ("decode", 0.5)]


@dataclass
class RecordingTelemetry:
    waterfalls: list[list[tuple[Step, float]]] = field(default_factory=list)

    def batch(self, records: int) -> None:
        return None

    def committed(self, seconds: float) -> None:
        return None

    def waterfall(self, steps: Sequence[tuple[Step, float]]) -> None:
        self.waterfalls.append(list(steps))

    def retry(self, dependency: str) -> None:
        return None

    def lag(self, topic: str, partition: int, records: int, seconds: float) -> None:
        return None

    def forget_partition(self, topic: str, partition: int) -> None:
        return None


class AcknowledgingOutput(KafkaOutput):
    """Kafka's output as the publisher uses it, every wave acknowledged at once (no client
    is built: only the dead letters' size limits are read)."""

    def __init__(self) -> None:
        self.limits = SizeLimits()
        self.waves: list[list[str]] = []

    async def send_all(self, records: Sequence[OutgoingRecord]) -> None:
        if records:
            self.waves.append([r.topic for r in records])


class FakeConsumer:
    """What the handler asks of aiokafka's consumer: positions and offsets, all local."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []

    async def position(self, tp: TopicPartition) -> int:
        return self.next.get(tp.partition, 0)

    async def committed(self, tp: TopicPartition) -> int:
        return 0

    def highwater(self, tp: TopicPartition) -> int:
        return self.next.get(tp.partition, 0)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise AssertionError("no gap in these batches")


@dataclass
class Worker:
    telemetry: RecordingTelemetry
    output: AcknowledgingOutput
    consumer: FakeConsumer
    state: WorkerState
    handler: Any

    async def batch(self, *records: tuple[int, dict[str, Any] | bytes, float]) -> None:
        """Hand the handler one batch of (offset, value, age in seconds) and wait until it
        is processed and committed."""
        now_ms = time.time() * 1000
        raw = tuple(
            ConsumerRecord(
                topic=TOPIC,
                partition=0,
                offset=offset,
                timestamp=round(now_ms - age * 1000),
                timestamp_type=0,
                key=b"key",
                value=value if isinstance(value, bytes) else orjson.dumps(value),
                checksum=None,
                serialized_key_size=3,
                serialized_value_size=100,
                headers=(),
            )
            for offset, value, age in records
        )
        self.consumer.next[0] = max(r.offset for r in raw) + 1
        await self.handler(raw)
        await self.state.idle.wait()


def worker() -> Worker:
    telemetry = RecordingTelemetry()
    output = AcknowledgingOutput()
    publisher = ContractPublisher(output, preferences="prefs", outcomes="outcomes", dlq="dlq")
    db = FakeDatabase()
    commands = ProcessCommands(
        lambda: FakeUnitOfWork(db),
        FakeCache(),
        publisher,
        DEFAULT_CATALOG,
        max_record_bytes=64 * 1024,
        max_future=timedelta(minutes=5),
    )

    async def process(records: Sequence[RawRecord]) -> None:
        raise AssertionError("every batch here goes through the pipelined stages")

    state = WorkerState()
    state.assigned.add((TOPIC, 0))
    subscriber = register_worker(
        KafkaBroker("127.0.0.1:1"),  # never started: the handler is called directly
        topic=TOPIC,
        group_id="group",
        max_records=100,
        wait_seconds=0.005,
        process=process,
        state=state,
        backoff_max_seconds=1.0,
        telemetry=telemetry,
        stage=commands.store,
    )
    consumer = FakeConsumer()
    subscriber.consumer = consumer
    # The function given to faststream, as its consume loop calls it.
    handler = subscriber.calls[0].handler._original_call
    return Worker(telemetry, output, consumer, state, handler)


async def test_each_step_is_reported_once_per_batch_in_order() -> None:
    w = worker()
    await w.batch((0, command("c1", "u1"), 2.0), (1, command("c2", "u2"), 1.0))
    await w.batch((2, command("c3", "u3"), 0.0))
    assert len(w.consumer.commits) == 2
    assert len(w.telemetry.waterfalls) == 2
    for steps in w.telemetry.waterfalls:
        assert [step for step, _ in steps] == ALL_STEPS
        assert all(seconds >= 0 for _, seconds in steps)
    # `fetch` is the oldest record's wait, not the newest's.
    # The oldest record (2 s old) decides; its timestamp is rounded to the millisecond.
    assert dict(w.telemetry.waterfalls[0])["fetch"] >= 2.0 - 0.001
    # The events were acknowledged in a wave of their own, before the outcomes.
    assert w.output.waves == [["prefs", "prefs"], ["outcomes", "outcomes"], ["prefs"], ["outcomes"]]


async def test_a_step_that_did_not_happen_is_not_reported() -> None:
    w = worker()
    await w.batch((0, command("c1", "u1"), 0.0))
    # The same command again: a duplicate, no new state and no event, one wave of outcomes.
    await w.batch((1, command("c1", "u1"), 0.0))
    # A record that is not a command: nothing to store either, a dead letter.
    await w.batch((2, b"not json", 0.0))
    first, duplicate, dead_letter = ([s for s, _ in steps] for steps in w.telemetry.waterfalls)
    assert first == ALL_STEPS  # the positive control: the same worker reports every step
    assert duplicate == WITHOUT_EVENTS
    assert dead_letter == [s for s in WITHOUT_EVENTS if s != "postgresql"]
    assert w.output.waves[2:] == [["outcomes"], ["dlq"]]


def test_the_steps_are_one_histogram_labelled_by_step() -> None:
    metrics = PrometheusMetrics(CollectorRegistry())
    metrics.waterfall([("fetch", 0.002), ("queued", 0.0), ("outcome_ack", 0.004)])
    metrics.waterfall([("fetch", 0.003)])
    count = metrics.registry.get_sample_value
    assert count("optout_waterfall_seconds_count", {"step": "fetch"}) == 2
    assert count("optout_waterfall_seconds_count", {"step": "queued"}) == 1
    assert count("optout_waterfall_seconds_count", {"step": "event_ack"}) == 0
    assert count("optout_waterfall_seconds_sum", {"step": "fetch"}) == 0.005
