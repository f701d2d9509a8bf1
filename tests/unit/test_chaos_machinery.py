"""The chaos suite's own logic: its oracle, its generator, its stall figure, its judge.

A checker that is wrong in the service's direction hides the service's bugs, so the oracle
is cross-checked against the domain it judges (two independent writings of one brief), and
every check is shown to fail on evidence built to fail it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.contract.decode import DeadLetter, decode_command
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import Delivery
from service.domain.decision import is_allowed
from service.domain.model import Rule
from tests.chaos import hostile, oracle
from tests.chaos.commands import DLQ, FOLD, CommandFactory, Planned
from tests.chaos.generator import StreamSpec, generate, hostile_counts, poll_question
from tests.chaos.kafka_io import LogRecord, Output, OutputLog, Sent
from tests.chaos.monitor import Sample, Window, longest_stall
from tests.chaos.reads import Read, stale_allow
from tests.chaos.verdict import Evidence, StoredState, dlq_problem, verdict

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TOPIC = "chaos.commands"


def test_the_oracles_catalog_is_the_shipped_one() -> None:
    assert set(oracle.CHANNELS) == set(DEFAULT_CATALOG.channels)
    assert set(oracle.TOPICS) == set(DEFAULT_CATALOG.topics)
    for name, info in oracle.TOPICS.items():
        spec = DEFAULT_CATALOG.topics[name]
        assert (info.mandatory, info.data_use, info.default_allowed) == (
            spec.mandatory,
            spec.data_use,
            spec.default_allowed,
        ), name


_PAIRS = [(t, c) for t in [*oracle.TOPICS, "*"] for c in [*sorted(oracle.CHANNELS), "*"]]
_QUESTIONS = [
    (t, "*" if oracle.TOPICS[t].data_use else c)
    for t in oracle.TOPICS
    for c in sorted(oracle.CHANNELS)
]


@settings(max_examples=300, deadline=None)
@given(
    rules=st.dictionaries(
        st.sampled_from(_PAIRS),
        st.tuples(st.integers(0, 5), st.booleans(), st.sampled_from(["a", "b", "c"])),
        max_size=8,
    ),
    question=st.sampled_from(_QUESTIONS),
)
def test_the_oracles_decision_agrees_with_the_domains(
    rules: dict[tuple[str, str], tuple[int, bool, str]], question: tuple[str, str]
) -> None:
    mine = {
        pair: oracle.Statement(NOW + timedelta(seconds=s), out, cid)
        for pair, (s, out, cid) in rules.items()
    }
    domain = {
        pair: Rule(
            pair[0],
            pair[1],
            "opt_out" if out else "opt_in",
            NOW + timedelta(seconds=s),
            "web",
            cid,
        )
        for pair, (s, out, cid) in rules.items()
    }
    topic, channel = question
    assert (
        oracle.decide(mine, topic, channel)
        == is_allowed(DEFAULT_CATALOG, domain, topic, channel).allowed
    )


def _doc(cid: str, subject: str, at: int, changes: list[tuple[str, str, str]]) -> dict[str, object]:
    return {
        "command_id": cid,
        "subject_id": subject,
        "occurred_at": (NOW - timedelta(days=1, seconds=-at)).isoformat(),
        "source": {"channel": "web"},
        "changes": [{"action": a, "topic": t, "channel": c} for a, t, c in changes],
    }


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_the_fold_converges_whatever_the_order(data: st.DataObject) -> None:
    docs = [
        _doc(
            f"c{i}",
            data.draw(st.sampled_from(["u1", "u2"])),
            data.draw(st.integers(0, 3)),
            [
                (
                    data.draw(st.sampled_from(["opt_out", "opt_in"])),
                    data.draw(st.sampled_from(["marketing", "marketing.newsletter", "*"])),
                    data.draw(st.sampled_from(["email", "sms", "*"])),
                )
            ],
        )
        for i in range(data.draw(st.integers(1, 8)))
    ]
    shuffled = data.draw(st.permutations(docs))
    resent = [*shuffled, *data.draw(st.lists(st.sampled_from(docs), max_size=4))]
    first, second = oracle.Fold(now=NOW), oracle.Fold(now=NOW)
    for doc in docs:
        first.feed(doc)
    for doc in resent:
        second.feed(doc)
    assert first.rules == second.rules


def test_the_fold_answers_as_the_contract_says() -> None:
    fold = oracle.Fold(now=NOW)
    doc = _doc("c1", "u1", 0, [("opt_out", "marketing", "email")])
    assert fold.feed(doc) == oracle.Expected("applied")
    assert fold.feed(doc) == oracle.Expected("duplicate")
    other = _doc("c1", "u1", 0, [("opt_in", "marketing", "email")])
    assert fold.feed(other) == oracle.Expected("rejected", "command_id_conflict")
    assert fold.feed({**other, "tenant": "acme"}) == oracle.Expected("applied")
    older = _doc("c2", "u1", -10, [("opt_in", "marketing", "email")])
    assert fold.feed(older) == oracle.Expected("unchanged")
    mandatory = _doc("c3", "u1", 0, [("opt_out", "security.alerts", "sms")])
    assert fold.feed(mandatory) == oracle.Expected("rejected", "mandatory_topic")
    fixed = _doc("c3", "u1", 5, [("opt_out", "marketing", "sms")])
    assert fold.feed(fixed) == oracle.Expected("applied")
    data_use = _doc("c4", "u1", 0, [("opt_out", "data.sale", "email")])
    assert fold.feed(data_use) == oracle.Expected("rejected", "unknown_channel")
    future = {**_doc("c5", "u1", 0, []), "occurred_at": (NOW + timedelta(hours=1)).isoformat()}
    assert fold.feed(future) == oracle.Expected("rejected", "future_timestamp")
    assert fold.versions[("default", "u1")] == 2
    assert fold.versions[("acme", "u1")] == 1


def test_a_seed_names_a_stream() -> None:
    spec = StreamSpec(seed=3, records=600)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    one = generate(spec, start)
    two = generate(spec, start)
    assert [(p.label, p.key, p.value, p.headers) for p in one] == [
        (p.label, p.key, p.value, p.headers) for p in two
    ]
    assert len(one) >= 600


def test_classes_switch_on_and_off() -> None:
    chosen = hostile.select(["nul", "value_empty"], ["nul_tenant"])
    assert "value_empty" in chosen
    assert "nul_reason" in chosen
    assert "nul_tenant" not in chosen
    stream = generate(StreamSpec(seed=1, records=400, classes=tuple(chosen), min_per_class=2))
    labels = Counter(p.label for p in stream if p.hostile)
    assert set(labels) == set(chosen)
    assert all(n >= 2 for n in labels.values())
    with pytest.raises(ValueError, match="unknown hostile class"):
        hostile.select(["no_such_class"])


def test_hostile_counts_keep_the_share_and_the_limits() -> None:
    spec = StreamSpec(seed=1, records=20_000, hostile_share=0.05)
    counts = hostile_counts(spec, random.Random(1))
    assert sum(counts.values()) == 1_000
    assert counts["oversized_compressed"] == hostile.CLASSES["oversized_compressed"].limit


@pytest.mark.parametrize("name", list(hostile.CLASSES))
def test_each_hostile_class_builds_what_it_names(name: str) -> None:
    factory = CommandFactory(random.Random(1), NOW - timedelta(days=2), "t")
    for variant in range(4):
        for record in hostile.build(name, factory, variant):
            assert record.label == name
            assert record.hostile
            assert record.expect == hostile.CLASSES[name].expects
            if record.expect == FOLD:
                assert record.doc is not None
                assert record.value is not None
            value = record.value or b""
            if name.startswith("nul_"):
                assert b"\\u0000" in value
            if name.startswith("surrogate_"):
                assert b"\\ud" in value
            if name.startswith("header_"):
                assert record.headers
            if name == "oversized_compressed":
                assert record.compressed
                assert len(value) > 2 * 1024 * 1024
            if name.startswith("value_") or name in ("oversized", "oversized_compressed"):
                decoded = decode_command(record.value, Delivery(TOPIC, 0, 0), max_bytes=64 * 1024)
                assert isinstance(decoded, DeadLetter), name


def test_a_poll_question_is_covered_by_the_opt_out() -> None:
    rng = random.Random(1)
    doc = _doc("c", "u", 0, [("opt_out", "*", "sms"), ("opt_in", "product", "email")])
    for _ in range(50):
        question = poll_question(doc, rng)
        assert question is not None
        topic, channel = question
        assert channel == ("*" if oracle.TOPICS[topic].data_use else "sms")
    assert poll_question(_doc("c", "u", 0, [("opt_in", "*", "*")]), rng) is None


def _samples(rows: list[tuple[float, int, int]]) -> list[Sample]:
    return [Sample(t, {0: committed}, {0: end}) for t, committed, end in rows]


def test_a_partition_stalls_while_its_offset_stays_put_with_records_behind_it() -> None:
    samples = _samples([(0, 0, 0), (1, 0, 5), (2, 0, 9), (3.5, 0, 9), (4, 9, 9), (5, 9, 9)])
    stall = longest_stall(samples, [])
    assert stall is not None
    assert stall.seconds == pytest.approx(2.5)  # from the first to the last sample that saw it
    assert stall.committed == 0
    covered = longest_stall(samples, [Window("kill", 0.5, 4.5)])
    assert covered is not None
    assert covered.seconds == 0
    half = longest_stall(samples, [Window("kill", 0, 2.5)])
    assert half is not None
    assert half.seconds == pytest.approx(1.0)


def test_a_moving_offset_or_an_empty_backlog_is_no_stall() -> None:
    assert longest_stall(_samples([(t, t, t + 3) for t in range(10)]), []) is None
    assert longest_stall(_samples([(t, 5, 5) for t in range(10)]), []) is None


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30),
    window=st.tuples(st.floats(0, 30), st.floats(0, 10)),
)
def test_windows_only_ever_shorten_a_stall(
    rows: list[tuple[int, int]], window: tuple[float, float]
) -> None:
    offsets = []
    committed = end = 0
    for step, (moved, produced) in enumerate(rows):
        end += produced
        committed = min(committed + moved, end)
        offsets.append((float(step), committed, end))
    samples = _samples(offsets)
    plain = longest_stall(samples, [])
    windowed = longest_stall(samples, [Window("x", window[0], window[0] + window[1])])
    assert (windowed.seconds if windowed else 0) <= (plain.seconds if plain else 0) + 1e-9


def _read(allowed: bool | None, version: int) -> Read:
    return Read("sdk", "default", "u", "marketing.newsletter", "email", version, allowed, None, 0)


def test_a_stale_allow_is_one_no_later_state_explains() -> None:
    out = {("marketing", "email"): oracle.Statement(NOW, True, "c1")}
    later = NOW + timedelta(seconds=1)
    back_in = {**out, ("marketing.newsletter", "*"): oracle.Statement(later, False, "c2")}
    assert stale_allow(_read(True, 1), {1: [out]}) is True
    assert stale_allow(_read(False, 1), {1: [out]}) is False
    assert stale_allow(_read(True, 1), {1: [out], 2: [back_in]}) is False
    assert stale_allow(_read(True, 1), {1: [out], 3: [out]}) is None  # version 2 unknown
    assert stale_allow(_read(None, 1), {1: [out]}) is None


def _outputs() -> OutputLog:
    return OutputLog("unused", "o", "e", "d", 1)


def _dead(value: bytes | None, headers: Mapping[str, bytes | None], offset: int = 0) -> Output:
    base: dict[str, bytes | None] = {
        "x-error": b"value is not valid JSON",
        "x-original-topic": TOPIC.encode(),
        "x-original-partition": b"0",
        "x-original-offset": str(offset).encode(),
    }
    return Output("d", 0, 0, b"k", value, {**base, **headers}, None, 0.0)


def test_the_dlq_must_hold_the_original_or_a_marked_cut() -> None:
    original = LogRecord(0, 0, b"k", b"x" * 100, ())
    assert dlq_problem(_dead(b"x" * 100, {}), original, TOPIC) is None
    cut = {"x-truncated": b"true", "x-original-size": b"100"}
    assert dlq_problem(_dead(b"x" * 10, cut), original, TOPIC) is None
    assert dlq_problem(_dead(b"y" * 10, cut), original, TOPIC) is not None
    assert dlq_problem(_dead(b"x" * 99, {}), original, TOPIC) is not None
    wrong_size = {"x-truncated": b"true", "x-original-size": b"99"}
    assert dlq_problem(_dead(b"x" * 10, wrong_size), original, TOPIC) is not None
    assert dlq_problem(_dead(b"x" * 100, {}), None, TOPIC) is not None


def _evidence(records: list[Planned], outputs: OutputLog) -> Evidence:
    log = [LogRecord(0, i, p.key, p.value, p.headers) for i, p in enumerate(records)]
    sent = [Sent(p, 0, i, 0.0) for i, p in enumerate(records)]
    return Evidence(TOPIC, log, sent, outputs, {}, 0, {}, NOW)


def test_the_judge_counts_a_silent_record_as_lost_and_a_wrong_answer_as_wrong() -> None:
    factory = CommandFactory(random.Random(2), NOW - timedelta(days=2), "j")
    applied = CommandFactory.planned("base.opt_out", factory.fresh())
    silent = CommandFactory.planned("base.opt_out", factory.fresh())
    rejected = Planned("value_not_json", b"k", b"{", DLQ, command_id="x")
    outputs = _outputs()
    assert applied.doc is not None
    assert applied.command_id is not None
    outcome = {
        "command_id": applied.command_id,
        "tenant": applied.doc.get("tenant", "default"),
        "subject_id": applied.doc["subject_id"],
        "status": "rejected",
        "reason": "invalid_payload",
    }
    outputs.outcomes.append(Output("o", 0, 0, None, json.dumps(outcome).encode(), {}, outcome, 0))
    outputs.dead_letters.append(_dead(b"{", {}, offset=2))
    report = verdict(_evidence([applied, silent, rejected], outputs))
    assert report["lost"] == 1
    assert report["wrong_outcomes"] == 1
    assert report["labels"]["value_not_json"]["ok"] == 1
    assert report["dlq_mismatches"] == 0
    assert report["postgres_mismatches"] == 2  # the oracle applied both, PostgreSQL holds none


def test_the_judge_compares_postgres_with_the_fold() -> None:
    factory = CommandFactory(random.Random(3), NOW - timedelta(days=2), "j")
    planned = CommandFactory.planned("base.opt_out", factory.fresh())
    assert planned.doc is not None
    assert planned.subject is not None
    evidence = _evidence([planned], _outputs())
    assert verdict(evidence)["postgres_mismatches"] == 1  # the oracle applied it, PostgreSQL not
    rules = oracle.Fold(now=NOW)
    rules.feed(planned.doc)
    evidence.postgres = {planned.subject: StoredState(1, rules.rules[planned.subject])}
    assert verdict(evidence)["postgres_mismatches"] == 0
