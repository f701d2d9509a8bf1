"""The read path and identities against the real stack: PostgreSQL, Redis, HTTP, the SDK.

Forwards (linked identifiers, merged subjects), erased identifiers' suppressions and the
erasure fence are written here directly, with SQL and Redis writes shaped as the migration
and the worker's cache writes define them, so these tests hold the readers to the storage
format whatever writes it:

- a check on a forwarded id answers like its target, from Redis, from PostgreSQL with a cold
  cache, over HTTP and from the SDK with and without its local cache, which never keeps the
  forward;
- a check on an erased identifier answers from its suppression ("no", but for mandatory
  topics) and leaves no identifier in clear in Redis;
- without ``OPTOUT_IDENTIFIER_KEY``, a check on an identifier that may be erased fails
  (SDK ``IdentifierKeyMissing``, HTTP 503) instead of answering the catalog default;
- a tombstone on the preferences topic evicts exactly its subject from the SDK's cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.adapters.redis_client import create_redis
from service.adapters.redis_states import state_cache
from service.bootstrap import contract_topics
from service.client import IdentifierKeyMissing, OptoutClient
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import is_allowed
from service.domain.identifiers import normalize, pseudonym
from service.domain.model import Rule, SubjectKey, SubjectState
from service.entrypoints.server import Service
from service.settings import Settings
from tests.integration.test_read_path import (
    QUESTIONS,
    READ_TOKEN,
    cached,
    clear_redis,
    decision_json,
    reason_json,
)

pytestmark = pytest.mark.integration

KEY = "identifier-key-for-tests-0123456789abcdef"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TARGET_RULES = [
    ("marketing", "email", "opt_out"),
    ("*", "sms", "opt_out"),
    ("product", "push", "opt_in"),
]


def with_tokens(settings: Settings, identifier_key: str) -> Settings:
    return settings.model_copy(
        update={
            "api_tokens": SecretStr(f"reader:{READ_TOKEN}:read"),
            "identifier_key": SecretStr(identifier_key),
        }
    )


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    """The service holds the key; the SDK never does: it asks the API (a `check` token) for
    an identifier that may be erased."""
    return with_tokens(settings, KEY).model_copy(
        update={
            "client_api_url": f"http://127.0.0.1:{settings.http_port}",
            "client_api_token": SecretStr(READ_TOKEN),
        }
    )


@pytest.fixture
def keyless(settings: Settings) -> Settings:
    return with_tokens(settings, "")


async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API (no worker: the tests write storage themselves) and a client for it;
    the preferences topic exists, for the SDK's local cache to follow."""
    await ensure_topics(KafkaConnection(settings.kafka_bootstrap), contract_topics(settings))
    async with Service(settings, with_worker=False):
        base = f"http://127.0.0.1:{settings.http_port}"
        headers = {"Authorization": f"Bearer {READ_TOKEN}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:
            yield client


@pytest.fixture
async def keyed_http(keyed: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for client in api(keyed):
        yield client


@pytest.fixture
async def keyless_http(keyless: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for client in api(keyless):
        yield client


async def sql(settings: Settings, *statements: tuple[str, list[Any]]) -> None:
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        await conn.execute(f'SET search_path TO "{settings.database_schema}"')
        async with conn.transaction():
            for statement, args in statements:
                await conn.execute(statement, *args)
    finally:
        await conn.close()


def subject_row(
    subject_id: str,
    version: int,
    merged_into: str | None = None,
    erased: bool = False,
    tenant: str = "default",
) -> tuple[str, list[Any]]:
    return (
        "INSERT INTO subjects (tenant, subject_id, version, merged_into, erased_at)"
        " VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
        [tenant, subject_id, version, merged_into, erased],
    )


def rule_rows(subject_id: str, rules: list[tuple[str, str, str]]) -> list[tuple[str, list[Any]]]:
    return [
        (
            "INSERT INTO rules (tenant, subject_id, topic, channel, action, occurred_at,"
            " source_channel, command_id) VALUES ('default', $1, $2, $3, $4, $5, 'web', $6)",
            [subject_id, topic, channel, action, T0, f"c-{subject_id}-{topic}-{channel}"],
        )
        for topic, channel, action in rules
    ]


def state_of(subject_id: str, version: int, rules: list[tuple[str, str, str]]) -> SubjectState:
    return SubjectState(
        SubjectKey("default", subject_id),
        version,
        {
            (t, c): Rule(t, c, a, T0, "web", f"c-{subject_id}-{t}-{c}")  # type: ignore[arg-type]
            for t, c, a in rules
        },
    )


async def write_redis(settings: Settings, states: list[SubjectState], ttl_seconds: int = 0) -> int:
    """What the worker does after a commit: the version compare-and-set."""
    redis = create_redis(settings.redis_dsn)
    try:
        return await state_cache(redis, settings.redis_prefix, ttl_seconds).write(states)
    finally:
        await redis.aclose()


async def redis_dump(settings: Settings) -> dict[bytes, dict[bytes, bytes]]:
    """Every key of the test's prefix with its fields (the client returns bytes)."""
    redis = create_redis(settings.redis_dsn)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}:*", count=1000)]
        dump: dict[bytes, dict[bytes, bytes]] = {}
        for k in keys:
            kind = await redis.type(k)
            if kind == b"hash":
                dump[k] = await redis.hgetall(k)  # type: ignore[assignment]  # decoding is off
            elif kind == b"string":  # e.g. a rate limit's counter
                value = await redis.get(k)
                dump[k] = {b"value": value if isinstance(value, bytes) else b""}
            elif kind == b"zset":  # a sliding window's entries
                members = await redis.zrange(k, 0, -1)
                dump[k] = {m: b"" for m in members if isinstance(m, bytes)}
            else:
                dump[k] = {b"value": await redis.dump(k) or b""}
        return dump
    finally:
        await redis.aclose()


def expected(rules: list[tuple[str, str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    state = state_of("target", 1, rules)
    return {(t, c): decision_json(is_allowed(DEFAULT_CATALOG, state, t, c)) for t, c in QUESTIONS}


async def sdk_answers_like(
    client: OptoutClient, asked: str, target: str, rules: list[tuple[str, str, str]]
) -> None:
    want = expected(rules)
    for (topic, channel), decision in want.items():
        got = await client.is_allowed(asked, topic, channel)
        assert decision_json(got) == decision, (asked, topic, channel)
        allowed = await client.filter_allowed([asked, "nobody"], topic, channel)
        nobody = is_allowed(DEFAULT_CATALOG, {}, topic, channel).allowed
        assert allowed == [s for s, ok in ((asked, decision["allowed"]), ("nobody", nobody)) if ok]
    prefs = await client.preferences(asked)
    assert prefs.state.key.subject_id == target
    assert prefs.addressed_as == (None if asked == target else normalize(asked))
    for pair, effective in prefs.decisions.items():
        assert decision_json(effective) == want[pair]


async def http_answers_like(
    http: httpx.AsyncClient, asked: str, target: str, rules: list[tuple[str, str, str]]
) -> None:
    want = expected(rules)
    for (topic, channel), decision in want.items():
        response = await http.get(
            f"/v1/subjects/{asked}/check", params={"topic": topic, "channel": channel}
        )
        assert response.status_code == 200, response.text
        assert reason_json(response.json()) == decision, (asked, topic, channel)
    batch = await http.post(
        "/v1/check",
        json={"checks": [{"subject_id": asked, "topic": t, "channel": c} for t, c in want]},
    )
    assert batch.status_code == 200, batch.text
    assert [reason_json(r) for r in batch.json()["results"]] == list(want.values())
    page = (await http.get(f"/v1/subjects/{asked}/preferences")).json()
    assert page["applied_to"] == (None if asked == target else target)
    assert len(page["rules"]) == len(rules)


async def test_a_forwarded_id_answers_like_its_target_everywhere(
    keyed: Settings, keyed_http: httpx.AsyncClient
) -> None:
    alice = "email:alice@example.com"
    await sql(
        keyed,
        subject_row("user-b", 3),
        *rule_rows("user-b", TARGET_RULES),
        subject_row(alice, 2, merged_into="user-b"),
        subject_row("merged-a", 4, merged_into="user-b"),
    )
    forwards = [
        SubjectState(SubjectKey("default", alice), 2, {}, merged_into="user-b"),
        SubjectState(SubjectKey("default", "merged-a"), 4, {}, merged_into="user-b"),
    ]
    asked = ["email:Alice@Example.com", alice, "merged-a", "user-b"]
    # Redis written through, as by the worker.
    assert await write_redis(keyed, [state_of("user-b", 3, TARGET_RULES), *forwards]) == 3
    async with await OptoutClient.connect(keyed, local_cache=False) as client:
        for name in asked:
            await sdk_answers_like(client, name, "user-b", TARGET_RULES)
    # A cold cache: from PostgreSQL, and copied into Redis (a linked forward is no secret).
    await clear_redis(keyed)
    async with await OptoutClient.connect(keyed, local_cache=False) as client:
        for name in asked:
            await sdk_answers_like(client, name, "user-b", TARGET_RULES)
    assert await cached(keyed, SubjectKey("default", alice)) == forwards[0]
    assert await cached(keyed, SubjectKey("default", "user-b")) == state_of(
        "user-b", 3, TARGET_RULES
    )
    # The rules-only bulk read of a campaign, cold: a forward is not a subject without rules.
    await clear_redis(keyed)
    async with await OptoutClient.connect(keyed, local_cache=False) as client:
        assert await client.filter_allowed(["merged-a", "x"], "marketing", "email") == ["x"]
    # HTTP, cold then warm.
    await clear_redis(keyed)
    for _ in range(2):
        for name in asked:
            await http_answers_like(keyed_http, name, "user-b", TARGET_RULES)
    # The SDK's local cache: twice, the second round from memory, never the forwards.
    async with await OptoutClient.connect(keyed) as client:
        local = client.local_cache
        assert local is not None
        for _ in range(2):
            for name in asked:
                await sdk_answers_like(client, name, "user-b", TARGET_RULES)
        assert local.peek(SubjectKey("default", "user-b")) == state_of("user-b", 3, TARGET_RULES)
        for forward in forwards:
            assert local.peek(forward.key) is None


async def test_an_erased_identifier_answers_from_its_suppression_and_stays_out_of_redis(
    keyed: Settings, keyed_http: httpx.AsyncClient
) -> None:
    bob = "email:bob@example.com"
    suppression = pseudonym(KEY.encode(), "default", bob)
    # What erasure leaves: no row for the address, a suppression under its keyed hash.
    await sql(
        keyed,
        subject_row(suppression, 6, erased=True),
        *rule_rows(suppression, [("*", "*", "opt_out")]),
    )
    spellings = [bob, "email:Bob@Example.com", "email:BOB@example.com "]

    def clear_text_in_redis(dump: dict[bytes, dict[bytes, bytes]]) -> list[bytes]:
        return [
            k
            for k, fields in dump.items()
            if b"bob" in k.lower() or any(b"bob" in v.lower() for v in fields.values())
        ]

    async with await OptoutClient.connect(keyed, local_cache=False) as client:
        for name in spellings:
            denied = await client.is_allowed(name, "marketing.newsletter", "email")
            assert not denied.allowed
            assert denied.basis == "rule"
            mandatory = await client.is_allowed(name, "security.alerts", "email")
            assert mandatory.allowed
            assert mandatory.basis == "mandatory"
            assert await client.filter_allowed([name, "x"], "product", "push") == ["x"]
            # The whole page of an erased identifier is the API's to give (it holds the key).
            with pytest.raises(IdentifierKeyMissing):
                await client.preferences(name)
        await clear_redis(keyed)
        # The bulk path, cold.
        assert await client.filter_allowed([bob, "x"], "reminders", "sms") == ["x"]
    for name in spellings:
        response = await keyed_http.get(
            f"/v1/subjects/{name}/check", params={"topic": "marketing", "channel": "sms"}
        )
        assert response.status_code == 200
        assert response.json()["allowed"] is False
        assert response.json()["subject_id"] == bob
    await clear_redis(keyed)
    batch = await keyed_http.post(
        "/v1/check",
        json={
            "checks": [
                {"subject_id": bob, "topic": "data.sale", "channel": "*"},
                {"subject_id": bob, "topic": "transactional", "channel": "sms"},
            ]
        },
    )
    assert [r["allowed"] for r in batch.json()["results"]] == [False, True]
    page = (await keyed_http.get(f"/v1/subjects/{bob}/preferences")).json()
    assert page["applied_to"] == suppression
    async with await OptoutClient.connect(keyed) as client:
        for _ in range(2):
            assert not (await client.is_allowed(bob, "marketing", "email")).allowed
        assert client.local_cache is not None
        assert client.local_cache.peek(SubjectKey("default", bob)) is None

    dump = await redis_dump(keyed)
    assert clear_text_in_redis(dump) == []
    assert any(suppression.encode() in k for k in dump)  # the suppression is cached


async def test_a_reader_follows_the_erasure_fence_and_its_older_fill_loses(
    keyed: Settings,
) -> None:
    """Erasure races a reader that read the address's row just before it was deleted: the
    worker's fence (a forward to the suppression, a higher version, an expiry) is in Redis,
    so the reader's fill is refused and every answer follows the fence."""
    carol = "email:carol@example.com"
    suppression = pseudonym(KEY.encode(), "default", carol)
    await sql(
        keyed,
        subject_row(suppression, 1, erased=True),
        *rule_rows(suppression, [("*", "*", "opt_out")]),
    )
    fence = SubjectState(SubjectKey("default", carol), 5, {}, merged_into=suppression)
    assert await write_redis(keyed, [fence], ttl_seconds=30) == 1
    assert await write_redis(keyed, [state_of(carol, 4, [])]) == 0  # the racing fill
    async with await OptoutClient.connect(keyed, local_cache=False) as client:
        assert not (await client.is_allowed(carol, "marketing", "email")).allowed
        assert await client.filter_allowed([carol], "marketing", "email") == []
        assert (await client.preferences(carol)).state.key.subject_id == suppression


async def test_without_the_identifier_key_an_identifier_that_may_be_erased_fails_closed(
    keyless: Settings, keyless_http: httpx.AsyncClient
) -> None:
    erased = pseudonym(b"the-key-the-worker-had-0123456789abc", "default", "email:dave@x.org")
    await sql(
        keyless,
        subject_row(erased, 1, erased=True),
        *rule_rows(erased, [("*", "*", "opt_out")]),
        subject_row("email:known@x.org", 1),
        *rule_rows("email:known@x.org", [("marketing", "email", "opt_out")]),
        subject_row("email:dave@x.org", 1, tenant="other"),
    )
    async with await OptoutClient.connect(keyless, local_cache=False) as client:
        with pytest.raises(IdentifierKeyMissing):
            await client.is_allowed("email:dave@x.org", "marketing", "email")
        with pytest.raises(IdentifierKeyMissing):
            await client.filter_allowed(["u1", "email:dave@x.org"], "marketing", "email")
        with pytest.raises(IdentifierKeyMissing):
            await client.preferences("email:dave@x.org")
        # Mandatory topics need no state; opaque ids and identifiers with a row of their
        # own are answered; so are identifiers of a tenant without erased subjects.
        assert (await client.is_allowed("email:dave@x.org", "security", "email")).allowed
        assert (await client.is_allowed("user-1", "marketing", "email")).allowed
        assert not (await client.is_allowed("email:known@x.org", "marketing", "email")).allowed
        assert (await client.is_allowed("email:eve@x.org", "marketing", "email", "other")).allowed
    response = await keyless_http.get(
        "/v1/subjects/email:dave@x.org/check", params={"topic": "marketing", "channel": "email"}
    )
    assert response.status_code == 503
    assert response.json()["error"] == "identifier_key_missing"
    assert "OPTOUT_IDENTIFIER_KEY" in response.json()["detail"]
    batch = await keyless_http.post(
        "/v1/check",
        json={
            "checks": [{"subject_id": "email:dave@x.org", "topic": "reminders", "channel": "sms"}]
        },
    )
    assert batch.status_code == 503
    assert await cached(keyless, SubjectKey("default", "email:dave@x.org")) is None


async def until(condition: Callable[[], bool], within_seconds: float, what: str) -> None:
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < within_seconds, f"{what}: not within the wait"
        await asyncio.sleep(0.005)


async def test_a_tombstone_evicts_its_subject_from_the_local_cache_and_no_other(
    keyed: Settings,
) -> None:
    """A merge as the worker publishes it: Redis first (the merged-away subject becomes a
    forward), then the tombstone on the compacted topic under `{tenant}:{subject_id}`."""
    await ensure_topics(KafkaConnection(keyed.kafka_bootstrap), contract_topics(keyed))
    target = state_of("into-b", 2, [("marketing", "email", "opt_out")])
    await write_redis(keyed, [state_of("a", 1, []), state_of("keep", 1, []), target])
    producer = AIOKafkaProducer(bootstrap_servers=keyed.kafka_bootstrap)
    await producer.start()
    try:
        async with await OptoutClient.connect(keyed) as client:
            local = client.local_cache
            assert local is not None
            for name in ("a", "keep"):
                assert (await client.is_allowed(name, "marketing", "email")).allowed
            assert local.peek(SubjectKey("default", "a")) is not None
            assert local.peek(SubjectKey("default", "keep")) is not None

            await write_redis(
                keyed, [SubjectState(SubjectKey("default", "a"), 2, {}, merged_into="into-b")]
            )
            await producer.send_and_wait(keyed.topic_preferences, None, key=b"default:a")
            await until(
                lambda: local.peek(SubjectKey("default", "a")) is None, 5.0, "tombstone applied"
            )
            assert local.peek(SubjectKey("default", "keep")) is not None  # not emptied
            assert not (await client.is_allowed("a", "marketing", "email")).allowed
            assert local.peek(SubjectKey("default", "a")) is None  # the forward is not kept
            assert local.peek(SubjectKey("default", "into-b")) == target
    finally:
        await producer.stop()
