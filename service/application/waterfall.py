"""One batch's way through the worker, split into consecutive steps (README, "Reading the
latency waterfall").

The consumer starts a ``BatchClock`` when its batch handler receives a batch, with the
`fetch` step already known (the age of the batch's oldest record, from its Kafka timestamp);
each later step is marked when it ends and lasts from the end of the step before it. Marks
are monotonic (``time.perf_counter``): the wall clock is read once per batch, for `fetch`.
A step that did not happen (no event to acknowledge, no command to store) is not marked, so
it is not observed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol, get_args

Step = Literal[
    "fetch",
    "queued",
    "decode",
    "postgresql",
    "outputs_queued",
    "redis",
    "event_ack",
    "outcome_ack",
]
# In the order a batch goes through them.
STEPS: tuple[Step, ...] = get_args(Step)


class StepClock(Protocol):
    """Where a batch's stages say that a step of theirs ended."""

    def mark(self, step: Step, at: float | None = None) -> None: ...


class BatchClock:
    """The marks of one batch: a handful of `perf_counter` calls, none per record."""

    __slots__ = ("_fetch_seconds", "_marks", "_now", "_received")

    def __init__(
        self, *, fetch_seconds: float, now: Callable[[], float] = time.perf_counter
    ) -> None:
        self._now = now
        self._fetch_seconds = max(0.0, fetch_seconds)
        self._received = now()
        self._marks: list[tuple[Step, float]] = []

    def mark(self, step: Step, at: float | None = None) -> None:
        """`step` ended now (or at `at`, a reading of the same clock)."""
        self._marks.append((step, self._now() if at is None else at))

    def steps(self) -> list[tuple[Step, float]]:
        """Each step and its seconds, in the order they ended, `fetch` first."""
        steps: list[tuple[Step, float]] = [("fetch", self._fetch_seconds)]
        previous = self._received
        for step, at in self._marks:
            steps.append((step, max(0.0, at - previous)))
            previous = max(previous, at)
        return steps
