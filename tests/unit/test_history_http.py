"""`GET /v1/subjects/{subject_id}/history` around an in-memory history: answers, errors,
formats, paging links and the OpenAPI document."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, quote, urljoin

import httpx
import pytest

from service.application.decisions import DecisionService
from service.application.history import ConsentHistory, StoredSubject
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import Rules
from service.domain.identifiers import pseudonym
from service.domain.model import SubjectKey, SubjectState
from service.entrypoints.history_export import CSV_COLUMNS
from service.entrypoints.http.app import build_http_app
from service.entrypoints.http.security import Authenticator, parse_tokens
from tests.support.admin import openapi_of
from tests.unit.test_consent_history import KEY, T0, Store, record

READ = "reader-token-0123456789abcdef"
WRITE = "writer-token-0123456789abcdef"
CHECK = "checker-token-0123456789abcd"
ODD = "a/b\nc"  # subject ids are opaque: slashes, newlines


class NoStates:
    """The decision service's three ports, never consulted by the history route."""

    async def read_one(self, key: SubjectKey) -> SubjectState | None:
        return None

    async def read_many(self, tenant: str, subject_ids: Sequence[str]) -> list[SubjectState | None]:
        return [None] * len(subject_ids)

    async def read_many_rules(self, tenant: str, subject_ids: Sequence[str]) -> list[Rules | None]:
        return [None] * len(subject_ids)

    async def write(self, states: Iterable[SubjectState]) -> int:
        return 0

    async def load_states(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]:
        return {k: SubjectState.empty(k) for k in keys}


HASHED = pseudonym(KEY, "default", "email:alice@example.com")


@pytest.fixture
def app() -> Any:
    store = Store(
        [
            StoredSubject("acct-b", None, None),
            StoredSubject("acct-a", "acct-b", None),
            StoredSubject(ODD, None, None),
            StoredSubject(HASHED, None, T0),
        ],
        [
            *[record(i, "acct-a" if i < 3 else "acct-b") for i in range(1, 8)],
            record(8, ODD, reason="=cmd|' /C calc'!A0"),
            record(9, HASHED, source_ip=None, source_user_agent=None, reason=None, erased_at=T0),
        ],
    )
    nothing = NoStates()
    decisions = DecisionService(DEFAULT_CATALOG, nothing, nothing, nothing)
    auth = Authenticator(parse_tokens(f"r:{READ}:history,w:{WRITE}:write,c:{CHECK}:check"))
    return build_http_app(decisions, auth, history=ConsentHistory(store, KEY))


@pytest.fixture
async def anonymous(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


@pytest.fixture
async def http(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {READ}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api", headers=headers
    ) as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str, str | None]:
    body = response.json()
    assert set(body) == {"error", "detail", "field"}, body
    return response.status_code, body["error"], body["field"]


async def test_a_forward_answers_with_its_target_history(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/subjects/acct-a/history")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["subject_id"] == "acct-b"
    assert body["subject_erased_at"] is None
    assert [e["id"] for e in body["entries"]] == list(range(1, 8))
    assert body["next_cursor"] is None
    assert "link" not in response.headers


async def test_pages_link_to_the_next_one_in_both_formats(http: httpx.AsyncClient) -> None:
    url = f"/v1/subjects/{quote(ODD, safe='')}/history"
    assert (await http.get(url)).json()["entries"][0]["subject_id"] == ODD
    seen: list[int] = []
    target: str | None = "/v1/subjects/acct-b/history?limit=3&tenant=default"
    while target is not None:
        response = await http.get(target)
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [e["id"] for e in body["entries"]]
        link = response.headers.get("link")
        if body["next_cursor"] is None:
            assert link is None
            target = None
        else:
            assert link is not None
            assert link.endswith('>; rel="next"')
            target = urljoin(str(response.url), link[1 : link.index(">")])
            query = parse_qs(target.split("?", 1)[1])
            assert query == {"limit": ["3"], "tenant": ["default"], "cursor": [body["next_cursor"]]}
    assert seen == list(range(1, 8))

    first = await http.get("/v1/subjects/acct-b/history", params={"format": "csv", "limit": 5})
    assert first.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(first.text, newline="")))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    rest = await http.get(urljoin(str(first.url), first.headers["link"][1:].split(">")[0]))
    assert rest.text.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert [r["id"] for r in csv.DictReader(io.StringIO(rest.text, newline=""))] == ["6", "7"]


