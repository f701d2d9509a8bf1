"""Running an import: rows to commands to Kafka, in waves, with a checkpoint after each.

A wave's records are handed to the producer together and the wave counts as done only when
Kafka acknowledged every one of them (``CommandSink.publish``) and every wave before it; only
then does the checkpoint move to the wave's last line. So whatever stops the process
(Ctrl-C, SIGTERM, a kill, a crash), every line up to the checkpoint is in Kafka, and a new
run resumes after it with no gap. The waves that were in flight are sent again: their
commands have the same ids, and the worker answers them `duplicate`.

The checkpoint is written before the first wave too, because it records the fallback time of
rows that state none: a resumed run must give those rows the same time, hence the same ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from service.application.errors import DependencyUnavailable
from service.application.importing import Rejected, RowMapper, command_value
from service.application.intake import CommandSink

DEFAULT_WAVE_ROWS = 1_000
# Waves handed to the producer before the oldest must be acknowledged: the next wave is read
# and encoded while Kafka answers. A resumption resends at most this many waves.
MAX_WAVES_IN_FLIGHT = 3
# A Kafka that does not answer gets this many more tries (pauses double from 1 s) before the
# import stops with the checkpoint where it is.
_RETRIES = 4


@dataclass
class Checkpoint:
    """How far an import got: `line` is the last line whose command Kafka acknowledged (or
    that was rejected); the counts cover every run of this import so far."""

    fingerprint: str
    fallback_time: datetime
    line: int = 1  # the header
    rows: int = 0
    sent: int = 0
    rejected: int = 0
    done: bool = False


class CheckpointStore(Protocol):
    def save(self, checkpoint: Checkpoint) -> None:
        """Durably, atomically: a reader sees the previous checkpoint or this one."""


class RejectLog(Protocol):
    def write(self, rejected: Sequence[Rejected]) -> None:
        """Record rejected lines; durable before the checkpoint that covers them moves."""


class ProgressView(Protocol):
    def update(self, checkpoint: Checkpoint) -> None: ...


@dataclass(frozen=True, slots=True)
class Summary:
    rows: int
    sent: int
    rejected: int
    resumed_after_line: int
    last_line: int
    interrupted: bool
    seconds: float
    rows_this_run: int


@dataclass
class _Wave:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rows: int = 0
    last_line: int = 0


class Throttle:
    """At most `rate` rows per second on average, from the first row of this run."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._started = clock()

    async def pace(self, rows_done: int) -> None:
        if not self._rate:
            return
        ahead = rows_done / self._rate - (self._clock() - self._started)
        if ahead > 0:
            await asyncio.sleep(ahead)


def wave_rows(rate: float | None, wanted: int = DEFAULT_WAVE_ROWS) -> int:
    """Smaller waves under a throttle, so the pace is even (about 20 waves a second)."""
    if not rate:
        return wanted
    return max(1, min(wanted, int(rate / 20)))


class ImportRun:
    def __init__(
        self,
        mapper: RowMapper,
        sink: CommandSink,
        checkpoints: CheckpointStore,
        rejects: RejectLog,
        progress: ProgressView,
        *,
        rate: float | None = None,
        wave: int = DEFAULT_WAVE_ROWS,
        stop: asyncio.Event | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_pause_seconds: float = 1.0,
    ) -> None:
        self._mapper = mapper
        self._sink = sink
        self._checkpoints = checkpoints
        self._rejects = rejects
        self._progress = progress
        self._rate = rate
        self._wave = wave_rows(rate, wave)
        self._stop = stop or asyncio.Event()
        self._clock = clock
        self._retry_pause_seconds = retry_pause_seconds

    async def run(
        self, rows: Iterable[tuple[int, Sequence[str]]], checkpoint: Checkpoint
    ) -> Summary:
        """Send every row after `checkpoint.line`; return early (interrupted) once `stop`
        is set, after the waves in flight are acknowledged and checkpointed."""
        started = time.monotonic()
        resumed_after = checkpoint.line
        throttle = Throttle(self._rate)
        self._checkpoints.save(checkpoint)
        rows_this_run = 0
        wave = _Wave()
        interrupted = False
        in_flight: deque[tuple[asyncio.Task[None], _Wave]] = deque()
        try:
            for line, row in rows:
                if line <= resumed_after:
                    continue
                wave.rows += 1
                wave.last_line = line
                mapped = self._mapper.map(line, row, self._clock())
                if isinstance(mapped, Rejected):
                    wave.rejected.append(mapped)
                else:
                    wave.records.append((mapped.subject_id.encode(), command_value(mapped)))
                if wave.rows >= self._wave:
                    rows_this_run += wave.rows
                    await self._submit(wave, in_flight, checkpoint)
                    wave = _Wave()
                    if self._stop.is_set():
                        interrupted = True
                        break
                    await throttle.pace(rows_this_run)
            if not interrupted and wave.rows:
                rows_this_run += wave.rows
                await self._submit(wave, in_flight, checkpoint)
            while in_flight:
                await self._commit_oldest(in_flight, checkpoint)
        finally:
            for task, _ in in_flight:
                task.cancel()
            for task, _ in in_flight:
                with contextlib.suppress(BaseException):
                    await task
        if not interrupted:
            checkpoint.done = True
            self._checkpoints.save(checkpoint)
        return Summary(
            rows=checkpoint.rows,
            sent=checkpoint.sent,
            rejected=checkpoint.rejected,
            resumed_after_line=resumed_after,
            last_line=checkpoint.line,
            interrupted=interrupted,
            seconds=time.monotonic() - started,
            rows_this_run=rows_this_run,
        )

    async def _submit(
        self,
        wave: _Wave,
        in_flight: deque[tuple[asyncio.Task[None], _Wave]],
        checkpoint: Checkpoint,
    ) -> None:
        """Start sending a wave; first wait for the oldest when enough are in flight."""
        while len(in_flight) >= MAX_WAVES_IN_FLIGHT:
            await self._commit_oldest(in_flight, checkpoint)
        in_flight.append((asyncio.create_task(self._publish(wave.records)), wave))

    async def _commit_oldest(
        self, in_flight: deque[tuple[asyncio.Task[None], _Wave]], checkpoint: Checkpoint
    ) -> None:
        """The oldest wave acknowledged, its rejections written, then the checkpoint moved:
        waves are committed in file order, so the checkpoint never passes an unsent line."""
        task, wave = in_flight[0]
        await task
        in_flight.popleft()
        self._rejects.write(wave.rejected)
        checkpoint.line = wave.last_line
        checkpoint.rows += wave.rows
        checkpoint.sent += len(wave.records)
        checkpoint.rejected += len(wave.rejected)
        self._checkpoints.save(checkpoint)
        self._progress.update(checkpoint)

    async def _publish(self, records: list[tuple[bytes, bytes]]) -> None:
        """Every record acknowledged, or `DependencyUnavailable` after the retries; a retry
        sends the whole wave again (its acknowledged records become duplicates)."""
        if not records:
            return
        pause = self._retry_pause_seconds
        for attempt in range(_RETRIES + 1):
            try:
                await self._sink.publish(records)
                return
            except DependencyUnavailable:
                if attempt == _RETRIES or self._stop.is_set():
                    raise
            await asyncio.sleep(pause)
            pause *= 2
