"""Contract v1 end to end through Kafka: commands in, outcomes, events and DLQ out.

The worker runs in-process against the real stack; assertions read only the output topics
(as an outside client would), plus PostgreSQL and Redis to check they agree.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.adapters.redis_client import create_redis
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import is_allowed
from service.domain.model import SubjectKey, SubjectState
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, at, command
from tests.support.services import cached_in_redis

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[ContractClient]:
    async with Service(settings, with_worker=True), ContractClient(settings) as c:
        yield c


async def cached_state(settings: Settings, subject_id: str) -> SubjectState | None:
    redis = create_redis(settings.redis_dsn)
    try:
        key = SubjectKey("default", subject_id)
        return await cached_in_redis(redis, settings, key)
    finally:
        await redis.aclose()


async def stored_rules(settings: Settings, subject_id: str) -> tuple[int, set[tuple[str, ...]]]:
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        version = await conn.fetchval(
            "SELECT version FROM subjects WHERE tenant = 'default' AND subject_id = $1",
            subject_id,
        )
        rows = await conn.fetch(
            "SELECT topic, channel, action FROM rules WHERE subject_id = $1", subject_id
        )
    finally:
        await conn.close()
    return int(version or 0), {(r["topic"], r["channel"], r["action"]) for r in rows}


def event_rules(event: dict[str, Any]) -> set[tuple[str, ...]]:
    return {(p["topic"], p["channel"], p["action"]) for p in event["preferences"]}


async def assert_consistent(settings: Settings, client: ContractClient, subject_id: str) -> None:
    """PostgreSQL, Redis and the latest event describe the same state."""
    version, rules = await stored_rules(settings, subject_id)
    cached = await cached_state(settings, subject_id)
    assert cached is not None
    assert cached.version == version
    assert {(r.topic, r.channel, r.action) for r in cached.rules.values()} == rules
    last = await client.event(subject_id, version)
    assert client.last_event(subject_id)["version"] == version
    assert event_rules(last) == rules


async def allowed(settings: Settings, subject_id: str, topic: str, channel: str) -> bool:
    state = await cached_state(settings, subject_id)
    assert state is not None
    return is_allowed(DEFAULT_CATALOG, state, topic, channel).allowed


async def test_opt_out_then_opt_in(settings: Settings, client: ContractClient) -> None:
    out = command("user-1", [("opt_out", "marketing", "email")], occurred_at=at(10))
    outcome = await client.apply(out)
    assert outcome["status"] == "applied"
    assert outcome["version"] == 1
    assert outcome["effective_at"] is not None
    assert not await allowed(settings, "user-1", "marketing.newsletter", "email")
    assert await allowed(settings, "user-1", "marketing.newsletter", "sms")
    event = await client.event("user-1", outcome["version"])
    assert client.last_event("user-1") == event
    assert event["command_id"] == out["command_id"]
    assert event["changes"][0]["topic"] == "marketing"
    assert event["source"] == {"channel": "web", "app": "tests"}
    assert "ip" not in json.dumps(event)

    back = command("user-1", [("opt_in", "marketing", "email")], occurred_at=at(20))
    assert (await client.apply(back))["status"] == "applied"
    assert await allowed(settings, "user-1", "marketing.newsletter", "email")
    await assert_consistent(settings, client, "user-1")
    assert client.last_event("user-1")["version"] == 2


async def test_wildcard_then_specific_and_specific_then_wildcard(
    settings: Settings, client: ContractClient
) -> None:
    await client.apply(command("w1", [("opt_out", "*", "*")], occurred_at=at(10)))
    await client.apply(
        command("w1", [("opt_in", "marketing.newsletter", "email")], occurred_at=at(20))
    )
    assert await allowed(settings, "w1", "marketing.newsletter", "email")
    assert not await allowed(settings, "w1", "marketing.promotions", "email")
    assert await allowed(settings, "w1", "security.alerts", "email")

    await client.apply(
        command("w2", [("opt_in", "marketing.newsletter", "email")], occurred_at=at(10))
    )
    await client.apply(command("w2", [("opt_out", "*", "*")], occurred_at=at(20)))
    assert not await allowed(settings, "w2", "marketing.newsletter", "email")
    await assert_consistent(settings, client, "w1")
    await assert_consistent(settings, client, "w2")


async def test_duplicates_reordering_and_ties(settings: Settings, client: ContractClient) -> None:
    first = command("d1", [("opt_out", "product", "push")], occurred_at=at(30))
    assert (await client.apply(first))["status"] == "applied"
    again = await client.apply(dict(first))
    # apply() returns the latest outcome for the id: the resend's.
    assert again["status"] == "duplicate"
    assert again["version"] == 1

    older = command("d1", [("opt_in", "product", "push")], occurred_at=at(10))
    assert (await client.apply(older))["status"] == "unchanged"
    assert not await allowed(settings, "d1", "product.tips", "push")

    tie_in = command("d2", [("opt_in", "reminders", "sms")], occurred_at=at(50))
    tie_out = command("d2", [("opt_out", "reminders", "sms")], occurred_at=at(50))
    assert (await client.apply(tie_out))["status"] == "applied"
    assert (await client.apply(tie_in))["status"] == "unchanged"
    assert not await allowed(settings, "d2", "reminders", "sms")
    await assert_consistent(settings, client, "d1")
    assert len(client.events["d1"]) == 1


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ([("opt_out", "security", "email")], "mandatory_topic"),
        ([("opt_out", "transactional.receipts", "*")], "mandatory_topic"),
        ([("opt_out", "astrology", "email")], "unknown_topic"),
        ([("opt_out", "marketing", "pigeon")], "unknown_channel"),
        ([("opt_out", "data.sale", "email")], "unknown_channel"),
    ],
)
async def test_rejections(
    client: ContractClient, changes: list[tuple[str, str, str]], reason: str
) -> None:
    outcome = await client.apply(command("r1", changes))
    assert (outcome["status"], outcome["reason"]) == ("rejected", reason)
    assert outcome["detail"]
    assert "r1" not in client.events


async def test_data_use_topic_and_universal_opt_out(
    settings: Settings, client: ContractClient
) -> None:
    assert (await client.apply(command("g1", [("opt_out", "data.sale", "*")])))[
        "status"
    ] == "applied"
    assert not await allowed(settings, "g1", "data.sale", "*")
    assert await allowed(settings, "g1", "data.analytics", "*")


async def test_future_timestamp_is_rejected(client: ContractClient) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    outcome = await client.apply(
        command("f1", [("opt_in", "marketing", "email")], occurred_at=future)
    )
    assert (outcome["status"], outcome["reason"]) == ("rejected", "future_timestamp")


async def test_command_id_conflict(client: ContractClient) -> None:
    first = command("c1", [("opt_out", "marketing", "email")])
    await client.apply(first)
    other = dict(first, changes=[{"action": "opt_out", "topic": "product", "channel": "email"}])
    outcome = await client.apply(other)
    assert (outcome["status"], outcome["reason"]) == ("rejected", "command_id_conflict")


async def test_wrong_types_with_readable_id_get_invalid_payload(client: ContractClient) -> None:
    doc = command("m1", [("opt_out", "marketing", "email")])
    doc["changes"] = "everything"
    outcome = await client.apply(doc)
    assert (outcome["status"], outcome["reason"]) == ("rejected", "invalid_payload")
    assert "everything" not in outcome["detail"]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"{not json", "JSON"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b"", "empty"),
        (None, "empty"),
        (b'["a list"]', "object"),
        (b'{"subject_id": "no-id"}', "command_id"),
        (b'{"command_id": "' + b"x" * 70_000 + b'"}', "larger"),
    ],
)
async def test_undecodable_records_go_to_the_dlq_untouched(
    settings: Settings, client: ContractClient, value: bytes | None, error: str
) -> None:
    await client.send(value, key=b"the-key")
    await client.wait_for(lambda: len(client.dead_letters) == 1)
    key, original, headers = client.dead_letters[0]
    assert key == b"the-key"
    assert original == (value or b"")
    assert error.lower() in headers["x-error"].decode().lower()
    assert headers["x-original-topic"].decode() == settings.topic_commands
    assert int(headers["x-original-partition"]) >= 0
    assert int(headers["x-original-offset"]) == 0
    # The partition keeps flowing after the bad record.
    after = await client.apply(command("after-dlq", [("opt_out", "marketing", "sms")]), 30)
    assert after["status"] == "applied"
