"""Kafka as the suite sees it: what it produced, the log read back, and the worker's outputs.

Written against contract v1 only, and tolerant of anything the worker may publish: the
checks judge the outputs, so reading them must never fail on a surprising key or value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.chaos.commands import Planned

MAX_REQUEST_BYTES = 8 * 1024 * 1024


async def bounded(name: str, step: Awaitable[Any], late: list[str], within_s: float = 20) -> None:
    """Await a teardown step for at most `within_s`; note its name in `late` if it hung.

    A Kafka client stopped after its broker was restarted can wait for good; the run must
    still end, and say which step did not.
    """
    try:
        await asyncio.wait_for(step, within_s)
    except TimeoutError:
        late.append(name)
    except Exception as exc:
        late.append(f"{name}: {type(exc).__name__}")


@dataclass(frozen=True)
class LogRecord:
    """A record as stored in a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


@dataclass
class Sent:
    planned: Planned
    partition: int
    offset: int
    at: float


class CommandProducer:
    """Sends planned records (compressed ones through a gzip producer) and keeps where each landed.

    A send that fails is retried; should the first attempt have been written after all, the
    log holds the record twice, which the checks handle as the producer resend it is.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        common: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "acks": "all",
            "enable_idempotence": True,
            "max_request_size": MAX_REQUEST_BYTES,
            "request_timeout_ms": 15_000,
        }
        self._plain = AIOKafkaProducer(linger_ms=2, **common)
        self._gzip = AIOKafkaProducer(compression_type="gzip", **common)
        self.sent: list[Sent] = []
        self.retries = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.resumed = asyncio.Event()
        self.resumed.set()

    async def start(self) -> None:
        await self._plain.start()
        await self._gzip.start()

    async def stop(self) -> None:
        await self.flush()
        await self._plain.stop()
        await self._gzip.stop()

    async def _deliver(self, planned: Planned) -> None:
        producer = self._gzip if planned.compressed else self._plain
        while True:
            await self.resumed.wait()
            try:
                future = await producer.send(
                    self.topic, planned.value, key=planned.key, headers=list(planned.headers)
                )
                meta = await future
            except Exception:
                self.retries += 1
                await asyncio.sleep(0.5)
                continue
            self.sent.append(Sent(planned, meta.partition, meta.offset, time.monotonic()))
            return

    async def send(self, planned: Planned) -> None:
        """Hand the record over without waiting for its acknowledgement."""
        await self.resumed.wait()
        task = asyncio.create_task(self._deliver(planned))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        if len(self._pending) > 500:
            await self.flush()

    async def flush(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending))

    @contextlib.asynccontextmanager
    async def paused(self) -> Any:
        """No sends while the broker is away: production resumes when the block exits."""
        self.resumed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), 60)
        try:
            yield
        finally:
            self.resumed.set()


async def read_log(bootstrap: str, topic: str, partitions: int) -> list[LogRecord]:
    """Every record of the topic, from the beginning to the current end, partition by partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[LogRecord] = []

        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            batch = await consumer.getmany(timeout_ms=500)
            for tp, rs in batch.items():
                records += [
                    LogRecord(tp.partition, r.offset, r.key, r.value, tuple(r.headers))
                    for r in rs
                    if r.offset < ends[tp]
                ]
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Output:
    """One record the worker published, parsed when it is JSON."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]
    doc: dict[str, Any] | None
    arrived: float


def _parse(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class OutputLog:
    """Follows the outcomes, events and DLQ topics from their beginning, for the whole run."""

    bootstrap: str
    outcomes_topic: str
    events_topic: str
    dlq_topic: str
    partitions: int
    outcomes: list[Output] = field(default_factory=list)
    events: list[Output] = field(default_factory=list)
    dead_letters: list[Output] = field(default_factory=list)
    by_command: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dlq_positions: set[tuple[int, int]] = field(default_factory=set)
    on_outcome: list[Callable[[dict[str, Any]], Awaitable[None] | None]] = field(
        default_factory=list
    )
    callback_errors: int = 0
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        tps = [
            TopicPartition(topic, p)
            for topic in (self.outcomes_topic, self.events_topic, self.dlq_topic)
            for p in range(self.partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._follow(consumer))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                for tp, records in batch.items():
                    for r in records:
                        out = Output(
                            tp.topic,
                            tp.partition,
                            r.offset,
                            r.key,
                            r.value,
                            dict(r.headers),
                            _parse(r.value) if tp.topic != self.dlq_topic else None,
                            now,
                        )
                        await self._file(out)
                if batch:
                    self._changed.set()
        finally:
            await consumer.stop()

    async def _file(self, out: Output) -> None:
        if out.topic == self.outcomes_topic:
            self.outcomes.append(out)
            if out.doc is not None and isinstance(out.doc.get("command_id"), str):
                self.by_command[out.doc["command_id"]].append(out.doc)
                for callback in self.on_outcome:
                    try:
                        result = callback(out.doc)
                        if result is not None:
                            await result
                    except Exception:
                        # A reader's mistake must not stop the outputs being recorded.
                        self.callback_errors += 1
        elif out.topic == self.events_topic:
            self.events.append(out)
        else:
            self.dead_letters.append(out)
            position = dlq_position(out)
            if position is not None:
                self.dlq_positions.add(position)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        *,
        within_s: float,
        idle_s: float | None = None,
        progress: Callable[[], int] | None = None,
    ) -> bool:
        """True once `predicate` holds; False after `within_s`, or after `idle_s` in which
        `progress` (by default: how many outputs arrived) did not change.

        A worker retrying a failing batch republishes the answers of the lanes that did
        commit, again and again: outputs arrive while nothing moves, hence `progress`.
        """
        measure = progress or (lambda: len(self.outcomes) + len(self.dead_letters))
        deadline = time.monotonic() + within_s
        last_value, last_change = measure(), time.monotonic()
        while not predicate():
            if self._task is not None and self._task.done():
                self._task.result()
            now = time.monotonic()
            value = measure()
            if value != last_value:
                last_value, last_change = value, now
            if now > deadline or (idle_s is not None and now - last_change > idle_s):
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)
        return True


def dlq_position(out: Output) -> tuple[int, int] | None:
    """The (partition, offset) a DLQ record names as its origin, if its headers say so."""
    try:
        partition = out.headers.get("x-original-partition")
        offset = out.headers.get("x-original-offset")
        if partition is None or offset is None:
            return None
        return int(partition), int(offset)
    except ValueError:
        return None


def answered(sent: Sent, outputs: OutputLog) -> bool:
    """Did the worker say anything about this record (any outcome for its id, or a DLQ copy)?"""
    if (sent.partition, sent.offset) in outputs.dlq_positions:
        return True
    command_id = sent.planned.command_id
    return command_id is not None and command_id in outputs.by_command
