"""Redis Cluster beside the standalone Redis: the bulk read and the compare-and-set write.

Starts a throwaway three-node cluster on loopback (Debian's ``redis-server``, the tests'
``throwaway_redis_cluster``) and uses the stack's standalone Redis under a prefix of its own.
Both hold the same 20,000 states. Measured in the same process, rounds interleaved so that
a busy machine slows every variant alike:

- the bulk read of a 10,000-id campaign (``read_many_rules``, what ``filter_allowed`` does
  without the local cache): standalone; the cluster as shipped (tagged keys, one script call
  per bucket slot); and the two ways the cluster could read plain keys, one script call per
  hash slot (about 7,500 slots for 10,000 ids) or a pipelined ``HGET`` per id;
- the worker's compare-and-set of a 500-state batch (versions already cached: the script
  runs and writes nothing, as on a redelivery);
- ``filter_allowed`` through the SDK over the same 10,000 ids (states in Redis).

Run with ``.venv/bin/python -m benchmarks.redis_cluster`` (needs the stack and
``redis-server``); figures in ``bench-results/redis_cluster.json``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from benchmarks.common import RESULTS_DIR, Isolation, free_port, percentiles, write_json
from benchmarks.read_path import CAMPAIGN, CHANNEL, TOPIC, _states
from service.adapters.redis_cache import RedisStateCache, state_key
from service.adapters.redis_client import create_redis
from service.adapters.redis_cluster_cache import ClusterStateCache
from service.adapters.redis_cluster_reader import SLOT_HGET, ClusterStateReader
from service.adapters.redis_cluster_script import PerSlotScript, SlotCall
from service.adapters.redis_reader import EMPTY_TAIL, RedisStateReader
from service.adapters.state_codec import encode_state
from service.client import OptoutClient
from service.domain.model import SubjectKey
from service.settings import Settings
from tests.support.throwaway import throwaway_redis_cluster

ROUNDS = 10
BATCH = 500


def _concatenated(parts: list[list[Any]]) -> list[Any]:
    return [answer for part in parts for answer in part]


class PlainKeys:
    """The cluster read with the standalone key layout (no bucket tag): the alternatives."""

    def __init__(self, redis: RedisCluster, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = PerSlotScript(redis, SLOT_HGET, args_per_key=0, merge=_concatenated)

    def keys(self, ids: list[str]) -> list[str]:
        return [state_key(self._prefix, SubjectKey("default", i)) for i in ids]

    async def per_slot(self, ids: list[str]) -> list[Any]:
        keys = self.keys(ids)
        slots: dict[int, list[int]] = {}
        for position, key in enumerate(keys):
            slots.setdefault(key_slot(key.encode()), []).append(position)
        groups = list(slots.values())
        answers = await self._script.run(
            [SlotCall([keys[i] for i in group]) for group in groups], [EMPTY_TAIL]
        )
        raws: list[Any] = [None] * len(keys)
        for group, found in zip(groups, answers, strict=True):
            for i, raw in zip(group, found, strict=True):
                raws[i] = raw
        return raws

    async def pipelined_hget(self, ids: list[str]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for key in self.keys(ids):
            pipe.hget(key, "d")
        answers: list[Any] = await pipe.execute()
        return answers


async def _interleaved(
    variants: dict[str, Callable[[], Awaitable[Any]]], rounds: int
) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():
        await call()  # warm: scripts loaded, connections open, decode memo filled
    for _ in range(rounds):
        for name, call in variants.items():
            started = time.perf_counter()
            await call()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: percentiles(values) for name, values in samples.items()}


async def run(settings: Settings, cluster_url: str) -> dict[str, Any]:
    isolation = Isolation(uuid.uuid4().hex[:10])
    mine = isolation.service_settings(settings)
    on_cluster = mine.model_copy(
        update={"redis_url": SecretStr(cluster_url), "redis_cluster": True}
    )
    rng = random.Random(4)
    states = _states(rng)
    ids = [s.key.subject_id for s in states]
    campaign = rng.sample(ids, CAMPAIGN)
    standalone = create_redis(mine.redis_dsn)
    cluster = create_redis(cluster_url, cluster=True)
    try:
        await isolation.prepare_schema(mine)
        standalone_cache = RedisStateCache(standalone, mine.redis_prefix)
        cluster_cache = ClusterStateCache(cluster, mine.redis_prefix)
        plain = PlainKeys(cluster, f"{mine.redis_prefix}:plain")
        for start in range(0, len(states), 2_000):
            part = states[start : start + 2_000]
            await standalone_cache.write(part)
            await cluster_cache.write(part)
        # The same states under the plain (standalone) key layout, for the alternatives.
        for start in range(0, len(states), 2_000):
            part = states[start : start + 2_000]
            pipe = cluster.pipeline(transaction=False)
            for s, key in zip(part, plain.keys([s.key.subject_id for s in part]), strict=True):
                pipe.hset(key, mapping={"v": s.version, "d": encode_state(s)})
            await pipe.execute()

        standalone_reader = RedisStateReader(standalone, standalone_cache)
        cluster_reader = ClusterStateReader(cluster, cluster_cache)
        assert await cluster_reader.read_many_rules(
            "default", campaign
        ) == await standalone_reader.read_many_rules("default", campaign)
        bulk_read = await _interleaved(
            {
                "standalone": lambda: standalone_reader.read_many_rules("default", campaign),
                "cluster_tagged_keys_per_slot_script": lambda: cluster_reader.read_many_rules(
                    "default", campaign
                ),
                "cluster_plain_keys_per_slot_script": lambda: plain.per_slot(campaign),
                "cluster_plain_keys_pipelined_hget": lambda: plain.pipelined_hget(campaign),
            },
            ROUNDS,
        )
        batches = [states[i : i + BATCH] for i in range(0, CAMPAIGN, BATCH)]
        turn = {"standalone": 0, "cluster": 0}

        def next_batch(side: str) -> Any:
            batch = batches[turn[side] % len(batches)]
            turn[side] += 1
            return batch

        cas_write = await _interleaved(
            {
                "standalone": lambda: standalone_cache.write(next_batch("standalone")),
                "cluster": lambda: cluster_cache.write(next_batch("cluster")),
            },
            ROUNDS * 2,
        )
        async with (
            await OptoutClient.connect(mine, local_cache=False) as on_standalone,
            await OptoutClient.connect(on_cluster, local_cache=False) as on_the_cluster,
        ):
            sdk_filter = await _interleaved(
                {
                    "standalone": lambda: on_standalone.filter_allowed(campaign, TOPIC, CHANNEL),
                    "cluster": lambda: on_the_cluster.filter_allowed(campaign, TOPIC, CHANNEL),
                },
                ROUNDS,
            )
    finally:
        await standalone.aclose()
        await cluster.aclose()
        await isolation.cleanup(mine)
    figures = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": {"subjects": len(states), "campaign": CAMPAIGN, "batch": BATCH, "rounds": ROUNDS},
        "read_many_rules_10000_ids": bulk_read,
        "compare_and_set_500_states": cas_write,
        "sdk_filter_allowed_10000_ids": sdk_filter,
    }
    write_json(RESULTS_DIR / "redis_cluster.json", figures)
    return figures


def main() -> None:
    import json
    import logging

    from service.logging import configure_logging

    configure_logging("WARNING", "console")
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    ports = [free_port() for _ in range(3)]
    bus_ports = [free_port() for _ in range(3)]
    with throwaway_redis_cluster(ports, bus_ports) as cluster:
        print(json.dumps(asyncio.run(run(Settings(), cluster.url)), indent=2))


if __name__ == "__main__":
    main()
