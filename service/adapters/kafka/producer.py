"""The output producer: ``acks=all``, idempotent, every record keyed, acks gathered.

aiokafka defaults to ``acks=1`` without idempotence; an event that a leader acknowledged and
then lost would leave a sender sending. Records are handed to aiokafka one by one (each keeps
its own key, so per-subject order holds; ``send_batch`` would put a whole batch on one
partition) without waiting, and the acknowledgements are awaited together: one flush per
batch, not one round trip per record. faststream's per-record publish path (correlation id,
middlewares) cost as much CPU as aiokafka itself, so the worker sends through aiokafka
directly; faststream still owns the consumer and documents the topics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class KafkaOutput:
    def __init__(self, bootstrap: str, client_id: str = "optout-output") -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            request_timeout_ms=10_000,
            max_batch_size=256 * 1024,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_all(self, records: Sequence[OutgoingRecord]) -> None:
        """Return once the broker acknowledged every record; raise if any failed."""
        pending: list[asyncio.Future[Any]] = []
        for r in records:
            pending.append(
                await self._producer.send(r.topic, r.value, key=r.key, headers=list(r.headers))
            )
        if pending:
            await asyncio.gather(*pending)
