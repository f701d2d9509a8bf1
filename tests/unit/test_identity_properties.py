"""Links and merges against an oracle, over arbitrary interleavings and batchings.

The oracle knows nothing of forwards, versions or stored rule sets: it keeps every
statement a person made, under any of their ids, and joins two people's statements when
their ids are linked or merged. A decision is then the brief's rule over all of them: the
latest covering statement wins, a tie goes to the opt-out; a restore is no candidate and
voids every SMS keyword stop (an opt-out of `*` on `sms` made through `sms`) older than the
person's latest restore, whichever of their ids either was made under. The service must
answer exactly that for every id, whatever the batching; and, stated on its own, a merge
never turns a question both sides denied into an allow, nor an opt-out into an allow without
a later opt-in or restore of the same person.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.apply import CommandKey, ProcessedRecord, apply_batch
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import Command, Delivery, Received, Source
from service.domain.decision import is_allowed
from service.domain.model import WILDCARD, Rule, SubjectKey, SubjectState
from tests.unit.test_properties import BASE, NOW, changes, questions

IDS = ("u1", "u2", "u3", "email:a@example.com", "phone:+14155550123", "device:d1")
IDENTIFIERS = IDS[3:]
TENANT = "default"


@dataclass(frozen=True)
class Step:
    kind: str  # preferences | link | merge
    subject: str
    target: str | None
    command: Command


@st.composite
def steps(draw: st.DrawFn) -> list[Step]:
    count = draw(st.integers(min_value=1, max_value=14))
    made: list[Step] = []
    for index in range(count):
        kind = draw(st.sampled_from(["preferences", "preferences", "link", "merge"]))
        subject = draw(st.sampled_from(IDS))
        target: str | None = None
        if kind == "link":
            target = draw(st.sampled_from(IDENTIFIERS))
        elif kind == "merge":
            target = draw(st.sampled_from(IDS))
        command = Command(
            command_id=f"c{index:02d}",
            subject_id=subject,
            tenant=TENANT,
            occurred_at=BASE + timedelta(seconds=draw(st.integers(0, 3))),
            source=Source(draw(st.sampled_from(["web", "email", "sms"]))),
            changes=tuple(draw(st.lists(changes(), min_size=1, max_size=3)))
            if kind == "preferences"
            else (),
            kind=kind,  # type: ignore[arg-type]
            target=target,
        )
        made.append(Step(kind, subject, target, command))
    return made


class Oracle:
    """Union-find over ids; every statement kept with the person who made it."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.statements: dict[str, list[Rule]] = {}

    def find(self, name: str) -> str:
        while self.parent.get(name, name) != name:
            name = self.parent[name]
        return name

    def join(self, gone: str, kept: str) -> None:
        self.parent[gone] = kept
        self.statements.setdefault(kept, []).extend(self.statements.pop(gone, []))

    def apply(self, step: Step) -> str:
        if step.kind == "preferences":
            kept = self.statements.setdefault(self.find(step.subject), [])
            new = [
                Rule(
                    change.topic,
                    change.channel,
                    change.action,
                    step.command.occurred_at,
                    step.command.source.channel,
                    step.command.command_id,
                )
                for change in step.command.changes
            ]
            # Applied when some statement beats every earlier one in a register it is kept in.
            changed = any(
                all(
                    rule.precedence_key() > old.precedence_key()
                    for old in kept
                    if register in _registers(old)
                )
                for rule in new
                for register in _registers(rule)
            )
            kept.extend(new)
            return "applied" if changed else "unchanged"
        assert step.target is not None
        subject = self.find(step.subject)
        if step.kind == "merge":
            into = self.find(step.target)
            if into == subject:
                return "unchanged"
            self.join(subject, into)
            return "applied"
        identifier = self.find(step.target)
        if identifier == subject:
            return "unchanged"
        if identifier != step.target:
            return "rejected"  # linked elsewhere
        self.join(identifier, subject)
        return "applied"

    def decision(self, name: str, topic: str, channel: str) -> bool:
        spec = DEFAULT_CATALOG.spec(topic)
        if DEFAULT_CATALOG.is_mandatory(topic):
            return True
        covering_topics = {*DEFAULT_CATALOG.lineage(topic), WILDCARD}
        covering_channels = {channel, WILDCARD} if channel != WILDCARD else {WILDCARD}
        mine = self.statements.get(self.find(name), [])
        restored = max((r.occurred_at for r in mine if r.action == "restore"), default=None)
        best: Rule | None = None
        for rule in mine:
            if rule.action == "restore":
                continue
            if _keyword_stop(rule) and restored is not None and restored > rule.occurred_at:
                continue  # undone by a later START, under any id of the person
            covers = rule.topic in covering_topics and rule.channel in covering_channels
            if covers and (best is None or rule.precedence_key() > best.precedence_key()):
                best = rule
        return spec.default_allowed if best is None else best.action == "opt_in"


def _keyword_stop(rule: Rule) -> bool:
    """What a STOP reply records: an opt-out of all SMS, made by text message."""
    return (rule.action, rule.topic, rule.channel, rule.source_channel) == (
        "opt_out",
        WILDCARD,
        "sms",
        "sms",
    )


