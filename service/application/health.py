"""Readiness: ready only when every dependency answers and the consumer has its partitions.

Each probe returns ``None`` when healthy or a short reason; ``/readyz`` shows the reasons,
with since when each has been failing, so on-call sees which dependency is down and for how
long without reading logs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

Probe = Callable[[], Awaitable[str | None]]


@dataclass
class Readiness:
    """The probes, run at most once per `cache_s`: `/readyz` and `/metrics` answer from the
    last run meanwhile (concurrent callers share one run), so neither can be used to hammer
    the dependencies."""

    probes: dict[str, Probe] = field(default_factory=dict)
    timeout_s: float = 2.0
    failing_since: dict[str, float] = field(default_factory=dict)
    observers: list[Callable[[dict[str, str | None]], None]] = field(default_factory=list)
    cache_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _last: tuple[float, dict[str, str | None]] | None = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def add(self, name: str, probe: Probe) -> None:
        self.probes[name] = probe
        self._last = None

    async def check(self) -> dict[str, str | None]:
        async with self._lock:
            if self._last is None or self.clock() - self._last[0] >= self.cache_s:
                self._last = (self.clock(), await self._probe())
            return dict(self._last[1])

    async def _probe(self) -> dict[str, str | None]:
        async def run(probe: Probe) -> str | None:
            try:
                return await asyncio.wait_for(probe(), self.timeout_s)
            except TimeoutError:
                return "timed out"
            except Exception as exc:
                return f"{type(exc).__name__}"

        names = list(self.probes)
        results = await asyncio.gather(*(run(self.probes[n]) for n in names))
        now = time.time()
        checks: dict[str, str | None] = {}
        for name, why in zip(names, results, strict=True):
            if why is None:
                self.failing_since.pop(name, None)
                checks[name] = None
                continue
            since = datetime.fromtimestamp(self.failing_since.setdefault(name, now), UTC)
            checks[name] = f"{why} (since {since.isoformat(timespec='seconds')})"
        for observe in self.observers:
            observe(checks)
        return checks


@dataclass
class Liveness:
    """Whether the process can still do its job; `/healthz` fails when it cannot.

    Readiness covers what recovers on its own (a dependency down, a batch retrying); liveness
    fails only for a broken part the process could not rebuild (the output producer could
    not be recreated), so the orchestrator restarts the process instead of waiting forever.
    """

    failure: str | None = None

    @property
    def alive(self) -> bool:
        return self.failure is None

    def fail(self, reason: str) -> None:
        self.failure = reason

    def recover(self) -> None:
        self.failure = None
