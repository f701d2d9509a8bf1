"""Keeps the processed-command log and the event log bounded, beside the worker.

Both grow with every command. They exist for one reason: a record redelivered from the
commands topic must be recognised (its stored answer and events published again, never
applied twice). A redelivery can only come from the topic, so an entry older than the
topic's retention can never be asked for again: the log keeps `retention_seconds`, and never
less than the topic keeps (a shorter setting is raised to it, with a warning). A topic that
keeps its records for ever (`retention.ms=-1`) means nothing is pruned.

Deletion goes in small batches with a pause in between, each its own short transaction, so
the worker's transactions never wait long behind it. The consent history is never pruned.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from service.application.errors import DependencyUnavailable

log = structlog.get_logger(__name__)


class PrunableLogs(Protocol):
    async def now(self) -> datetime: ...

    async def prune_processed(self, before: datetime, rows: int) -> int:
        """Delete up to `rows` processed-log entries older than `before`; how many went."""
        ...

    async def prune_events(self, before: datetime, rows: int) -> int: ...


class TopicRetention(Protocol):
    async def retention_seconds(self) -> float | None:
        """How long the commands topic keeps records; None for ever."""
        ...


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    retention_seconds: float
    batch_rows: int
    interval_seconds: float
    pause_seconds: float = 0.05


def effective_retention(configured_seconds: float, topic_seconds: float | None) -> float | None:
    """What is kept: at least as long as the topic keeps commands; None keeps everything."""
    if topic_seconds is None:
        return None
    return max(configured_seconds, topic_seconds)


class RetentionJob:
    def __init__(self, logs: PrunableLogs, topic: TopicRetention, policy: RetentionPolicy) -> None:
        self._logs = logs
        self._topic = topic
        self._policy = policy

    async def run_once(self) -> tuple[int, int]:
        """One pass: prune both logs down to the retention; returns (processed, events)."""
        topic_seconds = await self._topic.retention_seconds()
        kept = effective_retention(self._policy.retention_seconds, topic_seconds)
        if kept is None:
            return 0, 0
        if topic_seconds is not None and self._policy.retention_seconds < topic_seconds:
            log.warning(
                "retention_raised_to_topic",
                configured_seconds=self._policy.retention_seconds,
                topic_seconds=topic_seconds,
            )
        before = await self._logs.now() - timedelta(seconds=kept)
        processed = await self._drain(self._logs.prune_processed, before)
        events = await self._drain(self._logs.prune_events, before)
        if processed or events:
            log.info("retention_pruned", processed=processed, events=events, kept_seconds=kept)
        return processed, events

    async def _drain(self, prune: _Prune, before: datetime) -> int:
        total = 0
        while True:
            deleted = await prune(before, self._policy.batch_rows)
            total += deleted
            if deleted < self._policy.batch_rows:
                return total
            await asyncio.sleep(self._policy.pause_seconds)

    async def run_forever(self) -> None:
        """Every `interval_seconds`; a dependency outage only delays the next pass."""
        while True:
            try:
                await self.run_once()
            except DependencyUnavailable as exc:
                log.warning("retention_deferred", dependency=exc.dependency)
            await asyncio.sleep(self._policy.interval_seconds)


class _Prune(Protocol):
    async def __call__(self, before: datetime, rows: int) -> int: ...
