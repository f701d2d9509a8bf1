"""A client written only against contract v1: produce commands, read the three outputs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.bootstrap import contract_topics
from service.settings import Settings


def command(
    subject_id: str,
    changes: list[tuple[str, str, str]],
    *,
    occurred_at: datetime | None = None,
    command_id: str | None = None,
    channel: str = "web",
    tenant: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A command document; `changes` are (action, topic, channel) triples."""
    moment = occurred_at or datetime.now(UTC)
    doc: dict[str, Any] = {
        "command_id": command_id or str(uuid.uuid4()),
        "subject_id": subject_id,
        "occurred_at": moment.isoformat().replace("+00:00", "Z"),
        "source": {"channel": channel, "app": "tests", "ip": "203.0.113.7"},
        "changes": [{"action": a, "topic": t, "channel": c} for a, t, c in changes],
    }
    if tenant is not None:
        doc["tenant"] = tenant
    doc.update(extra)
    return doc


def at(seconds: float) -> datetime:
    """A fixed point in the past, `seconds` after a base, for ordering tests."""
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


@dataclass
class ContractClient:
    settings: Settings
    outcomes: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead_letters: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = field(
        default_factory=list
    )
    tombstones: list[str] = field(default_factory=list)
    _producer: AIOKafkaProducer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def __aenter__(self) -> ContractClient:
        # Idempotent and identical to what the worker does, so either may start first.
        await ensure_topics(
            KafkaConnection.from_settings(self.settings), contract_topics(self.settings)
        )
        self._producer = AIOKafkaProducer(
            **KafkaConnection.from_settings(self.settings).client_kwargs(), acks="all", linger_ms=0
        )
        await self._producer.start()
        s = self.settings
        for topic, sink in (
            (s.topic_outcomes, self._on_outcome),
            (s.topic_preferences, self._on_event),
            (s.topic_dlq, self._on_dead),
        ):
            self._tasks.append(asyncio.create_task(self._follow(topic, sink)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._producer is not None:
            await self._producer.stop()

    async def _follow(self, topic: str, sink: Any) -> None:
        consumer = AIOKafkaConsumer(
            **KafkaConnection.from_settings(self.settings).client_kwargs(),
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            # The worker created the topics with the configured partition count.
            tps = [TopicPartition(topic, p) for p in range(self.settings.topic_partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                records = [r for rs in batch.values() for r in rs]
                if records:
                    for r in records:
                        sink(r)
                    async with self._changed:
                        self._changed.notify_all()
        finally:
            await consumer.stop()

    def _on_outcome(self, r: Any) -> None:
        doc = json.loads(r.value)
        assert r.key == doc["command_id"].encode()
        self.outcomes[doc["command_id"]].append(doc)

    def _on_event(self, r: Any) -> None:
        if r.value is None:  # a tombstone: the id was merged, linked or erased
            self.tombstones.append(r.key.decode())
            return
        doc = json.loads(r.value)
        assert r.key == f"{doc['tenant']}:{doc['subject_id']}".encode()
        self.events[doc["subject_id"]].append(doc)

    def _on_dead(self, r: Any) -> None:
        self.dead_letters.append((r.key, r.value, {k: v for k, v in r.headers}))

    async def send(
        self,
        doc: dict[str, Any] | bytes | None,
        key: str | bytes | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        *,
        topic: str | None = None,
    ) -> Any:
        """Produce one record to the commands topic (or `topic`, such as the bulk lane's);
        returns its metadata (partition, offset)."""
        assert self._producer is not None
        if isinstance(doc, dict):
            value: bytes | None = json.dumps(doc).encode()
            key = key if key is not None else doc.get("subject_id")
        else:
            value = doc
        raw_key = key.encode() if isinstance(key, str) else key
        return await self._producer.send_and_wait(
            topic or self.settings.topic_commands, value, key=raw_key, headers=headers
        )

    async def wait_for(self, predicate: Any, within_s: float = 30.0) -> None:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self._check_tasks() or predicate())

        await asyncio.wait_for(until(), within_s)

    def _check_tasks(self) -> bool:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError("output reader failed") from task.exception()
        return False

    async def outcome(self, command_id: str, within_s: float = 30.0) -> dict[str, Any]:
        await self.wait_for(lambda: command_id in self.outcomes, within_s)
        return self.outcomes[command_id][-1]

    async def apply(self, doc: dict[str, Any], within_s: float = 30.0) -> dict[str, Any]:
        """Send a command and return the outcome of this very send."""
        command_id = doc["command_id"]
        seen = len(self.outcomes.get(command_id, []))
        await self.send(doc)
        await self.wait_for(lambda: len(self.outcomes.get(command_id, [])) > seen, within_s)
        return self.outcomes[command_id][seen]

    async def event(self, subject_id: str, version: int, within_s: float = 30.0) -> dict[str, Any]:
        """The subject's event at `version`, once it arrived.

        Events and outcomes travel on different topics, read by different consumers: an
        outcome can be seen a moment before its event.
        """

        def arrived() -> bool:
            return any(e["version"] == version for e in self.events.get(subject_id, []))

        await self.wait_for(arrived, within_s)
        return next(e for e in self.events[subject_id] if e["version"] == version)

    def last_event(self, subject_id: str) -> dict[str, Any]:
        return max(self.events[subject_id], key=lambda e: e["version"])
