"""Credentials bound to tenants and scopes, on the real stack: every `/v1` route, called with a
token of another tenant and with a token lacking each scope, is refused and writes nothing;
the same calls with the right token succeed (the positive control); the consent history
names the token that wrote each change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from service.application.decisions import DecisionService
from service.application.history import ConsentHistory
from service.application.receipts import CommandReceipts
from service.domain.catalog import DEFAULT_CATALOG
from service.entrypoints.http.app import build_http_app
from service.entrypoints.http.channels import ChannelsConfig
from service.settings import Settings
from tests.support.channels import channel_settings, http_client, published, running
from tests.support.contract_client import at, command

pytestmark = pytest.mark.integration

SCOPES = ("check", "history", "write", "identity", "admin")
SUBJECT = "cred-subject"


def secret(name: str) -> str:
    return f"{name}-token-0123456789abcdef"


def token_spec() -> str:
    entries = [
        f"a-admin:{secret('a-admin')}:admin:a",
        f"b-all:{secret('b-all')}:admin:b",
        f"ops:{secret('ops')}:admin:*",
        f"ab-all:{secret('ab-all')}:check+history+write+identity:a+b",
    ]
    for missing in SCOPES:
        held = "+".join(s for s in SCOPES if s not in (missing, "admin"))
        entries.append(f"a-no-{missing}:{secret('a-no-' + missing)}:{held}:a")
    return ",".join(entries)


@dataclass(frozen=True)
class Call:
    """One `/v1` operation, acting for tenant `a`, and the scope it needs."""

    operation: str
    scope: str
    method: str
    path: str
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None


def calls(tenant: str | None) -> list[Call]:
    named = {} if tenant is None else {"tenant": tenant}
    preferences = command(SUBJECT, [("opt_out", "marketing", "email")], tenant=tenant)
    erase = {
        "command_id": f"erase-{tenant}",
        "kind": "erase",
        "subject_id": SUBJECT,
        "occurred_at": at(0).isoformat(),
        "source": {"channel": "support"},
        **named,
    }
    link = {
        "command_id": f"link-{tenant}",
        "kind": "link",
        "subject_id": SUBJECT,
        "identifier": "email:cred@example.test",
        "occurred_at": at(0).isoformat(),
        "source": {"channel": "support"},
        **named,
    }
    subject = f"/v1/subjects/{SUBJECT}"
    check = {"topic": "marketing", "channel": "email"}
    return [
        Call("getPreferences", "check", "GET", f"{subject}/preferences", named),
        Call("check", "check", "GET", f"{subject}/check", {**check, **named}),
        Call(
            "checkBatch", "check", "POST", "/v1/check",
            body={"checks": [{"subject_id": SUBJECT, **check, **named}]},
        ),
        Call("getHistory", "history", "GET", f"{subject}/history", named),
        Call("getReceipt", "history", "GET", "/v1/commands/cred-1/receipt", named),
        Call("submitCommands", "write", "POST", "/v1/commands", body=preferences),
        Call("submitCommands", "identity", "POST", "/v1/commands", body=erase),
        Call("submitCommands", "identity", "POST", "/v1/commands", body={"commands": [link]}),
        Call(
            "makeLink", "write", "POST", "/v1/links",
            body={"subject_id": SUBJECT, "topic": "marketing", **named},
        ),
        # Revoking names no tenant: an operator of every tenant only.
        Call("revokeLink", "admin", "POST", "/v1/links/revoke", body={"link": "m-0123456789"}),
    ]  # fmt: skip


def test_the_matrix_covers_every_v1_operation() -> None:
    """A route added without a row here fails this test, so none escapes the matrix."""
    decisions = DecisionService(DEFAULT_CATALOG, None, None, None)  # type: ignore[arg-type]
    channels = ChannelsConfig.__new__(ChannelsConfig)
    history = ConsentHistory.__new__(ConsentHistory)
    receipts = CommandReceipts.__new__(CommandReceipts)
    app = build_http_app(decisions, channels=channels, history=history, command_receipts=receipts)
    operations = {
        operation["operationId"]
        for path, item in app.openapi()["paths"].items()
        if path.startswith("/v1")
        for operation in item.values()
    }
    assert operations == {c.operation for c in calls("a")}


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Settings]:
    own = channel_settings(settings).model_copy(update={"api_tokens": SecretStr(token_spec())})
    async with running(own):
        yield own


async def send(client: httpx.AsyncClient, call: Call) -> httpx.Response:
    return await client.request(call.method, call.path, params=call.params, json=call.body)


async def history_rows(settings: Settings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        return list(await conn.fetch("SELECT tenant, command_id, actor FROM consent_history"))
    finally:
        await conn.close()


async def test_other_tenants_and_missing_scopes_are_refused_and_write_nothing(
    service: Settings,
) -> None:
    base = f"http://127.0.0.1:{service.http_port}"
    before = await published(service)
    refused: list[tuple[str, str, int, str]] = []
    for call in calls("a"):
        async with http_client(base, secret("b-all")) as other_tenant:
            answer = await send(other_tenant, call)
        refused.append((call.operation, "b-all", answer.status_code, answer.json()["error"]))
        async with http_client(base, secret(f"a-no-{call.scope}")) as lacking:
            answer = await send(lacking, call)
        refused.append(
            (call.operation, f"a-no-{call.scope}", answer.status_code, answer.json()["error"])
        )
    for operation, token, status, error in refused:
        expected = "tenant_forbidden" if token == "b-all" else "scope_forbidden"
        assert (status, error) == (403, expected), (operation, token)
    assert await published(service) == before
    # A token of several tenants must name one; a token of one tenant acts for it.
    async with http_client(base, secret("ab-all")) as several:
        for call in calls(None):
            if call.operation == "revokeLink":
                continue  # names no tenant at all: only an operator of every tenant
            answer = await send(several, call)
            assert (answer.status_code, answer.json()["error"]) == (422, "tenant_required")
    assert await published(service) == before

    # Positive control: the same calls with the right token go through, and publish.
    async with http_client(base, secret("a-admin")) as admin:
        for call in calls(None):
            if call.operation in ("getHistory", "revokeLink"):
                continue  # no history before the worker applied a command; revoking: below
            answer = await send(admin, call)
            if call.operation == "getReceipt":  # let in: no opt-out of that id timed yet
                assert answer.json()["error"] == "unknown_receipt", answer.text
                continue
            assert answer.status_code in (200, 202), (call, answer.text)
            if call.operation in ("getPreferences", "check"):
                assert answer.json()["tenant"] == "a"
    assert await published(service) == before + 3
    async with http_client(base, secret("ops")) as ops:
        [revoke] = [c for c in calls(None) if c.operation == "revokeLink"]
        answer = await send(ops, revoke)
        assert answer.status_code == 200, answer.text


async def test_the_history_names_the_token_that_wrote_each_change(service: Settings) -> None:
    base = f"http://127.0.0.1:{service.http_port}"
    async with http_client(base, secret("a-admin")) as admin:
        sent = command(SUBJECT, [("opt_out", "marketing", "email")], tenant="a")
        answer = await admin.post("/v1/commands", params={"wait": 10}, json=sent)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"]["status"] == "applied"
        forged = {**sent, "command_id": "forged", "actor": "optout-pages"}
        refused = await admin.post("/v1/commands", json=forged)
        assert (refused.status_code, refused.json()["field"]) == (422, "actor")
        page = await admin.get(f"/v1/subjects/{SUBJECT}/history")
        assert page.status_code == 200, page.text
        assert [e["actor"] for e in page.json()["entries"]] == ["a-admin"]
        csv_page = await admin.get(f"/v1/subjects/{SUBJECT}/history", params={"format": "csv"})
        header, row = csv_page.text.splitlines()[:2]
        assert row.split(",")[header.split(",").index("actor")] == "a-admin"
    rows = await history_rows(service)
    assert [(r["tenant"], r["actor"]) for r in rows] == [("a", "a-admin")]
