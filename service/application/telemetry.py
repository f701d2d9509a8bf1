"""What the use cases report about their work, for on-call's dashboards and alerts.

A port: the Prometheus adapter (``service.adapters.prometheus_metrics``) implements it, tests
and the SDK without metrics use ``NO_TELEMETRY``. Figures are aggregated per lane before they
are handed over, so reporting costs a few calls per batch, not per record.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class LaneFigures:
    """One lane's batch: stage times, answers by (status, reason), dead letters by class,
    and per applied command its end-to-end latencies."""

    decode_seconds: float = 0.0
    postgresql_seconds: float = 0.0
    redis_seconds: float = 0.0
    publish_seconds: float = 0.0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    record_to_event_seconds: list[float] = field(default_factory=list)
    occurred_to_effective_seconds: list[float] = field(default_factory=list)


class PipelineTelemetry(Protocol):
    def lane(self, figures: LaneFigures) -> None: ...
    def poison_record(self, dependency: str) -> None: ...


class ReadTelemetry(Protocol):
    def check(self, allowed: bool, source: str, seconds: float) -> None: ...
    def local_hit(self, allowed: bool) -> None: ...


class _Nothing:
    def lane(self, figures: LaneFigures) -> None:
        return None

    def poison_record(self, dependency: str) -> None:
        return None

    def check(self, allowed: bool, source: str, seconds: float) -> None:
        return None

    def local_hit(self, allowed: bool) -> None:
        return None


NO_TELEMETRY = _Nothing()