async def test_erased_identifiers_and_formulas_in_csv(http: httpx.AsyncClient) -> None:
    erased = await http.get("/v1/subjects/email:Alice@Example.com/history?format=csv")
    (row,) = csv.DictReader(io.StringIO(erased.text, newline=""))
    assert row["subject_id"] == row["source_ip"] == row["reason"] == "erased"
    assert HASHED not in erased.text
    body = (await http.get("/v1/subjects/email:alice@example.com/history")).json()
    assert body["subject_id"] is None
    assert body["subject_erased_at"] == "2026-03-01T09:30:00Z"
    odd = await http.get(f"/v1/subjects/{quote(ODD, safe='')}/history?format=csv")
    (row,) = csv.DictReader(io.StringIO(odd.text, newline=""))
    assert row["reason"] == "'=cmd|' /C calc'!A0"
    assert row["subject_id"] == ODD


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/subjects/nobody/history", (404, "unknown_subject", None)),
        ("/v1/subjects/%00/history", (404, "unknown_subject", None)),
        ("/v1/subjects/acct-a/history?tenant=other", (403, "tenant_forbidden", "tenant")),
        ("/v1/subjects/email:nobody/history", (422, "invalid_identifier", "subject_id")),
        ("/v1/subjects/phone:12/history", (422, "invalid_identifier", "subject_id")),
        ("/v1/subjects/acct-a/history?cursor=nope", (422, "invalid_cursor", "cursor")),
        ("/v1/subjects/acct-a/history?limit=0", (422, "invalid_request", "limit")),
        ("/v1/subjects/acct-a/history?limit=1001", (422, "invalid_request", "limit")),
        ("/v1/subjects/acct-a/history?format=xml", (422, "invalid_request", "format")),
        ("/v1/subjects/acct-a/history?tenat=x", (422, "invalid_request", "tenat")),
        (f"/v1/subjects/{'x' * 257}/history", (422, "invalid_request", "subject_id")),
    ],
)
async def test_errors_name_the_field(
    http: httpx.AsyncClient, path: str, expected: tuple[int, str, str | None]
) -> None:
    assert error_of(await http.get(path)) == expected


async def test_the_history_scope_is_required(anonymous: httpx.AsyncClient) -> None:
    path = "/v1/subjects/acct-a/history"
    assert error_of(await anonymous.get(path)) == (401, "unauthorized", None)
    for other in (WRITE, CHECK):
        headers = {"Authorization": f"Bearer {other}"}
        forbidden = await anonymous.get(path, headers=headers)
        assert error_of(forbidden) == (403, "scope_forbidden", None)
    reader = {"Authorization": f"Bearer {READ}"}
    assert (await anonymous.get(path, headers=reader)).status_code == 200


async def test_the_openapi_document_describes_the_export(app: Any) -> None:
    document = await openapi_of(app)
    operation = document["paths"]["/v1/subjects/{subject_id}/history"]["get"]
    assert operation["operationId"] == "getHistory"
    assert operation["security"] == [{"bearer": ["history"]}]
    assert set(operation["responses"]) == {"200", "401", "403", "404", "422", "429", "503"}
    ok = operation["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "text/csv"}
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HistoryOut"
    }
    assert "Link" in ok["headers"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {"subject_id", "tenant", "format", "limit", "cursor"}
    assert parameters["limit"]["schema"]["maximum"] == 1_000
    entry = document["components"]["schemas"]["HistoryEntryOut"]["properties"]
    assert entry["erased_fields"]["items"]["enum"] == [
        "subject_id",
        "addressed_as",
        "related",
        "source_ip",
        "source_user_agent",
        "reason",
    ]
