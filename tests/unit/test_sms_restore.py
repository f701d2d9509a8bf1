"""START undoes STOP, nothing more: SMS keyword stops and restores over any rule history.

(a) For any history of SMS rules (per topic, on `*`, made through any channel, any actions
    and times), a STOP by text then a START leaves every (topic, `sms`) decision as it was
    before the STOP: per-topic opt-outs, all-SMS opt-outs made elsewhere (which the STOP's
    rule replaced in its cell) and default-deny topics stay denied.
(b) The result never depends on the order, repetition or batching of the commands.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.catalog import DEFAULT_CATALOG, Catalog
from service.domain.commands import Change, Command, Source
from service.domain.decision import is_allowed
from service.domain.model import Action, Decision, SubjectKey, SubjectState
from service.domain.sms_restore import KEPT, RESTORED, cells_of, statements_of
from service.domain.validation import validate
from tests.unit.test_identity_properties import Step, answer, run
from tests.unit.test_properties import DENY_CATALOG, MESSAGE_TOPICS, run_in_batches

BASE = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
KEY = SubjectKey("default", "u1")
SOURCES = ("web", "api", "email", "sms", "support", "import")


def command(
    command_id: str, *changes: tuple[Action, str, str], seconds: int, source: str
) -> Command:
    return Command(
        command_id=command_id,
        subject_id=KEY.subject_id,
        tenant="default",
        occurred_at=BASE + timedelta(seconds=seconds),
        source=Source(source),
        changes=tuple(Change(a, t, c) for a, t, c in changes),
    )


def stop(command_id: str, seconds: int) -> Command:
    return command(command_id, ("opt_out", "*", "sms"), seconds=seconds, source="sms")


def start(command_id: str, seconds: int, source: str = "sms") -> Command:
    return command(command_id, ("restore", "*", "sms"), seconds=seconds, source=source)


def state_after(catalog: Catalog, commands: list[Command]) -> SubjectState:
    return run_in_batches(catalog, commands, []).get(KEY, SubjectState.empty(KEY))


def sms_decisions(catalog: Catalog, state: SubjectState) -> dict[str, Decision]:
    return {
        topic: is_allowed(catalog, state, topic, "sms")
        for topic, spec in catalog.topics.items()
        if not spec.data_use
    }


def verdicts(decisions: dict[str, Decision]) -> dict[str, bool]:
    return {topic: d.allowed for topic, d in decisions.items()}


@st.composite
def sms_histories(draw: st.DrawFn) -> list[Command]:
    """Statements about SMS (a topic or `*`, on `sms` or `*`), from any channel, with any
    actions and times; a STOP by text in it is answered by a START, as on a real phone."""
    history: list[Command] = []
    for index in range(draw(st.integers(0, 8))):
        source = draw(st.sampled_from(SOURCES))
        topic = draw(st.sampled_from(["*", *MESSAGE_TOPICS]))
        channel = draw(st.sampled_from(["sms", "*"]))
        action: Action = draw(st.sampled_from(["opt_out", "opt_in"]))
        if topic.startswith(("security", "transactional")):
            action = "opt_in"  # an opt-out of a mandatory topic is rejected; tested elsewhere
        seconds = draw(st.integers(0, 50))
        history.append(
            command(f"h{index}", (action, topic, channel), seconds=seconds, source=source)
        )
        if (action, topic, channel, source) == ("opt_out", "*", "sms", "sms"):
            answered = seconds + draw(st.integers(1, 10))
            history.append(start(f"h{index}-start", answered, draw(st.sampled_from(SOURCES))))
    return history


@settings(max_examples=300, deadline=None)
@given(
    history=sms_histories(),
    catalog=st.sampled_from([DEFAULT_CATALOG, DENY_CATALOG]),
    gap=st.integers(1, 5),
    data=st.data(),
)
def test_stop_then_start_leaves_every_sms_decision_as_before_the_stop(
    history: list[Command], catalog: Catalog, gap: int, data: st.DataObject
) -> None:
    before = sms_decisions(catalog, state_after(catalog, history))
    stop_at = 100 + gap
    stopped = state_after(catalog, [*history, stop("stop", stop_at)])
    assert not any(
        d.allowed for t, d in sms_decisions(catalog, stopped).items() if d.basis != "mandatory"
    )
    commands = [*history, stop("stop", stop_at), start("start", stop_at + gap)]
    # Whatever order and batching the records arrive in.
    arrived = data.draw(st.permutations(commands))
    cuts = data.draw(st.lists(st.integers(0, 30), max_size=3))
    after = run_in_batches(catalog, arrived, cuts).get(KEY, SubjectState.empty(KEY))
    assert verdicts(sms_decisions(catalog, after)) == verdicts(before)
    # Each deciding statement is the same one, named as it was made.
    for topic, decision in sms_decisions(catalog, after).items():
        expected = before[topic].rule
        assert (decision.rule and decision.rule.precedence_key()) == (
            expected and expected.precedence_key()
        )
        assert decision.rule is None or decision.rule.topic not in (KEPT, RESTORED)


@settings(max_examples=200, deadline=None)
@given(
    history=sms_histories(),
    keywords=st.lists(
        st.tuples(st.sampled_from(["stop", "start"]), st.integers(0, 60)), max_size=6
    ),
    data=st.data(),
)
def test_stops_and_restores_converge_whatever_the_arrival_order(
    history: list[Command], keywords: list[tuple[str, int]], data: st.DataObject
) -> None:
    replies = [
        stop(f"k{i}", at) if kind == "stop" else start(f"k{i}", at)
        for i, (kind, at) in enumerate(keywords)
    ]
    commands = [*history, *replies]
    reference = state_after(DEFAULT_CATALOG, commands)
    again = data.draw(st.lists(st.sampled_from(commands), max_size=4)) if commands else []
    arrived = data.draw(st.permutations([*commands, *again]))
    cuts = data.draw(st.lists(st.integers(0, 30), max_size=3))
    other = run_in_batches(DEFAULT_CATALOG, arrived, cuts).get(KEY, SubjectState.empty(KEY))
    assert dict(other.rules) == dict(reference.rules)
    assert sms_decisions(DEFAULT_CATALOG, other) == sms_decisions(DEFAULT_CATALOG, reference)


def test_the_reported_case_per_topic_opt_out_web_opt_out_and_default_deny_stay_denied() -> None:
    promotions_out = command(
        "p", ("opt_out", "marketing.promotions", "sms"), seconds=0, source="sms"
    )
    history = [promotions_out]
    for reply in (start("start", 20), start("yes", 30)):
        state = state_after(DENY_CATALOG, [*history, stop("stop", 10), reply])
        assert not is_allowed(DENY_CATALOG, state, "marketing.promotions", "sms").allowed
        assert not is_allowed(DENY_CATALOG, state, "marketing", "sms").allowed  # default deny
        assert is_allowed(DENY_CATALOG, state, "product.updates", "sms").allowed
    # An opt-out of all SMS made on the web, which the STOP's rule replaced in its cell.
    web_out = command("w", ("opt_out", "*", "sms"), seconds=5, source="web")
    state = state_after(DEFAULT_CATALOG, [web_out, stop("stop", 10), start("start", 20)])
    decision = is_allowed(DEFAULT_CATALOG, state, "product.updates", "sms")
    assert not decision.allowed
    assert decision.rule is not None
    assert (decision.rule.topic, decision.rule.command_id) == ("*", "w")
    # Positive control: without that web opt-out, START gives SMS back.
    state = state_after(DEFAULT_CATALOG, [stop("stop", 10), start("start", 20)])
    assert is_allowed(DEFAULT_CATALOG, state, "product.updates", "sms").allowed


def test_a_start_before_the_stop_or_at_the_same_instant_undoes_nothing() -> None:
    for at in (5, 10):
        state = state_after(DEFAULT_CATALOG, [stop("stop", 10), start("start", at)])
        assert not is_allowed(DEFAULT_CATALOG, state, "product.updates", "sms").allowed
    # A STOP after the START stands.
    state = state_after(DEFAULT_CATALOG, [stop("s1", 10), start("start", 20), stop("s2", 30)])
    assert not is_allowed(DEFAULT_CATALOG, state, "product.updates", "sms").allowed


def test_a_restore_changes_nothing_but_sms_and_is_recorded_as_made() -> None:
    email_out = command("e", ("opt_out", "*", "email"), seconds=0, source="sms")
    all_out = command("a", ("opt_out", "*", "*"), seconds=1, source="sms")
    state = state_after(DEFAULT_CATALOG, [email_out, all_out, stop("s", 10), start("r", 20)])
    assert not is_allowed(DEFAULT_CATALOG, state, "product.updates", "sms").allowed  # (*, *)
    assert not is_allowed(DEFAULT_CATALOG, state, "product.updates", "email").allowed
    assert statements_of([state.rules[(RESTORED, "sms")]])[0].topic == "*"


def test_only_topic_star_on_sms_can_be_restored() -> None:
    bad = command("b", ("restore", "marketing", "sms"), seconds=0, source="web")
    found = validate(DEFAULT_CATALOG, bad, now=BASE, max_future=timedelta(minutes=5))
    assert found is not None
    assert found[0] == "invalid_payload"
    assert "restore" in found[1]
    good = command("g", ("restore", "*", "sms"), seconds=0, source="web")
    assert validate(DEFAULT_CATALOG, good, now=BASE, max_future=timedelta(minutes=5)) is None


@pytest.mark.parametrize(
    ("action", "source", "topics"),
    [
        ("opt_out", "sms", ["*"]),  # a keyword stop: its own cell only
        ("opt_out", "web", ["*", KEPT]),  # kept aside for a restore
        ("opt_in", "sms", ["*", KEPT]),
        ("restore", "sms", [RESTORED]),
    ],
)
def test_cells_each_statement_writes(action: Action, source: str, topics: list[str]) -> None:
    rule = state_after(
        DEFAULT_CATALOG, [command("c", (action, "*", "sms"), seconds=0, source=source)]
    ).rules
    assert sorted(t for t, _ in rule) == sorted(topics)
    (only,) = statements_of(list(rule.values()))
    assert (only.action, only.topic, only.channel) == (action, "*", "sms")
    assert cells_of(only) == tuple(rule[(t, "sms")] for t in topics)


PHONE = "phone:+14155550123"


def said(command_id: str, subject: str, action: Action, seconds: int, source: str) -> Step:
    """A statement about all SMS under `subject`."""
    made = replace(
        command(command_id, (action, "*", "sms"), seconds=seconds, source=source),
        subject_id=subject,
    )
    return Step("preferences", subject, None, made)


def joined(kind: str, subject: str, target: str) -> Step:
    made = Command(
        command_id=f"{kind}-{subject}",
        subject_id=subject,
        tenant="default",
        occurred_at=BASE,
        source=Source("support"),
        changes=(),
        kind=kind,  # type: ignore[arg-type]
        target=target,
    )
    return Step(kind, subject, target, made)


@pytest.mark.parametrize(
    "identity",
    [("link", "u1", PHONE), ("merge", "u1", PHONE), ("merge", PHONE, "u1")],
    ids=["link", "merge-u1-into-phone", "merge-phone-into-u1"],
)
@pytest.mark.parametrize("joined_first", [True, False], ids=["joined-first", "joined-last"])
@pytest.mark.parametrize("opted_in_on_the_phone", [True, False], ids=["opt-in", "no-opt-in"])
def test_a_start_under_one_id_undoes_a_stop_under_another_and_nothing_more(
    identity: tuple[str, str, str], joined_first: bool, opted_in_on_the_phone: bool
) -> None:
    """Linked or merged, the ids answer as every statement the person made under either:
    the phone's START undoes u1's earlier STOP, and what decides all SMS then is the latest
    other all-SMS statement, whichever id it was made under (u1's web opt-out, or the
    phone's later web opt-in). The joined rules hold u1's STOP in (`*`, `sms`) beside the
    phone's `#restore` and, with the opt-in, the phone's `#kept`."""
    statements = [
        said("w-out", "u1", "opt_out", seconds=0, source="web"),
        said("stop", "u1", "opt_out", seconds=2, source="sms"),
        said("start", PHONE, "restore", seconds=3, source="sms"),
    ]
    if opted_in_on_the_phone:
        statements.append(said("w-in", PHONE, "opt_in", seconds=1, source="web"))
    link = joined(*identity)
    states, statuses = run([link, *statements] if joined_first else [*statements, link], [])
    assert set(statuses) == {"applied"}
    for name in ("u1", PHONE):
        # Positive control: the verdict follows the phone's opt-in, so neither is a constant.
        assert answer(states, name, "marketing", "sms") is opted_in_on_the_phone, name
        assert answer(states, name, "product.updates", "sms") is opted_in_on_the_phone, name
        assert answer(states, name, "marketing", "email"), name  # email untouched
