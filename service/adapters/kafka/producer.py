"""The output producer: ``acks=all``, idempotent, compressed, every record keyed, acks gathered.

aiokafka defaults to ``acks=1`` without idempotence; an event that a leader acknowledged and
then lost would leave a sender sending. Records are grouped by the partition their key
belongs to and handed over as one batch per partition, in order (per-subject order holds),
without waiting; the acknowledgements are awaited together: one flush per wave, not one
round trip per record. faststream's per-record publish path (correlation id,
middlewares) cost as much CPU as aiokafka itself, so the worker sends through aiokafka
directly; faststream still owns the consumer and documents the topics.

zstd compression (through cramjam) makes batches smaller on the wire and on disk, and lets a
large but compressible dead letter fit the broker's limit (``sizes.py``).

Recovery: aiokafka's producer does all its sending in one background task. If that task
dies (or is cancelled), every later send fails or never completes, and nothing in aiokafka
recreates it. So before each send the task is checked, acknowledgements are awaited
together with it, and a producer found broken (task ended, closed, or an error aiokafka
treats as fatal for an idempotent producer) is replaced by a new one on the next send. If
the replacement cannot be started, liveness fails, so the orchestrator restarts the process;
a later successful replacement makes it live again.

Failures leave translated: a record Kafka refuses (too large, corrupt) is `Refused`,
anything else from Kafka is `DependencyUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.codec import zstd_encode

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.outgoing import OutgoingRecord
from service.adapters.kafka.sizes import SizeLimits, fit_dead_letter
from service.application.errors import DependencyUnavailable, Refused
from service.application.health import Liveness

__all__ = ["KafkaOutput", "OutgoingRecord"]

log = structlog.get_logger(__name__)

DEPENDENCY = "kafka"
_BATCH_BYTES = 256 * 1024
_STOP_SECONDS = 5.0

# The broker refused the records themselves: no retry can make them acceptable.
_REFUSALS = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidTimestampError,
    kafka_errors.UnsupportedForMessageFormatError,
)
# An idempotent producer cannot go on after these: its sequence numbers or epoch are lost.
_FATAL = (
    kafka_errors.ProducerClosed,
    kafka_errors.ProducerFenced,
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.UnknownProducerId,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.InvalidProducerIdMapping,
    kafka_errors.IllegalStateError,
)


_M = 0x5BD1E995
_WORD = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2``), as aiokafka's pure-Python one computes it, a
    word at a time: it runs for every record the worker sends."""
    length = len(data)
    h = 0x9747B28C ^ length
    for k in struct.unpack_from(f"<{length >> 2}I", data):
        k = (k * _M) & _WORD
        k ^= k >> 24
        h = ((h * _M) & _WORD) ^ ((k * _M) & _WORD)
    rest = length & 3
    if rest:
        tail = data[length - rest :]
        if rest == 3:
            h ^= tail[2] << 16
        if rest >= 2:
            h ^= tail[1] << 8
        h = ((h ^ tail[0]) * _M) & _WORD
    h ^= h >> 13
    h = (h * _M) & _WORD
    return h ^ (h >> 15)


