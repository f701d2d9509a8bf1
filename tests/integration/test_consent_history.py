"""Proof of consent against the real stack: history written by the worker from real commands,
identity changes (link, merge, erase) written in SQL as the design lays them out, read back
through the HTTP API and the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from service.domain.identifiers import pseudonym
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, at, command

pytestmark = pytest.mark.integration

READ_TOKEN = "reader-token-0123456789abcdef"
WRITE_TOKEN = "writer-token-0123456789abcdef"
KEY = "identifier-key-0123456789abcdef-0123456789"


@pytest.fixture
def history_settings(settings: Settings) -> Settings:
    tokens = f"reader:{READ_TOKEN}:check+history,writer:{WRITE_TOKEN}:write"
    return settings.model_copy(
        update={"api_tokens": SecretStr(tokens), "identifier_key": SecretStr(KEY)}
    )


@pytest.fixture
async def stack(history_settings: Settings) -> AsyncIterator[ContractClient]:
    async with Service(history_settings, with_worker=True), ContractClient(history_settings) as c:
        yield c


@pytest.fixture
async def http(history_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{history_settings.http_port}"
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
async def db(history_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(
        history_settings.database_dsn,
        server_settings={"search_path": history_settings.database_schema},
    )
    try:
        yield conn
    finally:
        await conn.close()


async def applied(stack: ContractClient, doc: dict[str, Any]) -> dict[str, Any]:
    outcome = await stack.apply(doc)
    assert outcome["status"] == "applied", outcome
    return doc


async def export(http: httpx.AsyncClient, named: str, **params: Any) -> list[dict[str, Any]]:
    """Every entry of the JSON export, page after page."""
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await http.get(f"/v1/subjects/{named}/history", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        entries += body["entries"]
        cursor = body["next_cursor"]
        if cursor is None:
            return entries


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, **settings.as_environment(), "OPTOUT_LOG_FORMAT": "console"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.entrypoints.cli",
        "history",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


HISTORY_ROW = """
INSERT INTO consent_history (tenant, subject_id, command_id, action, topic, channel,
                             occurred_at, effective_at, source_channel, source_app,
                             addressed_as, related)
