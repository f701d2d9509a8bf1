"""Readiness: ready only when every dependency answers and the consumer has its partitions.

Each probe returns ``None`` when healthy or a short reason; ``/readyz`` shows the reasons so
on-call sees which dependency is down without reading logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Probe = Callable[[], Awaitable[str | None]]


@dataclass
class Readiness:
    probes: dict[str, Probe] = field(default_factory=dict)
    timeout_s: float = 2.0

    def add(self, name: str, probe: Probe) -> None:
        self.probes[name] = probe

    async def check(self) -> dict[str, str | None]:
        async def run(probe: Probe) -> str | None:
            try:
                return await asyncio.wait_for(probe(), self.timeout_s)
            except TimeoutError:
                return "timed out"
            except Exception as exc:
                return f"{type(exc).__name__}"

        names = list(self.probes)
        results = await asyncio.gather(*(run(self.probes[n]) for n in names))
        return dict(zip(names, results, strict=True))


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
