"""Keeps the SDK's local cache fresh by reading the preference-changed events as they come.

No consumer group: every SDK process wants every event, and a group would make the broker
split the partitions between the senders. The follower assigns all partitions itself and
starts at their current ends: what happened before is in Redis, read on first use.
Partitions added to the topic later are found by reading the partition list every half
bound, and are read from their first offset: events may have landed on them before the
follower saw them, and an event skipped is a stale answer kept.

After every fetch the follower tells the cache until when it may answer (``catch_up`` states
the rule). It switches the cache off, emptying it, when a partition has had no answer from
Kafka for ``stall_seconds``, and when anything in its loop fails. A failure is logged once
per episode, by exception type only; the consumer is closed and a new one, pinned at the
topic's ends like the first, is started after a pause that doubles up to
``retry_max_seconds``. The emptied cache answers again only once that consumer has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from service.adapters.kafka.connection import KafkaConnection
from service.client.applied_reports import AppliedReporter
from service.client.catch_up import CatchUp
from service.client.follower_metrics import FollowerTelemetry
from service.client.local_cache import LocalCache
from service.contract.v1 import PreferenceChangedV1
from service.domain.model import SubjectKey, SubjectState

log = structlog.get_logger(__name__)

RETRY_FIRST_SECONDS = 0.1
# An idle partition is re-confirmed every fetch wait (at most a fifth of the bound), seen at
# most one poll (a tenth) later, and a confirmation counts from the answer before it: half
# the bound at worst. Past this share of it, the follower asks for the ends itself.
PROBE_AFTER_SHARE_OF_BOUND = 0.6


def event_state(raw: bytes) -> SubjectState:
    """The subject's state after the event: each event carries the full rule set."""
    return PreferenceChangedV1.model_validate_json(raw).to_domain().snapshot()


def tombstoned(key: bytes | None) -> SubjectKey | None:
    """The subject a record key names: `{tenant}:{subject_id}`, split at the first `:` (a
    tenant cannot contain one); ``None`` when the key is missing or is not such a key."""
    if not key:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    tenant, colon, subject_id = text.partition(":")
    if not colon or not tenant or not subject_id:
        return None
    return SubjectKey(tenant, subject_id)


@dataclass
class _Session:
    """One consumer, pinned at the topic's ends when it started, and its bookkeeping."""

    consumer: AIOKafkaConsumer
    admin: AIOKafkaAdminClient
    catch_up: CatchUp
    partitions: list[TopicPartition]
    opened_at: float
    next_listing: float
    next_probe: float
    # Per partition: aiokafka's stamp of the latest fetch answer seen, and the time on the
    # cache's clock as of which that answer's end is known to hold (see ``_observe``).
    polled_ms: dict[TopicPartition, int] = field(default_factory=dict)
    asked_since: dict[TopicPartition, float] = field(default_factory=dict)

    async def close(self) -> None:
        # Closing after a failure: whatever the clients raise now changes nothing.
        with contextlib.suppress(Exception):
            await self.consumer.stop()
        with contextlib.suppress(Exception):
            await self.admin.close()


