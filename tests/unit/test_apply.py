"""apply_batch: idempotency, replays and versioning, record by record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone

from service.domain.apply import BatchResult, CommandKey, ProcessedRecord, apply_batch
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import (
    Change,
    Command,
    Delivery,
    Malformed,
    Received,
    Source,
    content_hash,
)
from service.domain.decision import is_allowed
from service.domain.events import AppliedChange, event_id_for
from service.domain.model import Action, SubjectKey, SubjectState

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
COMMIT = NOW + timedelta(milliseconds=7)
KEY = SubjectKey("default", "u1")
_offsets = iter(range(10**9))


def cmd(
    command_id: str,
    *changes: tuple[Action, str, str],
    minutes: int = 0,
    subject: str = "u1",
    source: str = "email",
) -> Command:
    return Command(
        command_id=command_id,
        subject_id=subject,
        tenant="default",
        occurred_at=NOW - timedelta(hours=1) + timedelta(minutes=minutes),
        source=Source(source, app="newsletter", ip="203.0.113.7", user_agent="UA"),
        changes=tuple(Change(a, t, c) for a, t, c in changes),
        reason="because",
    )


def delivery() -> Delivery:
    return Delivery("optout.commands.v1", 0, next(_offsets))


def rec(command: Command, at: Delivery | None = None) -> Received:
    return Received(command, at or delivery())


def run(
    records: Sequence[Received | Malformed],
    states: Mapping[SubjectKey, SubjectState] | None = None,
    processed: Mapping[CommandKey, ProcessedRecord] | None = None,
) -> BatchResult:
    return apply_batch(
        DEFAULT_CATALOG,
        states or {},
        processed or {},
        records,
        now=NOW,
        effective_at=COMMIT,
        max_future=timedelta(minutes=5),
    )


def carry(
    result: BatchResult,
    states: dict[SubjectKey, SubjectState],
    processed: dict[CommandKey, ProcessedRecord],
) -> None:
    """What the adapters do: persist the result so the next batch sees it."""
    states.update(result.states)
    processed.update({p.key: p for p in result.processed})


def test_first_command_applies_at_version_one() -> None:
    command = cmd("c1", ("opt_out", "marketing", "email"), ("opt_out", "*", "sms"))
    result = run([rec(command)])
    (outcome,) = result.outcomes
    assert outcome.status == "applied"
    assert outcome.version == 1
    assert outcome.effective_at == COMMIT
    state = result.states[KEY]
    assert result.changed == {KEY: state}
    assert state.version == 1
    # An all-SMS statement made elsewhere than by text is also kept aside, for a restore.
    assert set(state.rules) == {("marketing", "email"), ("*", "sms"), ("#kept", "sms")}
    (event,) = result.events
    assert event.event_id == event_id_for("default", "u1", 1)
    assert event.version == 1
    assert event.command_id == "c1"
    assert event.source_channel == "email"
    assert event.source_app == "newsletter"
    assert event.changes == (
        AppliedChange("opt_out", "marketing", "email", command.occurred_at),
        AppliedChange("opt_out", "*", "sms", command.occurred_at),
    )
    assert event.preferences == state.sorted_rules()
    assert [(k, r.topic) for k, r in result.upserted_rules] == [
        (KEY, "marketing"),
        (KEY, "*"),
        (KEY, "#kept"),
    ]
    assert len(result.history) == 2
    assert result.history[0].source.ip == "203.0.113.7"
    assert result.history[0].effective_at == COMMIT
    assert result.history[0].reason == "because"
    (stored,) = result.processed
    assert stored.outcome == outcome
    assert stored.content_hash == content_hash(command)
    assert result.replayed == []


def test_versions_increment_and_events_in_order() -> None:
    records = [rec(cmd(f"c{i}", ("opt_out", "marketing", "email"), minutes=i)) for i in range(3)]
    result = run(records)
    assert [o.version for o in result.outcomes] == [1, 2, 3]
    assert [e.version for e in result.events] == [1, 2, 3]
    assert result.states[KEY].version == 3
    assert len(result.processed) == 3


def test_version_continues_from_stored_state() -> None:
    states: dict[SubjectKey, SubjectState] = {}
    processed: dict[CommandKey, ProcessedRecord] = {}
    carry(run([rec(cmd("c1", ("opt_out", "marketing", "email")))]), states, processed)
    result = run([rec(cmd("c2", ("opt_in", "marketing", "email"), minutes=1))], states, processed)
    assert result.outcomes[0].version == 2
    assert not is_allowed(DEFAULT_CATALOG, states[KEY], "marketing", "email").allowed
    assert is_allowed(DEFAULT_CATALOG, result.states[KEY], "marketing", "email").allowed


def test_older_change_is_unchanged() -> None:
    newer = cmd("c1", ("opt_out", "marketing", "email"), minutes=10)
    older = cmd("c2", ("opt_in", "marketing", "email"), minutes=1)
    result = run([rec(newer), rec(older)])
    assert [o.status for o in result.outcomes] == ["applied", "unchanged"]
    assert result.outcomes[1].version == 1
    assert result.outcomes[1].effective_at is None
    assert len(result.events) == 1
    assert len(result.processed) == 2


def test_unchanged_alone_still_reports_state_for_cache() -> None:
    states = {KEY: run([rec(cmd("c1", ("opt_out", "*", "*"), minutes=5))]).states[KEY]}
    result = run([rec(cmd("c2", ("opt_in", "*", "*"), minutes=1))], states)
    assert result.outcomes[0].status == "unchanged"
    assert result.states == {KEY: states[KEY]}
    assert result.changed == {}


def test_partial_application_only_newer_changes_apply() -> None:
    states = {KEY: run([rec(cmd("c1", ("opt_out", "marketing", "email"), minutes=10))]).states[KEY]}
    mixed = cmd("c2", ("opt_in", "marketing", "email"), ("opt_out", "product", "sms"), minutes=5)
    result = run([rec(mixed)], states)
    assert result.outcomes[0].status == "applied"
    (event,) = result.events
    assert [(c.topic, c.channel) for c in event.changes] == [("product", "sms")]
    assert len(event.preferences) == 2
    assert [r.topic for _, r in result.upserted_rules] == ["product"]
    assert len(result.history) == 1


def test_same_pair_twice_in_one_command_opt_out_wins() -> None:
    command = cmd("c1", ("opt_in", "marketing", "email"), ("opt_out", "marketing", "email"))
    result = run([rec(command)])
    assert result.states[KEY].rules[("marketing", "email")].action == "opt_out"
    assert len(result.events[0].changes) == 1
    assert len(result.history) == 1


def test_duplicate_in_same_batch_and_across_batches() -> None:
    command = cmd("c1", ("opt_out", "marketing", "email"))
    result = run([rec(command), rec(command)])
    assert [o.status for o in result.outcomes] == ["applied", "duplicate"]
    assert result.outcomes[1].version == 1
    assert result.outcomes[1].effective_at == COMMIT
    assert len(result.events) == 1
    assert len(result.processed) == 1
    states: dict[SubjectKey, SubjectState] = {}
    processed: dict[CommandKey, ProcessedRecord] = {}
    carry(result, states, processed)
    later = run([rec(command)], states, processed)
    assert later.outcomes[0].status == "duplicate"
    assert later.outcomes[0].version == 1
    assert later.processed == []
    assert later.events == []
    assert later.changed == {}


def test_duplicate_with_reformatted_timestamp_is_still_duplicate() -> None:
    command = cmd("c1", ("opt_out", "marketing", "email"))
    shifted = Command(
        command.command_id,
        command.subject_id,
        command.tenant,
        command.occurred_at.astimezone(timezone(timedelta(hours=2))),
        command.source,
        command.changes,
        command.reason,
    )
    assert content_hash(shifted) == content_hash(command)
    result = run([rec(command), rec(shifted)])
    assert result.outcomes[1].status == "duplicate"


def test_conflict_when_same_id_different_content() -> None:
    first = cmd("c1", ("opt_out", "marketing", "email"))
    second = cmd("c1", ("opt_in", "marketing", "email"), minutes=3)
    result = run([rec(first), rec(second)])
    assert result.outcomes[1].status == "rejected"
    assert result.outcomes[1].reason == "command_id_conflict"
    assert result.states[KEY].rules[("marketing", "email")].action == "opt_out"
    assert len(result.processed) == 1
    assert result.processed[0].outcome.status == "applied"


def test_redelivery_replays_stored_outcome_and_events() -> None:
    command = cmd("c1", ("opt_out", "marketing", "email"))
    at = delivery()
    first = run([rec(command, at)])
    states: dict[SubjectKey, SubjectState] = {}
    processed: dict[CommandKey, ProcessedRecord] = {}
    carry(first, states, processed)
    again = apply_batch(
        DEFAULT_CATALOG,
        states,
        processed,
        [rec(command, at)],
        now=NOW + timedelta(hours=1),
        effective_at=COMMIT + timedelta(hours=1),
        max_future=timedelta(minutes=5),
    )
    assert again.outcomes == first.outcomes
    assert again.replayed == [processed[(o.tenant, o.command_id)] for o in first.outcomes]
    assert again.events == []
    assert again.processed == []
    assert again.changed == {}
    assert again.history == []
    assert again.upserted_rules == []
    assert again.states == {KEY: states[KEY]}


def test_redelivery_of_rejected_replays_rejection() -> None:
    at = delivery()
    bad = cmd("c1", ("opt_out", "security", "email"))
    first = run([rec(bad, at)])
    assert first.outcomes[0].reason == "mandatory_topic"
    processed = {p.key: p for p in first.processed}
    again = run([rec(bad, at)], {}, processed)
    assert again.outcomes == first.outcomes
    assert again.states == {}
    assert again.processed == []


def test_rejected_id_can_be_retried_with_fixed_content() -> None:
    bad = cmd("c1", ("opt_out", "security", "email"))
    good = cmd("c1", ("opt_out", "marketing", "email"))
    result = run([rec(bad), rec(good), rec(good)])
    assert [o.status for o in result.outcomes] == ["rejected", "applied", "duplicate"]
    assert len(result.processed) == 1
    assert result.processed[0].outcome.status == "applied"


def test_rejections_are_stored_and_touch_no_state() -> None:
    result = run(
        [
            rec(cmd("c1", ("opt_out", "nope", "email"))),
            rec(cmd("c2", ("opt_out", "marketing", "fax"))),
            rec(cmd("c3", ("opt_out", "*", "*"), minutes=120)),
            rec(cmd("c4", ("opt_out", "*", "*"), source="pigeon")),
        ]
    )
    assert [o.reason for o in result.outcomes] == [
        "unknown_topic",
        "unknown_channel",
        "future_timestamp",
        "invalid_payload",
    ]
    assert all(o.detail for o in result.outcomes)
    assert result.states == {}
    assert result.events == []
    assert len(result.processed) == 4


def malformed(command_id: str, at: Delivery | None = None, digest: str = "h") -> Malformed:
    return Malformed(command_id, "u1", "default", "changes: missing", at or delivery(), digest)


def test_malformed_is_rejected_and_stored() -> None:
    result = run([malformed("m1")])
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.reason, outcome.detail) == (
        "rejected",
        "invalid_payload",
        "changes: missing",
    )
    assert outcome.subject_id == "u1"
    assert len(result.processed) == 1
    assert result.states == {}


def test_malformed_after_applied_id_is_conflict() -> None:
    result = run([rec(cmd("c1", ("opt_out", "*", "*"))), malformed("c1")])
    assert result.outcomes[1].reason == "command_id_conflict"
    assert result.processed[0].outcome.status == "applied"


def test_malformed_resent_is_rejected_again_and_redelivery_replays() -> None:
    at = delivery()
    first = run([malformed("m1", at)])
    processed = {p.key: p for p in first.processed}
    again = run([malformed("m1", at), malformed("m1")], {}, processed)
    assert again.outcomes[0] == first.outcomes[0]
    assert again.outcomes[1].reason == "invalid_payload"
    assert len(again.processed) == 1


def test_later_records_see_earlier_ones_and_outcomes_keep_order() -> None:
    records: list[Received | Malformed] = [
        rec(cmd("a", ("opt_out", "*", "*"), subject="u1")),
        malformed("m"),
        rec(cmd("b", ("opt_out", "*", "*"), subject="u2")),
        rec(cmd("c", ("opt_in", "marketing", "email"), minutes=1, subject="u1")),
    ]
    result = run(records)
    assert [o.command_id for o in result.outcomes] == ["a", "m", "b", "c"]
    assert result.states[KEY].version == 2
    assert result.states[SubjectKey("default", "u2")].version == 1
    assert [(e.subject_id, e.version) for e in result.events] == [("u1", 1), ("u2", 1), ("u1", 2)]


def test_tenants_are_separate_subjects() -> None:
    other = Command("x", "u1", "acme", NOW, Source("api"), (Change("opt_out", "*", "*"),), None)
    result = run([rec(cmd("a", ("opt_out", "*", "*"))), rec(other)])
    assert result.states[KEY].version == 1
    assert result.states[SubjectKey("acme", "u1")].version == 1


def test_mandatory_opt_in_is_recorded_but_irrelevant() -> None:
    result = run([rec(cmd("a", ("opt_in", "security", "email")))])
    assert result.outcomes[0].status == "applied"
    assert is_allowed(DEFAULT_CATALOG, result.states[KEY], "security", "email").basis == "mandatory"


def test_redelivery_of_rejected_record_superseded_by_fixed_retry_repeats_rejection() -> None:
    bad_at, good_at = delivery(), delivery()
    bad = cmd("c1", ("opt_out", "security", "email"))
    good = cmd("c1", ("opt_out", "marketing", "email"))
    first = run([rec(bad, bad_at), rec(good, good_at)])
    states: dict[SubjectKey, SubjectState] = {}
    processed: dict[CommandKey, ProcessedRecord] = {}
    carry(first, states, processed)
    again = run([rec(bad, bad_at), rec(good, good_at)], states, processed)
    assert again.outcomes == first.outcomes
    assert again.processed == []
    # Only the fixed retry was applied; the rejected record is re-answered, not replayed.
    assert again.replayed == [processed[("default", "c1")]]


def test_redelivery_of_future_dated_record_later_retried_stays_rejected() -> None:
    future = cmd("c1", ("opt_out", "marketing", "email"), minutes=120)
    early_at, late_at = delivery(), delivery()
    first = run([rec(future, early_at)])
    assert first.outcomes[0].reason == "future_timestamp"
    processed = {p.key: p for p in first.processed}
    later_now = NOW + timedelta(hours=2)
    retried = apply_batch(
        DEFAULT_CATALOG,
        {},
        processed,
        [rec(future, late_at)],
        now=later_now,
        effective_at=later_now,
        max_future=timedelta(minutes=5),
    )
    assert retried.outcomes[0].status == "applied"
    processed.update({p.key: p for p in retried.processed})
    again = apply_batch(
        DEFAULT_CATALOG,
        retried.states,
        processed,
        [rec(future, early_at), rec(future, late_at)],
        now=later_now,
        effective_at=later_now,
        max_future=timedelta(minutes=5),
    )
    assert [(o.status, o.reason) for o in again.outcomes] == [
        ("rejected", "future_timestamp"),
        ("applied", None),
    ]
    assert again.processed == []
