"""The channels against the real stack: HTTP intake, links, the unsubscribe and preference
pages over plain HTTP (as a mail client or a scanner sends them), and the SMS webhook.

Each test runs the whole service (worker, intake producer, outcome follower) on its own
topics, schema and Redis prefix; "nothing published" is read from the commands topic's end
offsets, "it worked" from the SDK, as a sender would see it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from service.client import OptoutClient
from service.domain.link_tokens import LinkClaim
from service.entrypoints.http.routers.sms import PATH as SMS_PATH
from service.entrypoints.http.routers.sms import twilio_signature
from service.settings import Settings
from tests.support.channels import (
    READ_TOKEN,
    SMS_TOKEN,
    SUPPORT,
    WRITE_TOKEN,
    Running,
    channel_settings,
    csrf_of,
    http_client,
    link_path,
    published,
    running,
)
from tests.support.contract_client import ContractClient, command

pytestmark = pytest.mark.integration


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Running]:
    async with running(channel_settings(settings)) as found:
        yield found


def now() -> int:
    return int(time.time())


async def test_intake_publishes_waits_for_the_outcome_and_refuses_what_the_worker_would(
    service: Running,
) -> None:
    async with http_client(service.base_url, WRITE_TOKEN) as http:
        doc = command("user-intake", [("opt_out", "marketing", "email")])
        answer = await http.post("/v1/commands", params={"wait": 5}, json=doc)
        assert answer.status_code == 200, answer.text
        assert answer.json()["command_id"] == doc["command_id"]
        assert answer.json()["outcome"]["status"] == "applied"

        quick = await http.post("/v1/commands", json=command("user-2", [("opt_in", "*", "sms")]))
        assert quick.status_code == 202
        assert quick.json()["outcome"] is None

        before = await published(service.settings)
        mk = command
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        cases = [
            (mk("u", [("opt_out", "nope", "email")]), "unknown_topic", "changes[0].topic"),
            (mk("u", [("opt_out", "security", "email")]), "mandatory_topic", "changes[0].topic"),
            (mk("u", [("opt_out", "marketing", "fax")]), "unknown_channel", "changes[0].channel"),
            (
                mk("u", [("opt_out", "marketing", "email")], channel="pigeon"),
                "invalid_payload",
                "source.channel",
            ),
            (
                mk("u", [("opt_out", "marketing", "email")], occurred_at=tomorrow),
                "future_timestamp",
                "occurred_at",
            ),
            (
                {**mk("u", [("opt_out", "marketing", "email")]), "changes": []},
                "invalid_payload",
                "changes",
            ),
        ]
        for doc, error, field in cases:
            refused = await http.post("/v1/commands", json=doc)
            assert refused.status_code == 422, refused.text
            assert (refused.json()["error"], refused.json()["field"]) == (error, field)
        batch = {"commands": [command("b1", [("opt_out", "marketing", "sms")]), cases[0][0]]}
        refused = await http.post("/v1/commands", json=batch)
        assert refused.json()["field"] == "commands[1].changes[0].topic"
        assert await published(service.settings) == before

        many = {
            "commands": [command(f"b{i}", [("opt_out", "reminders", "push")]) for i in range(50)]
        }
        answered = await http.post("/v1/commands", params={"wait": 5}, json=many)
        assert answered.status_code == 200
        assert {r["outcome"]["status"] for r in answered.json()["results"]} == {"applied"}

    async with http_client(service.base_url, READ_TOKEN) as reader:
        forbidden = await reader.post("/v1/commands", json=command("u", [("opt_out", "*", "*")]))
        assert forbidden.status_code == 403


async def test_links_from_the_api_and_the_one_click_post_flips_the_sender_decision(
    service: Running,
) -> None:
    subject = f"person-{uuid.uuid4().hex[:6]}"
    async with http_client(service.base_url, WRITE_TOKEN) as http:
        made = await http.post(
            "/v1/links", json={"subject_id": subject, "topic": "marketing.newsletter"}
        )
        assert made.status_code == 200, made.text
        link = made.json()
        assert link["list_unsubscribe"] == f"<{link['url']}>"
        assert link["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
        mandatory = await http.post("/v1/links", json={"subject_id": subject, "topic": "security"})
        assert mandatory.status_code == 422

    path = link["url"].removeprefix(service.base_url)
    async with (
        await OptoutClient.connect(service.settings) as sdk,
        http_client(service.base_url) as browserless,
    ):
        assert (await sdk.is_allowed(subject, "marketing.newsletter", "email")).allowed
        before = await published(service.settings)
        # A mail scanner follows the link: the page names the topic and changes nothing.
        page = await browserless.get(path)
        assert page.status_code == 200
        assert "Newsletter" in page.text
        assert "Email" in page.text
        assert "Content-Security-Policy" in page.headers
        assert await published(service.settings) == before

        # The mail client's RFC 8058 one-click POST: no page, no cookie, no CSRF field.
        pressed = time.perf_counter()
        done = await browserless.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        answered = time.perf_counter()
        assert done.status_code == 200
        assert "You are unsubscribed" in done.text
        while (await sdk.is_allowed(subject, "marketing.newsletter", "email")).allowed:
            assert time.perf_counter() - pressed < 5
            await asyncio.sleep(0.001)
        flipped = time.perf_counter() - pressed
        print(
            f"\none-click POST to the SDK saying no: {flipped * 1000:.1f} ms"
            f" (the POST, which waits for the outcome: {(answered - pressed) * 1000:.1f} ms)"
        )
        assert (await sdk.is_allowed(subject, "marketing.newsletter", "sms")).allowed

        again = await browserless.post(path, content=b"List-Unsubscribe=One-Click")
        assert "already unsubscribed" in again.text
        assert await published(service.settings) == before + 1


async def test_tampered_unknown_key_and_expired_links_get_400_and_publish_nothing(
    service: Running,
) -> None:
    claim = LinkClaim("default", "victim", "marketing", "email", now())
    good = link_path(claim)
    expired = link_path(LinkClaim("default", "victim", "marketing", "email", now() - 91 * 86_400))
    other = LinkClaim("default", "someone-else", "marketing", "email", now())
    forged = (
        good.rsplit(".", 2)[0] + "." + link_path(other).split(".")[2] + "." + good.rsplit(".", 1)[1]
    )
    unknown = good.replace("/u/v1.k2.", "/u/v1.k9.")
    before = await published(service.settings)
    async with http_client(service.base_url) as http:
        for path, says in [
            (good[:-3] + "abc", "damaged"),
            (forged, "damaged"),
            (unknown, "no longer accepted"),
            (expired, "expired"),
        ]:
            for method in ("GET", "POST"):
                answer = await http.request(method, path, content=b"List-Unsubscribe=One-Click")
                assert answer.status_code == 400, (path, method)
                assert says in answer.text
                assert SUPPORT in answer.text
        # Key rotation: a link signed with the retired-but-accepted key still works.
        old = await http.get(link_path(claim, key_id="k1"))
        assert old.status_code == 200
        # The page's button needs the page's CSRF field.
        no_csrf = await http.post(good, data={"csrf": "forged"})
        assert no_csrf.status_code == 400
    assert await published(service.settings) == before


async def test_the_button_confirms_with_the_effective_time(service: Running) -> None:
    path = link_path(LinkClaim("default", "button", "*", "email", now()))
    async with http_client(service.base_url) as http:
        page = await http.get(path)
        assert "everything" in page.text
        done = await http.post(path, data={"csrf": csrf_of(page.text)})
        assert "You are unsubscribed" in done.text
        assert "In effect since" in done.text
        again = await http.post(path, data={"csrf": csrf_of(page.text)})
        assert "already unsubscribed" in again.text


async def test_preference_page_saves_locks_mandatory_topics_and_honours_gpc(
    service: Running,
) -> None:
    subject = "prefs-person"
    path = link_path(LinkClaim("default", subject, "*", "*", now(), purpose="preferences")).replace(
        "/u/", "/p/"
    )
    async with (
        http_client(service.base_url) as http,
        await OptoutClient.connect(service.settings, local_cache=False) as sdk,
    ):
        page = await http.get(path)
        assert page.status_code == 200
        html = page.text
        assert "Security alerts" in html
        assert "Needed to keep your account safe." in html
        assert 'name="allow:security.alerts:email" value="1" checked disabled' in html
        assert "Sale or sharing of personal data" in html
        before = await published(service.settings)
        # Every box ticked except the newsletter by email; a mandatory box sent unticked
        # (a forged form) changes nothing.
        ticked = {
            name: "1"
            for name in set(re.findall(r'name="(allow:[^"]+)"', html))
            if name != "allow:marketing.newsletter:email" and "security" not in name
        }
        saved = await http.post(path, data={"csrf": csrf_of(html), **ticked})
        assert "Your choices are saved" in saved.text
        assert 'name="allow:marketing.newsletter:email" value="1" aria' in saved.text
        assert await published(service.settings) == before + 1
        assert not (await sdk.is_allowed(subject, "marketing.newsletter", "email")).allowed
        assert (await sdk.is_allowed(subject, "marketing.newsletter", "sms")).allowed
        assert (await sdk.is_allowed(subject, "security.alerts", "email")).allowed

        stop_all = await http.post(path, data={"csrf": csrf_of(html), "stop_all": "1"})
        assert "Your choices are saved" in stop_all.text
        assert not (await sdk.is_allowed(subject, "product.tips", "push")).allowed
        assert (await sdk.is_allowed(subject, "transactional.receipts", "sms")).allowed

        gpc_subject_path = link_path(
            LinkClaim("default", "gpc-person", "marketing", "email", now())
        ).replace("/u/", "/p/")
        gpc = await http.get(gpc_subject_path, headers={"Sec-GPC": "1"})
        assert "Global Privacy Control" in gpc.text
        assert not (await sdk.is_allowed("gpc-person", "data.sale", "*")).allowed
        assert (await sdk.is_allowed("gpc-person", "data.analytics", "*")).allowed

        forged = await http.post(path, data={"csrf": "x", "stop_all": "1"})
        assert forged.status_code == 400


def sid() -> str:
    """A Twilio message id (`SM` and 32 hex digits), new for each message."""
    return "SM" + uuid.uuid4().hex


def signed(service: Running, params: dict[str, str]) -> dict[str, str]:
    url = service.base_url + SMS_PATH
    return {"X-Twilio-Signature": twilio_signature(SMS_TOKEN.encode(), url, sorted(params.items()))}


STOP_VARIANTS = [
    "STOP", "stopall", "Unsubscribe", "CANCEL", "end", "QUIT", "revoke", "OPTOUT", "opt out",
    " Stop! ", "stop texting me", "Unsubscribe me.",
]  # fmt: skip


async def test_sms_keywords_signatures_and_e164(service: Running) -> None:
    async with (
        http_client(service.base_url) as http,
        await OptoutClient.connect(service.settings, local_cache=False) as sdk,
    ):

        async def reply(body: str, sender: str = "+1 (415) 555-0100") -> str:
            params = {"From": sender, "To": "+14155550199", "Body": body, "MessageSid": sid()}
            answer = await http.post(SMS_PATH, data=params, headers=signed(service, params))
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("application/xml")
            return answer.text

        before = await published(service.settings)
        params = {"From": "+14155550100", "To": "+14155550199", "Body": "STOP"}
        bad = await http.post(SMS_PATH, data=params, headers={"X-Twilio-Signature": "nope"})
        assert bad.status_code == 403
        unsigned = await http.post(SMS_PATH, data=params)
        assert unsigned.status_code == 403
        other_body = await http.post(
            SMS_PATH, data={**params, "Body": "START"}, headers=signed(service, params)
        )
        assert other_body.status_code == 403
        assert await published(service.settings) == before

        assert "Reply STOP" in await reply("help")
        assert "<Response></Response>" in await reply("I will stop by later")
        assert await published(service.settings) == before
        for n, body in enumerate(STOP_VARIANTS):
            assert "You are unsubscribed" in await reply(body, f"+1415555{n:04d}")
        for body in ["START", "unstop"]:
            assert "subscribed to text messages again" in await reply(body, "+14155550000")
        # YES is a START only where a tenant configures it (none here): not understood.
        assert "<Response></Response>" in await reply("Yes", "+14155550000")
        assert await published(service.settings) == before + len(STOP_VARIANTS) + 2

        subject = "phone:+14155550100"
        assert "You are unsubscribed" in await reply("STOP", "(415) 555-0100")
        deadline = time.monotonic() + 5
        while (await sdk.is_allowed(subject, "marketing", "sms")).allowed:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await sdk.is_allowed(subject, "marketing", "email")).allowed
        assert (await sdk.is_allowed(subject, "security", "sms")).allowed
        assert "subscribed to text messages again" in await reply("start", "+1 415 555 0100")
        deadline = time.monotonic() + 5
        while not (await sdk.is_allowed(subject, "marketing", "sms")).allowed:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)


def deny_tips_catalog(directory: Path) -> Path:
    """The shipped catalog with `product.tips` needing an explicit opt-in (default deny)."""
    text = (Path(__file__).resolve().parents[2] / "deploy" / "catalog.example.toml").read_text()
    head, tips, tail = text.partition('[topics."product.tips"]')
    tail = tail.replace('default = "allow"', 'default = "deny"', 1)
    path = directory / "catalog.toml"
    path.write_text(head + tips + tail, encoding="utf-8")
    return path


async def test_sms_start_and_yes_undo_the_stop_and_nothing_more(
    settings: Settings, tmp_path: Path
) -> None:
    own = channel_settings(settings).model_copy(
        update={"catalog_file": deny_tips_catalog(tmp_path), "sms_yes_tenants": "default"}
    )
    async with (
        running(own) as service,
        http_client(service.base_url, WRITE_TOKEN) as api,
        http_client(service.base_url) as http,
        ContractClient(own) as out,
        await OptoutClient.connect(own, local_cache=False) as sdk,
    ):

        async def reply(body: str, sender: str) -> None:
            params = {"From": sender, "To": "+14155550199", "Body": body, "MessageSid": sid()}
            answer = await http.post(SMS_PATH, data=params, headers=signed(service, params))
            assert answer.status_code == 200, answer.text
            outcome = await out.outcome(f"sms:{params['MessageSid']}")
            assert outcome["status"] == "applied", outcome

        earlier = datetime.now(UTC) - timedelta(minutes=1)
        per_topic, web_all = "phone:+14155550111", "phone:+14155550112"
        for subject, change, via in (
            (per_topic, ("opt_out", "marketing.promotions", "sms"), "sms"),
            (web_all, ("opt_out", "*", "sms"), "web"),
        ):
            doc = command(subject, [change], channel=via, occurred_at=earlier)
            answer = await api.post("/v1/commands", params={"wait": 5}, json=doc)
            assert answer.json()["outcome"]["status"] == "applied", answer.text
        for subject in (per_topic, web_all):
            for body in ("STOP", "START", "STOP", "YES"):
                await reply(body, subject.removeprefix("phone:"))

        async def allowed(subject: str, topic: str) -> bool:
            return (await sdk.is_allowed(subject, topic, "sms")).allowed

        assert not await allowed(per_topic, "marketing.promotions")  # the per-topic opt-out
        assert not await allowed(per_topic, "product.tips")  # default deny
        assert await allowed(per_topic, "product.updates")  # positive control: SMS is back
        assert await allowed(per_topic, "marketing.newsletter")
        # The all-SMS opt-out made on the web, which the STOP replaced in its cell, stands.
        for topic in ("product.updates", "marketing.newsletter", "product.tips"):
            assert not await allowed(web_all, topic)
        decision = await sdk.is_allowed(web_all, "product.updates", "sms")
        assert decision.rule is not None
        assert (decision.rule.topic, decision.rule.source_channel) == ("*", "web")


async def test_a_replayed_signed_webhook_is_a_duplicate_and_changes_nothing(
    service: Running,
) -> None:
    async with http_client(service.base_url) as http, ContractClient(service.settings) as out:
        sender = "+14155550123"
        params = {"From": sender, "To": "+14155550199", "Body": "STOP", "MessageSid": sid()}
        headers = signed(service, params)
        for _ in range(2):  # the same signed request, byte for byte
            answer = await http.post(SMS_PATH, data=params, headers=headers)
            assert "You are unsubscribed" in answer.text
        replayed = f"sms:{params['MessageSid']}"
        await out.wait_for(lambda: len(out.outcomes.get(replayed, [])) >= 2)
        assert [o["status"] for o in out.outcomes[replayed]] == ["applied", "duplicate"]
        assert out.outcomes[replayed][1]["version"] == out.outcomes[replayed][0]["version"] == 1
        # Positive control: another message from the same person is a change of its own.
        again = {**params, "MessageSid": sid()}
        await http.post(SMS_PATH, data=again, headers=signed(service, again))
        assert (await out.outcome(f"sms:{again['MessageSid']}"))["status"] == "applied"

        settings = service.settings
        conn = await asyncpg.connect(
            settings.database_dsn, server_settings={"search_path": settings.database_schema}
        )
        try:
            for table in ("consent_history", "preference_events"):
                counts = await conn.fetch(
                    f"SELECT command_id, count(*) AS n FROM {table}"
                    " WHERE subject_id = $1 GROUP BY command_id ORDER BY command_id",
                    f"phone:{sender}",
                )
                found = {row["command_id"]: row["n"] for row in counts}
                assert found == {replayed: 1, f"sms:{again['MessageSid']}": 1}, table
        finally:
            await conn.close()
        assert [e["version"] for e in out.events[f"phone:{sender}"]] == [1, 2]


async def test_sms_numbers_map_to_tenants_and_a_stop_is_never_lost(settings: Settings) -> None:
    """A number serves the tenants `OPTOUT_SMS_NUMBERS` gives it; a STOP to a number outside
    the mapping is applied in every listed tenant; a START there is refused and writes nothing
    (the same START to a mapped number is the positive control)."""
    own = channel_settings(settings).model_copy(
        update={"sms_numbers": "+14155550001:acme+beta,+14155550002:gamma"}
    )
    async with (
        running(own) as service,
        http_client(service.base_url) as http,
        ContractClient(own) as out,
        await OptoutClient.connect(own, local_cache=False) as sdk,
    ):

        async def reply(body: str, sender: str, to: str) -> str:
            params = {"From": sender, "To": to, "Body": body, "MessageSid": sid()}
            answer = await http.post(SMS_PATH, data=params, headers=signed(service, params))
            assert answer.status_code == 200, answer.text
            return f"sms:{params['MessageSid']}"

        async def tenants_of(command_id: str, count: int) -> list[str]:
            await out.wait_for(lambda: len(out.outcomes.get(command_id, [])) >= count)
            outcomes = out.outcomes[command_id]
            assert all(o["status"] == "applied" for o in outcomes), outcomes
            return sorted(o["tenant"] for o in outcomes)

        mapped, unlisted = "+14155550301", "+14155550302"
        assert await tenants_of(await reply("STOP", mapped, "+14155550001"), 2) == [
            "acme",
            "beta",
        ]
        assert await tenants_of(await reply("STOP", unlisted, "+14155550009"), 3) == [
            "acme",
            "beta",
            "gamma",
        ]
        for tenant in ("acme", "beta", "gamma"):
            decision = await sdk.is_allowed(f"phone:{unlisted}", "marketing", "sms", tenant)
            assert not decision.allowed, tenant
        assert (await sdk.is_allowed(f"phone:{mapped}", "marketing", "sms", "gamma")).allowed

        before = await published(own)
        await reply("START", unlisted, "+14155550009")
        assert await published(own) == before  # refused: nothing written
        for tenant in ("acme", "beta", "gamma"):
            decision = await sdk.is_allowed(f"phone:{unlisted}", "marketing", "sms", tenant)
            assert not decision.allowed, tenant
        assert await tenants_of(await reply("START", mapped, "+14155550001"), 2) == [
            "acme",
            "beta",
        ]
        assert await published(own) == before + 2
        assert (await sdk.is_allowed(f"phone:{mapped}", "marketing", "sms", "acme")).allowed