def _registers(rule: Rule) -> set[str]:
    """The last-writer-wins registers a statement is kept in (the contract's "Restore"): its
    own (topic, channel), except that a statement about all SMS is kept in `*` (unless a
    restore), in `#kept` (unless a restore or a keyword stop) or in `#restore` (a restore)."""
    if (rule.topic, rule.channel) != (WILDCARD, "sms"):
        return {f"{rule.topic}/{rule.channel}"}
    if rule.action == "restore":
        return {"#restore"}
    return {"*/sms"} if _keyword_stop(rule) else {"*/sms", "#kept"}


def run(
    steps_: Sequence[Step], cuts: Sequence[int]
) -> tuple[dict[SubjectKey, SubjectState], list[str]]:
    """The service's core, batch by batch, storing between batches as the adapters do."""
    states: dict[SubjectKey, SubjectState] = {}
    processed: dict[CommandKey, ProcessedRecord] = {}
    records = [Received(s.command, Delivery("t", 0, i)) for i, s in enumerate(steps_)]
    statuses: list[str] = []
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        result = apply_batch(
            DEFAULT_CATALOG,
            states,
            processed,
            records[start:end],
            now=NOW,
            effective_at=NOW,
            max_future=timedelta(minutes=5),
        )
        statuses.extend(o.status for o in result.outcomes)
        states.update(result.changed)
        for tenant, old, new in result.repointed:
            for key, state in list(states.items()):
                if key.tenant == tenant and state.merged_into == old and key.subject_id != new:
                    states[key] = SubjectState.adopting(key, state.version, {}, new)
        processed.update({p.key: p for p in result.processed})
    return states, statuses


def answer(states: dict[SubjectKey, SubjectState], name: str, topic: str, channel: str) -> bool:
    key = SubjectKey(TENANT, name)
    hops = 0
    while (state := states.get(key)) is not None and state.merged_into is not None:
        assert hops < 1, "stored forwards are one hop deep"
        key = SubjectKey(TENANT, state.merged_into)
        hops += 1
    rules = states.get(key)
    return is_allowed(DEFAULT_CATALOG, rules.rules if rules else {}, topic, channel).allowed


@settings(max_examples=300, deadline=None)
@given(steps(), st.lists(st.integers(0, 20), max_size=4))
def test_every_id_answers_as_the_oracle_whatever_the_batching(
    steps_: list[Step], cuts: list[int]
) -> None:
    oracle = Oracle()
    expected = [oracle.apply(step) for step in steps_]
    states, statuses = run(steps_, cuts)
    assert statuses == expected
    for name in IDS:
        for topic, channel in questions(DEFAULT_CATALOG):
            assert answer(states, name, topic, channel) == oracle.decision(name, topic, channel), (
                name,
                topic,
                channel,
            )


@settings(max_examples=300, deadline=None)
@given(steps(), st.sampled_from(IDS), st.sampled_from(IDS))
def test_a_merge_never_turns_an_opt_out_into_an_allow(
    steps_: list[Step], gone: str, kept: str
) -> None:
    before, _ = run(steps_, [])
    merge = Command(
        command_id="the-merge",
        subject_id=gone,
        tenant=TENANT,
        occurred_at=NOW,
        source=Source("support"),
        changes=(),
        kind="merge",
        target=kept,
    )
    after, statuses = run([*steps_, Step("merge", gone, kept, merge)], [])
    if statuses[-1] != "applied":
        return
    oracle = Oracle()
    for step in steps_:
        oracle.apply(step)
    restored = max(
        (
            rule.occurred_at
            for name in {oracle.find(gone), oracle.find(kept)}
            for rule in oracle.statements.get(name, [])
            if rule.action == "restore"
        ),
        default=None,
    )
    rules_of = {name: _rules(before, name) for name in (gone, kept)}
    for topic, channel in questions(DEFAULT_CATALOG):
        denials = [is_allowed(DEFAULT_CATALOG, rules_of[name], topic, channel) for name in rules_of]
        opt_outs = [d.rule for d in denials if d.rule is not None and d.rule.action == "opt_out"]
        # The merged person's latest START undoes their STOPs made before it, under either id.
        undone = [
            rule
            for rule in opt_outs
            if _keyword_stop(rule) and restored is not None and restored > rule.occurred_at
        ]
        standing = [rule for rule in opt_outs if rule not in undone]
        allowed_after = answer(after, kept, topic, channel)
        assert answer(after, gone, topic, channel) == allowed_after
        if not any(denial.allowed for denial in denials) and allowed_after:
            # Both sides denied: only a START undoing a STOP of one side can allow.
            assert undone, (topic, channel)
        decided = is_allowed(DEFAULT_CATALOG, _rules(after, kept), topic, channel)
        if allowed_after and decided.rule is not None:
            # The allow comes from an opt-in later than every covering opt-out in force.
            for opt_out in standing:
                assert decided.rule.precedence_key() > opt_out.precedence_key(), (topic, channel)


def _rules(states: dict[SubjectKey, SubjectState], name: str) -> dict[tuple[str, str], Rule]:
    key = SubjectKey(TENANT, name)
    while (state := states.get(key)) is not None and state.merged_into is not None:
        key = SubjectKey(TENANT, state.merged_into)
    state = states.get(key)
    return dict(state.rules) if state else {}
