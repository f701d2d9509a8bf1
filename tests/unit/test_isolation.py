"""Poison isolation on the in-memory fakes: a record the store refuses is answered alone.

The fakes are those of ``test_process_commands.py``: a store that commits only on a clean
exit and can refuse one subject's changes (as PostgreSQL refuses a value it cannot keep) or
one command's log entry, and a publisher that records what was published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson
import pytest

from service.application.errors import DependencyUnavailable
from service.application.isolation import BatchProcess, IsolatingProcessor
from service.application.records import RawRecord
from service.domain.commands import Delivery
from service.domain.model import SubjectKey
from tests.unit.test_process_commands import Harness, command, record

REFUSAL = "refused by PostgreSQL (SQLSTATE 22P05)"


class Counting:
    """The use case, counting its calls: the happy path must stay one call per batch."""

    def __init__(self, h: Harness) -> None:
        self.inner: BatchProcess = h.process
        self.calls: list[int] = []

    async def __call__(
        self, records: Sequence[RawRecord], refused: Mapping[Delivery, str] | None = None
    ) -> None:
        self.calls.append(len(records))
        await self.inner(records, refused)


def isolating(h: Harness) -> tuple[IsolatingProcessor, Counting]:
    counting = Counting(h)
    return IsolatingProcessor(counting, h.publisher, max_record_bytes=64 * 1024), counting


def answers(h: Harness) -> dict[str, tuple[str, str | None, str | None]]:
    docs = [orjson.loads(o.payload) for o in h.publisher.outcomes]
    return {d["command_id"]: (d["status"], d["reason"], d["detail"]) for d in docs}


def mixed_batch() -> list[RawRecord]:
    """Ten records on three partitions; `bad` (subject `poison`) sits in the middle of
    partition 0, between two commands of subject u0 whose order matters."""
    return [
        record(0, command("u0-first", "u0", minutes=1)),
        record(1, command("p1", "u1"), partition=1),
        record(2, command("p2", "u2"), partition=2),
        record(3, command("bad", "poison")),
        record(4, command("u0-second", "u0", ("opt_in", "marketing", "email"), minutes=2)),
        record(5, command("p5", "u5"), partition=1),
        record(6, b"\xff not json"),
        record(7, command("p7", "u7"), partition=2),
        record(8, command("p8", "u8")),
        record(9, command("p9", "u9"), partition=1),
    ]


async def test_happy_path_is_one_call() -> None:
    h = Harness()
    process, counting = isolating(h)
    await process(mixed_batch())
    assert counting.calls == [10]
    assert len(answers(h)) == 9


async def test_refused_record_is_rejected_and_the_rest_applied_in_order() -> None:
    h = Harness()
    h.db.refuse_subjects = frozenset({"poison"})
    process, counting = isolating(h)
    batch = mixed_batch()
    await process(batch)

    got = answers(h)
    assert got.pop("bad") == ("rejected", "invalid_payload", REFUSAL)
    assert {status for status, _, _ in got.values()} == {"applied"}
    assert len(got) == 8
    (dead,) = h.publisher.dead_letters
    assert dead.record.offset == 6
    # u0's two commands were applied in offset order: the opt-in of minute 2 is the state.
    state = h.db.states[SubjectKey("default", "u0")]
    assert state.version == 2
    assert state.rules[("marketing", "email")].action == "opt_in"
    assert SubjectKey("default", "poison") not in h.db.states
    # The rejection is in the processed log, so a redelivery replays it without a retry.
    assert h.db.processed[("default", "bad")].outcome.status == "rejected"
    assert len(counting.calls) > 2

    counting.calls.clear()
    published = len(h.publisher.outcomes)
    await process(batch)
    assert counting.calls == [10]
    replayed = h.publisher.outcomes[published:]
    by_id = {o.command_id: o.payload for o in h.publisher.outcomes[:published]}
    assert all(by_id[o.command_id] == o.payload for o in replayed)
    assert len(replayed) == 9


async def test_a_failure_that_does_not_repeat_isolates_nothing() -> None:
    h = Harness()
    process, counting = isolating(h)
    inner = counting.inner
    failures = iter([True])

    async def flaky(
        records: Sequence[RawRecord], refused: Mapping[Delivery, str] | None = None
    ) -> None:
        if next(failures, False):
            raise RuntimeError("once")
        await inner(records, refused)

    counting.inner = flaky
    await process(mixed_batch())
    assert counting.calls == [10, 10]
    assert "rejected" not in {status for status, _, _ in answers(h).values()}


async def test_unavailable_dependency_is_raised_not_isolated() -> None:
    h = Harness()
    h.db.fail_save = True
    process, counting = isolating(h)
    with pytest.raises(DependencyUnavailable) as raised:
        await process(mixed_batch())
    assert raised.value.dependency == "postgresql"
    assert counting.calls == [10]
    assert h.publisher.outcomes == []


async def test_rejection_that_cannot_be_stored_is_published_anyway() -> None:
    h = Harness()
    h.db.refuse_subjects = frozenset({"poison"})
    h.db.refuse_command_ids = frozenset({"bad"})
    process, _ = isolating(h)
    await process(mixed_batch())
    assert answers(h)["bad"] == ("rejected", "invalid_payload", REFUSAL)
    assert ("default", "bad") not in h.db.processed
    assert len(answers(h)) == 9


async def test_every_record_refused_still_answers_each() -> None:
    h = Harness()
    subjects = [f"s{i}" for i in range(7)]
    h.db.refuse_subjects = frozenset(subjects)
    process, _ = isolating(h)
    await process([record(i, command(f"c{i}", s)) for i, s in enumerate(subjects)])
    assert [status for status, _, _ in answers(h).values()] == ["rejected"] * 7
