"""Effect receipts: timing each opt-out's effect at every sender, and answering for it.

``TrackEffects`` runs beside the worker: it is fed the opt-out events of the preferences
partitions this process owns and every sender's applied reports, matches them
(``domain.receipts.EffectTracker``), stores what a receipt needs and feeds the metrics.
``CommandReceipts`` answers a receipt per command and lists the senders (`optout lag
--senders`); it reads only the store.

The origin of an effect time is the event's ``effective_at``: the worker's clock when it
decided the command, carried in the event itself (stored with it, so a republished event
keeps its first time). The wait before that, from the command's Kafka timestamp to the
worker, is the waterfall's `fetch` and `queued` steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.domain.receipts import (
    AppliedReport,
    Effect,
    EffectTracker,
    Reporter,
    SenderAnswer,
    SenderState,
    WatchedEvent,
    quantile,
    receipt_answers,
)

MAX_REPORTERS = 1_000


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    partition: int
    offset: int
    effective_at: float
    effects_ms: dict[Reporter, float]


class ReceiptStore(Protocol):
    async def save_events(self, events: Sequence[WatchedEvent]) -> None: ...

    async def save_effects(self, effects: Sequence[Effect]) -> None: ...

    async def save_report(self, report: AppliedReport) -> None: ...

    async def load_receipt(self, tenant: str, command_id: str) -> StoredReceipt | None: ...

    async def load_senders(self) -> list[SenderState]: ...

    async def recent_effects(self, sender: str) -> list[float]: ...


class ReceiptTelemetry(Protocol):
    def sender_effect(self, sender: str, seconds: float) -> None: ...

    def sender_position(self, sender: str, behind_records: int, report_age: float) -> None: ...


class TrackEffects:
    """The worker's side: feed it events read and reports received."""

    def __init__(
        self,
        store: ReceiptStore,
        telemetry: ReceiptTelemetry,
        *,
        tracker: EffectTracker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._telemetry = telemetry
        self.tracker = tracker or EffectTracker()
        self._clock = clock
        self._last_report: dict[str, float] = {}

    def follow(self, partition: int, position: int) -> None:
        self.tracker.follow(partition, position)

    def forget(self, partitions: Sequence[int]) -> None:
        self.tracker.forget(partitions)

    async def events_read(
        self, partition: int, events: Sequence[WatchedEvent], position: int
    ) -> None:
        effects = self.tracker.read(partition, events, position)
        if events:
            await self._store.save_events(events)
        await self._effects(effects)

    async def reported(self, report: AppliedReport) -> None:
        sender = report.reporter.sender
        if sender not in self._last_report and len(self._last_report) >= MAX_REPORTERS:
            return  # bounded: a flood of made-up names cannot grow this process
        self._last_report[sender] = max(self._last_report.get(sender, 0.0), report.applied_at)
        effects = self.tracker.report(report)
        await self._store.save_report(report)
        await self._effects(effects)

    async def _effects(self, effects: Sequence[Effect]) -> None:
        if not effects:
            return
        for effect in effects:
            self._telemetry.sender_effect(effect.reporter.sender, effect.seconds)
        await self._store.save_effects(effects)

    def refresh_gauges(self, ends: Mapping[int, int]) -> None:
        """Per sender: records not yet applied on the partitions followed here (the slowest
        instance's, summed over partitions) and the age of its latest report."""
        now = self._clock()
        behind: dict[str, int] = dict.fromkeys(self._last_report, 0)
        per_partition: dict[tuple[str, int], int] = {}
        for reporter, positions in self.tracker.positions().items():
            for partition, (applied, _at) in positions.items():
                end = ends.get(partition)
                if end is None:
                    continue
                key = (reporter.sender, partition)
                per_partition[key] = max(per_partition.get(key, 0), max(0, end - applied))
        for (sender, _partition), records in per_partition.items():
            behind[sender] = behind.get(sender, 0) + records
        for sender, records in behind.items():
            age = max(0.0, now - self._last_report.get(sender, now))
            self._telemetry.sender_position(sender, records, age)


@dataclass(frozen=True, slots=True)
class Receipt:
    command_id: str
    tenant: str
    partition: int
    offset: int
    effective_at: float
    senders: list[SenderAnswer]


@dataclass(frozen=True, slots=True)
class SenderSummary:
    sender: str
    instances: int
    positions: dict[int, int]  # the slowest live instance's, per partition
    behind_records: int | None  # None without the topic's ends
    last_report_age_seconds: float
    effect_p50_seconds: float | None
    effect_p99_seconds: float | None
    recent_effects: int


class CommandReceipts:
    """The reading side: a receipt per command, and the senders' standing."""

    def __init__(
        self,
        store: ReceiptStore,
        *,
        live_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._live_seconds = live_seconds
        self._clock = clock

    async def live_senders(self) -> list[SenderState]:
        now = self._clock()
        return [
            s for s in await self._store.load_senders() if now - s.reported_at <= self._live_seconds
        ]

    async def receipt(self, tenant: str, command_id: str) -> Receipt | None:
        stored = await self._store.load_receipt(tenant, command_id)
        if stored is None:
            return None
        answers = receipt_answers(
            partition=stored.partition,
            offset=stored.offset,
            effects_ms=stored.effects_ms,
            senders=await self.live_senders(),
        )
        return Receipt(
            command_id, tenant, stored.partition, stored.offset, stored.effective_at, answers
        )

    async def senders(self, ends: Mapping[int, int] | None = None) -> list[SenderSummary]:
        """Every sender heard from (live or not), slowest instance first in its figures."""
        now = self._clock()
        grouped: dict[str, list[SenderState]] = {}
        for state in await self._store.load_senders():
            grouped.setdefault(state.reporter.sender, []).append(state)
        summaries = []
        for sender in sorted(grouped):
            states = grouped[sender]
            live = [s for s in states if now - s.reported_at <= self._live_seconds] or states
            positions: dict[int, int] = {}
            for state in live:
                for partition, applied in state.positions.items():
                    positions[partition] = min(positions.get(partition, applied), applied)
            behind = None
            if ends is not None:
                behind = sum(max(0, end - positions.get(p, 0)) for p, end in ends.items())
            recent = await self._store.recent_effects(sender)
            summaries.append(
                SenderSummary(
                    sender,
                    len(live),
                    positions,
                    behind,
                    max(0.0, now - max(s.reported_at for s in states)),
                    quantile(recent, 0.5),
                    quantile(recent, 0.99),
                    len(recent),
                )
            )
        return summaries
