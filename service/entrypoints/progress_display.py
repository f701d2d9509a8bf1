"""How a long walk over every subject shows its progress on stderr (``optout cache rebuild``,
``optout events republish``).

On a terminal: a rich bar with done/total, subjects per second, elapsed time and ETA,
redrawn in place and removed at the end (the command then prints its one-line summary).
Anywhere else (a Kubernetes Job's log, a pipe, CI) a redrawn bar is either nothing or a mess
of escape codes, so one plain line is written when the walk starts and then every
``every_seconds``.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("- subjects/s" if speed is None else f"{speed:,.0f} subjects/s")


def subjects(count: int) -> str:
    return f"{count:,} subject" if count == 1 else f"{count:,} subjects"


def duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s``, ``2 h 07 min``: readable at any scale."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class ProgressDisplay:
    """The ``Progress`` port of ``service.application.subject_pages``; use it as a context
    manager around the walk."""

    def __init__(
        self, label: str, *, console: Console | None = None, every_seconds: float = 5.0
    ) -> None:
        self._label = label
        self._console = console or Console(stderr=True)
        self._every_seconds = every_seconds
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        self._total = 0
        self._started_at = time.monotonic()
        self._last_line_at = 0.0

    def __enter__(self) -> ProgressDisplay:
        if self._console.is_terminal:
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def started(self, total: int) -> None:
        self._total = total
        self._started_at = time.monotonic()
        if self._bar is not None:
            self._task = self._bar.add_task(self._label, total=total)
        else:
            self._line(0)

    def advanced(self, done: int) -> None:
        self._total = max(self._total, done)
        if self._bar is not None:
            if self._task is not None:
                self._bar.update(self._task, completed=done, total=self._total)
        elif time.monotonic() - self._last_line_at >= self._every_seconds:
            self._line(done)

    def _line(self, done: int) -> None:
        self._last_line_at = time.monotonic()
        elapsed = self._last_line_at - self._started_at
        rate = done / elapsed if elapsed > 0 and done else 0.0
        eta = duration((self._total - done) / rate) if rate else "unknown"
        self._console.print(
            f"{self._label}: {done:,}/{subjects(self._total)}, {rate:,.0f}/s, ETA {eta}",
            highlight=False,
            soft_wrap=True,
        )
