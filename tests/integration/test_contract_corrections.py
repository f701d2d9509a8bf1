"""Corrections to contract v1, end to end: per-tenant command ids, code-point tie breaks,
brief caching of unknown subjects, and the Redis setting the cache depends on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from service.adapters.redis_cache import RedisStateCache
from service.adapters.redis_client import create_redis, eviction_problem
from service.client import OptoutClient
from service.domain.model import SubjectKey
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, at, command
from tests.support.ports import free_port
from tests.support.throwaway import throwaway_redis

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[ContractClient]:
    async with Service(settings, with_worker=True), ContractClient(settings) as c:
        yield c


async def test_command_ids_are_unique_per_tenant(
    settings: Settings, client: ContractClient
) -> None:
    first = command("u1", [("opt_out", "marketing", "email")], command_id="same", tenant="acme")
    other = command("u1", [("opt_out", "*", "sms")], command_id="same", tenant="globex")
    assert (await client.apply(first))["status"] == "applied"
    # Another tenant's id neither blocks this one nor makes it a conflict.
    outcome = await client.apply(other)
    assert (outcome["status"], outcome["tenant"]) == ("applied", "globex")
    again = await client.apply(other)
    assert (again["status"], again["tenant"], again["version"]) == ("duplicate", "globex", 1)
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        rows = await conn.fetch("SELECT tenant FROM processed_commands WHERE command_id = 'same'")
    finally:
        await conn.close()
    assert sorted(r["tenant"] for r in rows) == ["acme", "globex"]


async def test_full_ties_break_by_code_point_in_postgresql_too(
    settings: Settings, client: ContractClient
) -> None:
    # Same time, same action: the larger command id wins, compared by code point ("a" > "B",
    # though many collations order them the other way), in either arrival order.
    moment = at(100)
    for tenant, order in (("t1", ["a", "B"]), ("t2", ["B", "a"])):
        for command_id in order:
            doc = command(
                "u1",
                [("opt_out", "marketing", "email")],
                occurred_at=moment,
                command_id=command_id,
                tenant=tenant,
            )
            await client.apply(doc)
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        winners = {
            r["tenant"]: r["command_id"]
            for r in await conn.fetch("SELECT tenant, command_id FROM rules")
        }
    finally:
        await conn.close()
    assert winners == {"t1": "a", "t2": "a"}


async def test_unknown_subjects_are_cached_only_briefly(
    settings: Settings, client: ContractClient
) -> None:
    redis = create_redis(settings.redis_dsn)
    key = RedisStateCache(redis, settings.redis_prefix).key(SubjectKey("default", "nobody"))
    try:
        async with await OptoutClient.connect(settings, local_cache=False) as sdk:
            assert (await sdk.is_allowed("nobody", "marketing", "email")).allowed
        assert 0 < await redis.ttl(key) <= settings.cache_unknown_ttl_seconds
        await client.apply(command("nobody", [("opt_out", "marketing", "email")]))
        # The worker's write replaces it, and the worker's keys do not expire.
        assert await redis.ttl(key) == -1
    finally:
        await redis.aclose()


async def test_redis_eviction_policy_that_could_refuse_writes_is_named() -> None:
    with throwaway_redis(free_port()) as server:
        redis: Redis = create_redis(server.url)
        try:
            assert await eviction_problem(redis) is None  # no memory limit
            await redis.config_set("maxmemory", "100mb")
            await redis.config_set("maxmemory-policy", "noeviction")
            assert "noeviction" in (await eviction_problem(redis) or "")
            await redis.config_set("maxmemory-policy", "volatile-lru")
            assert "volatile-lru" in (await eviction_problem(redis) or "")
            await redis.config_set("maxmemory-policy", "allkeys-lru")
            assert await eviction_problem(redis) is None
        finally:
            await redis.aclose()
