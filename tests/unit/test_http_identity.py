"""The HTTP API and identities, on in-memory states: subject ids are normalised at the edge
(422 naming the field for an identifier that cannot be one), forwards answer like their
target, and the read path's identity errors keep the error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest

from service.application.decisions import (
    MAX_FORWARD_HOPS,
    DecisionService,
    IdentifierKeyMissing,
)
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.model import SubjectKey, SubjectState
from service.entrypoints.http.app import build_http_app
from service.entrypoints.http.security import Authenticator, parse_tokens
from tests.support.admin import openapi_of
from tests.unit.test_http_app import READ, Store, error_of, opt_out

ALICE = "email:alice@example.com"


def forward(subject_id: str, target: str) -> SubjectState:
    return SubjectState(SubjectKey("default", subject_id), 2, {}, merged_into=target)


@pytest.fixture
def store() -> Store:
    loop = [forward(f"loop{i}", f"loop{(i + 1) % 2}") for i in range(2)]
    return Store([opt_out(ALICE), opt_out("user-b"), forward("merged-a", "user-b"), *loop])


@pytest.fixture
async def http(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    decisions = DecisionService(DEFAULT_CATALOG, store, store, store)
    app = build_http_app(decisions, Authenticator(parse_tokens(f"r:{READ}:read")))
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {READ}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api", headers=headers
    ) as client:
        yield client


def check_path(subject_id: str) -> str:
    return f"/v1/subjects/{quote(subject_id, safe='')}/check"


NEWSLETTER = {"topic": "marketing.newsletter", "channel": "email"}


@pytest.mark.parametrize(
    "spelling", [ALICE, "email:Alice@Example.COM", "email: alice@example.com "]
)
async def test_an_identifier_is_one_subject_whatever_its_spelling(
    http: httpx.AsyncClient, spelling: str
) -> None:
    response = await http.get(check_path(spelling), params=NEWSLETTER)
    assert response.status_code == 200, response.text
    assert response.json()["subject_id"] == ALICE
    assert response.json()["allowed"] is False
    batch = await http.post("/v1/check", json={"checks": [{"subject_id": spelling, **NEWSLETTER}]})
    assert batch.status_code == 200
    assert batch.json()["results"][0]["allowed"] is False
    page = await http.get(f"/v1/subjects/{quote(spelling, safe='')}/preferences")
    assert page.status_code == 200
    assert page.json()["subject_id"] == ALICE
    assert len(page.json()["rules"]) == 1


@pytest.mark.parametrize("bad", ["email:nobody", "email:a b@c.d", "phone:0612", "device: "])
async def test_an_identifier_that_cannot_be_one_is_refused_naming_the_field(
    http: httpx.AsyncClient, bad: str
) -> None:
    response = await http.get(check_path(bad), params=NEWSLETTER)
    assert error_of(response) == (422, "invalid_identifier", "subject_id")
    assert bad not in response.text  # the error names the rule, not the input
    page = await http.get(f"/v1/subjects/{quote(bad, safe='')}/preferences")
    assert error_of(page) == (422, "invalid_identifier", "subject_id")
    checks = [{"subject_id": "fine", **NEWSLETTER}, {"subject_id": bad, **NEWSLETTER}]
    batch = await http.post("/v1/check", json={"checks": checks})
    assert error_of(batch) == (422, "invalid_identifier", "checks[1].subject_id")


async def test_a_forward_answers_like_its_target(http: httpx.AsyncClient) -> None:
    response = await http.get(check_path("merged-a"), params=NEWSLETTER)
    assert response.status_code == 200
    assert response.json()["subject_id"] == "merged-a"
    assert response.json()["allowed"] is False
    page = (await http.get("/v1/subjects/merged-a/preferences")).json()
    assert page["subject_id"] == "merged-a"
    assert page["applied_to"] == "user-b"
    assert page["version"] == 1
    assert len(page["rules"]) == 1
    own = (await http.get("/v1/subjects/user-b/preferences")).json()
    assert own["subject_id"] == "user-b"
    assert own["applied_to"] is None
    batch = await http.post(
        "/v1/check",
        json={"checks": [{"subject_id": s, **NEWSLETTER} for s in ("merged-a", "x", "user-b")]},
    )
    assert [r["allowed"] for r in batch.json()["results"]] == [False, True, False]


async def test_a_forward_loop_is_an_error_not_the_default(http: httpx.AsyncClient) -> None:
    response = await http.get(check_path("loop0"), params=NEWSLETTER)
    assert error_of(response) == (500, "forward_chain_too_long", None)
    assert str(MAX_FORWARD_HOPS) in response.json()["detail"]
    batch = await http.post("/v1/check", json={"checks": [{"subject_id": "loop1", **NEWSLETTER}]})
    assert error_of(batch) == (500, "forward_chain_too_long", None)


async def test_a_missing_identifier_key_answers_503_naming_the_setting(
    http: httpx.AsyncClient, store: Store
) -> None:
    store.failure = IdentifierKeyMissing()
    response = await http.get(check_path("email:carol@example.com"), params=NEWSLETTER)
    assert error_of(response) == (503, "identifier_key_missing", None)
    assert "OPTOUT_IDENTIFIER_KEY" in response.json()["detail"]
    # Mandatory topics need no state, so they are still answered.
    mandatory = await http.get(
        check_path("email:carol@example.com"), params={"topic": "security", "channel": "email"}
    )
    assert mandatory.status_code == 200


async def test_the_openapi_document_describes_the_additions(store: Store) -> None:
    decisions = DecisionService(DEFAULT_CATALOG, store, store, store)
    document = await openapi_of(build_http_app(decisions))
    prefs = document["components"]["schemas"]["PreferencesOut"]
    assert "applied_to" in prefs["properties"]
    assert "applied_to" not in prefs.get("required", [])
