"""The HTTP app around in-memory states: routes, errors, auth, limits and the OpenAPI document.

No server and no services: requests go through ``httpx.ASGITransport`` to the app the
service builds, with a ``DecisionService`` over fakes of its three ports.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service.application.decisions import DecisionService
from service.application.health import Readiness
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import Rules
from service.domain.model import WILDCARD, Rule, SubjectKey, SubjectState
from service.entrypoints.http.admin import build_admin_app
from service.entrypoints.http.app import build_http_app
from service.entrypoints.http.models import MAX_BATCH
from service.entrypoints.http.security import Authenticator, parse_tokens
from tests.support.admin import admin_get, openapi_of

READ = "reader-token-0123456789abcdef"
WRITE = "writer-token-0123456789abcdef"
TWO = "two-tenants-token-0123456789"
LIMIT = 128 * 1024  # a full batch fits
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


class Store:
    """The three ports at once: nothing cached, states from a dict, optionally failing."""

    def __init__(self, states: Iterable[SubjectState] = ()) -> None:
        self.states = {s.key: s for s in states}
        self.failure: Exception | None = None

    async def read_one(self, key: SubjectKey) -> SubjectState | None:
        return None

    async def read_many(self, tenant: str, subject_ids: Sequence[str]) -> list[SubjectState | None]:
        return [None] * len(subject_ids)

    async def read_many_rules(self, tenant: str, subject_ids: Sequence[str]) -> list[Rules | None]:
        return [None] * len(subject_ids)

    async def write(self, states: Iterable[SubjectState]) -> int:
        return len(list(states))

    async def load_states(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]:
        if self.failure is not None:
            raise self.failure
        return {k: self.states.get(k, SubjectState.empty(k)) for k in keys}


def opt_out(subject_id: str) -> SubjectState:
    rule = Rule("marketing", "email", "opt_out", T0, "web", "c1")
    return SubjectState(SubjectKey("default", subject_id), 1, {("marketing", "email"): rule})


@pytest.fixture
def store() -> Store:
    return Store([opt_out("a/b"), opt_out("x\ny"), opt_out("\x00")])


@pytest.fixture
def app(store: Store) -> Any:
    decisions = DecisionService(DEFAULT_CATALOG, store, store, store)
    auth = Authenticator(parse_tokens(f"r:{READ}:read,w:{WRITE}:write,t:{TWO}:check:default+t2"))
    return build_http_app(decisions, auth, max_body_bytes=LIMIT)


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


def checks(n: int) -> dict[str, Any]:
    return {
        "checks": [
            {"subject_id": f"s{i}", "topic": "marketing", "channel": "sms"} for i in range(n)
        ]
    }


# --- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("subject_id", ["a/b", "x\ny", "\x00"])
async def test_subject_ids_are_opaque(http: httpx.AsyncClient, subject_id: str) -> None:
    response = await http.get(
        f"/v1/subjects/{quote(subject_id, safe='')}/check",
        params={"topic": "marketing.newsletter", "channel": "email"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["subject_id"] == subject_id
    assert body["allowed"] is False
    assert body["reason"]["rule"]["command_id"] == "c1"


async def test_preferences_and_batch(http: httpx.AsyncClient) -> None:
    page = await http.get(
        "/v1/subjects/nobody/preferences",
        params={"tenant": "t2"},
        headers={"Authorization": f"Bearer {TWO}"},
    )
    assert page.status_code == 200
    assert page.json()["tenant"] == "t2"
    assert page.json()["version"] == 0
    batch = await http.post(
        "/v1/check",
        json={
            "checks": [
                {"subject_id": "a/b", "topic": "marketing", "channel": "email"},
                {"subject_id": "a/b", "topic": "marketing", "channel": "sms", "extra": 1},
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    assert [r["allowed"] for r in batch.json()["results"]] == [False, True]


async def test_a_full_batch_is_answered_and_one_more_check_is_refused(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/v1/check", json=checks(MAX_BATCH))
    assert response.status_code == 200
    assert len(response.json()["results"]) == MAX_BATCH
    assert error_of(await http.post("/v1/check", json=checks(MAX_BATCH + 1))) == (
        422,
        "invalid_request",
        "checks",
    )


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "error"),
    [
        ({"topic": "marketing.nope", "channel": "email"}, "topic", "unknown_topic"),
        ({"topic": "marketing", "channel": "pigeon"}, "channel", "unknown_channel"),
        ({"topic": "marketing", "channel": "*"}, "channel", "invalid_channel"),
        ({"topic": "data.sale", "channel": "email"}, "channel", "invalid_channel"),
        ({"channel": "email"}, "topic", "invalid_request"),
        ({"topic": "marketing", "channel": "email", "tenant": ""}, "tenant", "invalid_request"),
        ({"topic": "marketing", "channel": "email", "tenat": "t2"}, "tenat", "invalid_request"),
        ({"topic": "nope", "channel": "email", "tenat": "t2"}, "tenat", "invalid_request"),
    ],
)
async def test_check_refuses_bad_queries_naming_the_field(
    http: httpx.AsyncClient, params: dict[str, str], field: str, error: str
) -> None:
    assert error_of(await http.get("/v1/subjects/u1/check", params=params)) == (422, error, field)


async def test_an_unknown_query_parameter_is_named(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/subjects/u1/preferences", params={"tenat": "t2"})
    assert error_of(response) == (422, "invalid_request", "tenat")
    assert response.json()["detail"] == "unknown query parameter"


async def test_empty_and_overlong_subject_ids_are_refused(http: httpx.AsyncClient) -> None:
    for subject_id in ("", "s" * 257):
        response = await http.get(f"/v1/subjects/{subject_id}/preferences")
        assert error_of(response) == (422, "invalid_request", "subject_id")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {
                "checks": [
                    {"subject_id": "a", "topic": "marketing", "channel": "email"},
                    {"subject_id": "b", "topic": "marketing", "channel": "fax"},
                ]
            },
            "checks[1].channel",
        ),
        ({"checks": [{"subject_id": "a"}]}, "checks[0].topic"),
        ({"checks": []}, "checks"),
        ({}, "checks"),
    ],
)
async def test_batch_errors_name_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    status, _, named = error_of(await http.post("/v1/check", json=body))
    assert (status, named) == (422, field)


async def test_a_body_that_is_not_json_is_refused(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"Content-Type": "application/json"}):
        for body in (b"{not json", b'{"checks": "\xff\xfe"}'):
            response = await http.post("/v1/check", content=body, headers=headers)
            assert error_of(response) == (422, "invalid_request", None)


async def test_an_unreachable_store_answers_503(http: httpx.AsyncClient, store: Store) -> None:
    store.failure = RedisConnectionError("gone")
    response = await http.get("/v1/subjects/u1/check?topic=marketing&channel=email")
    assert error_of(response) == (503, "unavailable", None)


async def test_an_unexpected_failure_answers_500_with_the_error_shape(
    app: Any, store: Store
) -> None:
    store.failure = RuntimeError("bug")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get(
            "/v1/subjects/u1/preferences", headers={"Authorization": f"Bearer {READ}"}
        )
    assert error_of(response) == (500, "internal_error", None)


async def test_unknown_routes_and_methods_keep_the_error_shape(http: httpx.AsyncClient) -> None:
    assert error_of(await http.get("/v2/nothing")) == (404, "not_found", None)
    response = await http.put("/v1/check", json={})
    assert error_of(response) == (405, "method_not_allowed", None)
    assert "POST" in response.headers["allow"]


# --- request size -------------------------------------------------------------------------


async def test_a_declared_body_over_the_limit_is_refused_unread(http: httpx.AsyncClient) -> None:
    big = json.dumps(checks(3 * MAX_BATCH)).encode()
    assert len(big) > LIMIT
    for path, method in (("/v1/check", "POST"), ("/v1/subjects/u1/preferences", "GET")):
        response = await http.request(method, path, content=big)
        assert error_of(response) == (413, "too_large", None)
        assert str(LIMIT) in response.json()["detail"]


async def test_a_streamed_body_is_cut_off_at_the_limit(http: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"checks": ['
        for _ in range(10_000):
            sent += 1
            yield b'{"subject_id": "s", "topic": "marketing", "channel": "sms"},'

    response = await http.post(
        "/v1/check", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert error_of(response) == (413, "too_large", None)
    assert sent < 10_000  # reading stopped at the limit


# --- auth ---------------------------------------------------------------------------------


async def test_auth(app: Any, anonymous: httpx.AsyncClient) -> None:
    path = "/v1/subjects/u1/check?topic=marketing&channel=email"
    missing = await anonymous.get(path)
    assert error_of(missing) == (401, "unauthorized", None)
    assert missing.headers["www-authenticate"] == 'Bearer realm="optout"'
    for header in (f"Bearer {READ[:-1]}", f"Basic {READ}", "Bearer ", "Bearer nope-nope-nope"):
        wrong = await anonymous.get(path, headers={"Authorization": header})
        assert error_of(wrong) == (401, "unauthorized", None), header
        assert wrong.headers["www-authenticate"].endswith('error="invalid_token"')
    writer = {"Authorization": f"Bearer {WRITE}"}
    for response in (
        await anonymous.get(path, headers=writer),
        await anonymous.post("/v1/check", json={}, headers=writer),
    ):
        assert error_of(response) == (403, "scope_forbidden", None)
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert (await anonymous.get(path, headers={"Authorization": f"bearer {READ}"})).is_success
    # No token on the admin surface (its own port): health, readiness and the document.
    for open_path in ("/healthz", "/readyz", "/openapi.json", "/asyncapi.json"):
        assert (await admin_get(app, open_path)).status_code == 200
        assert (await anonymous.get(open_path)).status_code == 404


async def test_without_tokens_every_call_is_refused(store: Store) -> None:
    app = build_http_app(DecisionService(DEFAULT_CATALOG, store, store, store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get(
            "/v1/subjects/u1/preferences", headers={"Authorization": f"Bearer {READ}"}
        )
        assert response.status_code == 401


# --- health -------------------------------------------------------------------------------


async def test_the_admin_app_reports_failing_checks() -> None:
    readiness = Readiness()

    async def down() -> str | None:
        return "no PONG"

    async def up() -> str | None:
        return None

    readiness.add("redis", down)
    readiness.add("postgresql", up)
    transport = httpx.ASGITransport(app=build_admin_app(readiness))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "not ready"
        assert body["checks"]["postgresql"] is None
        # The reason, and since when it has been failing.
        assert re.fullmatch(
            r"no PONG \(since \d{4}-\d\d-\d\dT[\d:]{8}\+00:00\)", body["checks"]["redis"]
        )
        assert (await client.get("/openapi.json")).status_code == 404
        assert (await client.get("/v1/subjects/u1/preferences")).status_code == 404


async def test_readiness_probes_run_at_most_once_per_second_however_often_asked() -> None:
    """/readyz and /metrics answer from the last run for a second: neither can be used to
    hammer PostgreSQL, Redis or Kafka."""
    now = [1_000.0]
    runs = 0

    async def probe() -> str | None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)
        return None

    readiness = Readiness(clock=lambda: now[0])
    readiness.add("postgresql", probe)
    transport = httpx.ASGITransport(app=build_admin_app(readiness))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        answers = await asyncio.gather(*(client.get("/readyz") for _ in range(20)))
        assert {r.status_code for r in answers} == {200}
        assert runs == 1
        now[0] += 0.999
        await client.get("/readyz")
        assert runs == 1
        now[0] += 0.001  # the positive control: a second later the probes run again
        await client.get("/readyz")
        assert runs == 2


# --- the OpenAPI document -----------------------------------------------------------------


async def test_openapi_lists_the_catalog_and_documents_every_answer(app: Any) -> None:
    document = await openapi_of(app)
    assert document["openapi"].startswith("3.1")
    text = json.dumps(document)
    assert "x-catalog-enum" not in text
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in document["components"]["schemas"]
    assert set(document["paths"]) == {
        "/v1/subjects/{subject_id}/preferences",
        "/v1/subjects/{subject_id}/check",
        "/v1/check",
    }
    topics = sorted(DEFAULT_CATALOG.topics)
    channels = [*sorted(DEFAULT_CATALOG.channels), WILDCARD]
    check = document["paths"]["/v1/subjects/{subject_id}/check"]["get"]
    parameters = {p["name"]: p for p in check["parameters"]}
    assert set(parameters) == {"subject_id", "topic", "channel", "tenant"}
    assert parameters["topic"]["schema"]["enum"] == topics
    assert parameters["channel"]["schema"]["enum"] == channels
    check_in = document["components"]["schemas"]["CheckIn"]["properties"]
    assert check_in["topic"]["enum"] == topics
    assert check_in["channel"]["enum"] == channels
    assert set(check["responses"]) == {"200", "401", "403", "422", "429", "503"}
    batch = document["paths"]["/v1/check"]["post"]
    assert set(batch["responses"]) == {"200", "401", "403", "413", "422", "429", "503"}
    error = {"$ref": "#/components/schemas/ErrorOut"}
    assert batch["responses"]["413"]["content"]["application/json"]["schema"] == error
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token of `OPTOUT_API_TOKENS` with the scope the operation lists.",
    }
    for path in document["paths"].values():
        for operation in path.values():
            assert operation["security"] == [{"bearer": ["check"]}]
