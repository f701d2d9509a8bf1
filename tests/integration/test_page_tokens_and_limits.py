"""Page links with a purpose, revocation, and rate limits that never turn away an opt-out,
against the real stack (the whole service on its own topics, schema and Redis prefix).

"Nothing published" is read from the commands topic's end offsets, "it took effect" from
the SDK, "the history grew by" from the consent_history table itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from service.client import OptoutClient
from service.domain.link_tokens import LinkClaim
from service.entrypoints.http.routers.sms import PATH as SMS_PATH
from service.entrypoints.http.routers.sms import twilio_signature
from service.settings import Settings
from tests.support.channels import (
    NEW_KEY,
    OPS_TOKEN,
    SMS_TOKEN,
    WRITE_TOKEN,
    Running,
    channel_settings,
    csrf_of,
    http_client,
    link_path,
    published,
    running,
)
from tests.support.contract_client import command

pytestmark = pytest.mark.integration

ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SUBJECT_LIMIT = 20


def limited(settings: Settings, **limits: Any) -> Settings:
    base = channel_settings(settings)
    generous = {
        "rate_limit_page_ip": "100000/minute",
        "rate_limit_page_token": "100000/minute",
        "rate_limit_subject_changes": f"{SUBJECT_LIMIT}/hour",
        "rate_limit_api_token": "100000/minute",
        "rate_limit_api_ip": "100000/minute",
        "rate_limit_sms_ip": "100000/minute",
        "rate_limit_sms_number": "100000/hour",
    }
    return base.model_copy(update={**generous, **limits})


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Running]:
    async with running(limited(settings)) as found:
        yield found


def now() -> int:
    return int(time.time())


def prefs_path(subject: str) -> str:
    claim = LinkClaim("default", subject, "*", "*", now(), purpose="preferences")
    return link_path(claim).replace("/u/", "/p/")


def boxes(html: str) -> list[str]:
    """The names of the boxes a person can tick (not the locked ones)."""
    return [
        name
        for name, attributes in re.findall(r'name="(allow:[^"]+)" value="1"([^>]*)>', html)
        if "disabled" not in attributes
    ]


async def history_rows(settings: Settings, subject: str) -> int:
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM consent_history WHERE subject_id = $1", subject
            )
        )
    finally:
        await conn.close()


async def until(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "the change never took effect"
        await asyncio.sleep(0.01)


async def test_a_flood_of_page_posts_stops_at_the_limit_and_an_opt_out_still_takes_effect(
    service: Running,
) -> None:
    subject = f"flooded-{uuid.uuid4().hex[:6]}"
    path = prefs_path(subject)
    async with (
        http_client(service.base_url) as http,
        await OptoutClient.connect(service.settings, local_cache=False) as sdk,
    ):
        page = await http.get(path)
        csrf = csrf_of(page.text)
        everything = boxes(page.text)
        cell = "allow:marketing.newsletter:email"
        assert cell in everything
        opt_in = {"csrf": csrf, **{name: "1" for name in everything}}
        opt_out = {k: v for k, v in opt_in.items() if k != cell}
        statuses: dict[tuple[str, int], int] = {}
        retry_after: set[str] = set()
        control = link_path(LinkClaim("default", subject, "marketing.promotions", "email", now()))
        flood = 2_000
        for n in range(flood):
            kind, form = ("opt_out", opt_out) if n % 2 == 0 else ("opt_in", opt_in)
            answer = await http.post(path, data=form)
            statuses[kind, answer.status_code] = statuses.get((kind, answer.status_code), 0) + 1
            if answer.status_code == 429:
                retry_after.add(answer.headers["Retry-After"])
                assert "were not saved" in answer.text
            if n == flood // 2:
                # Far past the limit: a one-click opt-out of another topic is taken ...
                done = await http.post(control, content=ONE_CLICK, headers=FORM)
                assert done.status_code == 200
                assert "You are unsubscribed" in done.text
                # ... and the forms from then on show that box as the page now does.
                for each in (opt_in, opt_out):
                    each.pop("allow:marketing.promotions:email")

        # Positive control: the opt-out sent in the middle of the flood took effect.
        async def promotions_stopped() -> bool:
            return not (await sdk.is_allowed(subject, "marketing.promotions", "email")).allowed

        await until(promotions_stopped)
        assert not (await sdk.is_allowed(subject, "marketing.newsletter", "email")).allowed
        # Opt-outs are never refused; opt-ins stop at the limit.
        assert statuses["opt_out", 200] == flood // 2, statuses
        assert statuses["opt_in", 429] >= flood // 2 - SUBJECT_LIMIT, statuses
        assert set(statuses) == {("opt_out", 200), ("opt_in", 200), ("opt_in", 429)}, statuses
        assert all(int(seconds) >= 1 for seconds in retry_after)
    # The flood's own changes stop at the limit; the control adds its one row.
    rows = await history_rows(service.settings, subject)
    print(f"\n{flood} alternating page POSTs: {statuses}, history rows {rows}")
    assert SUBJECT_LIMIT // 2 <= rows <= SUBJECT_LIMIT + 1, rows


async def test_an_unsubscribe_link_opens_the_preference_page_for_opt_outs_only(
    service: Running,
) -> None:
    subject = f"reader-{uuid.uuid4().hex[:6]}"
    unsubscribe = link_path(LinkClaim("default", subject, "marketing", "email", now()))
    as_preferences = unsubscribe.replace("/u/", "/p/")
    async with (
        http_client(service.base_url) as http,
        await OptoutClient.connect(service.settings, local_cache=False) as sdk,
    ):
        stop = await http.post(unsubscribe, content=ONE_CLICK, headers=FORM)
        assert "You are unsubscribed" in stop.text
        page = await http.get(as_preferences)
        assert "ask the sender for a link to your preference page" in page.text
        assert 'name="allow:marketing.newsletter:email" value="1" disabled' in page.text
        # A forged form that ticks the stopped boxes, and unticks product tips by push.
        names = set(re.findall(r'name="(allow:[^"]+)"', page.text))
        forged = {n: "1" for n in names if n != "allow:product.tips:push" and "security" not in n}
        before = await published(service.settings)
        saved = await http.post(as_preferences, data={"csrf": csrf_of(page.text), **forged})
        assert saved.status_code == 200
        assert "those choices were not saved" in saved.text
        assert await published(service.settings) == before + 1  # the opt-out only

        async def tips_stopped() -> bool:
            return not (await sdk.is_allowed(subject, "product.tips", "push")).allowed

        await until(tips_stopped)
        assert not (await sdk.is_allowed(subject, "marketing.newsletter", "email")).allowed

        # A preference link may opt in; it does not open the unsubscribe page.
        prefs = prefs_path(subject)
        page = await http.get(prefs)
        assert 'name="allow:marketing.newsletter:email" value="1" aria' in page.text
        everything = {n: "1" for n in names if "security" not in n}
        saved = await http.post(prefs, data={"csrf": csrf_of(page.text), **everything})
        assert "Your choices are saved" in saved.text
        assert (await sdk.is_allowed(subject, "marketing.newsletter", "email")).allowed
        wrong_page = await http.get(prefs.replace("/p/", "/u/"))
        assert wrong_page.status_code == 400
        assert "opens your preference page" in wrong_page.text

    async with http_client(service.base_url, WRITE_TOKEN) as api:
        made = await api.post("/v1/links", json={"subject_id": subject, "purpose": "preferences"})
        assert made.status_code == 200, made.text
        assert "/p/" in made.json()["url"]
        assert made.json()["list_unsubscribe"] is None
        missing = await api.post("/v1/links", json={"subject_id": subject})
        assert (missing.status_code, missing.json()["field"]) == (422, "topic")


def legacy_token(fields: list[Any]) -> str:
    """A link as made before purposes and token ids (five-field claim), key k2."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signed = f"v1.k2.{b64(json.dumps(fields, separators=(',', ':')).encode())}"
    return f"{signed}.{b64(hmac.new(NEW_KEY.encode(), signed.encode(), hashlib.sha256).digest())}"


