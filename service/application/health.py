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