VALUES ('default', $1, $2, $3, $4, $5, $6, clock_timestamp(), 'api', 'crm', $7, $8)
"""


async def test_a_merged_subject_keeps_the_history_of_every_id_joined_to_it(
    stack: ContractClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    history_settings: Settings,
    tmp_path: Path,
) -> None:
    ann = "email:ann@example.com"
    a = await applied(
        stack, command("acct-a", [("opt_out", "marketing", "email")], occurred_at=at(1))
    )
    b = await applied(
        stack, command("acct-b", [("opt_in", "marketing.newsletter", "email")], occurred_at=at(2))
    )
    e = await applied(stack, command(ann, [("opt_out", "product", "sms")], occurred_at=at(3)))
    await applied(stack, command("acct-z", [("opt_out", "marketing", "email")]))
    # The identity changes as the worker will record them: `link` makes ann a forward of
    # acct-b, `merge` makes acct-a one; a later command addressed to acct-a applies to acct-b.
    await db.execute(
        "UPDATE subjects SET merged_into = 'acct-b', version = version + 1 "
        "WHERE tenant = 'default' AND subject_id = ANY($1::text[])",
        ["acct-a", ann],
    )
    await db.execute("DELETE FROM rules WHERE subject_id = ANY($1::text[])", ["acct-a", ann])
    await db.execute(HISTORY_ROW, "acct-b", "link-1", "link", None, None, at(4), None, ann)
    await db.execute(HISTORY_ROW, "acct-b", "merge-1", "merge", None, None, at(5), None, "acct-a")
    await db.execute(
        HISTORY_ROW, "acct-b", "late-1", "opt_out", "reminders", "sms", at(6), "acct-a", None
    )

    expected = [a["command_id"], b["command_id"], e["command_id"], "link-1", "merge-1", "late-1"]
    for named in ("acct-b", "acct-a", "email:Ann@Example.COM"):
        entries = await export(http, named, limit=4)
        assert [x["command_id"] for x in entries] == expected, named
    first, _, linked_before, link, merge, late = entries
    assert (first["subject_id"], first["action"], first["topic"]) == (
        "acct-a",
        "opt_out",
        "marketing",
    )
    assert (first["source_ip"], first["source_app"], first["source_channel"]) == (
        "203.0.113.7",
        "tests",
        "web",
    )
    assert first["erased_fields"] == []
    assert first["erased_at"] is None
    assert linked_before["subject_id"] == ann
    assert (link["action"], link["related"], link["topic"]) == ("link", ann, None)
    assert (merge["action"], merge["related"], merge["subject_id"]) == ("merge", "acct-a", "acct-b")
    assert (late["subject_id"], late["addressed_as"]) == ("acct-b", "acct-a")
    effective = [(x["effective_at"], x["id"]) for x in entries]
    assert effective == sorted(effective)
    body = (await http.get("/v1/subjects/acct-a/history")).json()
    assert body["subject_id"] == "acct-b"

    # The CLI exports the same, whole, in either format.
    code, out, err = await cli(history_settings, "acct-a")
    assert code == 0, err
    assert json.loads(out)["entries"] == entries
    path = tmp_path / "acct-a.csv"
    code, _, err = await cli(history_settings, "acct-a", "--format", "csv", "--out", str(path))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    assert [r["command_id"] for r in rows] == expected
    assert rows[4]["related"] == "acct-a"
    assert rows[4]["topic"] == ""


async def test_an_erased_subject_shows_what_erasure_removed(
    stack: ContractClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    history_settings: Settings,
) -> None:
    eve = "email:eve@example.com"
    doc = command(eve, [("opt_out", "marketing", "email")], occurred_at=at(1), reason="spam")
    doc["source"]["user_agent"] = "Mozilla/5.0 (Eve)"
    said = await applied(stack, doc)
    own = command("acct-e", [("opt_in", "product", "email")], occurred_at=at(2), reason="ok")
    await applied(stack, own)
    # Eve's address is linked to acct-e, and a command addressed to it applies to acct-e.
    await db.execute("UPDATE subjects SET merged_into = 'acct-e' WHERE subject_id = $1", eve)
    await db.execute(HISTORY_ROW, "acct-e", "link-1", "link", None, None, at(3), None, eve)
    await db.execute(
        HISTORY_ROW, "acct-e", "via-eve", "opt_out", "reminders", "sms", at(4), eve, None
    )
    # Then acct-e is erased, as the worker will do it: the address's row becomes its keyed
    # hash (a suppression of its own), every history row of acct-e and of the address loses
    # its personal fields and names the hash instead of the address; the opaque acct-e stays
    # under its id with `erased_at` set.
    hashed = pseudonym(KEY.encode(), "default", eve)
    async with db.transaction():
        await db.execute(
            "INSERT INTO subjects (tenant, subject_id, version, erased_at) "
            "VALUES ('default', $1, 1, clock_timestamp())",
            hashed,
        )
        await db.execute("DELETE FROM rules WHERE subject_id = $1", eve)
        await db.execute("DELETE FROM subjects WHERE subject_id = $1", eve)
        await db.execute(
            "UPDATE consent_history SET erased_at = clock_timestamp(), source_ip = NULL, "
            "source_user_agent = NULL, reason = NULL, "
            "subject_id = CASE WHEN subject_id = $1 THEN $2 ELSE subject_id END, "
            "addressed_as = CASE WHEN addressed_as = $1 THEN $2 ELSE addressed_as END, "
            "related = CASE WHEN related = $1 THEN $2 ELSE related END "
            "WHERE tenant = 'default' AND (subject_id = ANY($3::text[]) OR addressed_as = $1)",
            eve,
            hashed,
            [eve, "acct-e"],
        )
        await db.execute(
            "UPDATE subjects SET erased_at = clock_timestamp() WHERE subject_id = 'acct-e'"
        )
        await db.execute(HISTORY_ROW, "acct-e", "erase-1", "erase", None, None, at(5), None, None)

    # Asked by the address: its own history, and the rows of acct-e that name it.
    response = await http.get("/v1/subjects/email:Eve@Example.com/history")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["subject_id"] is None
    assert body["subject_erased_at"] is not None
    first, link, via = body["entries"]
    assert first["command_id"] == said["command_id"]
    assert (first["action"], first["topic"], first["channel"]) == ("opt_out", "marketing", "email")
    assert (first["source_channel"], first["source_app"]) == ("web", "tests")
    assert first["erased_fields"] == ["subject_id", "source_ip", "source_user_agent", "reason"]
    assert [first[f] for f in first["erased_fields"]] == [None] * 4
    assert first["erased_at"] is not None
    assert (link["command_id"], link["subject_id"], link["related"]) == ("link-1", "acct-e", None)
    assert "related" in link["erased_fields"]
    assert (via["command_id"], via["subject_id"], via["addressed_as"]) == (
        "via-eve",
        "acct-e",
        None,
    )
    assert "addressed_as" in via["erased_fields"]
    csv_text = (await http.get("/v1/subjects/email:eve@example.com/history?format=csv")).text
    row = next(csv.DictReader(io.StringIO(csv_text, newline="")))
    assert [row[f] for f in ("subject_id", "source_ip", "source_user_agent", "reason")] == [
        "erased"
    ] * 4
    assert row["occurred_at"] == "2026-01-01T00:00:01Z"
    for text in (response.text, csv_text):
        assert hashed not in text
        assert "eve@" not in text
        assert "Mozilla" not in text

    # Asked by the opaque subject: its own rows, the address erased where it was named.
    opaque = (await http.get("/v1/subjects/acct-e/history")).json()
    assert opaque["subject_id"] == "acct-e"
    assert opaque["subject_erased_at"] is not None
    entries = opaque["entries"]
    assert [e["command_id"] for e in entries] == [own["command_id"], "link-1", "via-eve", "erase-1"]
    assert entries[0]["subject_id"] == "acct-e"
    assert entries[0]["erased_fields"] == ["source_ip", "source_user_agent", "reason"]
    assert entries[1]["erased_fields"] == ["related", "source_ip", "source_user_agent", "reason"]
    assert entries[3]["erased_fields"] == []  # recorded after the erasure, nothing removed

    # Without the identifier key the suppression cannot be found: the identifier is unknown.
    keyless = history_settings.model_copy(update={"identifier_key": SecretStr("")})
    code, out, err = await cli(keyless, eve)
    assert (code, out) == (1, "")
    assert err.strip() == "optout history: no subject has this id in tenant 'default'"
    code, out, _ = await cli(history_settings, eve, "--format", "csv")
    assert code == 0
    assert out.splitlines()[1].count("erased") == 4


async def test_pages_hold_every_row_once_while_rows_are_appended(
    stack: ContractClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    changes = [("opt_out", "marketing", "email"), ("opt_out", "product", "sms")]
    for second in range(5):
        # Two changes per command: two rows with one `effective_at`, split across pages.
        action = "opt_out" if second % 2 == 0 else "opt_in"
        await applied(
            stack,
            command("acct-p", [(action, t, c) for _, t, c in changes], occurred_at=at(second)),
        )
    seen: list[int] = []
    cursor = None
    appended = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = (await http.get("/v1/subjects/acct-p/history", params=params)).json()
        seen += [e["id"] for e in body["entries"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        if appended < 3:
            action = "opt_out" if appended % 2 else "opt_in"
            await applied(
                stack,
                command("acct-p", [(action, "reminders", "sms")], occurred_at=at(10 + appended)),
            )
            appended += 1
    stored = await db.fetch(
        "SELECT id FROM consent_history WHERE subject_id = 'acct-p' ORDER BY effective_at, id"
    )
    assert appended == 3
    assert len(stored) == 13
    assert seen == [r["id"] for r in stored]


async def test_the_export_needs_the_history_scope_and_names_what_is_wrong(
    stack: ContractClient, history_settings: Settings
) -> None:
    await applied(stack, command("acct-s", [("opt_out", "marketing", "email")]))
    base = f"http://127.0.0.1:{history_settings.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as anonymous:
        path = "/v1/subjects/acct-s/history"
        assert (await anonymous.get(path)).status_code == 401
        writer = {"Authorization": f"Bearer {WRITE_TOKEN}"}
        forbidden = await anonymous.get(path, headers=writer)
        assert (forbidden.status_code, forbidden.json()["error"]) == (403, "scope_forbidden")
        reader = {"Authorization": f"Bearer {READ_TOKEN}"}
        assert (await anonymous.get(path, headers=reader)).status_code == 200
        unknown = await anonymous.get("/v1/subjects/acct-nobody/history", headers=reader)
        assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_subject")
        invalid = await anonymous.get("/v1/subjects/phone:+1/history", headers=reader)
        assert invalid.status_code == 422
        assert (invalid.json()["error"], invalid.json()["field"]) == (
            "invalid_identifier",
            "subject_id",
        )
    code, out, err = await cli(history_settings, "email:not-an-address")
    assert (code, out) == (2, "")
    assert err.startswith("optout history: an email identifier must be")
    code, out, err = await cli(history_settings, "acct-nobody", "--tenant", "other")
    assert (code, out, err) == (1, "", "optout history: no subject has this id in tenant 'other'\n")
