"""The peer benchmark's pure parts: what the JDBC sink is fed, and how latencies are summed up.

The sink only accepts values in Kafka Connect's JSON schema envelope and keys rows by
(subject, topic, channel); a wrong envelope would make the peer's figures those of a
failing task. The percentiles are nearest-rank: every figure must be a measured sample.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.common import CommandGenerator
from benchmarks.peer.records import (
    KEY_FIELDS,
    VALUE_SCHEMA,
    envelope,
    flatten,
    last_writes,
    latency_summary,
    nearest_rank,
    sink_records,
)
from benchmarks.peer.sink import jdbc_target
from benchmarks.peer_debezium import parse_trials

COMMAND: dict[str, Any] = {
    "command_id": "c-1",
    "subject_id": "user-7",
    "occurred_at": "2026-11-29T10:00:00.000Z",
    "source": {"channel": "web"},
    "changes": [
        {"action": "opt_out", "topic": "marketing", "channel": "email"},
        {"action": "opt_in", "topic": "product", "channel": "*"},
    ],
}


def test_each_change_becomes_one_row_payload_in_the_commands_order() -> None:
    rows = flatten(COMMAND)

    assert rows == [
        {
            "subject_id": "user-7",
            "topic": "marketing",
            "channel": "email",
            "action": "opt_out",
            "occurred_at": "2026-11-29T10:00:00.000Z",
            "command_id": "c-1",
        },
        {
            "subject_id": "user-7",
            "topic": "product",
            "channel": "*",
            "action": "opt_in",
            "occurred_at": "2026-11-29T10:00:00.000Z",
            "command_id": "c-1",
        },
    ]


def test_the_envelope_carries_the_schema_and_the_payload() -> None:
    doc = orjson.loads(envelope(flatten(COMMAND)[0]))

    assert set(doc) == {"schema", "payload"}
    assert doc["schema"] == VALUE_SCHEMA
    assert doc["payload"]["command_id"] == "c-1"


def test_the_schema_declares_every_payload_field_as_a_required_string() -> None:
    fields = {f["field"]: f for f in VALUE_SCHEMA["fields"]}

    assert set(fields) == set(flatten(COMMAND)[0])
    assert all(f["type"] == "string" and f["optional"] is False for f in fields.values())


def test_occurred_at_is_declared_a_timestamp_with_a_zone() -> None:
    fields = {f["field"]: f for f in VALUE_SCHEMA["fields"]}

    assert fields["occurred_at"]["name"] == "io.debezium.time.ZonedTimestamp"


def test_the_primary_key_fields_are_payload_fields() -> None:
    assert set(KEY_FIELDS) <= set(flatten(COMMAND)[0])


def test_records_keep_the_subject_as_kafka_key() -> None:
    records = sink_records([(b"user-7", orjson.dumps(COMMAND))])

    assert [key for key, _ in records] == [b"user-7", b"user-7"]


def test_the_benchmark_stream_flattens_to_one_record_per_change() -> None:
    generator = CommandGenerator(subjects=50, seed=3)
    commands = [generator.next()[1:] for _ in range(200)]

    records = sink_records(commands)

    assert len(records) == sum(len(orjson.loads(v)["changes"]) for _, v in commands)


def test_the_last_record_per_key_is_the_expected_row() -> None:
    later = {**COMMAND, "command_id": "c-2", "changes": [COMMAND["changes"][0]]}
    records = sink_records([(b"user-7", orjson.dumps(COMMAND)), (b"user-7", orjson.dumps(later))])

    expected = last_writes(records)

    assert expected == {("user-7", "marketing", "email"): "c-2", ("user-7", "product", "*"): "c-1"}


samples = st.lists(
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=300,
)


@given(samples, st.integers(min_value=1, max_value=100))
def test_a_nearest_rank_percentile_is_a_measured_sample(values: list[float], p: int) -> None:
    assert nearest_rank(sorted(values), p) in values


@given(samples, st.integers(min_value=1, max_value=100))
def test_at_least_p_percent_of_samples_lie_at_or_below_the_pth_percentile(
    values: list[float], p: int
) -> None:
    ordered = sorted(values)
    figure = nearest_rank(ordered, p)

    assert sum(1 for v in ordered if v <= figure) >= math.ceil(p * len(ordered) / 100)


@given(samples, st.integers(min_value=1, max_value=100))
def test_fewer_than_p_percent_lie_below_the_pth_percentile(values: list[float], p: int) -> None:
    ordered = sorted(values)
    figure = nearest_rank(ordered, p)

    assert sum(1 for v in ordered if v < figure) < math.ceil(p * len(ordered) / 100)


def test_percentiles_of_one_to_a_hundred() -> None:
    summary = latency_summary([float(v) for v in range(100, 0, -1)])

    assert summary == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0, "count": 100}


@given(samples)
def test_the_summary_is_ordered(values: list[float]) -> None:
    s = latency_summary(values)

    assert s["p50"] <= s["p95"] <= s["p99"] <= s["max"]


def test_no_samples_give_no_percentiles() -> None:
    assert latency_summary([]) == {"count": 0}


def test_a_dsn_becomes_a_jdbc_url_and_credentials() -> None:
    assert jdbc_target("postgresql://optout:secret@127.0.0.1:55432/optout") == (
        "jdbc:postgresql://127.0.0.1:55432/optout",
        "optout",
        "secret",
    )


def test_trials_are_read_as_tasks_by_batch_size() -> None:
    trials = parse_trials("1x500, 2x2000u")

    assert [(t.tasks, t.batch_size, t.unnest) for t in trials] == [
        (1, 500, False),
        (2, 2000, True),
    ]


def test_no_trial_is_refused() -> None:
    with pytest.raises(ValueError, match="no sink trial"):
        parse_trials(" , ")
