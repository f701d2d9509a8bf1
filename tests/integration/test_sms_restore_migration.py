"""Migration 0009 on rows stored before it: what a START returns to is filled in `#kept`,
from the rules and from the consent history (a statement a STOP already replaced)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.adapters.postgres import migrator
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import is_allowed
from service.domain.model import Rule
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def before_0009(
    endpoints: Endpoints, unique: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[asyncpg.Connection]:
    schema = f"t_{unique}_m"
    every = migrator.available_migrations()
    assert "0009_sms_restore" in [m.version for m in every]
    conn = await asyncpg.connect(endpoints.database_url)
    with monkeypatch.context() as patched:
        patched.setattr(
            migrator, "available_migrations", lambda: [m for m in every if m.version < "0009"]
        )
        await migrator.migrate(conn, schema)
    try:
        yield conn
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def said(
    conn: asyncpg.Connection, subject: str, command_id: str, action: str, minutes: int, via: str
) -> None:
    """A (`*`, `sms`) statement as the service stored it before 0009: a rule and a history row."""
    at = T0 + timedelta(minutes=minutes)
    await conn.execute(
        "INSERT INTO subjects (tenant, subject_id, version) VALUES ('default', $1, 1)"
        " ON CONFLICT (tenant, subject_id) DO UPDATE SET version = subjects.version + 1",
        subject,
    )
    await conn.execute(
        "INSERT INTO rules (tenant, subject_id, topic, channel, action, occurred_at,"
        " source_channel, command_id) VALUES ('default', $1, '*', 'sms', $2, $3, $4, $5)"
        " ON CONFLICT (tenant, subject_id, topic, channel) DO UPDATE SET action = $2,"
        " occurred_at = $3, source_channel = $4, command_id = $5",
        subject, action, at, via, command_id,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO consent_history (tenant, subject_id, command_id, action, topic, channel,"
        " occurred_at, effective_at, source_channel) VALUES ('default', $1, $2, $3, '*', 'sms',"
        " $4, $4, $5)",
        subject, command_id, action, at, via,
    )  # fmt: skip


async def test_kept_statements_are_filled_from_rules_and_history(
    before_0009: asyncpg.Connection,
) -> None:
    conn = before_0009
    await said(conn, "web-then-stop", "w1", "opt_out", 0, "web")
    await said(conn, "web-then-stop", "s1", "opt_out", 5, "sms")  # replaced w1 in the rules
    await said(conn, "web-only", "w2", "opt_out", 0, "web")
    await said(conn, "stop-only", "s2", "opt_out", 0, "sms")
    await said(conn, "old-start", "s3", "opt_out", 0, "sms")
    await said(conn, "old-start", "y3", "opt_in", 5, "sms")  # a START before restores existed

    schema = await conn.fetchval("SELECT current_schema()")  # set by the first migrate
    applied = await migrator.migrate(conn, schema)
    assert applied[0] == "0009_sms_restore"  # and those after it

    rows = await conn.fetch(
        "SELECT subject_id, topic, action, occurred_at, source_channel, command_id FROM rules"
        " ORDER BY subject_id, topic"
    )
    kept = {r["subject_id"]: r["command_id"] for r in rows if r["topic"] == "#kept"}
    assert kept == {"web-then-stop": "w1", "web-only": "w2", "old-start": "y3"}

    # What a START now does to the person who opted out of all SMS on the web, then texted STOP.
    rules = {
        (r["topic"], "sms"): Rule(
            r["topic"], "sms", r["action"], r["occurred_at"], r["source_channel"], r["command_id"]
        )
        for r in rows
        if r["subject_id"] == "web-then-stop"
    }
    start = Rule("#restore", "sms", "restore", T0 + timedelta(minutes=9), "sms", "r1")
    rules[("#restore", "sms")] = start
    assert not is_allowed(DEFAULT_CATALOG, rules, "product.updates", "sms").allowed
    # The rules' check now takes a restore (the worker writes it; the history's check too).
    await conn.execute(
        "INSERT INTO rules (tenant, subject_id, topic, channel, action, occurred_at,"
        " source_channel, command_id) VALUES ('default', 'x', '#restore', 'sms', 'restore',"
        " now(), 'sms', 'r1')"
    )
