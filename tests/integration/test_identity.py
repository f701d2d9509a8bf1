"""Identities end to end: links, merges and erasure through Kafka, PostgreSQL and Redis.

Commands go in through the commands topic as any channel would send them; the assertions
read the outputs (outcomes, events, tombstones), the rows and the cached states.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from service.adapters.postgres.pool import create_pool
from service.adapters.redis_client import create_redis
from service.bootstrap import consent_history_for
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import is_allowed
from service.domain.identifiers import pseudonym
from service.domain.model import SubjectKey
from service.entrypoints.history_export import to_csv
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, at, command
from tests.support.services import cached_in_redis

pytestmark = pytest.mark.integration

KEY = "k" * 32
EMAIL = "email:alice@example.com"
PHONE = "phone:+14155550123"


@pytest.fixture
def identity_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"identifier_key": SecretStr(KEY), "erasure_fence_seconds": 1}
    )


@pytest.fixture
async def client(identity_settings: Settings) -> AsyncIterator[ContractClient]:
    async with Service(identity_settings, with_worker=True), ContractClient(identity_settings) as c:
        yield c


def identity(kind: str, subject_id: str, seconds: float, **fields: Any) -> dict[str, Any]:
    doc = command(subject_id, [], occurred_at=at(seconds), kind=kind, channel="support", **fields)
    del doc["changes"]
    return doc


async def connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )


async def row(settings: Settings, subject_id: str) -> asyncpg.Record | None:
    conn = await connect(settings)
    try:
        return await conn.fetchrow(
            "SELECT version, merged_into, erased_at FROM subjects"
            " WHERE tenant = 'default' AND subject_id = $1",
            subject_id,
        )
    finally:
        await conn.close()


async def allowed(settings: Settings, subject_id: str, topic: str, channel: str) -> bool:
    """The answer from the cached state, following forwards as a reader does."""
    redis = create_redis(settings.redis_dsn)
    try:
        key = SubjectKey("default", subject_id)
        for _ in range(8):
            state = await cached_in_redis(redis, settings, key)
            assert state is not None, key
            if state.merged_into is None:
                return is_allowed(DEFAULT_CATALOG, state, topic, channel).allowed
            key = SubjectKey("default", state.merged_into)
        raise AssertionError("forward chain too long")
    finally:
        await redis.aclose()


async def test_an_sms_stop_for_a_linked_phone_stops_sms_for_the_person(
    identity_settings: Settings, client: ContractClient
) -> None:
    settings = identity_settings
    linked = await client.apply(identity("link", "user-1", 1, identifier="phone:+1 (415) 555-0123"))
    assert linked["status"] == "applied"
    assert linked["applied_to"] is None  # it applied to the subject it named
    # The SMS webhook addresses the person by the number they texted from.
    stop = command(PHONE, [("opt_out", "*", "sms")], occurred_at=at(10), channel="sms")
    outcome = await client.apply(stop)
    assert outcome["status"] == "applied"
    assert outcome["subject_id"] == PHONE
    assert outcome["applied_to"] == "user-1"
    assert not await allowed(settings, "user-1", "marketing", "sms")
    assert not await allowed(settings, PHONE, "marketing", "sms")
    assert await allowed(settings, "user-1", "marketing", "email")
    assert await allowed(settings, "user-1", "security", "sms")  # mandatory
    event = await client.event("user-1", outcome["version"])
    assert {(p["topic"], p["channel"], p["action"]) for p in event["preferences"]} == {
        ("*", "sms", "opt_out")
    }
    assert f"default:{PHONE}" in client.tombstones


async def test_linking_keeps_the_identifiers_earlier_opt_out(
    identity_settings: Settings, client: ContractClient
) -> None:
    settings = identity_settings
    await client.apply(command(EMAIL, [("opt_out", "marketing", "email")], occurred_at=at(20)))
    await client.apply(command("user-2", [("opt_in", "marketing", "email")], occurred_at=at(10)))
    assert (await client.apply(identity("link", "user-2", 30, identifier=EMAIL)))[
        "status"
    ] == "applied"
    assert not await allowed(settings, "user-2", "marketing.newsletter", "email")
    # A later opt-in by the same person wins, as the person's latest statement.
    await client.apply(command(EMAIL, [("opt_in", "marketing", "email")], occurred_at=at(40)))
    assert await allowed(settings, "user-2", "marketing.newsletter", "email")
    # Linked elsewhere: refused until unlinked.
    again = await client.apply(identity("link", "user-3", 50, identifier=EMAIL))
    assert (again["status"], again["reason"]) == ("rejected", "identifier_linked_elsewhere")
    freed = await client.apply(identity("unlink", "user-2", 60, identifier=EMAIL))
    assert freed["status"] == "applied"
    stored = await row(settings, EMAIL)
    assert stored is not None
    assert stored["merged_into"] is None
    # Unlinked, the address keeps the rules that applied to it, and is its own subject.
    assert await allowed(settings, EMAIL, "marketing.newsletter", "email")
    await client.apply(command(EMAIL, [("opt_out", "*", "*")], occurred_at=at(70)))
    assert not await allowed(settings, EMAIL, "marketing", "email")
    assert await allowed(settings, "user-2", "marketing", "email")


@pytest.mark.parametrize("order", ["a_into_b", "b_into_a"])
async def test_merges_in_both_orders_keep_every_opt_out(
    identity_settings: Settings, client: ContractClient, order: str
) -> None:
    settings = identity_settings
    await client.apply(command("a", [("opt_out", "marketing", "email")], occurred_at=at(20)))
    await client.apply(command("a", [("opt_in", "product", "sms")], occurred_at=at(5)))
    await client.apply(command("b", [("opt_in", "marketing", "email")], occurred_at=at(10)))
    await client.apply(command("b", [("opt_out", "product", "*")], occurred_at=at(15)))
    gone, kept = ("a", "b") if order == "a_into_b" else ("b", "a")
    merged = await client.apply(identity("merge", gone, 30, into=kept))
    assert merged["status"] == "applied"
    assert merged["applied_to"] == kept
    for name in ("a", "b"):
        assert not await allowed(settings, name, "marketing.newsletter", "email")
        assert not await allowed(settings, name, "product.updates", "sms")
    assert f"default:{gone}" in client.tombstones
    event = await client.event(kept, merged["version"])
    assert event["command_id"] == merged["command_id"]
    stored = await row(settings, gone)
    assert stored is not None
    assert stored["merged_into"] == kept


async def test_a_chain_of_merges_forwards_every_id_to_the_last(
    identity_settings: Settings, client: ContractClient
) -> None:
    settings = identity_settings
    await client.apply(command("a", [("opt_out", "marketing", "email")], occurred_at=at(1)))
    await client.apply(command("b", [("opt_out", "product", "email")], occurred_at=at(2)))
    await client.apply(command("c", [("opt_out", "reminders", "email")], occurred_at=at(3)))
    await client.apply(identity("link", "a", 4, identifier=EMAIL))
    await client.apply(identity("merge", "a", 5, into="b"))
    await client.apply(identity("merge", "b", 6, into="c"))
    # Forwards stay one hop deep: every id points at c.
    for name in ("a", "b", EMAIL):
        stored = await row(settings, name)
        assert stored is not None, name
        assert stored["merged_into"] == "c", name
    outcome = await client.apply(command("a", [("opt_out", "*", "push")], occurred_at=at(7)))
    assert outcome["applied_to"] == "c"
    for name in ("a", "b", "c", EMAIL):
        for topic in ("marketing", "product", "reminders"):
            assert not await allowed(settings, name, topic, "email"), (name, topic)
        assert not await allowed(settings, name, "reminders", "push")
    again = await client.apply(identity("merge", "a", 8, into="c"))
    assert again["status"] == "unchanged"
    # The proof of consent of c holds every change made under a, b and the address.
    exported = await export(settings, EMAIL)
    assert sorted(r.action for r in exported) == sorted(
        ["opt_out"] * 4 + ["link", "merge", "merge"]
    )
    assert {r.source_channel for r in exported} == {"web", "support"}


async def test_a_command_racing_a_merge_lands_on_the_merged_subject(
    identity_settings: Settings, client: ContractClient
) -> None:
    settings = identity_settings
    await client.apply(command("r-a", [("opt_in", "marketing", "email")], occurred_at=at(1)))
    await client.apply(command("r-b", [("opt_in", "marketing", "sms")], occurred_at=at(1)))
    merge = identity("merge", "r-a", 10, into="r-b")
    stop = command("r-a", [("opt_out", "marketing", "email")], occurred_at=at(20))
    # Different partitions, sent at once: either may be applied first.
    first = await client.send(merge)
    await client.send(stop, key=f"other-{first.partition}")
    await client.outcome(merge["command_id"])
    out = await client.outcome(stop["command_id"])
    assert out["status"] == "applied"
    assert not await allowed(settings, "r-b", "marketing", "email")
    assert not await allowed(settings, "r-a", "marketing", "email")
    assert await allowed(settings, "r-b", "marketing", "sms")


async def clear_text_in_postgres(settings: Settings, needle: str) -> list[str]:
    conn = await connect(settings)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                settings.database_schema,
            )
        ]
        found = []
        for table in tables:
            hits = await conn.fetchval(
                f'SELECT count(*) FROM "{table}" t WHERE t::text ILIKE $1',
                f"%{needle}%",
            )
            if hits:
                found.append(table)
        return found
    finally:
        await conn.close()


async def clear_text_in_redis(settings: Settings, needle: str) -> list[bytes]:
    redis = Redis.from_url(settings.redis_dsn)
    try:
        found = []
        async for key in redis.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
            blob = key + b"".join(
                v for v in (await redis.hgetall(key)).values() if isinstance(v, bytes)
            )
            if needle.encode() in blob:
                found.append(key)
        return found
    finally:
        await redis.aclose()


async def test_erasure_keeps_the_suppression_and_no_identifier_in_clear(
    identity_settings: Settings, client: ContractClient
) -> None:
    settings = identity_settings
    doc = command(EMAIL, [("opt_in", "marketing", "email")], occurred_at=at(1))
    doc["reason"] = "signed up at the fair"
    doc["source"]["user_agent"] = "Mozilla/5.0"
    await client.apply(doc)
    await client.apply(identity("link", "user-9", 2, identifier=EMAIL))
    await client.apply(identity("link", "user-9", 3, identifier=PHONE))
    await client.apply(command("user-9", [("opt_in", "product", "sms")], occurred_at=at(4)))
    assert await allowed(settings, EMAIL, "marketing", "email")

    erased = await client.apply(identity("erase", EMAIL, 10))
    assert erased["status"] == "applied"
    assert "alice" not in str(erased)
    assert erased["subject_id"] == pseudonym(KEY.encode(), "default", EMAIL)
    assert "kept" in erased["detail"]
    assert "erased" in erased["detail"]
    assert f"default:{EMAIL}" in client.tombstones
    # The opaque account is published with its suppression, for senders following the topic.
    suppression = await client.event("user-9", erased["version"])
    assert [(p["topic"], p["channel"], p["action"]) for p in suppression["preferences"]] == [
        ("*", "*", "opt_out")
    ]

    # The fences expire (OPTOUT_ERASURE_FENCE_SECONDS=1 here); then nothing is in clear.
    await asyncio.sleep(1.5)
    for needle in ("alice@example.com", "4155550123", "203.0.113.7", "Mozilla", "the fair"):
        assert await clear_text_in_postgres(settings, needle) == [], needle
        assert await clear_text_in_redis(settings, needle) == [], needle

    # A later command for the same address finds the suppression.
    again = await client.apply(
        command("email:Alice@Example.com", [("opt_in", "marketing", "email")], occurred_at=at(20))
    )
    assert (again["status"], again["reason"]) == ("rejected", "erased")
    stop = await client.apply(command(EMAIL, [("opt_out", "*", "email")], occurred_at=at(21)))
    assert stop["status"] == "unchanged"
    relink = await client.apply(identity("link", "user-10", 22, identifier=EMAIL))
    assert (relink["status"], relink["reason"]) == ("rejected", "erased")
    assert await clear_text_in_postgres(settings, "alice@example.com") == []
    # The person's opaque id stays suppressed, mandatory topics excepted.
    assert not await allowed(settings, "user-9", "product", "sms")
    assert not await allowed(settings, "user-9", "data.sale", "*")
    assert await allowed(settings, "user-9", "security", "email")
    hashed = pseudonym(KEY.encode(), "default", EMAIL)
    assert not await allowed(settings, hashed, "marketing", "email")
    # The proof of consent remains, without its personal fields.
    conn = await connect(settings)
    try:
        history = await conn.fetch(
            "SELECT action, subject_id, source_ip, source_user_agent, reason, erased_at"
            " FROM consent_history ORDER BY id"
        )
    finally:
        await conn.close()
    assert [h["action"] for h in history][:2] == ["opt_in", "link"]
    assert "erase" in [h["action"] for h in history]
    assert all(h["erased_at"] is not None for h in history)
    assert all(h["source_ip"] is None and h["reason"] is None for h in history)
    assert history[0]["subject_id"] == hashed

    # The export finds the erased address by its hash and shows what was erased.
    exported = await export(settings, EMAIL)
    assert [r.action for r in exported] == ["opt_in", "link", "link", "opt_in", "erase"]
    assert all(r.erased_at is not None for r in exported)
    assert "source_ip" in exported[0].erased_fields()
    assert "alice" not in to_csv(exported)


async def export(settings: Settings, named: str) -> list[Any]:
    pool = await create_pool(settings.database_dsn, settings.database_schema, 1)
    try:
        history = consent_history_for(settings, pool)
        return [r async for page in history.pages("default", named) for r in page.records]
    finally:
        await pool.close()


async def test_erasure_without_a_key_is_refused(
    settings: Settings,
) -> None:
    async with Service(settings, with_worker=True), ContractClient(settings) as client:
        out = await client.apply(identity("erase", "user-1", 1))
    assert (out["status"], out["reason"]) == ("rejected", "erasure_unavailable")
