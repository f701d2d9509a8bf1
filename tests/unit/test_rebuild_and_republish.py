"""``optout cache rebuild`` and ``optout events republish`` as use cases, on fakes of their ports.

The fakes keep what the real stores keep (PostgreSQL's rows, Redis's version
compare-and-set, a topic's append-only log) and let a test act between any two calls of the
use case, as a worker running beside it would. The property at the end plays a model of the
worker (commit, then publish, in commit order, with arbitrary delays) against a republish and
checks the one thing that matters: every key's last record is the subject's current state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.application.rebuild import RebuildCache, RebuildTally
from service.application.republish import (
    MAX_ROUNDS,
    RepublishSnapshots,
    SnapshotRecord,
    StillChanging,
    snapshot_payload,
)
from service.application.subject_pages import Mark, Scope, StoredSubject
from service.contract.v1 import PreferenceChangedV1
from service.domain.events import event_id_for
from service.domain.model import Rule, SubjectKey, SubjectState

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
R = TypeVar("R")


def run(coroutine: Coroutine[Any, Any, R]) -> R:
    """Drive a coroutine that never waits on anything real (the fakes answer at once)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: R = done.value
        return result
    coroutine.close()
    raise AssertionError("the use case waited on something the fakes never provide")


def payload(key: SubjectKey, version: int) -> bytes:
    return orjson.dumps({"subject": key.subject_id, "version": version})


def rule(topic: str, action: str = "opt_out", command_id: str = "c1") -> Rule:
    return Rule(topic, "email", action, T0, "web", command_id)  # type: ignore[arg-type]


def stored(
    subject_id: str,
    version: int,
    *,
    tenant: str = "default",
    rules: Sequence[Rule] = (),
    merged_into: str | None = None,
    erased: bool = False,
    event: bool = True,
) -> StoredSubject:
    key = SubjectKey(tenant, subject_id)
    state = SubjectState(
        key, version, {(r.topic, r.channel): r for r in rules}, merged_into, erased
    )
    live = merged_into is None and not subject_id.startswith("erased:")
    return StoredSubject(state, T0, payload(key, version) if event and live else None)


@dataclass
class FakeStore:
    """PostgreSQL's ``subjects`` with rules and stored events; ``between`` runs before and
    after every call, with the call's name: where a test (or the worker model) acts."""

    rows: dict[SubjectKey, StoredSubject] = field(default_factory=dict)
    between: Callable[[str], None] = lambda call: None
    calls: list[str] = field(default_factory=list)

    def add(self, *subjects: StoredSubject) -> None:
        for s in subjects:
            self.rows[s.key] = s

    def _in(self, scope: Scope, s: StoredSubject) -> bool:
        return (scope.tenant is None or s.key.tenant == scope.tenant) and (
            s.state.version > 0 or scope.include_unknown
        )

    async def count(self, scope: Scope) -> int:
        self.between("count")
        return sum(self._in(scope, s) for s in self.rows.values())

    async def page(self, scope: Scope, after: SubjectKey | None, limit: int) -> list[StoredSubject]:
        self.between("page")
        self.calls.append("page")
        found = sorted((s for s in self.rows.values() if self._in(scope, s)), key=lambda s: s.key)
        found = [s for s in found if after is None or s.key > after][:limit]
        self.between("page done")
        return found

    async def load(self, keys: Sequence[SubjectKey]) -> list[StoredSubject]:
        self.between("load")
        return [self.rows[k] for k in keys if k in self.rows]

    async def marks(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, Mark]:
        self.between("marks")
        self.calls.append("marks")
        return {k: self.rows[k].mark for k in keys if k in self.rows}


@dataclass
class FakeCache:
    """Redis under the worker's compare-and-set."""

    states: dict[SubjectKey, SubjectState] = field(default_factory=dict)

    async def write(self, states: Sequence[SubjectState]) -> int:
        written = 0
        for state in states:
            cached = self.states.get(state.key)
            if cached is None or cached.version < state.version:
                self.states[state.key] = state
                written += 1
        return written

    async def forget(self, keys: Sequence[SubjectKey]) -> int:
        return sum(self.states.pop(k, None) is not None for k in keys)


