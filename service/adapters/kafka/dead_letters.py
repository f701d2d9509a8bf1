"""The dead-letter topic read for a replay: every partition (or the chosen ones) from its start
or the chosen first offset, up to its end offset as it was when reading began (dead letters
written meanwhile are left for another replay). No consumer group: nothing is committed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.adapters.kafka.connection import KafkaConnection
from service.application.dlq_replay import DeadLetter, ReplaySelection

_PAGE = 1_000
_TIMEOUT_MS = 10_000


class KafkaDeadLetters:
    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        self._kafka = kafka
        self._topic = topic

    async def read(self, selection: ReplaySelection) -> AsyncIterator[Sequence[DeadLetter]]:
        numbers = await self._partitions()
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=_TIMEOUT_MS,
        )
        await consumer.start()
        try:
            chosen = sorted(
                n for n in numbers if selection.partitions is None or n in selection.partitions
            )
            tps = [TopicPartition(self._topic, n) for n in chosen]
            if not tps:
                return
            consumer.assign(tps)
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            stop = {
                tp: ends[tp]
                if selection.to_offset is None
                else min(ends[tp], selection.to_offset + 1)
                for tp in tps
            }
            for tp in tps:
                consumer.seek(tp, max(starts[tp], selection.from_offset or 0))
            pending = {tp for tp in tps if await consumer.position(tp) < stop[tp]}
            while pending:
                got = await consumer.getmany(*pending, timeout_ms=1_000, max_records=_PAGE)
                page = [
                    _letter(r)
                    for tp, records in got.items()
                    for r in records
                    if r.offset < stop[tp]
                ]
                if page:
                    yield page
                for tp in list(pending):
                    if await consumer.position(tp) >= stop[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()

    async def _partitions(self) -> list[int]:
        admin = AIOKafkaAdminClient(**self._kafka.client_kwargs(), request_timeout_ms=_TIMEOUT_MS)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([self._topic])
        finally:
            await admin.close()
        if described["error_code"] != 0:
            raise LookupError(f"topic {self._topic} not found")
        return [int(p["partition"]) for p in described["partitions"]]


def _letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    headers = dict(record.headers or ())
    error = headers.get("x-error") or b""
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        error=error.decode("utf-8", "replace"),
        truncated=headers.get("x-truncated") == b"true",
    )