async def test_revoked_future_and_old_links(service: Running) -> None:
    subject = f"revoked-{uuid.uuid4().hex[:6]}"
    async with http_client(service.base_url, WRITE_TOKEN) as api:
        made = await api.post("/v1/links", json={"subject_id": subject, "topic": "marketing"})
        link = made.json()
        # Revoking is an operator's (scope admin, every tenant): the sender's token may not.
        denied = await api.post("/v1/links/revoke", json={"link": link["token_id"]})
        assert (denied.status_code, denied.json()["error"]) == (403, "scope_forbidden")
    async with http_client(service.base_url, OPS_TOKEN) as ops:
        revoked = await ops.post("/v1/links/revoke", json={"link": link["url"]})
        assert revoked.json() == {"token_id": link["token_id"], "newly_revoked": True}
        again = await ops.post("/v1/links/revoke", json={"link": link["token_id"]})
        assert again.json()["newly_revoked"] is False
        junk = await ops.post("/v1/links/revoke", json={"link": "v1.k2.abc.def"})
        assert (junk.status_code, junk.json()["field"]) == (422, "link")

    path = link["url"].removeprefix(service.base_url)
    ahead = link_path(LinkClaim("default", subject, "marketing", "email", now() + 600))
    soon = link_path(LinkClaim("default", subject, "marketing", "email", now() + 200))
    old = "/u/" + legacy_token(["default", subject, "marketing", "email", now()])
    before = await published(service.settings)
    async with http_client(service.base_url) as http:
        for refused, says in [(path, "withdrawn"), (ahead, "damaged")]:
            for method in ("GET", "POST"):
                answer = await http.request(method, refused, content=ONE_CLICK, headers=FORM)
                assert answer.status_code == 400, (refused, method)
                assert says in answer.text
        assert await published(service.settings) == before
        assert (await http.get(soon)).status_code == 200
        # A link mailed before purposes existed still unsubscribes (CAN-SPAM: 30 days).
        done = await http.post(old, content=ONE_CLICK, headers=FORM)
        assert "You are unsubscribed" in done.text
        assert await published(service.settings) == before + 1

        # The operator's command line revokes the old link too (named by its MAC).
        env = {**os.environ, **service.settings.as_environment()}
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.entrypoints.cli",
            "links",
            "revoke",
            old.removeprefix("/u/"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await cli.communicate()
        assert cli.returncode == 0, err.decode()
        assert out.decode().endswith(" revoked\n"), out.decode()
        gone = await http.get(old)
        assert gone.status_code == 400
        assert "withdrawn" in gone.text


async def test_views_api_calls_and_sms_replies_get_429_but_opt_outs_never(
    settings: Settings,
) -> None:
    tight = limited(
        settings,
        rate_limit_page_ip="5/minute",
        rate_limit_api_ip="3/minute",
        rate_limit_api_token="4/minute",
        rate_limit_sms_number="2/hour",
    )
    subject = f"limited-{uuid.uuid4().hex[:6]}"
    async with running(tight) as service, http_client(service.base_url) as http:
        path = link_path(LinkClaim("default", subject, "marketing", "email", now()))
        views = [(await http.get(path)).status_code for _ in range(7)]
        assert views == [200] * 5 + [429] * 2
        refused = await http.get(path)
        assert int(refused.headers["Retry-After"]) >= 1
        assert "Too many requests" in refused.text
        # The same address, past its limit: the one-click opt-out is taken, and its
        # repeats are answered without being published again.
        before = await published(service.settings)
        for _ in range(5):
            done = await http.post(path, content=ONE_CLICK, headers=FORM)
            assert done.status_code == 200
        assert await published(service.settings) == before + 1

        bad = {"Authorization": "Bearer not-a-token-0123456789"}
        check = f"/v1/subjects/{subject}/check?topic=marketing&channel=email"
        answers = [(await http.get(check, headers=bad)).status_code for _ in range(5)]
        assert answers == [401, 401, 401, 429, 429]
        async with http_client(service.base_url, WRITE_TOKEN) as api:
            stops = [command(subject, [("opt_out", "reminders", "push")]) for _ in range(6)]
            for doc in stops:
                assert (await api.post("/v1/commands", json=doc)).status_code == 202
            opt_in = command(subject, [("opt_in", "reminders", "push")])
            limited_in = await api.post("/v1/commands", json=opt_in)
            assert limited_in.status_code == 429
            assert limited_in.json()["error"] == "rate_limited"
            assert int(limited_in.headers["Retry-After"]) >= 1

        async def reply(body: str) -> int:
            params = {
                "From": "+14155550142",
                "To": "+14155550199",
                "Body": body,
                "MessageSid": f"SM{uuid.uuid4().hex}",
            }
            url = service.base_url + SMS_PATH
            signature = twilio_signature(SMS_TOKEN.encode(), url, sorted(params.items()))
            answer = await http.post(
                SMS_PATH, data=params, headers={"X-Twilio-Signature": signature}
            )
            return answer.status_code

        assert [await reply("HELP") for _ in range(3)] == [200, 200, 429]
        assert [await reply("STOP") for _ in range(5)] == [200] * 5
