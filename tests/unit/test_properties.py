"""Convergence and correctness, checked against arbitrary command histories.

(a) Order, duplication and batching never change the final rules or any decision.
(b) Every decision equals an independent brute-force reading of the brief's rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.apply import CommandKey, ProcessedRecord, apply_batch
from service.domain.catalog import DEFAULT_CATALOG, Catalog, TopicSpec
from service.domain.commands import Change, Command, Delivery, Received, Source
from service.domain.decision import is_allowed
from service.domain.model import Action, SubjectKey, SubjectState

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BASE = NOW - timedelta(hours=1)
SUBJECTS = ("u1", "u2")

DENY_CATALOG = Catalog(
    DEFAULT_CATALOG.channels,
    {
        **DEFAULT_CATALOG.topics,
        "marketing": TopicSpec("marketing", default_allowed=False),
        "marketing.promotions": TopicSpec("marketing.promotions", default_allowed=False),
        "data.sale": TopicSpec("data.sale", default_allowed=False, data_use=True),
    },
)

MESSAGE_TOPICS = sorted(name for name, spec in DEFAULT_CATALOG.topics.items() if not spec.data_use)
MANDATORY_ROOTS = ("security", "transactional")
DATA_TOPICS = ("data.analytics", "data.personalization", "data.sale")
CHANNELS = sorted(DEFAULT_CATALOG.channels)


def _mandatory(topic: str) -> bool:
    return any(topic == root or topic.startswith(root + ".") for root in MANDATORY_ROOTS)


@st.composite
def changes(draw: st.DrawFn) -> Change:
    action: Action = draw(st.sampled_from(["opt_out", "opt_in"]))
    kind = draw(st.sampled_from(["message", "data", "wildcard", "sms"]))
    if kind == "sms":  # all SMS: a STOP when made by text, or a START's restore
        return Change(draw(st.sampled_from(["opt_out", "opt_in", "restore"])), "*", "sms")
    if kind == "data":
        return Change(action, draw(st.sampled_from(DATA_TOPICS)), "*")
    if kind == "wildcard":
        return Change(action, "*", draw(st.sampled_from([*CHANNELS, "*"])))
    topic = draw(st.sampled_from(MESSAGE_TOPICS))
    if _mandatory(topic):
        action = "opt_in"  # an opt-out would be rejected; tested elsewhere
    return Change(action, topic, draw(st.sampled_from([*CHANNELS, "*"])))


@st.composite
def command_lists(draw: st.DrawFn) -> list[Command]:
    count = draw(st.integers(min_value=1, max_value=12))
    commands = []
    for index in range(count):
        commands.append(
            Command(
                command_id=f"cmd-{draw(st.integers(0, 3))}-{index:02d}",
                subject_id=draw(st.sampled_from(SUBJECTS)),
                tenant="default",
                # Few distinct instants, so ties are common.
                occurred_at=BASE + timedelta(seconds=draw(st.integers(0, 3))),
                source=Source(draw(st.sampled_from(["web", "email", "sms"]))),
                changes=tuple(draw(st.lists(changes(), min_size=1, max_size=4))),
                reason=None,
            )
        )
    return commands


def run_in_batches(
    catalog: Catalog, commands: Sequence[Command], cuts: Sequence[int], redeliver: bool = False
) -> dict[SubjectKey, SubjectState]:
    """Apply records batch by batch, persisting between batches as the adapters do.

    With `redeliver`, every batch is consumed a second time after it was persisted, as after
    a crash before the offset commit: the answers must repeat and nothing must be re-applied.
    """
    states: dict[SubjectKey, SubjectState] = {}
    processed: dict[CommandKey, ProcessedRecord] = {}
    records = [
        Received(command, Delivery("t", 0, offset)) for offset, command in enumerate(commands)
    ]
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        result = apply_batch(
            catalog,
            states,
            processed,
            records[start:end],
            now=NOW,
            effective_at=NOW,
            max_future=timedelta(minutes=5),
        )
        assert len(result.outcomes) == end - start
        assert all(o.status in ("applied", "unchanged", "duplicate") for o in result.outcomes)
        states.update(result.states)
        processed.update({p.key: p for p in result.processed})
        if redeliver:
            again = apply_batch(
                catalog,
                states,
                processed,
                records[start:end],
                now=NOW,
                effective_at=NOW + timedelta(seconds=1),
                max_future=timedelta(minutes=5),
            )
            assert again.outcomes == result.outcomes
            # Every log entry this batch wrote is replayed once; resends stay `duplicate`.
            assert sorted(p.command_id for p in again.replayed) == sorted(
                p.command_id for p in result.processed
            )
            assert again.events == []
            assert again.processed == []
            assert again.changed == {}
    return states


def questions(catalog: Catalog) -> list[tuple[str, str]]:
    asked: list[tuple[str, str]] = []
    for topic, spec in catalog.topics.items():
        # Channel `*` is a data use's only channel, and never one of a message topic.
        channels = ["*"] if spec.data_use else CHANNELS
        asked.extend((topic, channel) for channel in channels)
    return asked


def rules_of(states: dict[SubjectKey, SubjectState], subject: str) -> dict[tuple[str, str], object]:
    state = states.get(SubjectKey("default", subject))
    return dict(state.rules) if state else {}


@settings(max_examples=200, deadline=None)
@given(
    commands=command_lists(),
    data=st.data(),
    catalog=st.sampled_from([DEFAULT_CATALOG, DENY_CATALOG]),
)
def test_order_duplication_and_batching_do_not_matter(
    commands: list[Command], data: st.DataObject, catalog: Catalog
) -> None:
    reference = run_in_batches(catalog, commands, [])
    extra = data.draw(st.lists(st.sampled_from(commands), max_size=6))
    shuffled = data.draw(st.permutations([*commands, *extra]))
    cuts = data.draw(st.lists(st.integers(0, 100), max_size=4))
    other = run_in_batches(catalog, shuffled, cuts, redeliver=data.draw(st.booleans()))
    for subject in SUBJECTS:
        assert rules_of(other, subject) == rules_of(reference, subject)
        key = SubjectKey("default", subject)
        mine = other.get(key, SubjectState.empty(key))
        theirs = reference.get(key, SubjectState.empty(key))
        for topic, channel in questions(catalog):
            assert is_allowed(catalog, mine, topic, channel) == is_allowed(
                catalog, theirs, topic, channel
            )


def oracle(
    catalog: Catalog, commands: Sequence[Command], subject: str, topic: str, channel: str
) -> tuple[bool, str, tuple[datetime, bool, str] | None]:
    """The brief's rule read literally, over every change ever made, with no stored state.

    A restore is no candidate; it voids every SMS keyword stop (an opt-out of `*` on `sms`
    made through `sms`) older than it.
    """
    if _mandatory(topic):
        return True, "mandatory", None
    best: tuple[datetime, bool, str] | None = None
    best_action = ""
    mine = [command for command in commands if command.subject_id == subject]
    restores = [c.occurred_at for c in mine for change in c.changes if change.action == "restore"]
    latest_restore = max(restores, default=None)
    for command in mine:
        for change in command.changes:
            if change.action == "restore":
                continue
            keyword_stop = (change.action, change.topic, change.channel) == (
                "opt_out",
                "*",
                "sms",
            ) and command.source.channel == "sms"
            if keyword_stop and latest_restore is not None and latest_restore > command.occurred_at:
                continue
            topic_covers = (
                change.topic == "*" or change.topic == topic or topic.startswith(change.topic + ".")
            )
            channel_covers = change.channel in ("*", channel)
            if not (topic_covers and channel_covers):
                continue
            key = (command.occurred_at, change.action == "opt_out", command.command_id)
            if best is None or key > best:
                best, best_action = key, change.action
    if best is None:
        return catalog.topics[topic].default_allowed, "default", None
    return best_action == "opt_in", "rule", best


@settings(max_examples=200, deadline=None)
@given(
    commands=command_lists(),
    catalog=st.sampled_from([DEFAULT_CATALOG, DENY_CATALOG]),
)
def test_decisions_match_brute_force_oracle(commands: list[Command], catalog: Catalog) -> None:
    unique = list({c.command_id: c for c in commands}.values())
    states = run_in_batches(catalog, unique, [])
    for subject in SUBJECTS:
        key = SubjectKey("default", subject)
        state = states.get(key, SubjectState.empty(key))
        for topic, channel in questions(catalog):
            decision = is_allowed(catalog, state, topic, channel)
            allowed, basis, rule_key = oracle(catalog, unique, subject, topic, channel)
            assert (decision.allowed, decision.basis) == (allowed, basis), (topic, channel)
            got = decision.rule.precedence_key() if decision.rule else None
            assert got == rule_key
