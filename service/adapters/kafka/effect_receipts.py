"""Feeds effect receipts (application/receipts.py) from Kafka, beside the worker.

Two consumers: the preferences topic under a group of its own (``{group}-receipts``), so
each worker process times the events of the partitions it is given and several processes
never count one event twice; and every partition of the sender-receipts topic, read by every
process from its end (reports are small and few: one every 100-250 ms per sender instance).
Nothing is committed: a process given a partition times the events published from then on.

Only opt-out events are watched; an event is decoded fully only if its bytes mention
`opt_out`, so the rest cost a substring search.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from service.adapters.kafka.connection import KafkaConnection
from service.application.receipts import TrackEffects
from service.contract.receipts import SenderReportV1
from service.domain.keyed_hashes import PLAIN_IMPORT_PREFIX
from service.domain.receipts import WatchedEvent

log = structlog.get_logger(__name__)

_OPT_OUT = b'"opt_out"'
GAUGE_SECONDS = 1.0


def watched(partition: int, offset: int, value: bytes | None) -> WatchedEvent | None:
    """The event at this place if it applied an opt-out, else None.

    Imported commands are not timed: an import is bulk work nobody waits on, and its command
    ids are hashes of the imported row, identifier included; a receipt keyed by one would keep
    that hash in Redis after the person's erasure (which rewrites it everywhere else)."""
    if value is None or _OPT_OUT not in value:
        return None
    try:
        event: dict[str, Any] = orjson.loads(value)
        if not any(c.get("action") == "opt_out" for c in event.get("changes", [])):
            return None
        command_id = str(event["command_id"])
        if command_id.startswith(PLAIN_IMPORT_PREFIX):
            return None
        return WatchedEvent(
            partition,
            offset,
            str(event["tenant"]),
            command_id,
            datetime.fromisoformat(event["effective_at"]).timestamp(),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: AIOKafkaConsumer, track: TrackEffects) -> None:
        self._consumer = consumer
        self._track = track

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._track.forget([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if not assigned:
            return
        ends = await self._consumer.end_offsets(list(assigned))
        for tp in assigned:
            self._consumer.seek(tp, ends[tp])
            self._track.follow(tp.partition, ends[tp])


class EffectReceiptsFeed:
    def __init__(
        self,
        kafka: KafkaConnection,
        track: TrackEffects,
        *,
        preferences_topic: str,
        receipts_topic: str,
        group: str,
    ) -> None:
        self._kafka = kafka
        self._track = track
        self._preferences_topic = preferences_topic
        self._receipts_topic = receipts_topic
        self._group = group
        self._events: AIOKafkaConsumer | None = None
        self._reports: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        events = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="optout-receipts",
            fetch_max_wait_ms=100,
        )
        reports = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="optout-receipts",
            fetch_max_wait_ms=100,
        )
        try:
            await reports.start()
            found = await self._receipt_partitions()
            tps = [TopicPartition(self._receipts_topic, p) for p in sorted(found)]
            reports.assign(tps)
            await reports.seek_to_end(*tps)
            await events.start()
            events.subscribe([self._preferences_topic], listener=_Assignment(events, self._track))
        except BaseException:
            with contextlib.suppress(Exception):
                await reports.stop()
            with contextlib.suppress(Exception):
                await events.stop()
            raise
        self._events, self._reports = events, reports
        self._tasks = [
            asyncio.create_task(self._read_events(events), name="optout-receipts-events"),
            asyncio.create_task(self._read_reports(reports), name="optout-receipts-reports"),
            asyncio.create_task(self._gauges(events), name="optout-receipts-gauges"),
        ]

    async def _receipt_partitions(self) -> list[int]:
        admin = AIOKafkaAdminClient(**self._kafka.client_kwargs(), client_id="optout-receipts")
        await admin.start()
        try:
            (described,) = await admin.describe_topics([self._receipts_topic])
        finally:
            await admin.close()
        found = [p["partition"] for p in described["partitions"]]
        if described["error_code"] != 0 or not found:
            raise LookupError(f"topic {self._receipts_topic} not found")
        return found

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for consumer in (self._events, self._reports):
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop()
        self._events = self._reports = None

    async def _read_events(self, consumer: AIOKafkaConsumer) -> None:
        failures = 0
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    found = [
                        w
                        for r in records
                        if (w := watched(tp.partition, r.offset, r.value)) is not None
                    ]
                    await self._track.events_read(tp.partition, found, records[-1].offset + 1)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if failures == 0:
                    log.warning("receipts_events_failed", error=type(exc).__name__)
                failures += 1
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))

    async def _read_reports(self, consumer: AIOKafkaConsumer) -> None:
        failures = 0
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        try:
                            report = SenderReportV1.model_validate_json(r.value or b"")
                        except ValidationError:
                            continue
                        await self._track.reported(report.to_domain())
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if failures == 0:
                    log.warning("receipts_reports_failed", error=type(exc).__name__)
                failures += 1
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))

    async def _gauges(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await asyncio.sleep(GAUGE_SECONDS)
            ends = {}
            for tp in consumer.assignment():
                end = consumer.highwater(tp)
                if end is not None:
                    ends[tp.partition] = end
            self._track.refresh_gauges(ends)
