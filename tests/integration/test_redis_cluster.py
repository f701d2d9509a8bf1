"""The service on a real three-node Redis Cluster (Debian's ``redis-server``, on loopback).

The worker writes through to the cluster, the SDK reads it, and every answer is the one the
same calls give on the standalone Redis of the shared stack; the version compare-and-set
keeps refusing older states, also while a hash slot moves between nodes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.state_reader import PostgresStateReader
from service.adapters.redis_client import create_redis, eviction_problem, ping
from service.adapters.redis_cluster_cache import (
    BUCKETS,
    ClusterStateCache,
    bucket_tags,
    cluster_state_key,
    keys_by_slot,
)
from service.adapters.redis_cluster_reader import ClusterStateReader
from service.application.decisions import Forward
from service.client import OptoutClient
from service.domain.model import Action, Rule, SubjectKey, SubjectState
from service.entrypoints.server import Service
from service.settings import Settings
from tests.integration.test_read_path import QUESTIONS, decision_json, oracle, random_commands
from tests.support.contract_client import ContractClient
from tests.support.oracle import statements
from tests.support.ports import free_port
from tests.support.throwaway import ThrowawayRedisCluster, throwaway_redis_cluster

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[ThrowawayRedisCluster]:
    ports = [free_port() for _ in range(3)]
    bus_ports = [free_port() for _ in range(3)]
    with throwaway_redis_cluster(ports, bus_ports) as cluster:
        yield cluster


@pytest.fixture
def on_cluster(settings: Settings, redis_cluster: ThrowawayRedisCluster) -> Settings:
    """The test's isolated settings, with Redis pointed at the cluster."""
    return settings.model_copy(
        update={"redis_url": SecretStr(redis_cluster.url), "redis_cluster": True}
    )


@pytest.fixture
async def cluster_client(on_cluster: Settings) -> AsyncIterator[RedisCluster]:
    redis = create_redis(on_cluster.redis_dsn, cluster=True)
    await redis.initialize()  # so that get_primaries() knows the nodes
    try:
        yield redis
    finally:
        await redis.aclose()


def state(subject_id: str, version: int, *actions: Action) -> SubjectState:
    key = SubjectKey("default", subject_id)
    rules = {
        ("marketing", channel): Rule("marketing", channel, action, T0, "web", f"c-{version}")
        for channel, action in zip(("email", "sms"), actions, strict=False)
    }
    return SubjectState(key, version, rules)


async def primaries_holding_keys(redis: RedisCluster) -> int:
    sizes = [await redis.dbsize(target_nodes=node) for node in redis.get_primaries()]
    return sum(1 for size in sizes if size > 0)


async def test_worker_writes_through_to_the_cluster(
    on_cluster: Settings, cluster_client: RedisCluster
) -> None:
    rng = random.Random(9)
    subjects = [f"w{i}" for i in range(60)]
    docs = random_commands(rng, subjects, 150)
    async with Service(on_cluster, with_worker=True), ContractClient(on_cluster) as stack:
        for doc in docs:
            await stack.send(doc)
        await stack.wait_for(lambda: all(d["command_id"] in stack.outcomes for d in docs))
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{on_cluster.admin_port}/readyz")
        assert ready.json()["checks"]["redis"] is None
    statuses = {stack.outcomes[d["command_id"]][-1]["status"] for d in docs}
    assert statuses <= {"applied", "unchanged"}
    subjects = sorted({d["subject_id"] for d in docs})  # the ones a command named
    reader = ClusterStateReader(
        cluster_client, ClusterStateCache(cluster_client, on_cluster.redis_prefix)
    )
    cached = await reader.read_many("default", subjects)
    pool = await create_pool(on_cluster.database_dsn, on_cluster.database_schema, 2)
    try:
        stored = await PostgresStateReader(pool).load_states(
            [SubjectKey("default", s) for s in subjects]
        )
    finally:
        await pool.close()
    for subject_id, found in zip(subjects, cached, strict=True):
        assert found is not None, subject_id
        want = stored[SubjectKey("default", subject_id)]
        assert (found.version, dict(found.rules)) == (want.version, dict(want.rules))
        assert statements(found.rules) == oracle(docs, subject_id)
    assert await primaries_holding_keys(cluster_client) == 3


