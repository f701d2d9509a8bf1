"""Contract v1 decoding: every bad record lands in exactly one tier, and no PII leaks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from service.contract.decode import DeadLetter, decode_command
from service.contract.v1 import OutcomeV1, PreferenceChangedV1
from service.domain.commands import Change, Delivery, Malformed, Received, Source
from service.domain.events import AppliedChange, Outcome, PreferenceChanged
from service.domain.model import Rule

AT = Delivery("optout.commands.v1", 2, 41)
MAX = 64 * 1024


def valid() -> dict[str, Any]:
    return {
        "command_id": "0b9d6c1e-7f7b-4a53-9a0e-3c1f1d2b8f10",
        "subject_id": "user-42",
        "occurred_at": "2026-11-29T10:15:30.123Z",
        "source": {
            "channel": "email",
            "app": "newsletter",
            "ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0",
        },
        "changes": [
            {"action": "opt_out", "topic": "marketing", "channel": "email"},
            {"action": "opt_out", "topic": "*", "channel": "sms"},
        ],
        "reason": "too many emails",
        "tenant": "default",
    }


def decode(document: Any) -> Received | Malformed | DeadLetter:
    return decode_command(orjson.dumps(document), AT, max_bytes=MAX)


def test_brief_example_decodes() -> None:
    result = decode(valid())
    assert isinstance(result, Received)
    command = result.command
    assert result.delivery == AT
    assert command.command_id == "0b9d6c1e-7f7b-4a53-9a0e-3c1f1d2b8f10"
    assert command.occurred_at == datetime(2026, 11, 29, 10, 15, 30, 123000, tzinfo=UTC)
    assert command.occurred_at.tzinfo is UTC
    assert command.source == Source(
        "email", "newsletter", "203.0.113.7", "Mozilla/5.0", actor="kafka"
    )
    assert command.changes == (
        Change("opt_out", "marketing", "email"),
        Change("opt_out", "*", "sms"),
    )
    assert command.reason == "too many emails"


def test_tenant_defaults_and_offsets_normalise_to_utc() -> None:
    document = valid()
    del document["tenant"], document["reason"]
    document["occurred_at"] = "2026-11-29T12:15:30.123+02:00"
    result = decode(document)
    assert isinstance(result, Received)
    assert result.command.tenant == "default"
    assert result.command.reason is None
    assert result.command.occurred_at == datetime(2026, 11, 29, 10, 15, 30, 123000, tzinfo=UTC)


def test_extra_fields_are_ignored() -> None:
    document = valid()
    document["future_field"] = {"x": 1}
    document["source"]["new"] = "y"
    document["changes"][0]["weight"] = 3
    assert isinstance(decode(document), Received)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"{" + b" " * MAX + b"}", "larger"),
        (b'{"command_id": "\xff\xfe"}', "UTF-8"),
        (b'{"command_id": "x",', "JSON"),
        (b"not json", "JSON"),
        (b'[{"command_id": "x"}]', "object"),
        (b'"a string"', "object"),
        (b"{}", "command_id"),
        (b'{"command_id": 42}', "command_id"),
        (b'{"command_id": ""}', "command_id"),
        (orjson.dumps({"command_id": "x" * 129}), "command_id"),
    ],
)
def test_dead_letters(value: bytes | None, error: str) -> None:
    result = decode_command(value, AT, max_bytes=MAX)
    assert isinstance(result, DeadLetter)
    assert error in result.error


@pytest.mark.parametrize(
    ("mutate", "location"),
    [
        (lambda d: d.update(subject_id=42), "subject_id"),
        (lambda d: d.update(occurred_at="2026-11-29T10:15:30"), "occurred_at"),
        (lambda d: d.update(occurred_at=1764411330), "occurred_at"),
        (lambda d: d.update(changes=[]), "changes"),
        (
            lambda d: d.update(changes=[{"action": "stop", "topic": "a", "channel": "b"}] * 2),
            "changes.0.action",
        ),
        (lambda d: d.update(changes=[valid()["changes"][0]] * 101), "changes"),
        (lambda d: d["source"].update(channel="pigeon"), "source.channel"),
        (lambda d: d.pop("source"), "source"),
        (lambda d: d.update(reason="r" * 501), "reason"),
        (lambda d: d.update(tenant=""), "tenant"),
    ],
)
def test_malformed_keeps_command_id(mutate: Any, location: str) -> None:
    document = valid()
    mutate(document)
    result = decode(document)
    assert isinstance(result, Malformed)
    assert result.command_id == valid()["command_id"]
    assert result.delivery == AT
    assert location in result.detail


def test_naive_timestamp_rejected_without_leaking_values() -> None:
    document = valid()
    document["occurred_at"] = "2026-11-29T10:15:30"
    document["subject_id"] = "x" * 300
    result = decode(document)
    assert isinstance(result, Malformed)
    assert "occurred_at: must be an RFC 3339 timestamp with an offset" in result.detail
    assert "2026" not in result.detail
    assert "xxx" not in result.detail
    assert result.subject_id is None  # unreadable, so not echoed
    assert result.tenant == "default"


def test_malformed_hash_ignores_formatting() -> None:
    document = valid()
    document["changes"] = []
    compact = decode_command(orjson.dumps(document), AT, max_bytes=MAX)
    spaced = decode_command(
        orjson.dumps(dict(reversed(list(document.items()))), option=orjson.OPT_INDENT_2),
        AT,
        max_bytes=MAX,
    )
    assert isinstance(compact, Malformed)
    assert isinstance(spaced, Malformed)
    assert compact.content_hash == spaced.content_hash


def test_maximum_lengths_accepted() -> None:
    document = valid()
    document["command_id"] = "c" * 128
    document["subject_id"] = "s" * 256
    assert isinstance(decode(document), Received)


T = datetime(2026, 11, 29, 10, 15, 30, 140000, tzinfo=UTC)


def test_preference_changed_serialises_like_the_brief() -> None:
    rule = Rule("marketing", "email", "opt_out", T, "email", "c1")
    event = PreferenceChanged(
        event_id="e1",
        tenant="default",
        subject_id="user-42",
        version=7,
        effective_at=T,
        command_id="c1",
        source_channel="email",
        source_app="newsletter",
        changes=(AppliedChange("opt_out", "marketing", "email", T),),
        preferences=(rule,),
    )
    payload = orjson.loads(PreferenceChangedV1.from_domain(event).model_dump_json())
    assert set(payload) == {
        "event_id",
        "tenant",
        "subject_id",
        "version",
        "effective_at",
        "command_id",
        "source",
        "changes",
        "preferences",
    }
    assert payload["source"] == {"channel": "email", "app": "newsletter"}
    assert payload["changes"] == [
        {
            "action": "opt_out",
            "topic": "marketing",
            "channel": "email",
            "occurred_at": "2026-11-29T10:15:30.140000Z",
        }
    ]
    assert payload["preferences"][0]["source_channel"] == "email"
    assert set(payload["preferences"][0]) == {
        "topic",
        "channel",
        "action",
        "occurred_at",
        "source_channel",
        "command_id",  # additive to the brief: names the statement that decides
    }
    assert datetime.fromisoformat(payload["effective_at"]) == T


def test_outcome_serialises() -> None:
    outcome = Outcome("c1", "default", "user-42", "rejected", "unknown_topic", "changes[0]: x")
    payload = orjson.loads(OutcomeV1.from_domain(outcome).model_dump_json())
    assert payload == {
        "command_id": "c1",
        "tenant": "default",
        "subject_id": "user-42",
        "status": "rejected",
        "reason": "unknown_topic",
        "detail": "changes[0]: x",
        "version": None,
        "effective_at": None,
        "applied_to": None,
    }
