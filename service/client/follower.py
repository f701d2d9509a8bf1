"""Keeps the SDK's local cache fresh by reading the preference-changed events as they come.

No consumer group: every SDK process wants every event, and a group would make the broker
split the partitions between the senders. The follower assigns all partitions itself and
starts at their current ends: what happened before is in Redis, read on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from service.client.local_cache import LocalCache
from service.contract.v1 import PreferenceChangedV1
from service.domain.model import SubjectState

log = structlog.get_logger(__name__)


def event_state(raw: bytes) -> SubjectState:
    """The subject's state after the event: each event carries the full rule set."""
    return PreferenceChangedV1.model_validate_json(raw).to_domain().snapshot()


class PreferencesFollower:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        cache: LocalCache,
        *,
        stall_seconds: float = 2.0,
        poll_seconds: float = 0.1,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._cache = cache
        self._stall_seconds = stall_seconds
        self._poll_seconds = poll_seconds
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.partitions: list[TopicPartition] = []
        self._started_seconds = 0.0

    async def start(self, wait_for_topic_seconds: float = 10.0) -> None:
        """Assign every partition, pin the positions to the ends, then enable the cache.

        Positions are resolved before the cache serves anything, so no event published
        after a state was read from Redis can slip past the follower.
        """
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=200,
            client_id="optout-sdk",
        )
        await consumer.start()
        self._consumer = consumer
        try:
            try:
                partitions = await asyncio.wait_for(self._partitions(), wait_for_topic_seconds)
            except TimeoutError:
                raise RuntimeError(
                    f"topic {self._topic!r} not found within {wait_for_topic_seconds:g} s"
                ) from None
            consumer.assign(partitions)
            for tp, offset in (await consumer.end_offsets(partitions)).items():
                consumer.seek(tp, offset)
        except BaseException:
            await consumer.stop()
            self._consumer = None
            raise
        self.partitions = partitions
        self._started_seconds = time.time()
        self._cache.enabled = True
        self._task = asyncio.create_task(self._follow(consumer), name="optout-sdk-follower")

    async def _partitions(self) -> list[TopicPartition]:
        """Every partition of the topic, waiting for the worker to create it if need be."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            while True:
                (described,) = await admin.describe_topics([self._topic])
                found = sorted(p["partition"] for p in described["partitions"])
                if described["error_code"] == 0 and found:
                    return [TopicPartition(self._topic, p) for p in found]
                await asyncio.sleep(0.2)
        finally:
            await admin.close()

    async def stop(self) -> None:
        self._cache.enabled = False
        self._cache.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=round(self._poll_seconds * 1000))
            except Exception as exc:
                self._switch_off(f"fetch failed: {type(exc).__name__}")
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    self._apply(record.value)
            self._watch_stall(consumer)

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            # A tombstone names a subject only by its record key, without the tenant:
            # dropping everything is the answer that cannot leave a stale allow behind.
            self._cache.clear()
            return
        try:
            state = event_state(value)
        except ValidationError:
            log.warning("sdk_event_undecodable", topic=self._topic)
            self._cache.clear()
            return
        self._cache.put(state)

    def _watch_stall(self, consumer: AIOKafkaConsumer) -> None:
        # Before its first fetch answer a partition counts from the follower's start; aiokafka
        # stamps fetch answers in milliseconds.
        polled = [
            (consumer.last_poll_timestamp(tp) or 0) / 1000 or self._started_seconds
            for tp in self.partitions
        ]
        silent_seconds = time.time() - min(polled)
        if silent_seconds > self._stall_seconds:
            self._switch_off(f"no fetch answer for {silent_seconds:.3f} s")
        elif not self._cache.enabled:
            self._cache.enabled = True
            log.info("sdk_local_cache_on", topic=self._topic)

    def _switch_off(self, why: str) -> None:
        if self._cache.enabled:
            log.warning("sdk_local_cache_off", topic=self._topic, reason=why)
        self._cache.enabled = False
        self._cache.clear()
