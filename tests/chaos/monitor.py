"""Partition progress as an operator sees it: committed offsets, log ends, group membership.

The monitor samples the worker group's committed offsets (admin client) and the commands
topic's end offsets every ``interval_s``, and the group's state and members. From the
samples, ``longest_stall`` computes the suite's stall figure:

    A partition stalls while its committed offset stays put although records wait behind
    it (log end > committed offset). Its stall is the time from the first to the last
    sample that saw that offset unchanged with records behind it (each sample timed at the
    middle of its requests), minus any part inside a fault window the suite induced
    itself. ``max_partition_stall_s`` is the longest stall of any partition. Sampling makes
    it read up to one interval short; a partition that never moves again reads as long as
    the rest of the run.

A fault window opens when the suite starts the workers, kills one, stops or starts a
member, or stops a dependency, and closes ``grace_s`` after the group is observed stable
again with the expected members (start, kills, membership changes, broker restarts) or
``recovery_s`` after the dependency answers again (PostgreSQL, Redis). A window never lasts
more than ``cap_s``: a worker that never recovers shows up as a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


@dataclass(frozen=True)
class Sample:
    at: float
    committed: dict[int, int]
    end: dict[int, int]


@dataclass(frozen=True)
class GroupView:
    at: float
    state: str
    members: frozenset[str]


@dataclass
class Window:
    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class Stall:
    seconds: float
    partition: int
    committed: int
    started_at: float
    ended_at: float


def _outside(start: float, end: float, windows: Sequence[Window]) -> float:
    """Length of [start, end] not covered by any window."""
    covered = 0.0
    cursor = start
    for w in sorted(windows, key=lambda w: w.start):
        lo, hi = max(w.start, cursor), min(w.end, end)
        if hi > lo:
            covered += hi - lo
            cursor = hi
    return max(end - start - covered, 0.0)


def longest_stall(samples: Sequence[Sample], windows: Sequence[Window]) -> Stall | None:
    """The longest stall of any partition, fault windows excluded (see the module's text)."""
    best: Stall | None = None
    partitions = sorted({p for s in samples for p in s.end})
    for p in partitions:
        since: float | None = None
        committed: int | None = None
        for s in samples:
            if p not in s.end:
                continue
            c, e = s.committed.get(p, 0), s.end[p]
            if c != committed:
                committed = c
                since = s.at if e > c else None
                continue
            if e <= c:
                since = None
            elif since is None:
                since = s.at
            if since is not None:
                best = _longer(best, Stall(_outside(since, s.at, windows), p, c, since, s.at))
    return best


def _longer(best: Stall | None, candidate: Stall) -> Stall:
    return candidate if best is None or candidate.seconds > best.seconds else best


@dataclass
class GroupMonitor:
    bootstrap: str
    group: str
    topic: str
    partitions: int
    interval_s: float = 0.2
    samples: list[Sample] = field(default_factory=list)
    views: list[GroupView] = field(default_factory=list)
    errors: int = 0
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False, request_timeout_ms=3000
            )
            try:
                await admin.start()
                await consumer.start()
                while True:
                    await self._sample(admin, consumer, tps)
                    await asyncio.sleep(self.interval_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The broker is away (the suite restarts it): start over once it is back.
                self.errors += 1
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                with contextlib.suppress(Exception):
                    await admin.close()

    async def _sample(
        self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> None:
        asked = time.monotonic()
        async with asyncio.timeout(5):
            committed_raw, ends, described = await asyncio.gather(
                admin.list_consumer_group_offsets(self.group),
                consumer.end_offsets(tps),
                admin.describe_consumer_groups([self.group]),
            )
        # The answers describe some moment between question and answer: take the middle, so
        # a slow answer (a busy suite process) does not read as a stall of the worker.
        now = (asked + time.monotonic()) / 2
        committed = {
            tp.partition: meta.offset
            for tp, meta in committed_raw.items()
            if tp.topic == self.topic and meta.offset >= 0
        }
        self.samples.append(Sample(now, committed, {tp.partition: o for tp, o in ends.items()}))
        for response in described:
            for group in response.groups:
                if group[1] == self.group:
                    members = frozenset(m[0] for m in group[5])
                    self.views.append(GroupView(now, group[2], members))

    def members(self) -> frozenset[str]:
        return self.views[-1].members if self.views else frozenset()

    async def stable(
        self, since: float, expected: int, *, not_all_of: frozenset[str] = frozenset(), cap_s: float
    ) -> float | None:
        """When the group was first seen stable with `expected` members after `since`.

        `not_all_of`: the membership before a kill; a stable view still holding every one
        of those members has not noticed the kill yet. None if not seen within `cap_s`.
        """
        deadline = since + cap_s
        seen = 0
        while time.monotonic() < deadline:
            for view in self.views[seen:]:
                if (
                    view.at >= since
                    and view.state == "Stable"
                    and len(view.members) == expected
                    and not (not_all_of and not_all_of <= view.members)
                ):
                    return view.at
            seen = len(self.views)
            await asyncio.sleep(self.interval_s / 2)
        return None
