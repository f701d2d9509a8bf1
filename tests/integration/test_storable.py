"""The contract's idea of "storable" checked against PostgreSQL itself, on generated values.

A value the contract accepts but PostgreSQL refuses would fail its batch on every retry; a
value refused needlessly would reject a person's command. Both directions are checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.contract.storable import EARLIEST, LATEST, is_storable_text, parse_instant
from service.contract.v1 import CommandV1
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

# Every code point, surrogates and NUL included, weighted towards the troublesome ones.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF),
        st.sampled_from(["\x00", "\ud800", "\udfff", "\udc80", "\ufffd", "é", "\U0001f600"]),
    ),
    max_size=20,
)


SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
async def conn(endpoints: Endpoints) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(endpoints.database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def postgres_keeps_text(conn: asyncpg.Connection, text: str) -> bool:
    try:
        return bool(await conn.fetchval("SELECT $1::text = $1::text", text))
    except (UnicodeEncodeError, asyncpg.PostgresError):
        return False


def command_with_reason(reason: str) -> dict[str, object]:
    return {
        "command_id": "c1",
        "subject_id": "u1",
        "occurred_at": "2026-11-29T10:00:00Z",
        "source": {"channel": "web"},
        "changes": [{"action": "opt_out", "topic": "marketing", "channel": "email"}],
        "reason": reason,
    }


def contract_accepts(reason: str) -> bool:
    try:
        CommandV1.model_validate(command_with_reason(reason))
    except ValidationError:
        return False
    return True


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TEXT)
async def test_storable_text_is_exactly_what_postgresql_keeps(
    conn: asyncpg.Connection, text: str
) -> None:
    kept = await postgres_keeps_text(conn, text)
    assert is_storable_text(text) == kept
    if text:
        assert contract_accepts(text) == kept


OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
    offset=OFFSETS,
)
async def test_accepted_instants_round_trip_through_postgresql(
    conn: asyncpg.Connection, moment: datetime, offset: timezone
) -> None:
    text = moment.replace(tzinfo=offset).isoformat()
    try:
        parsed = parse_instant(text)
    except ValueError:
        # Refused only when the instant is outside the contract's range (or has no UTC form).
        try:
            utc = moment.replace(tzinfo=offset).astimezone(UTC)
        except OverflowError:
            return
        assert not EARLIEST <= utc <= LATEST
        return
    stored = await conn.fetchval("SELECT $1::timestamptz", parsed)
    assert stored == parsed
    assert parsed.tzinfo is UTC
