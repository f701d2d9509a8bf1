"""The command pipeline, one batch at a time: decode, apply, cache, publish.

The order is the delivery guarantee: the PostgreSQL transaction commits first, then the new
states go to Redis, then events and outcomes are published and acknowledged; only when this
returns does the worker commit the batch's offsets. A failure anywhere raises, the offsets
stay where they were, and the retry (or the next owner of the partition) finds the commands
in the processed log and replays their stored answers instead of applying them again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import structlog

from service.adapters.kafka.contract_publisher import DeadLetterRecord
from service.application.records import RawRecord
from service.contract.decode import DeadLetter, decode_command
from service.domain.apply import BatchResult
from service.domain.commands import Delivery, Malformed, Received
from service.domain.events import Outcome, PreferenceChanged
from service.domain.model import SubjectState

log = structlog.get_logger(__name__)


class CommandStore(Protocol):
    async def apply(self, records: Sequence[Received | Malformed]) -> BatchResult: ...
    async def mark_published(self, events: Sequence[PreferenceChanged]) -> None: ...


class StateCache(Protocol):
    async def write(self, states: Sequence[SubjectState]) -> int: ...


class Publisher(Protocol):
    async def publish(
        self,
        events: Sequence[PreferenceChanged],
        outcomes: Sequence[Outcome],
        dead_letters: Sequence[DeadLetterRecord],
    ) -> None: ...


class ProcessCommands:
    def __init__(
        self, store: CommandStore, cache: StateCache, publisher: Publisher, max_record_bytes: int
    ) -> None:
        self._store = store
        self._cache = cache
        self._publisher = publisher
        self._max_record_bytes = max_record_bytes

    async def __call__(self, records: Sequence[RawRecord]) -> None:
        started = time.perf_counter()
        commands: list[Received | Malformed] = []
        dead: list[DeadLetterRecord] = []
        for record in records:
            decoded = decode_command(
                record.value,
                Delivery(record.topic, record.partition, record.offset),
                max_bytes=self._max_record_bytes,
            )
            if isinstance(decoded, DeadLetter):
                dead.append(DeadLetterRecord(record, decoded.error))
            else:
                commands.append(decoded)

        result = await self._store.apply(commands) if commands else BatchResult()
        stored = time.perf_counter()
        await self._cache.write(list(result.states.values()))
        cached = time.perf_counter()
        events = [*result.republish, *result.events]
        await self._publisher.publish(events, result.outcomes, dead)
        published = time.perf_counter()
        if result.events:
            try:
                await self._store.mark_published(result.events)
            except Exception as exc:
                log.warning("mark_published_failed", error=type(exc).__name__)

        statuses = Counter(o.status for o in result.outcomes)
        log.info(
            "batch",
            records=len(records),
            dead_letters=len(dead),
            replayed_events=len(result.republish),
            **{s: n for s, n in statuses.items()},
            postgres_ms=round((stored - started) * 1000, 2),
            redis_ms=round((cached - stored) * 1000, 2),
            kafka_ms=round((published - cached) * 1000, 2),
        )
