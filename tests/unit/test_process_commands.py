"""The command use case on in-memory fakes of its ports: no PostgreSQL, Redis or Kafka.

The fakes keep what the real adapters keep (states, the processed log with the answers'
bytes, the event log), commit only on a clean exit of the unit of work, and record what was
cached and published, so each test reads like the guarantee it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import orjson
import pytest

from service.application.errors import DependencyUnavailable, Refused
from service.application.ports import (
    DeadLetterRecord,
    EventMessage,
    Loaded,
    OutcomeMessage,
    RekeyedHashes,
    StoredAnswer,
    ToSave,
    UnkeyedHashes,
)
from service.application.process_commands import ProcessCommands
from service.application.records import RawRecord
from service.application.waterfall import StepClock
from service.domain.apply import CommandKey, ProcessedRecord
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import Delivery
from service.domain.keyed_hashes import is_plain_import_id, is_sealed
from service.domain.model import SubjectKey, SubjectState

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
TOPIC = "commands"


@dataclass
class FakeDatabase:
    states: dict[SubjectKey, SubjectState] = field(default_factory=dict)
    processed: dict[CommandKey, ProcessedRecord] = field(default_factory=dict)
    outcomes: dict[CommandKey, bytes] = field(default_factory=dict)
    events: dict[CommandKey, list[EventMessage]] = field(default_factory=dict)
    commits: int = 0
    fail_save: bool = False
    # Subjects whose changes the store refuses, as PostgreSQL refuses a value it cannot keep.
    refuse_subjects: frozenset[str] = frozenset()
    # Command ids whose processed-log entry the store refuses.
    refuse_command_ids: frozenset[str] = frozenset()


class FakeUnitOfWork:
    """Works on a copy of the database and swaps it in on commit, as a transaction would."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        # The stored values are immutable; copying the tables is a transaction's isolation.
        self._work = FakeDatabase(
            dict(db.states),
            dict(db.processed),
            dict(db.outcomes),
            {k: list(v) for k, v in db.events.items()},
            db.commits,
            db.fail_save,
            db.refuse_subjects,
            db.refuse_command_ids,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._db.__dict__.update(self._work.__dict__)
            self._db.commits += 1

    async def load(
        self,
        keys: Sequence[SubjectKey],
        commands: Sequence[CommandKey],
        deliveries: set[Delivery],
        lookups: Sequence[SubjectKey] = (),
        forwarders: bool = False,
    ) -> Loaded:
        work = self._work
        states = {k: work.states[k] for k in [*keys, *lookups] if k in work.states}
        frontier = list(states.values())
        while frontier:
            targets = [
                SubjectKey(s.key.tenant, s.merged_into)
                for s in frontier
                if s.merged_into is not None
            ]
            frontier = [work.states[t] for t in targets if t in work.states and t not in states]
            states.update((s.key, s) for s in frontier)
        found: dict[SubjectKey, list[str]] = {}
        if forwarders:
            ends = {k for k, s in states.items() if s.merged_into is None}
            for key, state in work.states.items():
                end = SubjectKey(key.tenant, state.merged_into or "")
                if end in ends:
                    found.setdefault(end, []).append(key.subject_id)
                    states[key] = state
        processed = {c: work.processed[c] for c in commands if c in work.processed}
        answers = {
            c: StoredAnswer(work.outcomes[c], tuple(work.events.get(c, ())))
            for c, p in processed.items()
            if p.delivery in deliveries
        }
        return Loaded(states, processed, answers, NOW, found)

    async def save(self, batch: ToSave) -> None:
        if self._work.fail_save:
            raise DependencyUnavailable("postgresql", "ConnectionRefusedError")
        work = self._work
        if any(key.subject_id in work.refuse_subjects for key in batch.result.changed) or any(
            p.command_id in work.refuse_command_ids for p in batch.result.processed
        ):
            raise Refused("refused by PostgreSQL (SQLSTATE 22P05)")
        work.states.update(batch.result.changed)
        for tenant, old, new in batch.result.repointed:
            for key, state in list(work.states.items()):
                if key.tenant == tenant and state.merged_into == old and key.subject_id != new:
                    work.states[key] = SubjectState.adopting(
                        key, state.version, {}, new, state.erased
                    )
        for erasure in batch.result.erasures:
            if erasure.replacement != erasure.subject_id:
                work.states.pop(SubjectKey(erasure.tenant, erasure.subject_id), None)
        for entry, payload in zip(batch.result.processed, batch.processed_outcomes, strict=True):
            work.processed[entry.key] = entry
            work.outcomes[entry.key] = payload
        for encoded in batch.events:
            event = encoded.event
            work.events.setdefault((event.tenant, event.command_id), []).append(
                EventMessage(event.tenant, event.subject_id, encoded.payload)
            )
        for tombstone in batch.result.tombstones:
            work.events.setdefault((tombstone.tenant, tombstone.command_id), []).append(
                EventMessage(tombstone.tenant, tombstone.subject_id, None)
            )

    async def unkeyed_of(self, names: Sequence[SubjectKey]) -> UnkeyedHashes:
        wanted = set(names)
        return UnkeyedHashes(
            processed=[
                (tenant, command_id, entry.content_hash)
                for (tenant, command_id), entry in self._work.processed.items()
                if SubjectKey(tenant, entry.outcome.subject_id or "") in wanted
                and (not is_sealed(entry.content_hash) or is_plain_import_id(command_id))
            ],
            import_ids=[],
        )

    async def rekey(self, names: Sequence[SubjectKey], rekeyed: RekeyedHashes) -> None:
        work = self._work
        for tenant, command_id, new_id, new_hash in rekeyed.processed:
            entry = work.processed.pop((tenant, command_id))
            work.processed[(tenant, new_id)] = replace(
                entry, command_id=new_id, content_hash=new_hash
            )
            work.outcomes[(tenant, new_id)] = work.outcomes.pop((tenant, command_id))


@dataclass
class FakeCache:
    written: list[SubjectState] = field(default_factory=list)

    async def write(self, states: Sequence[SubjectState], ttl_seconds: int | None = None) -> int:
        self.written.extend(states)
        return len(states)


@dataclass
class FakePublisher:
    events: list[EventMessage] = field(default_factory=list)
    outcomes: list[OutcomeMessage] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    fail: bool = False
    calls: int = 0

    async def publish(
        self,
        events: Sequence[EventMessage],
        outcomes: Sequence[OutcomeMessage],
        dead_letters: Sequence[DeadLetterRecord],
        *,
        clock: StepClock | None = None,
    ) -> None:
        # The acknowledgements' steps are marked by the Kafka publisher, not by this fake.
        self.calls += 1
        if self.fail:
            raise DependencyUnavailable("kafka", "KafkaConnectionError")
        self.events.extend(events)
        self.outcomes.extend(outcomes)
        self.dead_letters.extend(dead_letters)

    def statuses(self) -> list[tuple[str, str | None]]:
        return [
            (doc["status"], doc["reason"])
            for doc in (orjson.loads(o.payload) for o in self.outcomes)
        ]


@dataclass
class Harness:
    db: FakeDatabase = field(default_factory=FakeDatabase)
    cache: FakeCache = field(default_factory=FakeCache)
    publisher: FakePublisher = field(default_factory=FakePublisher)

    @property
    def process(self) -> ProcessCommands:
        return ProcessCommands(
            lambda: FakeUnitOfWork(self.db),
            self.cache,
            self.publisher,
            DEFAULT_CATALOG,
            max_record_bytes=64 * 1024,
            max_future=timedelta(minutes=5),
            max_lanes=3,
        )


def command(
    command_id: str,
    subject: str = "u1",
    *changes: tuple[str, str, str],
    minutes: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "command_id": command_id,
        "subject_id": subject,
        "occurred_at": (NOW - timedelta(hours=1) + timedelta(minutes=minutes)).isoformat(),
        "source": {"channel": "email"},
        "changes": [
            {"action": a, "topic": t, "channel": c}
            for a, t, c in (changes or (("opt_out", "marketing", "email"),))
        ],
        **extra,
    }


def record(offset: int, value: dict[str, Any] | bytes, partition: int = 0) -> RawRecord:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return RawRecord(TOPIC, partition, offset, b"key", raw, 0)


async def test_applied_command_is_stored_cached_and_published() -> None:
    h = Harness()
    await h.process([record(0, command("c1"))])
    key = SubjectKey("default", "u1")
    assert h.db.commits == 1
    assert h.db.states[key].version == 1
    assert [s.version for s in h.cache.written] == [1]
    assert h.publisher.statuses() == [("applied", None)]
    (event,) = h.publisher.events
    assert event.payload is not None
    assert orjson.loads(event.payload)["preferences"][0]["topic"] == "marketing"
    # The outcome published is the one stored in the log, byte for byte.
    assert h.publisher.outcomes[0].payload == h.db.outcomes[("default", "c1")]


async def test_older_change_is_unchanged() -> None:
    h = Harness()
    await h.process([record(0, command("new", minutes=10))])
    await h.process([record(1, command("old", "u1", ("opt_in", "marketing", "email")))])
    assert h.publisher.statuses() == [("applied", None), ("unchanged", None)]
    assert len(h.publisher.events) == 1
    assert h.db.states[SubjectKey("default", "u1")].version == 1


async def test_resent_command_is_a_duplicate_and_changed_content_a_conflict() -> None:
    h = Harness()
    await h.process([record(0, command("c1"))])
    await h.process([record(1, command("c1"))])
    await h.process([record(2, command("c1", "u1", ("opt_in", "marketing", "email")))])
    assert h.publisher.statuses() == [
        ("applied", None),
        ("duplicate", None),
        ("rejected", "command_id_conflict"),
    ]
    assert len(h.publisher.events) == 1


async def test_redelivery_republishes_the_stored_bytes_and_applies_nothing() -> None:
    h = Harness()
    batch = [record(0, command("c1")), record(1, command("c2", "u2"))]
    await h.process(batch)
    first_events, first_outcomes = list(h.publisher.events), list(h.publisher.outcomes)
    states_before = dict(h.db.states)
    await h.process(batch)  # as after a crash before the offset commit
    assert h.publisher.events[len(first_events) :] == first_events
    assert h.publisher.outcomes[len(first_outcomes) :] == first_outcomes
    assert h.db.states == states_before


async def test_mixed_batch_gets_one_answer_per_record() -> None:
    h = Harness()
    batch = [
        record(0, command("ok", "u1")),
        record(1, b"\xff not json"),
        record(2, {"command_id": "broken", "subject_id": "u2"}),
        record(3, command("mandatory", "u3", ("opt_out", "security", "email")), partition=1),
        record(4, command("typo", "u4", ("opt_out", "marketting", "email")), partition=2),
    ]
    await h.process(batch)
    by_id = {
        doc["command_id"]: (doc["status"], doc["reason"])
        for doc in (orjson.loads(o.payload) for o in h.publisher.outcomes)
    }
    assert by_id == {
        "ok": ("applied", None),
        "broken": ("rejected", "invalid_payload"),
        "mandatory": ("rejected", "mandatory_topic"),
        "typo": ("rejected", "unknown_topic"),
    }
    (dead,) = h.publisher.dead_letters
    assert dead.record.offset == 1
    assert dead.error == "value is not valid UTF-8"


async def test_failing_store_commits_nothing_and_publishes_nothing() -> None:
    h = Harness()
    h.db.fail_save = True
    with pytest.raises(ExceptionGroup):
        await h.process([record(0, command("c1"))])
    assert h.db.commits == 0
    assert h.db.states == {}
    assert h.db.processed == {}
    assert h.cache.written == []
    assert h.publisher.outcomes == []


async def test_failing_publisher_raises_and_the_retry_publishes_the_same_answers() -> None:
    h = Harness()
    batch = [record(0, command("c1")), record(1, command("c2", "u1", minutes=5))]
    h.publisher.fail = True
    with pytest.raises(DependencyUnavailable):
        await h.process(batch)
    # The transaction committed before publication; the worker holds its offsets and retries.
    committed = dict(h.db.states)
    h.publisher.fail = False
    await h.process(batch)
    assert h.db.states == committed
    assert h.publisher.statuses() == [("applied", None), ("applied", None)]
    assert [orjson.loads(e.payload or b"")["version"] for e in h.publisher.events] == [1, 2]
    assert [o.payload for o in h.publisher.outcomes] == [
        h.db.outcomes[("default", "c1")],
        h.db.outcomes[("default", "c2")],
    ]


async def test_command_ids_are_scoped_per_tenant() -> None:
    h = Harness()
    await h.process([record(0, command("c1", tenant="acme"))])
    await h.process([record(1, command("c1", "u1", ("opt_out", "*", "sms"), tenant="globex"))])
    await h.process([record(2, command("c1", "u1", ("opt_out", "*", "sms"), tenant="globex"))])
    outcomes = [orjson.loads(o.payload) for o in h.publisher.outcomes]
    assert [(o["tenant"], o["status"], o["version"]) for o in outcomes] == [
        ("acme", "applied", 1),
        ("globex", "applied", 1),
        ("globex", "duplicate", 1),
    ]


async def test_the_first_stage_commits_and_sends_nothing_until_the_second() -> None:
    h = Harness()
    finish = await h.process.store([record(0, command("c1"))])
    # Committed: a crash now leaves the answer in the processed log, for the replay.
    assert h.db.commits == 1
    assert ("default", "c1") in h.db.outcomes
    assert h.cache.written == []
    assert h.publisher.outcomes == []
    await finish()
    assert [s.version for s in h.cache.written] == [1]
    assert h.publisher.statuses() == [("applied", None)]


async def test_pipelined_batch_whose_outputs_failed_is_replayed_before_the_next_is_sent() -> None:
    """What the worker does when a batch's second stage fails while the next batch has
    already committed: the failed batch is processed again whole (its stored answers are
    replayed), then the next batch's second stage sends its own, so a key's events keep
    their order."""
    h = Harness()
    first = [record(0, command("c1"))]
    second = [record(1, command("c2", "u1", minutes=5))]
    finish_first = await h.process.store(first)
    finish_second = await h.process.store(second)
    h.publisher.fail = True
    with pytest.raises(DependencyUnavailable):
        await finish_first()
    h.publisher.fail = False
    await h.process(first)
    await finish_second()
    assert h.publisher.statuses() == [("applied", None), ("applied", None)]
    assert [orjson.loads(e.payload or b"")["version"] for e in h.publisher.events] == [1, 2]
    assert h.publisher.outcomes[0].payload == h.db.outcomes[("default", "c1")]


async def test_a_batch_gets_one_lane_per_hundred_records() -> None:
    """A lane is a transaction with a fixed cost: the small batches of a steady rate take one,
    a backlog's batches are spread over up to `max_lanes`."""
    opened = 0
    db = FakeDatabase()

    def unit_of_work() -> FakeUnitOfWork:
        nonlocal opened
        opened += 1
        return FakeUnitOfWork(db)

    process = ProcessCommands(
        unit_of_work,
        FakeCache(),
        FakePublisher(),
        DEFAULT_CATALOG,
        max_record_bytes=64 * 1024,
        max_future=timedelta(minutes=5),
        max_lanes=3,
    )
    for size, lanes in ((99, 1), (250, 2), (300, 3), (500, 3)):
        opened = 0
        batch = [
            record(i, command(f"c{size}-{i}", f"u{size}-{i}"), partition=i % 6) for i in range(size)
        ]
        await process(batch)
        assert opened == lanes, size