def partition_for(key: bytes | None, partitions: Sequence[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key), as aiokafka applies it; a record
    without a key goes to any partition."""
    if key is None:
        return partitions[random.randrange(len(partitions))]  # noqa: S311 (load, no secret)
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


class ProducerBroken(Exception):
    """The producer's background sender ended while acknowledgements were awaited."""


class KafkaOutput:
    def __init__(
        self,
        kafka: KafkaConnection,
        limits: SizeLimits | None = None,
        liveness: Liveness | None = None,
        client_id: str = "optout-output",
    ) -> None:
        self._kafka = kafka
        self._client_id = client_id
        self.limits = limits or SizeLimits()
        self._liveness = liveness or Liveness()
        self._producer = self._build()
        self._marked_broken: AIOKafkaProducer | None = None
        self._recreating = asyncio.Lock()
        self.recreated = 0

    def _build(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **self._kafka.client_kwargs(),
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            request_timeout_ms=10_000,
            compression_type="zstd",
            max_request_size=self.limits.record_bytes,
            # A batch never exceeds the smallest limit, whatever goes into it.
            max_batch_size=min(_BATCH_BYTES, self.limits.dead_letter_bytes // 2),
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    def fit_dead_letter(self, record: OutgoingRecord) -> OutgoingRecord:
        return fit_dead_letter(record, self.limits, zstd_encode)

    @staticmethod
    def _sender_task(producer: AIOKafkaProducer) -> asyncio.Task[None] | None:
        # aiokafka keeps its background sender private; it is the one thing to watch.
        sender: Any = getattr(producer, "_sender", None)
        task: asyncio.Task[None] | None = getattr(sender, "sender_task", None)
        return task

    def _is_broken(self, producer: AIOKafkaProducer) -> bool:
        task = self._sender_task(producer)
        return (
            producer is self._marked_broken or task is None or task.done() or bool(producer._closed)
        )

    async def _usable(self) -> AIOKafkaProducer:
        if not self._is_broken(self._producer):
            return self._producer
        async with self._recreating:  # lanes send side by side: one replacement for all
            if not self._is_broken(self._producer):
                return self._producer
            return await self._replace()

    async def _replace(self) -> AIOKafkaProducer:
        old = self._producer
        log.warning("kafka_producer_recreating")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), _STOP_SECONDS)
        fresh: AIOKafkaProducer | None = None
        try:
            fresh = self._build()
            await fresh.start()
        except Exception as exc:
            if fresh is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(fresh.stop(), _STOP_SECONDS)
            self._liveness.fail(f"kafka producer could not be recreated ({type(exc).__name__})")
            log.error("kafka_producer_recreation_failed", error=type(exc).__name__)
            raise DependencyUnavailable(DEPENDENCY, type(exc).__name__) from exc
        self._producer = fresh
        self.recreated += 1
        self._liveness.recover()
        log.info("kafka_producer_recreated", times=self.recreated)
        return fresh

    async def send_all(self, records: Sequence[OutgoingRecord]) -> None:
        """Return once the broker acknowledged every record; raise if any failed."""
        if not records:
            return
        producer = await self._usable()
        try:
            pending = [
                await producer.send_batch(batch, topic, partition=partition)
                for (topic, partition), batch in await self._batches(producer, records)
            ]
            await self._acknowledged(producer, pending)
        except Exception as exc:
            translated = self._translate(producer, exc)
            if translated is exc:
                raise
            raise translated from exc

    @staticmethod
    async def _batches(
        producer: AIOKafkaProducer, records: Sequence[OutgoingRecord]
    ) -> list[tuple[tuple[str, int], Any]]:
        """The records as batches per partition, in their order within each partition.

        A key goes where aiokafka's own partitioner (Kafka's murmur2 rule) would put it, so
        a key's records share a partition whichever way they were sent. One batch per
        partition instead of one send per record: aiokafka's per-record path (a future and
        a metadata wait for each) cost more than building the batch.
        """
        partitions: dict[str, list[int]] = {}
        for topic in {r.topic for r in records}:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        grouped: dict[tuple[str, int], list[OutgoingRecord]] = {}
        for r in records:
            partition = partition_for(r.key, partitions[r.topic])
            grouped.setdefault((r.topic, partition), []).append(r)

        def added(batch: Any, r: OutgoingRecord) -> bool:
            metadata = batch.append(
                key=r.key, value=r.value, timestamp=None, headers=list(r.headers)
            )
            return metadata is not None

        batches: list[tuple[tuple[str, int], Any]] = []
        for where, group in grouped.items():
            batch = producer.create_batch()
            for r in group:
                if added(batch, r):
                    continue
                batches.append((where, batch))
                batch = producer.create_batch()
                # An empty batch takes any first record; should it not, nothing is lost.
                if not added(batch, r):
                    raise kafka_errors.MessageSizeTooLargeError()
            batch.close()
            batches.append((where, batch))
        return batches

    async def _acknowledged(
        self, producer: AIOKafkaProducer, pending: list[asyncio.Future[Any]]
    ) -> None:
        """Every acknowledgement, unless the sender task ends first (then none will come)."""
        acks = asyncio.gather(*pending)
        sender = self._sender_task(producer)
        if sender is None:
            raise ProducerBroken
        waited: set[asyncio.Future[Any]] = {acks, sender}
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if acks not in done:
            acks.cancel()
            with contextlib.suppress(BaseException):
                await acks
            raise ProducerBroken
        acks.result()

    def _translate(self, producer: AIOKafkaProducer, exc: Exception) -> Exception:
        if isinstance(exc, _REFUSALS):
            return Refused(f"refused by Kafka ({type(exc).__name__})")
        if isinstance(exc, (ProducerBroken, *_FATAL)) or self._is_broken(producer):
            self._marked_broken = producer
            log.error("kafka_producer_broken", error=type(exc).__name__)
            return DependencyUnavailable(DEPENDENCY, type(exc).__name__)
        if isinstance(exc, kafka_errors.KafkaError | OSError | TimeoutError):
            return DependencyUnavailable(DEPENDENCY, type(exc).__name__)
        return exc
