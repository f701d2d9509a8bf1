"""The hot-path encoders write exactly what the contract's pydantic models write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from service.contract.encode import event_json, outcome_json
from service.contract.v1 import OutcomeV1, PreferenceChangedV1
from service.domain.events import AppliedChange, Outcome, PreferenceChanged
from service.domain.model import Rule

zones = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7))])
moments = st.builds(
    lambda dt, tz: dt.replace(tzinfo=UTC).astimezone(tz),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    zones,
)
text = st.text(min_size=1, max_size=12)
actions = st.sampled_from(["opt_out", "opt_in"])
rules = st.builds(Rule, text, text, actions, moments, text, text)
events = st.builds(
    PreferenceChanged,
    text,
    text,
    text,
    st.integers(1, 10**9),
    moments,
    text,
    text,
    st.none() | text,
    st.lists(st.builds(AppliedChange, actions, text, text, moments), max_size=4).map(tuple),
    st.lists(rules, max_size=6).map(tuple),
)
outcomes = st.builds(
    Outcome,
    text,
    text,
    st.none() | text,
    st.sampled_from(["applied", "unchanged", "duplicate", "rejected"]),
    st.none() | st.sampled_from(["invalid_payload", "unknown_topic", "future_timestamp"]),
    st.none() | text,
    st.none() | st.integers(0, 10**9),
    st.none() | moments,
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_event_bytes_equal_the_model(event: PreferenceChanged) -> None:
    model = PreferenceChangedV1.from_domain(event).model_dump(mode="json")
    assert orjson.loads(event_json(event)) == model
    assert event_json(event) == PreferenceChangedV1.from_domain(event).model_dump_json().encode()


@settings(max_examples=300, deadline=None)
@given(outcomes)
def test_outcome_bytes_equal_the_model(outcome: Outcome) -> None:
    assert outcome_json(outcome) == OutcomeV1.from_domain(outcome).model_dump_json().encode()
