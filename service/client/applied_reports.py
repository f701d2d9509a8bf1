"""Reports what this SDK instance has applied, so the service can time each opt-out's effect.

The follower notes each partition's position after applying a fetch (a dict write); a task
of its own sends one ``SenderReportV1`` (service/contract/receipts.py) every ``interval``
while positions move and every ``idle_interval`` otherwise, a heartbeat that lets the service
tell "nothing to apply" from "stopped applying". Sending never holds up applying: the report
is handed to the producer without waiting for the broker, a send that cannot be queued
within ``interval`` is dropped, and failures are logged once per ``LOG_EVERY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time

import structlog
from aiokafka import AIOKafkaProducer

from service.adapters.kafka.connection import KafkaConnection
from service.contract.receipts import AppliedPositionV1, SenderReportV1
from service.domain.receipts import checked_sender_name

log = structlog.get_logger(__name__)

LOG_EVERY = 100


def default_instance() -> str:
    """This process: its host name and process id, in the characters a name may have."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48] or "host"
    return f"{host}-{os.getpid()}"


class AppliedReporter:
    def __init__(
        self,
        kafka: KafkaConnection,
        topic: str,
        *,
        sender: str,
        instance: str | None = None,
        interval: float = 0.2,
        idle_interval: float = 5.0,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self.sender = checked_sender_name(sender)
        self.instance = checked_sender_name(instance or default_instance())
        self._key = self.sender.encode()
        self._interval = interval
        self._idle_interval = idle_interval
        self._positions: dict[int, int] = {}
        self._moved = False
        self._last_sent = 0.0
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failures = 0

    def note(self, partition: int, position: int) -> None:
        """Everything below ``position`` of ``partition`` is applied (called by the follower)."""
        if self._positions.get(partition) != position:
            self._positions[partition] = position
            self._moved = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="optout-sdk-applied-reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_producer()

    async def _close_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            if not self._positions:
                continue
            if not self._moved and now - self._last_sent < self._idle_interval:
                continue
            self._moved = False
            self._last_sent = now
            try:
                await self._send(self._report())
                self.sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.failures % LOG_EVERY == 0:
                    log.warning(
                        "sdk_applied_report_failed",
                        topic=self._topic,
                        error=type(exc).__name__,
                        failures=self.failures + 1,
                    )
                self.failures += 1
                self._moved = True
                await self._close_producer()

    def _report(self) -> bytes:
        return (
            SenderReportV1(
                sender=self.sender,
                instance=self.instance,
                applied_at_ms=int(time.time() * 1000),
                positions=[
                    AppliedPositionV1(partition=p, applied_offset=o)
                    for p, o in sorted(self._positions.items())
                ],
            )
            .model_dump_json()
            .encode()
        )

    async def _send(self, value: bytes) -> None:
        async with asyncio.timeout(5.0):
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **self._kafka.client_kwargs(),
                    client_id="optout-sdk-reports",
                    acks=1,
                    linger_ms=0,
                    max_batch_size=64 * 1024,
                )
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
            # Queued, not awaited: the broker's acknowledgement is not waited for.
            await self._producer.send(self._topic, value, key=self._key)
