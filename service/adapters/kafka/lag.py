"""Consumer lag of the worker's group, read from Kafka alone: no worker needs to run.

The figures are Kafka's own: the committed offsets of the group (what the worker has
finished) against the partitions' end offsets, as ``kafka-consumer-groups --describe``
shows them. Lag in seconds is the age of the oldest record not yet committed, read from
the record itself, which is what a person waiting on an unsubscribe experiences.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.adapters.kafka.connection import KafkaConnection


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed on this partition
    end: int
    lag_records: int
    lag_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_TIMEOUT_MS = 5_000


async def group_lag(
    kafka: KafkaConnection, group: str, topic: str, *, timeout_seconds: float = 10.0
) -> list[PartitionLag]:
    """Per partition of `topic`: committed offset, end offset, lag in records and seconds.

    A partition the group never committed on counts from its first retained record, as the
    worker (which starts at the earliest offset) would.
    """
    return await asyncio.wait_for(_group_lag(kafka, group, topic), timeout_seconds)


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[int]:
    (described,) = await admin.describe_topics([topic])
    if described["error_code"] != 0:
        raise LookupError(f"topic {topic} not found")
    return sorted(p["partition"] for p in described["partitions"])


async def _group_lag(kafka: KafkaConnection, group: str, topic: str) -> list[PartitionLag]:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=_TIMEOUT_MS)
    await admin.start()
    try:
        partitions = await _partitions(admin, topic)
        committed_all = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=_TIMEOUT_MS,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps) if tps else {}
        starts = await consumer.beginning_offsets(tps) if tps else {}
        committed = {
            tp: (meta.offset if meta is not None and meta.offset >= 0 else None)
            for tp, meta in ((tp, committed_all.get(tp)) for tp in tps)
        }
        positions = {tp: max(committed[tp] or 0, starts[tp]) for tp in tps}
        behind = [tp for tp in tps if ends[tp] > positions[tp]]
        oldest = await _oldest_timestamps(consumer, behind, positions)
    finally:
        await consumer.stop()
    now = time.time()
    return [
        PartitionLag(
            topic=tp.topic,
            partition=tp.partition,
            committed=committed[tp],
            end=ends[tp],
            lag_records=ends[tp] - (committed[tp] if committed[tp] is not None else starts[tp]),
            lag_seconds=round(max(0.0, now - oldest[tp]), 3) if tp in oldest else 0.0,
        )
        for tp in tps
    ]


async def _oldest_timestamps(
    consumer: AIOKafkaConsumer, behind: list[TopicPartition], positions: dict[TopicPartition, int]
) -> dict[TopicPartition, float]:
    """The timestamp (seconds) of the first unconsumed record of each partition behind."""
    if not behind:
        return {}
    consumer.assign(behind)
    for tp in behind:
        consumer.seek(tp, positions[tp])
    found: dict[TopicPartition, float] = {}
    deadline = time.monotonic() + _TIMEOUT_MS / 1000
    while len(found) < len(behind) and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=200, max_records=len(behind) * 10)
        for tp, records in batch.items():
            if records and tp not in found:
                found[tp] = records[0].timestamp / 1000
                consumer.pause(tp)
    return found


async def topic_ends(
    kafka: KafkaConnection, topic: str, *, timeout_seconds: float = 10.0
) -> dict[int, int]:
    """The end offset of every partition of `topic`."""
    return await asyncio.wait_for(_topic_ends(kafka, topic), timeout_seconds)


async def _topic_ends(kafka: KafkaConnection, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=_TIMEOUT_MS)
    await admin.start()
    try:
        partitions = await _partitions(admin, topic)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(), group_id=None, request_timeout_ms=_TIMEOUT_MS
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        await consumer.stop()
    return {tp.partition: end for tp, end in ends.items()}
