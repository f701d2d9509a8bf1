"""Kafka side of the channels' command intake: the command sink and the outcome follower.

The sink sends through the same kind of producer as the worker's outputs (``acks=all``,
idempotent): a command the API answered 202 to is in Kafka, replicated, before the answer.

The follower reads the outcomes topic without a consumer group (every API process sees every
outcome; there is nothing to commit) from the end, and resolves the futures the intake
registered by (tenant, command_id). Its positions are fixed before ``start`` returns, so an
outcome published after a registration is always read. On any error it logs the exception
type, starts over from the end after a pause, and waiting requests simply time out and are
told "received, taking effect": an outcome is a confirmation, never the command itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.producer import KafkaOutput, OutgoingRecord
from service.contract.v1 import OutcomeV1
from service.domain.events import Outcome

log = structlog.get_logger(__name__)

_JSON = (("content-type", b"application/json"),)
_RESTART_PAUSE_SECONDS = 1.0


class KafkaCommandSink:
    def __init__(self, output: KafkaOutput, topic: str) -> None:
        self._output = output
        self._topic = topic

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        await self._output.send_all(
            [OutgoingRecord(self._topic, key, value, _JSON) for key, value in records]
        )


class OutcomeFollower:
    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        self._kafka = kafka
        self._topic = topic
        self._waiting: dict[tuple[str, str], asyncio.Future[Outcome]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.running = False

    def expect(self, tenant: str, command_id: str) -> asyncio.Future[Outcome]:
        key = (tenant, command_id)
        found = self._waiting.get(key)
        if found is None or found.done():
            found = self._waiting[key] = asyncio.get_running_loop().create_future()
        return found

    def forget(self, tenant: str, command_id: str) -> None:
        self._waiting.pop((tenant, command_id), None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        """Return once every partition's position is fixed at its end."""
        self._consumer = await self._positioned_consumer()
        self.running = True
        self._task = asyncio.create_task(self._follow(), name="outcome-follower")

    async def stop(self) -> None:
        self.running = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _positioned_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            client_id="optout-outcome-follower",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=200,
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(self._topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self._topic) or set()
            if not partitions:
                raise LookupError("outcomes topic has no partitions")
            assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def _follow(self) -> None:
        while True:
            try:
                assert self._consumer is not None
                batches = await self._consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self._resolve(record.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.running = False
                log.warning("outcome_follower_failed", error=type(exc).__name__)
                await asyncio.sleep(_RESTART_PAUSE_SECONDS)
                with contextlib.suppress(Exception):
                    if self._consumer is not None:
                        await self._consumer.stop()
                with contextlib.suppress(Exception):
                    self._consumer = await self._positioned_consumer()
                    self.running = True

    def _resolve(self, value: bytes | None) -> None:
        if not value or not self._waiting:
            return
        try:
            outcome = OutcomeV1.model_validate_json(value).to_domain()
        except ValidationError:
            return
        future = self._waiting.get((outcome.tenant, outcome.command_id))
        if future is not None and not future.done():
            future.set_result(outcome)