async def test_sdk_on_the_cluster_agrees_with_the_standalone_redis(
    settings: Settings, on_cluster: Settings, cluster_client: RedisCluster
) -> None:
    rng = random.Random(11)
    ids = [f"c{i}" for i in range(2_000)]
    with_rules = rng.sample(ids, 300)
    docs = random_commands(rng, with_rules, 400)
    async with Service(on_cluster, with_worker=True), ContractClient(on_cluster) as stack:
        for doc in docs:
            await stack.send(doc)
        await stack.wait_for(lambda: all(d["command_id"] in stack.outcomes for d in docs))
    # The ids fall in every bucket, so every slot the cache uses and every primary.
    _, groups = keys_by_slot(on_cluster.redis_prefix, [SubjectKey("default", i) for i in ids])
    assert len(groups) == BUCKETS
    sample = rng.sample(ids, 150)
    questions = rng.sample(QUESTIONS, 4)
    async with (
        await OptoutClient.connect(on_cluster, local_cache=False) as on_the_cluster,
        await OptoutClient.connect(settings, local_cache=False) as standalone,
    ):
        # The first round fills both caches from PostgreSQL (the 1,700 ids without rules,
        # and on the standalone Redis every id); the second answers from the caches.
        for _ in range(2):
            for topic, channel in QUESTIONS:
                allowed = await on_the_cluster.filter_allowed(ids, topic, channel)
                assert allowed == await standalone.filter_allowed(ids, topic, channel)
            for subject_id in sample:
                for topic, channel in questions:
                    got = await on_the_cluster.is_allowed(subject_id, topic, channel)
                    want = await standalone.is_allowed(subject_id, topic, channel)
                    assert decision_json(got) == decision_json(want), (subject_id, topic)
                prefs = await on_the_cluster.preferences(subject_id)
                assert prefs == await standalone.preferences(subject_id)
                assert statements(prefs.state.rules) == oracle(docs, subject_id)
    assert await primaries_holding_keys(cluster_client) == 3
    cached = await ClusterStateReader(
        cluster_client, ClusterStateCache(cluster_client, on_cluster.redis_prefix)
    ).read_many("default", ids)
    assert all(s is not None for s in cached)


async def test_compare_and_set_refuses_older_states_on_the_cluster(
    on_cluster: Settings, cluster_client: RedisCluster
) -> None:
    cache = ClusterStateCache(cluster_client, on_cluster.redis_prefix, 0, 60)
    reader = ClusterStateReader(cluster_client, cache)
    ids = [f"v{i}" for i in range(600)]
    assert await cache.write([state(i, 5, "opt_out") for i in ids]) == 600
    # Older versions (and version 0, what the read path fills for unknown subjects) lose.
    assert await cache.write([state(i, 4, "opt_in", "opt_in") for i in ids]) == 0
    assert await cache.write([state(i, 0) for i in ids]) == 0
    assert await cache.write([state(i, 5, "opt_in") for i in ids]) == 0
    found = await reader.read_many("default", ids)
    assert all(s == state(i, 5, "opt_out") for s, i in zip(found, ids, strict=True))
    # A mixed batch: only the newer states and the new subjects are written.
    newer = [state(i, 6, "opt_in") for i in ids[::3]]
    older = [state(i, 2) for i in ids[1::3]]
    fresh = [state(f"new{i}", 0) for i in range(50)]
    assert await cache.write([*older, *newer, *fresh]) == len(newer) + len(fresh)
    for s in newer:
        assert await reader.read_one(s.key) == s
    for s in older:
        assert await reader.read_one(s.key) == state(s.key.subject_id, 5, "opt_out")
    # Version 0 takes the short expiry, the worker's version 1 lifts it.
    key = cluster_state_key(on_cluster.redis_prefix, fresh[0].key)
    assert 0 < await cluster_client.ttl(key) <= 60
    assert await cache.write([state("new0", 1, "opt_out")]) == 1
    assert await cluster_client.ttl(key) == -1
    rules = await reader.read_many_rules("default", ["new0", "new1", "never"])
    assert rules[0] == state("new0", 1, "opt_out").rules
    assert rules[1] == {}
    assert rules[2] is None


