"""Identity commands through the use case on fakes: answers, tombstones and replays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson

from service.application.process_commands import ProcessCommands
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.identifiers import pseudonym
from service.domain.keyed_hashes import ContentSeal, is_sealed
from service.domain.model import SubjectKey
from tests.unit.test_process_commands import FakeUnitOfWork, Harness, command, record

KEY = b"k" * 32


@dataclass
class IdentityHarness(Harness):
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
            identifier_key=KEY,
        )


def identity(command_id: str, kind: str, subject: str, **fields: Any) -> dict[str, Any]:
    doc = command(command_id, subject, kind=kind, **fields)
    del doc["changes"]
    return doc


def answers(h: Harness) -> list[dict[str, Any]]:
    return [orjson.loads(o.payload) for o in h.publisher.outcomes]


async def test_a_redelivered_merge_and_erasure_replay_their_answers_and_tombstones() -> None:
    h = IdentityHarness()
    await h.process([record(0, command("c1", "a")), record(1, command("c2", "email:x@y.io"))])
    batch = [
        record(2, identity("m", "merge", "a", into="b")),
        record(3, identity("l", "link", "b", identifier="email:X@Y.io")),
        record(4, identity("e", "erase", "b")),
    ]
    await h.process(batch)
    first_events = h.publisher.events[2:]
    first_outcomes = h.publisher.outcomes[2:]
    assert [(d["status"], d["applied_to"]) for d in answers(h)[2:]] == [
        ("applied", "b"),
        ("applied", None),
        ("applied", None),
    ]
    tombstones = {e.subject_id for e in first_events if e.payload is None}
    assert tombstones == {"a", "email:x@y.io"}
    suppression = [e for e in first_events if e.subject_id == "b" and e.payload is not None][-1]
    assert b'"topic":"*","channel":"*","action":"opt_out"' in (suppression.payload or b"")
    states = dict(h.db.states)
    await h.process(batch)  # as after a crash before the offset commit
    assert h.publisher.outcomes[len(first_outcomes) + 2 :] == first_outcomes
    assert sorted(h.publisher.events[len(first_events) + 2 :], key=repr) == sorted(
        first_events, key=repr
    )
    assert h.db.states == states
    hashed = SubjectKey("default", pseudonym(KEY, "default", "email:x@y.io"))
    assert SubjectKey("default", "email:x@y.io") not in h.db.states
    assert h.db.states[hashed].merged_into == "b"
    assert h.db.states[SubjectKey("default", "b")].erased
    assert h.db.states[SubjectKey("default", "a")].merged_into == "b"


async def test_identity_commands_need_their_fields() -> None:
    h = IdentityHarness()
    await h.process(
        [
            record(0, identity("l", "link", "u1")),
            record(1, identity("m", "merge", "u1", identifier="email:a@b.c")),
            record(2, identity("x", "link", "u1", identifier="user-2")),
            record(3, identity("p", "link", "u1", identifier="phone:0123")),
            record(4, command("c", "u1", kind="erase")),
        ]
    )
    assert [(d["status"], d["reason"]) for d in answers(h)] == [("rejected", "invalid_payload")] * 5


async def test_unlinking_an_identifier_that_is_not_linked_is_refused() -> None:
    h = IdentityHarness()
    await h.process([record(0, identity("u", "unlink", "u1", identifier="device:abc"))])
    assert [(d["status"], d["reason"]) for d in answers(h)] == [("rejected", "not_linked")]


async def test_an_erasure_rekeys_the_hashes_of_before_and_a_redelivery_is_still_a_duplicate() -> (
    None
):
    before = Harness()  # no identifier key: the content hash is stored plain, as before keying
    stop = command("sms-1", "phone:+14155550123", ("opt_out", "*", "sms"))
    await before.process([record(0, stop), record(1, command("other", "u7"))])
    key = ("default", "sms-1")
    plain = before.db.processed[key].content_hash
    assert not is_sealed(plain)
    h = IdentityHarness(db=before.db)
    await h.process([record(2, identity("e", "erase", "phone:+14155550123"))])
    assert answers(h)[0]["status"] == "applied"
    assert h.db.processed[key].content_hash == ContentSeal.from_root(KEY)(plain)
    # Another person's entry keeps its form: erasure rewrites the erased person's rows only.
    assert not is_sealed(h.db.processed[("default", "other")].content_hash)
    await h.process([record(3, stop)])  # the same command, produced again
    assert (answers(h)[1]["status"], answers(h)[1]["reason"]) == ("duplicate", None)
    changed = dict(stop, source={"channel": "web"})
    await h.process([record(4, changed)])
    assert (answers(h)[2]["status"], answers(h)[2]["reason"]) == (
        "rejected",
        "command_id_conflict",
    )
