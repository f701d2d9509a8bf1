"""Effect receipts: matching applied reports to opt-out events, and a receipt's answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.adapters.kafka.effect_receipts import watched
from service.contract.receipts import SenderReportV1
from service.domain.receipts import (
    AppliedReport,
    EffectTracker,
    InvalidSenderName,
    Reporter,
    SenderState,
    WatchedEvent,
    checked_sender_name,
    quantile,
    receipt_answers,
)

MAIL = Reporter("mailer", "host-1")


def event(offset: int, effective_at: float = 100.0, partition: int = 0) -> WatchedEvent:
    return WatchedEvent(partition, offset, "default", f"c-{offset}", effective_at)


def report(applied: int, at: float, reporter: Reporter = MAIL, partition: int = 0) -> AppliedReport:
    return AppliedReport(reporter, at, {partition: applied})


def test_an_event_is_in_effect_from_the_first_report_past_it() -> None:
    tracker = EffectTracker()
    tracker.follow(0, 10)
    assert tracker.report(report(10, 100.0)) == []  # the first word: a starting position
    effects = tracker.read(0, [event(12, effective_at=100.0)], 13)
    assert effects == []  # read, but not applied yet
    assert tracker.report(report(12, 100.2)) == []  # applied up to 11: not past offset 12
    [effect] = tracker.report(report(13, 100.35))
    assert effect.event.offset == 12
    assert effect.seconds == pytest.approx(0.35)


def test_a_report_ahead_of_the_events_read_waits_for_them() -> None:
    tracker = EffectTracker()
    tracker.follow(0, 0)
    tracker.report(report(0, 100.0))
    assert tracker.report(report(5, 100.5)) == []  # nothing read yet
    [effect] = tracker.read(0, [event(3, effective_at=100.1)], 5)
    assert effect.seconds == pytest.approx(0.4)
    assert tracker.report(report(6, 101.0)) == []  # credited once only


def test_other_partitions_and_reporters_are_apart() -> None:
    tracker = EffectTracker()
    tracker.follow(0, 0)
    other = Reporter("sms", "host-2")
    tracker.report(report(0, 100.0))
    tracker.report(report(0, 100.0, other))
    tracker.read(0, [event(0)], 1)
    assert tracker.report(report(1, 100.5, partition=1)) == []  # not followed here
    [mine] = tracker.report(report(1, 100.5))
    assert mine.reporter == MAIL
    tracker.forget([0])
    assert tracker.report(report(2, 101.0, other)) == []
    assert tracker.positions() == {}


def test_pending_reports_are_bounded_and_never_time_an_effect_earlier() -> None:
    tracker = EffectTracker(max_pending=2)
    tracker.follow(0, 0)
    tracker.report(report(0, 100.0))
    for n in range(1, 6):
        tracker.report(report(n, 100.0 + n))
    effects = tracker.read(0, [event(o, effective_at=100.0) for o in range(5)], 5)
    assert [e.event.offset for e in effects] == [0, 1, 2, 3, 4]
    # Exact timing would be 1..5 s; merged reports may only make it later.
    assert all(e.seconds >= e.event.offset + 1 for e in effects)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, float]], list[str]]:
    offsets = sorted(draw(st.sets(st.integers(0, 60), max_size=20)))
    applied = sorted(draw(st.sets(st.integers(0, 62), min_size=1, max_size=12)))
    reports = [(a, 1000.0 + i) for i, a in enumerate(applied)]
    cuts = sorted(draw(st.lists(st.integers(0, 62), max_size=8)))
    steps = ["report"] * len(reports) + ["read"] * (len(cuts) + 1)
    order = draw(st.permutations(steps))
    return offsets, reports, [*order, *[f"cut:{c}" for c in cuts]]


@settings(max_examples=300, deadline=None)
@given(histories())
def test_every_effect_is_the_first_report_past_the_event(
    history: tuple[list[int], list[tuple[int, float]], list[str]],
) -> None:
    offsets, reports, plan = history
    cuts = [int(p.split(":")[1]) for p in plan if p.startswith("cut:")] + [63]
    order = [p for p in plan if not p.startswith("cut:")]
    tracker = EffectTracker()
    tracker.follow(0, 0)
    got: dict[int, float] = {}
    read_to, next_report, next_cut = 0, 0, 0
    for step in order:
        if step == "report":
            applied, at = reports[next_report]
            next_report += 1
            found = tracker.report(report(applied, at))
        else:
            cut = max(read_to, cuts[next_cut])
            next_cut += 1
            chunk = [event(o, effective_at=900.0) for o in offsets if read_to <= o < cut]
            found = tracker.read(0, chunk, cut)
            read_to = cut
        for effect in found:
            assert effect.event.offset not in got, "an event is timed once per reporter"
            got[effect.event.offset] = effect.event.effective_at + effect.seconds
    first_applied = reports[0][0]
    expected = {}
    for o in offsets:
        if o < first_applied or o >= read_to:
            continue
        later = [at for a, at in reports[1:] if a > o]
        if later:
            expected[o] = later[0]
    assert got == pytest.approx(expected)


def test_sender_names_are_short_and_plain() -> None:
    assert checked_sender_name("mailer-eu.1_a") == "mailer-eu.1_a"
    for bad in ("", "a" * 65, "has space", "slash/ed", "ünï"):
        with pytest.raises(InvalidSenderName):
            checked_sender_name(bad)


def test_quantile_is_the_nearest_rank() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([float(n) for n in range(1, 101)], 0.99) == 99.0


def state(sender: str, instance: str, applied: int, partition: int = 0) -> SenderState:
    return SenderState(Reporter(sender, instance), 100.0, {partition: applied})


def test_a_receipt_says_in_effect_after_the_slowest_instance_or_not_yet() -> None:
    answers = receipt_answers(
        partition=0,
        offset=7,
        effects_ms={Reporter("mail", "a"): 12.0, Reporter("mail", "b"): 30.0},
        senders=[
            state("mail", "a", 9),
            state("mail", "b", 8),
            state("sms", "x", 5),
            state("push", "p", 20),
        ],
    )
    by = {a.sender: a for a in answers}
    assert (by["mail"].status, by["mail"].effect_ms) == ("in_effect", 30.0)
    assert (by["sms"].status, by["sms"].behind_records) == ("not_yet", 3)
    assert by["push"].status == "in_effect_unmeasured"
    # One instance of a sender still behind: the sender as a whole is not yet there.
    [mail] = receipt_answers(
        partition=0,
        offset=7,
        effects_ms={Reporter("mail", "a"): 12.0},
        senders=[state("mail", "a", 9), state("mail", "b", 7)],
    )
    assert (mail.status, mail.behind_records) == ("not_yet", 1)


def test_the_report_contract_round_trips_and_refuses_odd_names() -> None:
    body = (
        b'{"sender":"mail","instance":"h-1","applied_at_ms":1500,'
        b'"positions":[{"partition":2,"applied_offset":9}]}'
    )
    parsed = SenderReportV1.model_validate_json(body).to_domain()
    assert parsed == AppliedReport(Reporter("mail", "h-1"), 1.5, {2: 9})
    with pytest.raises(ValueError, match="sender"):
        SenderReportV1.model_validate_json(body.replace(b'"mail"', b'"m a"'))


def test_only_opt_out_events_are_watched() -> None:
    base = (
        b'{"tenant":"t","command_id":"c1","effective_at":"2026-01-01T00:00:01+00:00",'
        b'"changes":[{"action":"%s"}],"preferences":[{"action":"opt_out"}]}'
    )
    found = watched(3, 40, base % b"opt_out")
    assert found == WatchedEvent(3, 40, "t", "c1", 1767225601.0)
    assert watched(3, 41, base % b"opt_in") is None  # an old opt-out rule is not this event's
    assert watched(3, 42, None) is None
    assert watched(3, 43, b"not json opt_out") is None


def test_imported_opt_outs_get_no_receipt() -> None:
    """An import's command id is a hash of the row (identifier included): no receipt keeps it."""
    template = (
        b'{"tenant":"t","command_id":"%s","effective_at":"2026-01-01T00:00:01+00:00",'
        b'"changes":[{"action":"opt_out"}]}'
    )
    assert watched(1, 2, template % (b"import-" + b"0" * 64)) is None
    assert watched(1, 3, template % (b"import-k1-" + b"0" * 64)) is None
    assert watched(1, 4, template % b"live-1") is not None  # positive control
