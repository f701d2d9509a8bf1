"""The hot path's shortcuts give exactly what the straightforward code they replace gives."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.catalog import DEFAULT_CATALOG, _lineage
from service.domain.commands import Change, Command, Source, content_hash
from service.domain.events import EVENT_NAMESPACE, event_id_for
from service.domain.model import Rule, SubjectKey, SubjectState

_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
# A named zero offset is UTC in value but not the `UTC` object the shortcuts test for.
_ZONES = st.sampled_from(
    [
        UTC,
        timezone(timedelta(0), "Z"),
        timezone(timedelta(hours=5, minutes=30)),
        timezone(-timedelta(hours=8)),
    ]
)


@given(tenant=_TEXT, subject_id=_TEXT, version=st.integers(min_value=0, max_value=2**63))
def test_event_id_is_uuid5(tenant: str, subject_id: str, version: int) -> None:
    expected = uuid.uuid5(EVENT_NAMESPACE, f"{tenant}\x1f{subject_id}\x1f{version}")
    assert event_id_for(tenant, subject_id, version) == str(expected)


class _Moment(datetime):
    """A datetime subclass, as some libraries hand out (orjson cannot write these)."""


def _reference_content_hash(command: Command) -> str:
    """The canonical form as first written, before the orjson datetime shortcut."""
    canonical = {
        "command_id": command.command_id,
        "subject_id": command.subject_id,
        "tenant": command.tenant,
        "occurred_at": command.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "source": {
            "channel": command.source.channel,
            "app": command.source.app,
            "ip": command.source.ip,
            "user_agent": command.source.user_agent,
        },
        "changes": [
            {"action": change.action, "topic": change.topic, "channel": change.channel}
            for change in command.changes
        ],
        "reason": command.reason,
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),  # hypothesis bounds are naive
        max_value=datetime(9999, 12, 30),
        timezones=_ZONES,
    ),
    whole_second=st.booleans(),
    subclass=st.booleans(),
    reason=st.none() | _TEXT,
)
def test_content_hash_matches_isoformat_canonical_form(
    moment: datetime, whole_second: bool, subclass: bool, reason: str | None
) -> None:
    if whole_second:
        moment = moment.replace(microsecond=0)
    if subclass:
        moment = _Moment.fromisoformat(moment.isoformat())
    command = Command(
        command_id="c-1",
        subject_id="u-1",
        tenant="default",
        occurred_at=moment,
        source=Source("web", "app", None, "agent"),
        changes=(Change("opt_out", "marketing", "email"), Change("opt_in", "*", "*")),
        reason=reason,
    )
    assert content_hash(command) == _reference_content_hash(command)


@given(
    topic=st.sampled_from(sorted(DEFAULT_CATALOG.topics))
    | st.from_regex(r"\A(security|data|marketing|x)(\.[a-z]{1,3}){0,2}\Z")
)
def test_catalog_flags_match_lineage_walk(topic: str) -> None:
    specs = [DEFAULT_CATALOG.topics.get(name) for name in _lineage(topic)]
    assert DEFAULT_CATALOG.is_mandatory(topic) == any(s is not None and s.mandatory for s in specs)
    assert DEFAULT_CATALOG.is_data_use(topic) == any(s is not None and s.data_use for s in specs)


def test_adopted_state_equals_a_copied_one_and_is_read_only() -> None:
    key = SubjectKey("default", "u-1")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rules = {("marketing", "email"): Rule("marketing", "email", "opt_out", at, "web", "c-1")}
    adopted = SubjectState.adopting(key, 2, dict(rules))
    assert adopted == SubjectState(key, 2, rules)
    assert adopted.sorted_rules() == SubjectState(key, 2, rules).sorted_rules()
    with pytest.raises(TypeError):
        adopted.rules[("product", "sms")] = rules[("marketing", "email")]  # type: ignore[index]
    assert SubjectState.empty(key) == SubjectState(key, 0, {})


class _NoOffset(tzinfo):
    """A tzinfo that knows no offset: the time is as naive as one without any."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


@pytest.mark.parametrize(
    "moment",
    [datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=_NoOffset())],
)
def test_rule_still_refuses_times_without_offset(moment: datetime) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Rule("marketing", "email", "opt_out", moment, "web", "c-1")