async def test_forwards_on_the_cluster_answer_like_their_target(
    on_cluster: Settings, cluster_client: RedisCluster
) -> None:
    """The per-slot bulk read returns a forward in full (it does not end like a state
    without rules), and the SDK follows it, as on a standalone Redis."""
    cache = ClusterStateCache(cluster_client, on_cluster.redis_prefix)
    reader = ClusterStateReader(cluster_client, cache)
    target = state("target", 3, "opt_out", "opt_out")
    forwards = [
        SubjectState(SubjectKey("default", f"fwd{i}"), 2, {}, merged_into="target")
        for i in range(40)  # spread over buckets, so over slots and nodes
    ]
    assert await cache.write([target, *forwards, state("plain", 1)]) == 42
    ids = [f.key.subject_id for f in forwards]
    found = await reader.read_many_rules("default", [*ids, "plain", "target"])
    assert found == [*(Forward("target") for _ in ids), {}, target.rules]
    async with await OptoutClient.connect(on_cluster, local_cache=False) as client:
        campaign = [*ids, "plain", "never"]
        assert await client.filter_allowed(campaign, "marketing", "email") == ["plain", "never"]
        assert not (await client.is_allowed(ids[0], "marketing.promotions", "sms")).allowed
        prefs = await client.preferences(ids[1])
        assert prefs.state == target
        assert prefs.addressed_as == ids[1]


def _bucket_zero_subjects(count: int) -> list[str]:
    tag = "{" + bucket_tags()[0] + "}"
    found: list[str] = []
    n = 0
    while len(found) < count:
        if tag in cluster_state_key("p", SubjectKey("default", f"m{n}")):
            found.append(f"m{n}")
        n += 1
    return found


async def command(node: Redis, *args: Any) -> Any:
    """A raw command to one node of the cluster, as a plain client (CLUSTER, MIGRATE)."""
    return await node.execute_command(*args)  # type: ignore[no-untyped-call]


async def mine(node: Redis, slot: int, prefix: str) -> list[str]:
    """The keys of this test in the slot on that node (asked of the node itself)."""
    found = await command(node, "CLUSTER", "GETKEYSINSLOT", slot, 100_000)
    return sorted(k.decode() for k in found if k.decode().startswith(f"{prefix}:"))