@dataclass
class FakeTopic:
    """A topic's log; ``send`` returns once the records are appended (acknowledged)."""

    log: list[SnapshotRecord] = field(default_factory=list)
    between: Callable[[str], None] = lambda call: None

    async def send(self, records: Sequence[SnapshotRecord]) -> None:
        self.between("send")
        self.log.extend(records)
        self.between("acknowledged")

    def last(self) -> dict[SubjectKey, bytes | None]:
        return {SubjectKey(r.tenant, r.subject_id): r.payload for r in self.log}


@dataclass
class Recorded:
    total: int | None = None
    done: list[int] = field(default_factory=list)

    def started(self, total: int) -> None:
        self.total = total

    def advanced(self, done: int) -> None:
        self.done.append(done)


# --- rebuild -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 3, 1000])
def test_rebuild_writes_every_known_subject_as_stored(batch: int) -> None:
    store, cache, progress = FakeStore(), FakeCache(), Recorded()
    store.add(
        stored("a", 3, rules=[rule("marketing")]),
        stored("b", 1, rules=[rule("product", "opt_in")]),
        stored("c", 0),
        stored("email:x@example.com", 2, merged_into="a"),
        stored("erased:00ff", 4, rules=[rule("*")], erased=True),
        stored("a", 5, tenant="acme", rules=[rule("reminders")]),
    )
    tally = run(RebuildCache(store, cache, progress).run(Scope(), batch))
    expected = {k: s.state for k, s in store.rows.items() if s.state.version > 0}
    assert cache.states == expected
    forward = cache.states[SubjectKey("default", "email:x@example.com")]
    assert forward.merged_into == "a"
    assert cache.states[SubjectKey("default", "erased:00ff")].erased
    assert (tally.total, tally.done, tally.written, tally.newer_cached) == (5, 5, 5, 0)
    assert progress.total == 5
    assert progress.done == sorted(progress.done)
    assert progress.done[-1] == 5
    assert len(progress.done) == -(-5 // batch)


def test_rebuild_scope_tenant_and_unknown_subjects() -> None:
    store, cache = FakeStore(), FakeCache()
    store.add(stored("a", 1), stored("b", 0), stored("a", 2, tenant="acme"))
    run(RebuildCache(store, cache).run(Scope("default", include_unknown=True), 10))
    assert set(cache.states) == {SubjectKey("default", "a"), SubjectKey("default", "b")}


def test_rebuild_never_replaces_a_newer_cached_state() -> None:
    store, cache = FakeStore(), FakeCache()
    old = stored("a", 3, rules=[rule("marketing", "opt_in")])
    store.add(old)
    newer = SubjectState(old.key, 4, {("marketing", "email"): rule("marketing")})
    cache.states[old.key] = newer
    tally = run(RebuildCache(store, cache).run(Scope(), 10))
    assert cache.states[old.key] is newer
    assert (tally.written, tally.newer_cached) == (0, 1)


def test_rebuild_removes_the_key_of_a_row_deleted_while_its_page_was_written() -> None:
    store, cache = FakeStore(), FakeCache()
    gone = stored("email:x@example.com", 2, rules=[rule("marketing")])
    store.add(gone, stored("b", 1))

    def erase(call: str) -> None:
        if call == "page done" and gone.key in store.rows:
            del store.rows[gone.key]  # the worker erases it after the page was read

    store.between = erase
    tally = run(RebuildCache(store, cache).run(Scope(), 10))
    assert gone.key not in cache.states
    assert SubjectKey("default", "b") in cache.states
    assert tally.removed == 1


def test_rebuild_stops_after_the_page_in_progress() -> None:
    store, cache = FakeStore(), FakeCache()
    store.add(*(stored(f"s{i}", 1) for i in range(10)))
    stop = asyncio.Event()

    def interrupt(call: str) -> None:
        if call == "marks":
            stop.set()

    store.between = interrupt
    tally = RebuildTally()
    run(RebuildCache(store, cache).run(Scope(), 3, tally, stop))
    assert (tally.done, tally.total, len(cache.states)) == (3, 10, 3)


def test_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch"):
        run(RebuildCache(FakeStore(), FakeCache()).run(Scope(), 0))
    with pytest.raises(ValueError, match="batch"):
        run(RepublishSnapshots(FakeStore(), FakeTopic()).run(Scope(), 0))


# --- republish -----------------------------------------------------------------------------


def test_republish_sends_stored_events_snapshots_and_tombstones() -> None:
    store, topic = FakeStore(), FakeTopic()
    live = stored("a", 3, rules=[rule("marketing")])
    bare = stored("b", 2, rules=[rule("product", "opt_in", "c9"), rule("marketing")], event=False)
    forward = stored("email:x@example.com", 2, merged_into="a")
    erased = stored("erased:c0ffee", 5, rules=[rule("*")], erased=True)
    suppressed = stored("c", 6, rules=[rule("*")], erased=True)
    store.add(live, bare, forward, erased, suppressed, stored("never", 0))
    tally = run(RepublishSnapshots(store, topic).run(Scope(include_unknown=True), 2))
    last = topic.last()
    assert last == {
        live.key: live.event,
        bare.key: snapshot_payload(bare),
        forward.key: None,
        erased.key: None,
        suppressed.key: suppressed.event,
    }
    assert len(topic.log) == 5  # nothing moved: one record each, none for version 0
    assert (tally.stored, tally.synthesized, tally.tombstones, tally.resent) == (2, 1, 2, 0)


def test_a_synthesized_snapshot_is_a_valid_event_that_names_no_command() -> None:
    bare = stored("b", 2, rules=[rule("product", "opt_in", "c9"), rule("marketing")], event=False)
    raw = snapshot_payload(bare)
    event = PreferenceChangedV1.model_validate_json(raw)
    assert event.event_id == event_id_for("default", "b", 2)
    assert (event.tenant, event.subject_id, event.version) == ("default", "b", 2)
    assert event.command_id == ""
    assert event.changes == []
    assert (event.source.channel, event.source.app) == ("system", "optout-republish")
    assert event.effective_at == T0
    assert event.to_domain().snapshot() == bare.state


def test_republish_sends_again_a_subject_that_moved_until_it_holds_still() -> None:
    store, topic = FakeStore(), FakeTopic()
    subject = stored("a", 1)
    store.add(subject, stored("b", 1))
    published_by_worker: list[int] = []

    def worker(call: str) -> None:
        # The worker commits versions 2 and 3 while the page is out, publishing each at once.
        if call == "send" and len(published_by_worker) < 2:
            version = store.rows[subject.key].state.version + 1
            store.add(stored("a", version))
            topic.log.append(SnapshotRecord("default", "a", payload(subject.key, version)))
            published_by_worker.append(version)

    topic.between = worker
    tally = run(RepublishSnapshots(store, topic).run(Scope(), 10))
    assert topic.last()[subject.key] == payload(subject.key, 3)
    assert tally.resent == 2
    assert tally.records == 4


def test_republish_tombstones_a_row_that_disappeared_meanwhile() -> None:
    store, topic = FakeStore(), FakeTopic()
    gone = stored("email:x@example.com", 2)
    store.add(gone)

    def erase(call: str) -> None:
        if call == "acknowledged" and gone.key in store.rows:
            del store.rows[gone.key]
            topic.log.append(SnapshotRecord("default", gone.key.subject_id, None))

    topic.between = erase
    tally = run(RepublishSnapshots(store, topic).run(Scope(), 10))
    assert topic.last() == {gone.key: None}
    assert tally.tombstones == 1


def test_republish_gives_up_loudly_on_a_subject_that_never_holds_still() -> None:
    store, topic = FakeStore(), FakeTopic()
    store.add(stored("hot", 1))

    def busy(call: str) -> None:
        if call == "marks":
            current = store.rows[SubjectKey("default", "hot")]
            store.add(stored("hot", current.state.version + 1))

    store.between = busy
    with pytest.raises(StillChanging) as failure:
        run(RepublishSnapshots(store, topic).run(Scope(), 10))
    assert failure.value.count == 1
    assert len(topic.log) == MAX_ROUNDS


def test_republish_stops_after_the_page_in_progress_has_settled() -> None:
    store, topic = FakeStore(), FakeTopic()
    store.add(*(stored(f"s{i}", 1) for i in range(10)))
    stop = asyncio.Event()
    topic.between = lambda call: stop.set() if call == "send" else None
    tally = run(RepublishSnapshots(store, topic).run(Scope(), 4, stop=stop))
    assert tally.done == 4
    assert store.calls == ["page", "marks"]


# --- the worker model against a republish --------------------------------------------------


@dataclass
class WorkerModel:
    """Commits change PostgreSQL at once; each commit queues its record, published later, in
    commit order (the worker publishes after committing, and a key's records in order)."""

    store: FakeStore
    topic: FakeTopic
    queue: list[SnapshotRecord] = field(default_factory=list)

    def commit(self, subject: str, kind: str) -> None:
        key = SubjectKey("default", subject)
        current = self.store.rows.get(key)
        if current is None:
            if kind == "delete":
                return
            current = stored(subject, 0)
        version = current.state.version + 1
        if kind == "delete":  # erasure of an identifier: the row goes, a tombstone follows
            del self.store.rows[key]
            self.queue.append(SnapshotRecord("default", subject, None))
        elif kind == "forward":
            self.store.add(stored(subject, version, merged_into="target"))
            self.queue.append(SnapshotRecord("default", subject, None))
        else:
            self.store.add(stored(subject, version))
            self.queue.append(SnapshotRecord("default", subject, payload(key, version)))

    def publish(self, count: int) -> None:
        for _ in range(min(count, len(self.queue))):
            self.topic.log.append(self.queue.pop(0))

    def settle(self) -> None:
        self.publish(len(self.queue))


SUBJECTS = ("a", "b", "c", "d")
step = st.one_of(
    st.tuples(
        st.just("commit"),
        st.sampled_from(SUBJECTS),
        st.sampled_from(["set"] * 4 + ["delete", "forward"]),
    ),
    st.tuples(st.just("publish"), st.integers(1, 3), st.just("")),
)


def expected_last(store: FakeStore, topic: FakeTopic) -> dict[SubjectKey, bytes | None]:
    keys = set(topic.last())
    return {
        k: (store.rows[k].event if k in store.rows and store.rows[k].live else None) for k in keys
    }


def play(
    republisher: Callable[[FakeStore, FakeTopic], Coroutine[Any, Any, object]],
    initial: Sequence[tuple[str, str]],
    schedule: Sequence[Sequence[tuple[str, Any, str]]],
) -> tuple[FakeStore, FakeTopic]:
    """The worker applies ``initial`` and publishes it; then, at each call the republish
    makes (and around it), the worker takes the schedule's next steps; at the end it
    publishes everything it still owes."""
    store, topic = FakeStore(), FakeTopic()
    worker = WorkerModel(store, topic)
    for subject, kind in initial:
        worker.commit(subject, kind)
    worker.settle()
    moments = iter(schedule)

    def between(call: str) -> None:
        for action, arg, kind in next(moments, ()):
            if action == "commit":
                worker.commit(arg, kind)
            else:
                worker.publish(arg)

    store.between = between
    topic.between = between
    run(republisher(store, topic))
    worker.settle()
    return store, topic


@settings(max_examples=400, deadline=None)
@given(
    initial=st.lists(st.tuples(st.sampled_from(SUBJECTS), st.just("set")), min_size=1, max_size=8),
    schedule=st.lists(st.lists(step, max_size=3), max_size=40),
    batch=st.integers(1, 4),
)
def test_the_last_record_of_every_key_is_current_whatever_the_worker_does_meanwhile(
    initial: list[tuple[str, str]], schedule: list[list[tuple[str, Any, str]]], batch: int
) -> None:
    store, topic = play(
        lambda s, t: RepublishSnapshots(s, t).run(Scope(), batch), initial, schedule
    )
    assert topic.last() == expected_last(store, topic)


class SendOnce(RepublishSnapshots):
    """A republish without the re-check, to show the property above can fail."""

    async def _settle(self, page: Sequence[StoredSubject], tally: Any) -> None:
        await self._sink.send([self._record(s, tally) for s in page])


def test_without_the_recheck_an_older_record_can_end_up_last() -> None:
    # The page reads a@1; the worker commits a@2 and publishes it; then the page's a@1 lands.
    schedule = [[], [], [], [("commit", "a", "set"), ("publish", 1, "")]]
    naive_store, naive_topic = play(
        lambda s, t: SendOnce(s, t).run(Scope(), 10), [("a", "set")], schedule
    )
    key = SubjectKey("default", "a")
    assert naive_topic.last()[key] == payload(key, 1) != naive_store.rows[key].event
    store, topic = play(
        lambda s, t: RepublishSnapshots(s, t).run(Scope(), 10), [("a", "set")], schedule
    )
    assert topic.last() == expected_last(store, topic)
    assert topic.last()[key] == payload(key, 2)


def test_stored_subject_marks() -> None:
    assert stored("a", 3).mark == (3, True)
    assert stored("a", 3, merged_into="b").mark == (3, False)
    assert replace(stored("a", 3), event=None).mark == (3, True)
