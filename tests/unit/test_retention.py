"""The retention job on fakes: what it keeps, and that it never outruns the topic."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from service.application.retention import (
    RetentionJob,
    RetentionPolicy,
    effective_retention,
)

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


@dataclass
class FakeLogs:
    processed: list[datetime] = field(default_factory=list)
    events: list[datetime] = field(default_factory=list)
    calls: int = 0

    async def now(self) -> datetime:
        return NOW

    async def prune_processed(self, before: datetime, rows: int) -> int:
        return self._prune(self.processed, before, rows)

    async def prune_events(self, before: datetime, rows: int) -> int:
        return self._prune(self.events, before, rows)

    def _prune(self, table: list[datetime], before: datetime, rows: int) -> int:
        self.calls += 1
        old = [t for t in table if t < before][:rows]
        for stamp in old:
            table.remove(stamp)
        return len(old)


@dataclass
class FakeTopic:
    seconds: float | None

    async def retention_seconds(self) -> float | None:
        return self.seconds


@given(st.floats(0, 1e7), st.one_of(st.none(), st.floats(0, 1e7)))
def test_never_less_than_the_topic_keeps(configured: float, topic: float | None) -> None:
    kept = effective_retention(configured, topic)
    if topic is None:
        assert kept is None
    else:
        assert kept is not None
        assert kept >= topic
        assert kept >= configured


async def test_old_entries_go_in_batches_and_recent_ones_stay() -> None:
    day = timedelta(days=1)
    logs = FakeLogs(
        processed=[NOW - 20 * day] * 25 + [NOW - day] * 3,
        events=[NOW - 30 * day] * 7 + [NOW] * 2,
    )
    job = RetentionJob(logs, FakeTopic(7 * 86_400), RetentionPolicy(14 * 86_400, 10, 60, 0))
    assert await job.run_once() == (25, 7)
    assert logs.processed == [NOW - day] * 3
    assert logs.events == [NOW] * 2
    assert logs.calls == 3 + 1  # 10 + 10 + 5, then 7


async def test_a_topic_keeping_everything_means_nothing_is_pruned() -> None:
    logs = FakeLogs(processed=[NOW - timedelta(days=400)])
    job = RetentionJob(logs, FakeTopic(None), RetentionPolicy(86_400, 10, 60, 0))
    assert await job.run_once() == (0, 0)
    assert logs.processed


async def test_a_topic_keeping_longer_than_configured_wins() -> None:
    day = timedelta(days=1)
    logs = FakeLogs(processed=[NOW - 5 * day, NOW - 40 * day])
    job = RetentionJob(logs, FakeTopic(30 * 86_400), RetentionPolicy(86_400, 10, 60, 0))
    assert await job.run_once() == (1, 0)
    assert logs.processed == [NOW - 5 * day]
