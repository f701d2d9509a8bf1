"""Effect receipts: when each sender had an opt-out in effect (README, "Effect receipts").

Each SDK instance (a *reporter*: its sender's name and an instance id) reports, per partition
of the preferences topic, the next offset it has applied and when (its wall clock). An event
at offset ``o`` is in effect at a reporter from its first report with an applied offset above
``o``; the effect time is that report's ``applied_at`` minus the event's ``effective_at``.

Reports and events travel on different topics, so a report may name positions the tracker
has not read yet: such a report waits (bounded per reporter and partition) until the events
below its position are read. Everything here is pure and bounded: a window of recent opt-out
events per partition, a few pending reports per reporter and partition.
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

EffectStatus = Literal["in_effect", "in_effect_unmeasured", "not_yet"]
SENDER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_PENDING_REPORTS = 64


class InvalidSenderName(ValueError):
    pass


def checked_sender_name(name: str) -> str:
    """A sender's name as it appears in metrics, receipts and Kafka: 1-64 of [A-Za-z0-9._-]."""
    if not SENDER_NAME.fullmatch(name):
        raise InvalidSenderName(
            "a sender name is 1 to 64 characters of letters, digits, '.', '_' and '-'"
        )
    return name


@dataclass(frozen=True, slots=True)
class Reporter:
    sender: str
    instance: str


@dataclass(frozen=True, slots=True)
class AppliedReport:
    """What one SDK instance has applied: next offset per partition, as of ``applied_at``."""

    reporter: Reporter
    applied_at: float  # seconds since the epoch, the sender's clock
    positions: dict[int, int]


@dataclass(frozen=True, slots=True)
class WatchedEvent:
    """An opt-out event whose effect at each sender is measured."""

    partition: int
    offset: int
    tenant: str
    command_id: str
    effective_at: float  # seconds since the epoch, the worker's clock


@dataclass(frozen=True, slots=True)
class Effect:
    reporter: Reporter
    event: WatchedEvent
    seconds: float  # clamped at 0: the two clocks may disagree by a little


@dataclass
class _Track:
    """One reporter on one partition."""

    credited_to: int  # events below this offset are settled (credited or not measurable)
    reported: int
    reported_at: float
    pending: deque[tuple[int, float]] = field(default_factory=deque)