async def test_writes_and_reads_follow_a_slot_while_it_moves(
    on_cluster: Settings, cluster_client: RedisCluster
) -> None:
    """Half-way through a migration a call for several keys of the slot is refused (TRYAGAIN:
    some of its keys moved, some did not); the cache then sends one call per key and Redis
    runs each where its key is. Afterwards the slot's old owner answers MOVED."""
    prefix = on_cluster.redis_prefix
    cache = ClusterStateCache(cluster_client, prefix)
    reader = ClusterStateReader(cluster_client, cache)
    subject_ids = _bucket_zero_subjects(12)
    old, new = subject_ids[:8], subject_ids[8:]
    keys = [cluster_state_key(prefix, SubjectKey("default", s)) for s in subject_ids]
    slot = cluster_client.keyslot(keys[0])
    assert await cache.write([state(s, 1, "opt_out") for s in old]) == 8

    source_node = cluster_client.get_node_from_key(keys[0])
    assert source_node is not None
    target_node = next(n for n in cluster_client.get_primaries() if n.name != source_node.name)
    others = [n for n in cluster_client.get_primaries() if n.name != source_node.name]
    source = Redis(host=source_node.host, port=int(source_node.port))
    target = Redis(host=target_node.host, port=int(target_node.port))
    everyone = [Redis(host=n.host, port=int(n.port)) for n in others]
    try:
        source_id = (await command(source, "CLUSTER", "MYID")).decode()
        target_id = (await command(target, "CLUSTER", "MYID")).decode()
        await command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        await command(
            source, "MIGRATE", target_node.host, target_node.port, "", 0, 5000, "KEYS", *keys[:4]
        )

        assert await cache.write([state(s, 2, "opt_in") for s in subject_ids]) == 12
        assert await cache.write([state(s, 1, "opt_out") for s in subject_ids]) == 0
        # The keys not yet moved were written where they are, the others on the new owner.
        assert await mine(source, slot, prefix) == sorted(keys[4:8])
        assert await mine(target, slot, prefix) == sorted(keys[:4] + keys[8:])
        found = await reader.read_many("default", subject_ids)
        assert found == [state(s, 2, "opt_in") for s in subject_ids]
        assert (await reader.read_many_rules("default", new)) == [
            state(s, 2, "opt_in").rules for s in new
        ]

        # Every key left in the slot (other tests' too) moves, or the slot cannot change hands.
        left = await command(source, "CLUSTER", "GETKEYSINSLOT", slot, 100_000)
        await command(
            source, "MIGRATE", target_node.host, target_node.port, "", 0, 5000, "KEYS", *left
        )
        for node in [source, *everyone]:
            await command(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        # The client still maps the slot to its old owner, which now answers MOVED.
        assert await reader.read_many("default", subject_ids) == found
        assert await cache.write([state(s, 3, "opt_out") for s in subject_ids]) == 12
        assert await reader.read_many("default", subject_ids) == [
            state(s, 3, "opt_out") for s in subject_ids
        ]
        assert await command(source, "CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        assert await mine(target, slot, prefix) == sorted(keys)
    finally:
        for client in [source, target, *everyone]:
            await client.aclose()


async def test_a_node_that_lost_the_scripts_is_given_them_again(
    on_cluster: Settings, cluster_client: RedisCluster
) -> None:
    cache = ClusterStateCache(cluster_client, on_cluster.redis_prefix)
    reader = ClusterStateReader(cluster_client, cache)
    ids = [f"f{i}" for i in range(300)]
    assert await cache.write([state(i, 1, "opt_out") for i in ids]) == 300
    await cluster_client.script_flush()  # on every primary
    assert await cache.write([state(i, 2) for i in ids]) == 300
    await cluster_client.script_flush()  # on every primary
    assert await reader.read_many("default", ids) == [state(i, 2) for i in ids]


async def test_eviction_policy_is_checked_on_every_primary(cluster_client: RedisCluster) -> None:
    assert await ping(cluster_client)
    assert await eviction_problem(cluster_client) is None
    node = cluster_client.get_primaries()[-1]
    direct = Redis(host=node.host, port=int(node.port))
    try:
        await direct.config_set("maxmemory", "100mb")
        await direct.config_set("maxmemory-policy", "noeviction")
        problem = await eviction_problem(cluster_client)
        assert problem is not None
        assert node.name in problem
        assert "noeviction" in problem
        await direct.config_set("maxmemory-policy", "allkeys-lru")
        assert await eviction_problem(cluster_client) is None
    finally:
        await direct.config_set("maxmemory", "0")
        await direct.config_set("maxmemory-policy", "noeviction")
        await direct.aclose()


async def test_a_cluster_that_lost_a_primary_is_not_ready(
    settings: Settings,
) -> None:
    """A cluster of its own: stopping a node must not disturb the other tests' cluster."""
    ports = [free_port() for _ in range(3)]
    bus_ports = [free_port() for _ in range(3)]
    with throwaway_redis_cluster(ports, bus_ports) as cluster:
        own = settings.model_copy(
            update={"redis_url": SecretStr(cluster.url), "redis_cluster": True}
        )
        async with Service(own, with_worker=False):
            url = f"http://127.0.0.1:{own.admin_port}/readyz"
            async with httpx.AsyncClient() as http:
                assert (await http.get(url)).status_code == 200
                cluster.processes[-1].kill()
                deadline = asyncio.get_running_loop().time() + 30
                while (response := await http.get(url)).status_code != 503:
                    assert asyncio.get_running_loop().time() < deadline, response.text
                    await asyncio.sleep(0.2)
                assert response.json()["checks"]["redis"] is not None
