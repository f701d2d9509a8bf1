"""Semantic validation: a command is applied whole or rejected with a precise reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import Change, Command, Source
from service.domain.model import Action
from service.domain.validation import validate

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
MAX_FUTURE = timedelta(minutes=5)


def command(
    *changes: tuple[Action, str, str],
    occurred_at: datetime = NOW,
    source: str = "web",
) -> Command:
    return Command(
        command_id="c1",
        subject_id="u1",
        tenant="default",
        occurred_at=occurred_at,
        source=Source(source),
        changes=tuple(Change(a, t, c) for a, t, c in changes),
        reason=None,
    )


def check(cmd: Command) -> tuple[str, str] | None:
    return validate(DEFAULT_CATALOG, cmd, now=NOW, max_future=MAX_FUTURE)


@pytest.mark.parametrize(
    "change",
    [
        ("opt_out", "marketing", "email"),
        ("opt_out", "*", "*"),
        ("opt_out", "*", "sms"),
        ("opt_in", "marketing.newsletter", "*"),
        ("opt_out", "data.sale", "*"),
        ("opt_in", "security", "email"),
    ],
)
def test_valid(change: tuple[Action, str, str]) -> None:
    assert check(command(change)) is None


def test_future_timestamp_boundary() -> None:
    assert check(command(("opt_out", "*", "*"), occurred_at=NOW + MAX_FUTURE)) is None
    late = NOW + MAX_FUTURE + timedelta(microseconds=1)
    result = check(command(("opt_out", "*", "*"), occurred_at=late))
    assert result is not None
    assert result[0] == "future_timestamp"


def test_past_is_fine() -> None:
    assert check(command(("opt_out", "*", "*"), occurred_at=NOW - timedelta(days=900))) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("opt_out", "marketing.nope", "email"), "unknown_topic"),
        (("opt_out", "data", "*"), "unknown_topic"),
        (("opt_out", "marketing", "fax"), "unknown_channel"),
        (("opt_out", "data.sale", "email"), "unknown_channel"),
        (("opt_out", "security", "email"), "mandatory_topic"),
        (("opt_out", "security.alerts", "*"), "mandatory_topic"),
        (("opt_out", "transactional.receipts", "sms"), "mandatory_topic"),
    ],
)
def test_rejections(change: tuple[Action, str, str], reason: str) -> None:
    result = check(command(change))
    assert result is not None
    assert result[0] == reason


def test_data_use_detail_explains_wildcard_only() -> None:
    result = check(command(("opt_out", "data.sale", "email")))
    assert result is not None
    assert "channel '*' only" in result[1]


def test_unknown_source_channel_is_invalid_payload() -> None:
    result = check(command(("opt_out", "*", "*"), source="carrier-pigeon"))
    assert result is not None
    assert result[0] == "invalid_payload"


def test_whole_command_rejected_if_any_change_invalid() -> None:
    result = check(command(("opt_out", "marketing", "email"), ("opt_out", "nope", "email")))
    assert result is not None
    assert result[0] == "unknown_topic"
    assert "changes[1]" in result[1]


def test_first_failure_is_reported() -> None:
    result = check(command(("opt_out", "security", "email"), ("opt_out", "nope", "email")))
    assert result is not None
    assert result[0] == "mandatory_topic"


def test_naive_and_empty_are_invalid_payload() -> None:
    naive = command(("opt_out", "*", "*"), occurred_at=datetime(2026, 1, 1))
    result = check(naive)
    assert result is not None
    assert result[0] == "invalid_payload"
    result = check(command())
    assert result is not None
    assert result[0] == "invalid_payload"