class EffectTracker:
    """Matches applied reports to opt-out events; feed it, collect the effects it returns."""

    def __init__(self, *, window: int = 10_000, max_pending: int = MAX_PENDING_REPORTS) -> None:
        self._window_size = window
        self._max_pending = max_pending
        self._events: dict[int, deque[WatchedEvent]] = {}
        self._read_to: dict[int, int] = {}
        self._tracks: dict[tuple[Reporter, int], _Track] = {}

    @property
    def partitions(self) -> list[int]:
        return sorted(self._read_to)

    def follow(self, partition: int, position: int) -> None:
        """The events of ``partition`` are read from ``position`` on."""
        self._read_to[partition] = position
        self._events.setdefault(partition, deque(maxlen=self._window_size))

    def forget(self, partitions: Iterable[int]) -> None:
        """Stop following these partitions (another process measures them now)."""
        gone = set(partitions)
        for p in gone:
            self._read_to.pop(p, None)
            self._events.pop(p, None)
        for key in [k for k in self._tracks if k[1] in gone]:
            del self._tracks[key]

    def read(self, partition: int, events: Sequence[WatchedEvent], position: int) -> list[Effect]:
        """Events of ``partition`` read, up to (not including) ``position``."""
        if partition not in self._read_to:
            return []
        window = self._events[partition]
        window.extend(e for e in events if not window or e.offset > window[-1].offset)
        self._read_to[partition] = max(self._read_to[partition], position)
        effects: list[Effect] = []
        for (reporter, p), track in self._tracks.items():
            if p == partition:
                effects.extend(self._credit(reporter, partition, track))
        return effects

    def report(self, report: AppliedReport) -> list[Effect]:
        effects: list[Effect] = []
        for partition, applied in report.positions.items():
            if partition not in self._read_to:
                continue
            key = (report.reporter, partition)
            track = self._tracks.get(key)
            if track is None:
                # A reporter's first word: what it applied before is not timed (it started
                # at the topic's end and read older states from Redis).
                self._tracks[key] = _Track(applied, applied, report.applied_at)
                continue
            if applied <= track.reported:
                track.reported_at = max(track.reported_at, report.applied_at)
                continue
            track.reported, track.reported_at = applied, report.applied_at
            track.pending.append((applied, report.applied_at))
            if len(track.pending) > self._max_pending:
                # Merge the two oldest into the later one: an effect is then timed later
                # than it was, never earlier.
                first = track.pending.popleft()
                second = track.pending.popleft()
                track.pending.appendleft((max(first[0], second[0]), second[1]))
            effects.extend(self._credit(report.reporter, partition, track))
        return effects

    def _credit(self, reporter: Reporter, partition: int, track: _Track) -> list[Effect]:
        read_to = self._read_to[partition]
        window = self._events[partition]
        offsets = [e.offset for e in window] if track.pending else []
        effects: list[Effect] = []
        while track.pending and track.credited_to < read_to:
            applied, at = track.pending[0]
            upto = min(applied, read_to)
            lo = bisect.bisect_left(offsets, track.credited_to)
            hi = bisect.bisect_left(offsets, upto)
            for i in range(lo, hi):
                event = window[i]
                effects.append(Effect(reporter, event, max(0.0, at - event.effective_at)))
            track.credited_to = max(track.credited_to, upto)
            if applied > read_to:
                break
            track.pending.popleft()
        return effects

    def positions(self) -> dict[Reporter, dict[int, tuple[int, float]]]:
        """Per reporter and followed partition: the applied offset last reported, and when."""
        found: dict[Reporter, dict[int, tuple[int, float]]] = {}
        for (reporter, partition), track in self._tracks.items():
            found.setdefault(reporter, {})[partition] = (track.reported, track.reported_at)
        return found


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[min(len(ordered), int(rank)) - 1]


@dataclass(frozen=True, slots=True)
class SenderState:
    """A reporter's last report as stored: position per partition and when it came."""

    reporter: Reporter
    reported_at: float
    positions: dict[int, int]


@dataclass(frozen=True, slots=True)
class SenderAnswer:
    """One sender's line of a receipt."""

    sender: str
    status: EffectStatus
    effect_ms: float | None
    behind_records: int
    instances: int


def receipt_answers(
    *,
    partition: int,
    offset: int,
    effects_ms: dict[Reporter, float],
    senders: Sequence[SenderState],
) -> list[SenderAnswer]:
    """Per sender: in effect (after the slowest of its live instances), or not yet.

    ``senders`` are the live reporters (reported recently). An instance whose position is
    past the event without a timed effect had it in effect, time unmeasured (it started
    after the event, or the tracker did not see it apply); one not past it: not yet.
    """
    by_sender: dict[str, list[SenderState]] = {}
    for state in senders:
        by_sender.setdefault(state.reporter.sender, []).append(state)
    for reporter in effects_ms:
        by_sender.setdefault(reporter.sender, [])
    answers = []
    for sender in sorted(by_sender):
        states = by_sender[sender]
        behind, waiting, unmeasured = 0, False, False
        measured: list[float] = []
        for state in states:
            applied = state.positions.get(partition)
            ms = effects_ms.get(state.reporter)
            if ms is not None:
                measured.append(ms)
            elif applied is not None and applied > offset:
                unmeasured = True
            else:
                waiting = True
                if applied is not None:
                    behind = max(behind, offset + 1 - applied)
        if not states:
            # Only instances no longer reporting had timed it: in effect there, as measured.
            measured = [ms for r, ms in effects_ms.items() if r.sender == sender]
        status: EffectStatus
        effect_ms: float | None
        if waiting:
            status, effect_ms = "not_yet", None
        elif unmeasured or not measured:
            status, effect_ms = "in_effect_unmeasured", None
        else:
            status, effect_ms = "in_effect", max(measured)
        answers.append(SenderAnswer(sender, status, effect_ms, behind, len(states)))
    return answers
