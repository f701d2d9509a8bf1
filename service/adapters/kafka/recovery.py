"""The pause between two attempts of a failing batch, cut short once the dependency is back.

A batch that fails because a dependency is down is retried with exponential backoff, capped
at ``OPTOUT_RETRY_BACKOFF_MAX_SECONDS`` (5 s by default) so a long outage is not hammered.
Without more, a batch that began such a pause a moment before the dependency came back sat
out the rest of it: its partition resumed up to the cap after the dependency answered.

Here the pause asks the failing dependency's readiness probe every ``probe_every_s`` and
ends as soon as the probe sees it answer (the failed attempt itself counts as having seen it
down). A pause that ended early and whose next attempt failed again ends early only after
the probe has seen the dependency down and then up: a dependency that answers its probe
while the batch still fails (the probe is not the operation) keeps the full backoff, so
nothing retries in a busy loop.
The batch's guarantees are untouched: the next attempt is the same attempt as before, only
earlier; offsets stay held until it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# Whether a dependency (a readiness check's name: postgresql, redis, kafka) answers now.
DependencyAnswers = Callable[[str], Awaitable[bool]]


@dataclass
class RecoveryPause:
    """``await pause(seconds)`` sleeps, or less once ``waiting_for`` answers again."""

    answers: DependencyAnswers | None
    probe_every_s: float = 0.25
    waiting_for: str | None = None
    woke_early: int = 0
    clock: Callable[[], float] = field(default=time.monotonic)
    _failure_counts_as_down: bool = field(default=True, init=False)

    async def __call__(self, seconds: float) -> None:
        dependency = self.waiting_for
        if self.answers is None or dependency is None or seconds <= self.probe_every_s:
            await asyncio.sleep(seconds)
            return
        deadline = self.clock() + seconds
        seen_down = self._failure_counts_as_down
        while (left := deadline - self.clock()) > 0:
            await asyncio.sleep(min(self.probe_every_s, left))
            if self.clock() >= deadline:
                break
            up = await self._answers(dependency)
            if not up:
                seen_down = True
            elif seen_down:
                self.woke_early += 1
                self._failure_counts_as_down = False
                return
        self._failure_counts_as_down = True

    async def _answers(self, dependency: str) -> bool:
        assert self.answers is not None
        with contextlib.suppress(Exception):
            return await asyncio.wait_for(self.answers(dependency), self.probe_every_s * 4)
        return False
