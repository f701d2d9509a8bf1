"""The Kafka consumer wiring: batches of raw records in, offsets committed only after success.

faststream's default ``ACK_FIRST`` commits before processing (at-most-once); here the
policy is ``MANUAL`` and the handler commits the exact offsets of a batch once the batch
processor returned, that is after PostgreSQL, Redis and Kafka publication all succeeded.
The handler never raises: a failing dependency is retried with capped backoff while the
offsets stay uncommitted, because faststream would otherwise move on to the next batch and
a later commit would skip the failed one.

Nothing of a record is interpreted before the processor sees it: faststream's batch parser
decodes every header as UTF-8, and one binary or null header value made it raise before the
handler ran, the batch vanishing while the next batch's commit moved past it. The parser
here hands the records over untouched, and the gap check (``offsets.py``) makes sure no
batch can vanish that way again.

With a bulk lane (``BulkLane``) the subscriber reads the bulk commands topic as well, in the
same group, with the range assignor (partition p of both topics with one member), and its
fetch step takes live records first and at most a bounded number of bulk ones per batch
(``priority.py`` gives the reasoning, and why a subject's events stay in version order).
Everything below is per (topic, partition): positions, the gap check, commits, lag.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalStateError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import FAKE_CONSUMER, KafkaAckableMessage
from tenacity import AsyncRetrying, RetryCallState, RetryError, wait_exponential

from service.adapters.kafka.offsets import GapCheck, Partition
from service.adapters.kafka.poll_errors import guard_polls
from service.adapters.kafka.priority import LaneBudget, LiveFirstFetch
from service.adapters.kafka.recovery import DependencyAnswers, RecoveryPause
from service.application.errors import DependencyUnavailable, leaf_failures, unavailable_in
from service.application.records import RawRecord
from service.application.waterfall import BatchClock, Step, StepClock

log = structlog.get_logger(__name__)

BatchProcessor = Callable[[Sequence[RawRecord]], Awaitable[None]]
FinishStage = Callable[[], Awaitable[None]]


class StoreStage(Protocol):
    """A batch's first stage (decode, decide, commit to PostgreSQL), returning its second
    stage (Redis, then Kafka until acknowledged); both mark their steps on `clock`."""

    def __call__(
        self, records: Sequence[RawRecord], *, clock: StepClock | None = None
    ) -> Awaitable[FinishStage]: ...


@dataclass
class WorkerState:
    """What readiness and metrics need to know about the consumer."""

    assigned: set[tuple[str, int]] = field(default_factory=set)
    failing: str | None = None
    failing_since: float | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    gaps: GapCheck = field(default_factory=GapCheck)
    stopping: bool = False
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.idle.set()

    def begin(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def drain(self, deadline_seconds: float) -> bool:
        """Take no new batch; wait for those in flight to be processed and committed.

        False when the deadline passed first: their offsets stay uncommitted and their
        records are answered again (identically) by the next owner of the partition.
        """
        self.stopping = True
        try:
            await asyncio.wait_for(self.idle.wait(), deadline_seconds)
        except TimeoutError:
            return False
        return True

    def failure(self) -> str | None:
        """The readiness reason while a batch is retried: what fails, and since when."""
        if self.failing is None:
            return None
        since = datetime.fromtimestamp(self.failing_since or time.time(), UTC)
        return f"batch retrying since {since.isoformat(timespec='seconds')}: {self.failing}"


class ConsumerTelemetry(Protocol):
    """What the consumer reports (``service.adapters.prometheus_metrics`` implements it)."""

    def batch(self, records: int) -> None: ...
    def committed(self, seconds: float) -> None: ...
    def waterfall(self, steps: Sequence[tuple[Step, float]]) -> None: ...
    def retry(self, dependency: str) -> None: ...
    def lag(self, topic: str, partition: int, records: int, seconds: float) -> None: ...
    def forget_partition(self, topic: str, partition: int) -> None: ...


class _Silent:
    def batch(self, records: int) -> None:
        return None

    def committed(self, seconds: float) -> None:
        return None

    def waterfall(self, steps: Sequence[tuple[Step, float]]) -> None:
        return None

    def retry(self, dependency: str) -> None:
        return None

    def lag(self, topic: str, partition: int, records: int, seconds: float) -> None:
        return None

    def forget_partition(self, topic: str, partition: int) -> None:
        return None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets an in-flight batch finish (and commit) before its partitions move away."""

    def __init__(
        self, state: WorkerState, grace_seconds: float, telemetry: ConsumerTelemetry
    ) -> None:
        self._state = state
        self._grace_seconds = grace_seconds
        self._telemetry = telemetry

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            await asyncio.wait_for(self._state.idle.wait(), self._grace_seconds)
        except TimeoutError:
            log.warning("rebalance_abandons_batch", partitions=len(revoked))
        self._state.assigned.difference_update((tp.topic, tp.partition) for tp in revoked)
        self._state.gaps.forget((tp.topic, tp.partition) for tp in revoked)
        for tp in revoked:
            self._telemetry.forget_partition(tp.topic, tp.partition)
        log.info("partitions_revoked", **_numbers(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._state.assigned.update((tp.topic, tp.partition) for tp in assigned)
        self._state.gaps.forget((tp.topic, tp.partition) for tp in assigned)
        log.info("partitions_assigned", **_numbers(assigned))


def _numbers(tps: list[TopicPartition]) -> dict[str, list[Any]]:
    """For the log: the partition numbers, and the topics they are of (with the bulk lane,
    partition p of both command topics moves together, so the numbers are those of either)."""
    return {
        "partitions": sorted({tp.partition for tp in tps}),
        "topics": sorted({tp.topic for tp in tps}),
    }


async def _raw_records(message: Any) -> Any:
    """The batch's records as aiokafka gave them, for the handler: they are decoded one by
    one by the processor (a bad one must not fail the batch).

    The handler takes them as its body rather than the message from faststream's context:
    fast_depends resolves a context field in a worker thread, and runs a plain function
    given as decoder in one too, one thread hop per batch each."""
    return message.raw_message


def raw_batch_parser(
    consumer_of: Callable[[], Any],
) -> Callable[[tuple[ConsumerRecord, ...]], Awaitable[KafkaAckableMessage]]:
    """faststream's message for a batch, built without reading a single header or value.

    Replaces ``AioKafkaBatchParser.parse_batch``, which decodes every header value as UTF-8
    (and fails on binary or null values) to offer headers, reply-to and correlation ids
    this service never uses.
    """

    async def parse(records: tuple[ConsumerRecord, ...]) -> KafkaAckableMessage:
        first, last = records[0], records[-1]
        message_id = f"{first.topic}-{first.partition}-{first.offset}-{last.offset}"
        return KafkaAckableMessage(
            raw_message=records,
            body=[],
            message_id=message_id,
            correlation_id=message_id,
            consumer=consumer_of() or FAKE_CONSUMER,
        )

    return parse


def next_offsets(records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
    return offsets


def first_timestamps(records: Sequence[RawRecord]) -> dict[Partition, int]:
    """Per partition, the Kafka timestamp (ms) of the batch's first record: the oldest one
    waiting, whose age is the partition's lag in seconds."""
    firsts: dict[Partition, tuple[int, int]] = {}
    for r in records:
        key = (r.topic, r.partition)
        if key not in firsts or r.offset < firsts[key][0]:
            firsts[key] = (r.offset, r.timestamp_ms)
    return {key: stamp for key, (_, stamp) in firsts.items()}


def first_offsets(records: Sequence[RawRecord]) -> dict[Partition, int]:
    firsts: dict[Partition, int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if key not in firsts or r.offset < firsts[key]:
            firsts[key] = r.offset
    return firsts


async def _starting_offset(consumer: Any, tp: TopicPartition) -> int | None:
    """Where a newly assigned partition's records must start: its committed offset, or the
    log start when the group never committed (``auto_offset_reset=earliest``). Asked once
    per assignment, not per batch."""
    try:
        committed = await consumer.committed(tp)
        if committed is not None:
            return int(committed)
        beginning = await consumer.beginning_offsets([tp])
        return int(beginning[tp])
    except Exception as exc:
        # Not knowing must not stall the partition: the batch is taken as it comes.
        log.warning("starting_offset_unknown", partition=tp.partition, error=type(exc).__name__)
        return None


async def _hold_gaps(
    consumer: Any, state: WorkerState, records: Sequence[RawRecord]
) -> set[Partition]:
    """The partitions of this batch that must not be processed now (sought back instead)."""
    held: set[Partition] = set()
    for partition, first in first_offsets(records).items():
        tp = TopicPartition(*partition)
        if not state.gaps.knows(partition):
            start = await _starting_offset(consumer, tp)
            if start is not None:
                state.gaps.expected[partition] = start
        verdict = state.gaps.judge(partition, first)
        if verdict == "in_order":
            continue
        expected = state.gaps.expected[partition]
        if verdict == "accept_gap":
            log.info(
                "offset_gap_accepted",
                code="OFFSET_GAP_ACCEPTED",
                topic=tp.topic,
                partition=tp.partition,
                expected=expected,
                first=first,
            )
            continue
        log.warning(
            "offset_gap",
            code="OFFSET_GAP_SEEK_BACK",
            topic=tp.topic,
            partition=tp.partition,
            expected=expected,
            first=first,
        )
        consumer.seek(tp, expected)
        held.add(partition)
    return held


WORKER_FETCH_MAX_WAIT_MS = 20


@dataclass(frozen=True, slots=True)
class GroupMembership:
    """How the worker holds its place in the consumer group.

    The session timeout is how long the group waits for a member that stopped answering (a
    killed worker) before its partitions move; heartbeats must come well within it. A
    static ``instance_id`` lets a restarted worker take its partitions back without a
    rebalance (a rolling deploy), but a killed one is still only replaced after the session
    timeout."""

    session_timeout_ms: int = 7_000
    heartbeat_interval_ms: int = 1_000
    instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class BulkLane:
    """The bulk commands topic read behind the live one (``priority.py``): at most
    `max_records_per_batch` of its records in one batch."""

    topic: str
    max_records_per_batch: int


def register_worker(
    broker: KafkaBroker,
    *,
    topic: str,
    group_id: str,
    max_records: int,
    wait_seconds: float,
    process: BatchProcessor,
    state: WorkerState,
    backoff_max_seconds: float,
    telemetry: ConsumerTelemetry | None = None,
    stage: StoreStage | None = None,
    membership: GroupMembership | None = None,
    answers: DependencyAnswers | None = None,
    probe_every_s: float = 0.25,
    bulk: BulkLane | None = None,
) -> Any:
    """Subscribe the worker. With `stage`, batches are pipelined: a batch's first stage
    (`stage`, PostgreSQL) runs while the one before sends its outputs (Redis, Kafka); the
    outputs go out in batch order and offsets are committed in that order, each only after
    its batch's outputs were acknowledged. Whatever fails is processed again whole by
    `process` (retried, isolated), after the outputs of every earlier batch. A batch whose
    stages succeeded as they came reports its latency waterfall (``waterfall.py``) once its
    outcomes are acknowledged. `answers` (a dependency's readiness probe) cuts a retry's
    backoff short once the dependency that failed answers again (``recovery.py``). With
    `bulk`, the bulk lane's topic is read too, behind the live one (``priority.py``): both
    topics in one group, partition p of each with the same member (range assignor)."""
    report: ConsumerTelemetry = telemetry or _Silent()
    member = membership or GroupMembership()
    subscriber_ref: list[Any] = []

    def consumer_of() -> Any:
        return subscriber_ref[0].consumer if subscriber_ref else None

    topics = (topic,) if bulk is None else (topic, bulk.topic)
    subscriber = broker.subscriber(
        *topics,
        group_id=group_id,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=round(wait_seconds * 1000),
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        listener=_Rebalance(state, grace_seconds=30.0, telemetry=report),
        parser=raw_batch_parser(consumer_of),
        decoder=_raw_records,
        max_poll_interval_ms=600_000,
        session_timeout_ms=member.session_timeout_ms,
        heartbeat_interval_ms=member.heartbeat_interval_ms,
        group_instance_id=member.instance_id,
        # aiokafka keeps one fetch in flight per broker, and leaves out of it the partitions
        # whose records were just returned: a command arriving on such a partition waited
        # for the others' fetch to time out (500 ms by default) before it was even read.
        fetch_max_wait_ms=WORKER_FETCH_MAX_WAIT_MS,
        # Each topic's partitions over the members sorted the same way: partition p of the
        # live and of the bulk topic go to the same member (priority.py).
        partition_assignment_strategy=(RangePartitionAssignor,),
        title="optout-worker",
        description="Opt-out and opt-in commands from every channel (contract v1).",
    )
    subscriber_ref.append(subscriber)
    # faststream's subscribers keep a __dict__ so that a method can be replaced on the
    # instance; its consume loop calls `get_msg(consumer)` for each batch.
    guard_polls(
        subscriber,
        fetch=None
        if bulk is None
        else LiveFirstFetch(
            bulk_topic=bulk.topic,
            budget=LaneBudget(max_records, bulk.max_records_per_batch),
            wait_ms=round(wait_seconds * 1000),
        ),
    )

    outputs = InOrder()

    def record_lag(
        consumer: Any, positions: dict[Partition, int], waited: dict[Partition, float]
    ) -> None:
        for (topic, number), position in positions.items():
            end = consumer.highwater(TopicPartition(topic, number))
            behind = max(0, end - position) if end is not None else 0
            report.lag(topic, number, behind, waited.get((topic, number), 0.0) if behind else 0.0)

    async def commit(consumer: Any, records: Sequence[RawRecord]) -> None:
        committing = time.perf_counter()
        await consumer.commit(next_offsets(records))
        report.committed(time.perf_counter() - committing)

    async def on_batch(raw: Any) -> None:
        records = [
            RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp) for r in raw
        ]
        if not records or state.stopping:
            # Stopping: these records stay uncommitted, for the partition's next owner.
            return
        consumer: Any = consumer_of()
        report.batch(len(records))
        arrived = time.time()
        waited = {
            partition: max(0.0, arrived - first / 1000)
            for partition, first in first_timestamps(records).items()
        }
        # The oldest record's wait, from its Kafka timestamp (wall clock) to now; the rest
        # of the batch's steps are measured on the monotonic clock.
        clock = BatchClock(fetch_seconds=max(waited.values()))
        state.begin()
        handed_over = False
        try:
            # Where each partition stands after this batch: known locally, no round trip.
            positions: dict[Partition, int] = {}
            for partition in first_offsets(records):
                # A partition no longer ours is left out: its next owner processes it.
                with contextlib.suppress(IllegalStateError):
                    positions[partition] = await consumer.position(TopicPartition(*partition))
            records = [r for r in records if (r.topic, r.partition) in positions]
            held = await _hold_gaps(consumer, state, records)
            if held:
                records = [r for r in records if (r.topic, r.partition) not in held]
                positions = {p: o for p, o in positions.items() if p not in held}
            if not records:
                return
            # One batch's second stage at a time runs beside the next one's first.
            await outputs.settle(pending=1)
            clock.mark("queued")
            finish = await _first_stage(records, stage, clock) if stage is not None else None
            for partition, position in positions.items():
                state.gaps.processed(partition, position)
            batch = records

            async def second_stage(earlier_done: bool) -> bool:
                """True once the batch's outputs are acknowledged (a later commit then
                covers its offsets even if its own commit failed)."""
                done = False
                try:
                    if finish is not None and earlier_done:
                        try:
                            await finish()
                            done = True
                        except Exception as exc:
                            log.warning(
                                "batch_outputs_failed", error=describe(exc), records=len(batch)
                            )
                        if done:
                            # Only a batch that went through its stages once, as they came.
                            report.waterfall(clock.steps())
                    # The whole batch, retried and isolated as needed: without a first
                    # stage, or after one whose outputs failed (its answers are then in the
                    # processed log and are replayed), or after an abandoned batch.
                    done = done or await _process_until_done(
                        batch,
                        process,
                        state,
                        backoff_max_seconds,
                        report,
                        RecoveryPause(answers, probe_every_s=probe_every_s),
                    )
                    if done:
                        await commit(consumer, batch)
                        record_lag(consumer, positions, waited)
                    return done
                except Exception as exc:
                    log.warning(
                        "offset_commit_failed", error=type(exc).__name__, records=len(batch)
                    )
                    return done
                finally:
                    state.end()

            outputs.then(second_stage)
            handed_over = True
            if finish is None:
                # Nothing of the batch is stored yet: the next batch's first stage waits
                # until it is, so a subject's commands are applied in their order.
                await outputs.settle(pending=0)
        except Exception as exc:
            log.warning("offset_commit_failed", error=type(exc).__name__, records=len(records))
        finally:
            if not handed_over:
                state.end()

    subscriber(on_batch)
    return subscriber


async def _first_stage(
    records: Sequence[RawRecord], stage: StoreStage, clock: StepClock
) -> FinishStage | None:
    """The batch's first stage, or None when it failed (the caller processes it whole)."""
    try:
        return await stage(records, clock=clock)
    except Exception as exc:
        log.warning("batch_first_stage_failed", error=describe(exc), records=len(records))
        return None


class InOrder:
    """Second stages of batches, each started once the one before it ended, so a key's
    outputs keep their order on every topic and offsets are committed in order. Each step
    learns whether the step before it completed."""

    def __init__(self) -> None:
        self._pending: collections.deque[asyncio.Task[bool]] = collections.deque()

    def then(self, step: Callable[[bool], Awaitable[bool]]) -> None:
        previous = self._pending[-1] if self._pending else None

        async def run() -> bool:
            done = True if previous is None else await asyncio.shield(previous)
            return await step(done)

        self._pending.append(asyncio.create_task(run()))

    async def settle(self, *, pending: int) -> None:
        """Wait until at most `pending` steps are still running."""
        while self._pending and (self._pending[0].done() or len(self._pending) > pending):
            await asyncio.shield(self._pending[0])
            self._pending.popleft()


async def _process_until_done(
    records: Sequence[RawRecord],
    process: BatchProcessor,
    state: WorkerState,
    backoff_max_seconds: float,
    report: ConsumerTelemetry,
    pause: RecoveryPause | None = None,
) -> bool:
    """Retry the batch until it succeeds; give up only when its partitions moved away. The
    pause between attempts ends early once the failing dependency answers again."""
    pause = pause or RecoveryPause(None)
    owned = {(r.topic, r.partition) for r in records}

    def revoked(attempt: RetryCallState) -> bool:
        gave_up = attempt.outcome is not None and isinstance(attempt.outcome.exception(), _GiveUp)
        return gave_up or not owned <= state.assigned

    def failed(attempt: RetryCallState) -> None:
        assert attempt.outcome is not None
        failure = attempt.outcome.exception()
        reason = describe(failure)
        unavailable = unavailable_in(failure) if failure is not None else None
        report.retry(unavailable.dependency if unavailable is not None else "other")
        pause.waiting_for = unavailable.dependency if unavailable is not None else None
        if state.failing is None:
            log.error("batch_failed_retrying", error=reason, records=len(records))
            state.failing_since = time.time()
        state.failing = reason

    retrying = AsyncRetrying(
        wait=wait_exponential(multiplier=0.05, max=backoff_max_seconds),
        stop=revoked,
        before_sleep=failed,
        sleep=pause,
    )
    try:
        async for attempt in retrying:
            with attempt:
                if state.stopping and state.failing is not None:
                    # Shutting down during an outage: leave the batch to the next owner.
                    raise _GiveUp
                await process(records)
    except RetryError:
        log.warning("batch_abandoned_after_revocation", records=len(records))
        return False
    if state.failing is not None:
        log.info("batch_recovered", pause_cut_short=pause.woke_early)
    state.failing = None
    state.failing_since = None
    return True


class _GiveUp(Exception):
    """The worker is stopping while the batch keeps failing: stop retrying it."""


def describe(exc: BaseException | None) -> str:
    """Name the failure without its message: driver messages can quote row values (PII)."""
    if exc is None:
        return "unknown"
    leaf = leaf_failures(exc)[0]
    if isinstance(leaf, DependencyUnavailable):
        return f"{leaf.dependency} unavailable ({leaf.cause})"
    code = getattr(leaf, "sqlstate", None)
    return f"{type(leaf).__name__} (sqlstate {code})" if code else type(leaf).__name__
