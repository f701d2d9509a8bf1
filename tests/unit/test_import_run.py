"""The import's waves and checkpoint: nothing skipped across any interruption, little resent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.application.errors import DependencyUnavailable
from service.application.import_run import (
    MAX_WAVES_IN_FLIGHT,
    Checkpoint,
    ImportRun,
    wave_rows,
)
from service.application.importing import ImportOptions, Rejected, RowMapper
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.keyed_hashes import ImportIds

IDS = ImportIds.from_root(b"import-id-key-for-tests-0123456789")
FALLBACK = datetime(2026, 11, 1, tzinfo=UTC)


class Killed(BaseException):
    """The process dies here: nothing after it runs, not even `finally` in the run."""


class Sink:
    """Kafka as the import sees it: records acknowledged, or a failure."""

    def __init__(self, *, fail_times: int = 0, kill_at_publish: int | None = None) -> None:
        self.acknowledged: list[str] = []
        self.publishes = 0
        self._fail_times = fail_times
        self._kill_at = kill_at_publish

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.publishes += 1
        if self._kill_at is not None and self.publishes == self._kill_at:
            # Half of the wave reached Kafka before the kill; the rest never will.
            for _, value in records[: len(records) // 2]:
                self.acknowledged.append(orjson.loads(value)["subject_id"])
            raise Killed
        if self._fail_times:
            self._fail_times -= 1
            raise DependencyUnavailable("kafka", "KafkaConnectionError")
        self.acknowledged.extend(orjson.loads(v)["subject_id"] for _, v in records)


class Store:
    def __init__(self) -> None:
        self.saved: list[Checkpoint] = []

    def save(self, checkpoint: Checkpoint) -> None:
        self.saved.append(dataclasses.replace(checkpoint))

    @property
    def last(self) -> Checkpoint:
        return self.saved[-1]


class Rejects:
    def __init__(self) -> None:
        self.lines: list[int] = []

    def write(self, rejected: Sequence[Rejected]) -> None:
        self.lines.extend(r.line for r in rejected)


class Quiet:
    def update(self, checkpoint: Checkpoint) -> None:
        return None


def mapper() -> RowMapper:
    return RowMapper(
        "csv",
        ["email"],
        ImportOptions(),
        DEFAULT_CATALOG,
        fallback_time=FALLBACK,
        max_future=timedelta(minutes=5),
        ids=IDS,
    )


def rows(count: int, *, bad_every: int = 0) -> list[tuple[int, list[str]]]:
    """Line 1 is the header; every `bad_every`-th row is not an address."""
    return [
        (line, ["nope" if bad_every and line % bad_every == 0 else f"u{line}@example.com"])
        for line in range(2, count + 2)
    ]


def valid_subjects(all_rows: list[tuple[int, list[str]]]) -> set[str]:
    return {f"email:{cells[0]}" for _, cells in all_rows if "@" in cells[0]}


def run(
    sink: Sink, store: Store, rejects: Rejects, *, wave: int = 10, stop: asyncio.Event | None = None
) -> ImportRun:
    return ImportRun(
        mapper(), sink, store, rejects, Quiet(), wave=wave, stop=stop, retry_pause_seconds=0
    )


async def test_every_row_is_sent_once_and_the_checkpoint_follows_the_acknowledgements() -> None:
    sink, store, rejects = Sink(), Store(), Rejects()
    all_rows = rows(95, bad_every=7)
    summary = await run(sink, store, rejects).run(all_rows, Checkpoint("f", FALLBACK))
    assert sorted(sink.acknowledged) == sorted(valid_subjects(all_rows))
    assert rejects.lines == [line for line, cells in all_rows if "@" not in cells[0]]
    assert (summary.rows, summary.sent + summary.rejected) == (95, 95)
    assert not summary.interrupted
    assert store.last.done
    assert store.last.line == 96
    # Saved before the first wave (the fallback time is in it), then after every wave.
    assert [c.line for c in store.saved] == [1, *range(11, 96, 10), 96, 96]


async def test_a_resumed_run_starts_after_the_checkpoint() -> None:
    sink, store = Sink(), Store()
    checkpoint = Checkpoint("f", FALLBACK, line=41, rows=40, sent=40)
    summary = await run(sink, store, Rejects()).run(rows(60), checkpoint)
    assert sink.acknowledged == [f"email:u{line}@example.com" for line in range(42, 62)]
    assert (summary.rows, summary.sent, summary.resumed_after_line) == (60, 60, 41)
    assert summary.rows_this_run == 20


async def test_stop_finishes_the_wave_in_flight_and_checkpoints_it() -> None:
    stop = asyncio.Event()
    sink, store = Sink(), Store()

    class StopAfterTwoWaves(Quiet):
        def update(self, checkpoint: Checkpoint) -> None:
            if checkpoint.rows >= 20:
                stop.set()

    importer = ImportRun(mapper(), sink, store, Rejects(), StopAfterTwoWaves(), wave=10, stop=stop)
    summary = await importer.run(rows(100), Checkpoint("f", FALLBACK))
    assert summary.interrupted
    # The waves in flight when it stopped were acknowledged and checkpointed; no more sent.
    assert 20 <= store.last.rows <= 20 + MAX_WAVES_IN_FLIGHT * 10 < 100
    assert sorted(sink.acknowledged) == sorted(
        f"email:u{line}@example.com" for line in range(2, store.last.line + 1)
    )
    assert not store.last.done


async def test_kafka_down_beyond_the_retries_stops_with_the_checkpoint_acknowledged() -> None:
    sink, store = Sink(fail_times=100), Store()
    with pytest.raises(DependencyUnavailable):
        await run(sink, store, Rejects()).run(rows(30), Checkpoint("f", FALLBACK))
    assert store.last.line == 1
    # The first try and four retries, for each wave in flight.
    assert 5 <= sink.publishes <= 5 * MAX_WAVES_IN_FLIGHT


async def test_a_short_kafka_outage_is_ridden_out_by_sending_the_wave_again() -> None:
    sink, store = Sink(fail_times=2), Store()
    summary = await run(sink, store, Rejects()).run(rows(30), Checkpoint("f", FALLBACK))
    assert summary.sent == 30
    assert len(set(sink.acknowledged)) == 30


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=120),
    wave=st.integers(min_value=1, max_value=25),
    kill_at=st.integers(min_value=1, max_value=20),
    bad_every=st.sampled_from([0, 3, 11]),
)
def test_a_kill_at_any_wave_then_a_resumption_leaves_no_gap_and_resends_little(
    count: int, wave: int, kill_at: int, bad_every: int
) -> None:
    all_rows = rows(count, bad_every=bad_every)
    sink, store, rejects = Sink(kill_at_publish=kill_at), Store(), Rejects()

    async def first_run() -> None:
        await run(sink, store, rejects, wave=wave).run(all_rows, Checkpoint("f", FALLBACK))

    with contextlib.suppress(Killed):
        asyncio.run(first_run())
    # The new process reads what the old one last saved.
    saved = dataclasses.replace(store.last)
    resumed = Sink()
    asyncio.run(run(resumed, Store(), rejects, wave=wave).run(all_rows, saved))
    delivered = sink.acknowledged + resumed.acknowledged
    assert set(delivered) == valid_subjects(all_rows)
    resent = len(delivered) - len(set(delivered))
    assert resent <= wave * MAX_WAVES_IN_FLIGHT
    # Every rejected line is listed (a line may be listed twice, never missing).
    assert set(rejects.lines) == {line for line, cells in all_rows if "@" not in cells[0]}


async def test_the_rate_is_held() -> None:
    assert wave_rows(None) == 1_000
    assert wave_rows(2_000) == 100
    assert wave_rows(5) == 1
    sink = Sink()
    importer = ImportRun(mapper(), sink, Store(), Rejects(), Quiet(), rate=400)
    started = time.monotonic()
    await importer.run(rows(200), Checkpoint("f", FALLBACK))
    # 200 rows at 400 a second: half a second, whatever Kafka's speed.
    assert time.monotonic() - started >= 0.45
    assert len(sink.acknowledged) == 200
