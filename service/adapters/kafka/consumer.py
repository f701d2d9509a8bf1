"""The Kafka consumer wiring: batches of raw records in, offsets committed only after success.

faststream's default ``ACK_FIRST`` commits before processing (at-most-once); here the
policy is ``MANUAL`` and the handler commits the exact offsets of a batch once the batch
processor returned, that is after PostgreSQL, Redis and Kafka publication all succeeded.
The handler never raises: a failing dependency is retried with capped backoff while the
offsets stay uncommitted, because faststream would otherwise move on to the next batch and
a later commit would skip the failed one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from tenacity import AsyncRetrying, RetryCallState, RetryError, wait_exponential

from service.application.records import RawRecord

log = structlog.get_logger(__name__)

BatchProcessor = Callable[[Sequence[RawRecord]], Awaitable[None]]


@dataclass
class WorkerState:
    """What readiness and metrics need to know about the consumer."""

    assigned: set[tuple[str, int]] = field(default_factory=set)
    failing: str | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets an in-flight batch finish (and commit) before its partitions move away."""

    def __init__(self, state: WorkerState, grace_seconds: float) -> None:
        self._state = state
        self._grace_seconds = grace_seconds

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            await asyncio.wait_for(self._state.idle.wait(), self._grace_seconds)
        except TimeoutError:
            log.warning("rebalance_abandons_batch", partitions=len(revoked))
        self._state.assigned.difference_update((tp.topic, tp.partition) for tp in revoked)
        log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._state.assigned.update((tp.topic, tp.partition) for tp in assigned)
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))


def _no_decode(_: Any) -> None:
    """Records are decoded one by one by the processor; a bad one must not fail the batch."""
    return None


def next_offsets(records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
    return offsets


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
) -> Any:
    subscriber = broker.subscriber(
        topic,
        group_id=group_id,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=round(wait_seconds * 1000),
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        listener=_Rebalance(state, grace_seconds=30.0),
        decoder=_no_decode,
        max_poll_interval_ms=600_000,
        title="optout-worker",
        description="Opt-out and opt-in commands from every channel (contract v1).",
    )

    async def on_batch(message: KafkaMessage) -> None:
        records = [
            RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
            for r in message.raw_message
        ]
        if not records:
            return
        state.idle.clear()
        try:
            if not await _process_until_done(records, process, state, backoff_max_seconds):
                return
            consumer: Any = message.consumer
            await consumer.commit(next_offsets(records))
        except Exception as exc:
            log.warning("offset_commit_failed", error=type(exc).__name__, records=len(records))
        finally:
            state.idle.set()

    subscriber(on_batch)
    return subscriber


async def _process_until_done(
    records: Sequence[RawRecord],
    process: BatchProcessor,
    state: WorkerState,
    backoff_max_seconds: float,
) -> bool:
    """Retry the batch until it succeeds; give up only when its partitions moved away."""
    owned = {(r.topic, r.partition) for r in records}

    def revoked(_: RetryCallState) -> bool:
        return not owned <= state.assigned

    def failed(attempt: RetryCallState) -> None:
        assert attempt.outcome is not None
        reason = _describe(attempt.outcome.exception())
        if state.failing is None:
            log.error("batch_failed_retrying", error=reason, records=len(records))
        state.failing = reason

    retrying = AsyncRetrying(
        wait=wait_exponential(multiplier=0.05, max=backoff_max_seconds),
        stop=revoked,
        before_sleep=failed,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await process(records)
    except RetryError:
        log.warning("batch_abandoned_after_revocation", records=len(records))
        return False
    if state.failing is not None:
        log.info("batch_recovered")
    state.failing = None
    return True


def _describe(exc: BaseException | None) -> str:
    """Name the failure without its message: driver messages can quote row values (PII)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    code = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__} (sqlstate {code})" if code else type(exc).__name__