class PreferencesFollower:
    def __init__(
        self,
        kafka: KafkaConnection,
        topic: str,
        cache: LocalCache,
        *,
        bound_seconds: float = 0.5,
        stall_seconds: float = 2.0,
        retry_max_seconds: float = 5.0,
        reporter: AppliedReporter | None = None,
        telemetry: FollowerTelemetry | None = None,
    ) -> None:
        self._kafka = kafka
        self._telemetry = telemetry
        self._topic = topic
        self._cache = cache
        self._bound_seconds = bound_seconds
        self._stall_seconds = stall_seconds
        self._retry_max_seconds = retry_max_seconds
        # Told each partition's position once its events are applied (effect receipts).
        self._reporter = reporter
        # An idle partition's fetch is answered after fetch_max_wait and the loop looks at
        # the answers every poll: both well inside the bound, or an idle topic would send
        # every check to Redis.
        self._fetch_max_wait_ms = max(10, min(100, round(bound_seconds * 200)))
        self._poll_seconds = min(0.05, bound_seconds / 10)
        self._wait_for_topic_seconds = 10.0
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # in the current episode; 0 while healthy

    @property
    def consumer(self) -> AIOKafkaConsumer | None:
        """The current consumer (replaced after a failure); for diagnostics and tests."""
        return None if self._session is None else self._session.consumer

    @property
    def partitions(self) -> list[TopicPartition]:
        return [] if self._session is None else list(self._session.partitions)

    async def start(self, wait_for_topic_seconds: float = 10.0) -> None:
        """Assign every partition, pin the positions to the ends, then enable the cache.

        Positions are resolved before the cache serves anything, so no event published
        after a state was read from Redis can slip past the follower.
        """
        self._wait_for_topic_seconds = wait_for_topic_seconds
        session = await self._open()
        self._session = session
        self._publish(session)
        self._task = asyncio.create_task(self._run(), name="optout-sdk-follower")

    async def stop(self) -> None:
        self._cache.switch_off()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _open(self) -> _Session:
        clock = self._cache.clock
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            # For a position out of range (a topic recreated, records deleted): replaying
            # only re-applies versions the cache already has, skipping would lose some.
            auto_offset_reset="earliest",
            client_id="optout-sdk",
        )
        admin = AIOKafkaAdminClient(**self._kafka.client_kwargs(), client_id="optout-sdk")
        try:
            await consumer.start()
            await admin.start()
            try:
                listed_at, found = await asyncio.wait_for(
                    self._wait_for_partitions(admin), self._wait_for_topic_seconds
                )
            except TimeoutError:
                raise RuntimeError(
                    f"topic {self._topic!r} not found within {self._wait_for_topic_seconds:g} s"
                ) from None
            partitions = [TopicPartition(self._topic, p) for p in found]
            assigned_at = clock()
            consumer.assign(partitions)
            pinned_at = clock()
            ends = await consumer.end_offsets(partitions)
            catch_up = CatchUp(self._bound_seconds)
            catch_up.listed(listed_at)
            for tp in partitions:
                consumer.seek(tp, ends[tp])
                catch_up.follow(tp.partition, pinned_at)
                catch_up.end_seen(tp.partition, ends[tp], pinned_at)
                catch_up.consumed_to(tp.partition, ends[tp])
        except BaseException:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
            raise
        now = clock()
        return _Session(
            consumer,
            admin,
            catch_up,
            partitions,
            opened_at=now,
            next_listing=now + self._bound_seconds / 2,
            next_probe=now,
            asked_since=dict.fromkeys(partitions, assigned_at),
        )

    async def _list(self, admin: AIOKafkaAdminClient) -> list[int] | None:
        """The topic's partitions, or ``None`` while the topic is not there."""
        (described,) = await admin.describe_topics([self._topic])
        found = sorted(p["partition"] for p in described["partitions"])
        return found if described["error_code"] == 0 and found else None

    async def _wait_for_partitions(self, admin: AIOKafkaAdminClient) -> tuple[float, list[int]]:
        """When the list was asked for, and every partition of the topic, waiting for the
        worker to create the topic if need be."""
        while True:
            asked_at = self._cache.clock()
            found = await self._list(admin)
            if found is not None:
                return asked_at, found
            await asyncio.sleep(0.2)

    async def _run(self) -> None:
        while True:
            try:
                if self._session is None:
                    self._session = await self._open()
                await self._follow(self._session)
            except Exception as exc:
                if self.failures == 0:
                    log.error("sdk_follower_failed", topic=self._topic, error=type(exc).__name__)
                self.failures += 1
                self._switch_off("follower_failed")
                if self._session is not None:
                    await self._session.close()
                    self._session = None
                delay = RETRY_FIRST_SECONDS * 2 ** min(self.failures - 1, 16)
                await asyncio.sleep(min(delay, self._retry_max_seconds))

    async def _follow(self, session: _Session) -> None:
        poll_ms = round(self._poll_seconds * 1000)
        while True:
            batch = await session.consumer.getmany(timeout_ms=poll_ms)
            if self._telemetry is None:
                for records in batch.values():
                    for record in records:
                        self._apply(record.key, record.value)
            elif batch:
                self._apply_timed(batch.values(), self._telemetry)
            await self._observe(session)
            if self._cache.clock() >= session.next_listing:
                await self._list_partitions(session)
            await self._probe_lagging(session)
            self._publish(session)

    def _apply_timed(
        self, batch: Iterable[Sequence[ConsumerRecord[bytes, bytes]]], telemetry: FollowerTelemetry
    ) -> None:
        """``_apply`` each record, timing its steps: the fetch from the record's Kafka
        timestamp to now (one wall-clock reading per fetch), and the apply."""
        received_ms = time.time() * 1000
        fetch: list[float] = []
        apply: list[float] = []
        clock = time.perf_counter
        for records in batch:
            for record in records:
                fetch.append((received_ms - record.timestamp) / 1000)
                started = clock()
                self._apply(record.key, record.value)
                apply.append(clock() - started)
        telemetry.events(fetch, apply)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            # A tombstone (a subject merged away, an identifier linked or erased) names its
            # subject by the record key alone, `{tenant}:{subject_id}`; without a readable
            # one, dropping everything is the answer that cannot leave a stale allow behind.
            subject = tombstoned(key)
            if subject is None:
                self._cache.clear()
            else:
                self._cache.evict(subject)
            return
        try:
            state = event_state(value)
        except ValidationError:
            log.warning("sdk_event_undecodable", topic=self._topic)
            self._cache.clear()
            return
        self._cache.apply(state)

    async def _observe(self, session: _Session) -> None:
        """Feed the ends that fetch answers reported, and the positions reached, to the
        bookkeeping.

        An answer's end holds as of the moment the broker read it, which is after its request
        was sent; aiokafka stamps only the moment the answer was *processed*, later still,
        and much later if the event loop was busy. aiokafka sends the next fetch of a
        partition only after processing the previous answer, so the previous answer's stamp
        comes before the request of the current one: that is the time used. It costs one
        fetch interval of the bound and keeps the rule sound when the loop is held up.
        """
        consumer = session.consumer
        catch_up = session.catch_up
        now, wall_now = self._cache.clock(), time.time()
        # A position is there at once unless an offset reset is under way; that partition
        # then just does not count as caught up yet.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_seconds):
                for tp in session.partitions:
                    polled_ms = consumer.last_poll_timestamp(tp)
                    if polled_ms is not None and polled_ms != session.polled_ms.get(tp):
                        session.polled_ms[tp] = polled_ms
                        holds_since = session.asked_since[tp]
                        # aiokafka stamps by the wall clock; the bookkeeping runs on the
                        # cache's monotonic one.
                        answered_at = min(now, now - (wall_now - polled_ms / 1000))
                        session.asked_since[tp] = answered_at
                        catch_up.end_seen(tp.partition, consumer.highwater(tp), holds_since)
                        catch_up.heard(tp.partition, answered_at)
                    position = await consumer.position(tp)
                    catch_up.consumed_to(tp.partition, position)
                    if self._reporter is not None:
                        self._reporter.note(tp.partition, position)

    async def _list_partitions(self, session: _Session) -> None:
        """Re-read the partition list; follow added partitions from their first offset."""
        asked_at = self._cache.clock()
        session.next_listing = asked_at + self._bound_seconds / 2
        async with asyncio.timeout(self._stall_seconds):
            found = await self._list(session.admin)
            if found is None:
                return  # the list stays unconfirmed, so the cache goes back to Redis
            known = {tp.partition for tp in session.partitions}
            added = [TopicPartition(self._topic, p) for p in found if p not in known]
            if added:
                consumer = session.consumer
                positions = {tp: await consumer.position(tp) for tp in session.partitions}
                # assign() replaces the assignment and forgets the positions: put them back.
                assigned_at = self._cache.clock()
                consumer.assign([*session.partitions, *added])
                for tp, offset in positions.items():
                    consumer.seek(tp, offset)
                for tp in added:
                    consumer.seek(tp, 0)
                    session.catch_up.follow(tp.partition, asked_at)
                session.partitions = [*session.partitions, *added]
                session.polled_ms.clear()
                session.asked_since = dict.fromkeys(session.partitions, assigned_at)
                log.info(
                    "sdk_follower_partitions_added",
                    topic=self._topic,
                    added=len(added),
                    partitions=len(session.partitions),
                )
        session.catch_up.listed(asked_at)

    async def _probe_lagging(self, session: _Session) -> None:
        """Ask for the ends of partitions not known caught up for most of the bound.

        Fetch answers keep an idle partition within about two fetch waits, far inside the
        bound; when they do not (fetching paused or held back, a slow broker, or an event
        loop busy elsewhere for a while), one ``end_offsets`` round trip tells whether
        anything new was written, instead of waiting for the next fetch answer with the
        cache bypassed meanwhile.
        """
        now = self._cache.clock()
        if now < session.next_probe:
            return
        late = now - PROBE_AFTER_SHARE_OF_BOUND * self._bound_seconds
        lagging = [
            tp
            for tp in session.partitions
            if session.catch_up.partition_caught_up_at(tp.partition) < late
        ]
        if not lagging:
            return
        session.next_probe = now + self._bound_seconds / 4
        async with asyncio.timeout(self._stall_seconds):
            ends = await session.consumer.end_offsets(lagging)
        for tp, end in ends.items():
            session.catch_up.end_seen(tp.partition, end, now)

    def _publish(self, session: _Session) -> None:
        now = self._cache.clock()
        catch_up = session.catch_up
        if now - catch_up.last_heard() > self._stall_seconds:
            self._switch_off("stalled")
            return
        if self._cache.vouch(catch_up.usable_until()):
            log.info("sdk_local_cache_on", topic=self._topic)
        if self.failures and now - session.opened_at > self._retry_max_seconds:
            log.info("sdk_follower_recovered", topic=self._topic, failures=self.failures)
            self.failures = 0

    def _switch_off(self, reason: str) -> None:
        if self._cache.switched_on:
            log.warning("sdk_local_cache_off", topic=self._topic, reason=reason)
        self._cache.switch_off()
