"""Read-path benchmark: "may I send this?" through the SDK (Redis, local cache), HTTP, and
``filter_allowed`` for a 10,000-id campaign, each beside a baseline measured in the same run.

Baselines: a raw Redis ``HGET`` round trip (what the Redis path cannot beat), a plain dict
lookup (what the local cache cannot beat), ``/healthz`` (HTTP with no work behind it) and a
redis-py pipeline of 10,000 ``HGET`` (the naive bulk read).

Aims (issue 4): SDK p99 under 1 ms against Redis, over 500,000 checks/s from the local cache,
10,000 ids filtered in under 50 ms.

Run alone with ``.venv/bin/python -m benchmarks.read_path`` (a few seconds, needs the stack);
``make bench`` runs it after the write path. It uses its own schema, Redis prefix and topics
and removes them afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from benchmarks.common import RESULTS_DIR, Isolation, percentiles, write_json
from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.adapters.redis_cache import RedisStateCache
from service.adapters.redis_client import create_redis
from service.bootstrap import contract_topics
from service.client import OptoutClient
from service.domain.model import Rule, SubjectKey, SubjectState
from service.entrypoints.server import Service
from service.settings import Settings

SUBJECTS = 20_000
WITH_RULES = 0.2  # share of subjects that said something; the rest are cached as version 0
SEQUENTIAL_CHECKS = 5_000
LOCAL_CHECKS = 300_000
HTTP_CHECKS = 2_000
CAMPAIGN = 10_000
CAMPAIGN_ROUNDS = 20
TOPIC, CHANNEL = "marketing.newsletter", "email"
TOKEN = "bench-" + uuid.uuid4().hex


def _states(rng: random.Random) -> list[SubjectState]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    pairs = [
        ("marketing", "email"),
        ("marketing.newsletter", "email"),
        ("*", "sms"),
        ("product", "*"),
        ("*", "*"),
        ("data.sale", "*"),
    ]
    states = []
    for i in range(SUBJECTS):
        key = SubjectKey("default", f"user-{i}")
        if rng.random() >= WITH_RULES:
            states.append(SubjectState.empty(key))
            continue
        rules = {}
        for n, (topic, channel) in enumerate(rng.sample(pairs, rng.randint(1, 3))):
            rules[(topic, channel)] = Rule(
                topic,
                channel,
                rng.choice(["opt_out", "opt_in"]),
                base + timedelta(seconds=rng.randrange(10_000)),
                rng.choice(["web", "email", "sms"]),
                f"cmd-{i}-{n}",
            )
        states.append(SubjectState(key, rng.randint(1, 5), rules))
    return states


async def _timed(call: Callable[[], Awaitable[Any]], count: int) -> dict[str, float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


async def _redis_path(settings: Settings, ids: list[str], rng: random.Random) -> dict[str, Any]:
    redis = create_redis(settings.redis_dsn)
    cache = RedisStateCache(redis, settings.redis_prefix)
    try:
        keys = [cache.key(SubjectKey("default", sid)) for sid in ids]
        baseline = await _timed(lambda: redis.hget(rng.choice(keys), "d"), SEQUENTIAL_CHECKS)
    finally:
        await redis.aclose()
    async with await OptoutClient.connect(settings, local_cache=False) as client:
        sdk = await _timed(
            lambda: client.is_allowed(rng.choice(ids), TOPIC, CHANNEL), SEQUENTIAL_CHECKS
        )
    return {"sdk_is_allowed": sdk, "baseline_raw_hget": baseline}


async def _local_path(settings: Settings, ids: list[str], rng: random.Random) -> dict[str, Any]:
    hot = rng.sample(ids, 1_000)
    asked = [rng.choice(hot) for _ in range(LOCAL_CHECKS)]
    async with await OptoutClient.connect(settings, local_cache=True) as client:
        for sid in hot:  # warm: the first question of each subject reads Redis
            await client.is_allowed(sid, TOPIC, CHANNEL)
        is_allowed = client.is_allowed
        started = time.perf_counter()
        for sid in asked:
            await is_allowed(sid, TOPIC, CHANNEL)
        elapsed = time.perf_counter() - started
        samples_us = []
        for sid in asked[:50_000]:
            t0 = time.perf_counter_ns()
            await is_allowed(sid, TOPIC, CHANNEL)
            samples_us.append((time.perf_counter_ns() - t0) / 1e3)
        local = client.local_cache
        assert local is not None
        assert len(local) == len(hot)
    plain = {("default", sid): True for sid in hot}
    started = time.perf_counter()
    for sid in asked:
        plain[("default", sid)]
    dict_elapsed = time.perf_counter() - started
    return {
        "checks_per_s": round(LOCAL_CHECKS / elapsed),
        # Microseconds: a local answer is far below what milliseconds with 2 decimals show.
        "latency_us": {k.replace("_ms", "_us"): v for k, v in percentiles(samples_us).items()},
        "baseline_dict_lookups_per_s": round(LOCAL_CHECKS / dict_elapsed),
    }


async def _http_path(settings: Settings, ids: list[str], rng: random.Random) -> dict[str, Any]:
    base = f"http://127.0.0.1:{settings.http_port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        Service(settings, with_worker=False),
        httpx.AsyncClient(base_url=base, headers=headers) as http,
    ):

        async def check() -> None:
            response = await http.get(
                f"/v1/subjects/{rng.choice(ids)}/check",
                params={"topic": TOPIC, "channel": CHANNEL},
            )
            assert response.status_code == 200, response.text

        await _timed(check, 100)  # warm-up
        api = await _timed(check, HTTP_CHECKS)
        admin = f"http://127.0.0.1:{settings.admin_port}/healthz"
        baseline = await _timed(lambda: http.get(admin), HTTP_CHECKS)
    return {
        "get_check": api,
        "baseline_healthz": baseline,
        "note": "server and client share one process and event loop",
    }


async def _filter(settings: Settings, ids: list[str], rng: random.Random) -> dict[str, Any]:
    campaign = rng.sample(ids, CAMPAIGN)
    cold_ids = [f"new-{uuid.uuid4().hex}" for _ in range(CAMPAIGN)]
    async with await OptoutClient.connect(settings, local_cache=False) as client:
        started = time.perf_counter()
        await client.filter_allowed(campaign, TOPIC, CHANNEL)  # Redis warm, decode memo cold
        first_ms = (time.perf_counter() - started) * 1000
        warm = await _timed(
            lambda: client.filter_allowed(campaign, TOPIC, CHANNEL), CAMPAIGN_ROUNDS
        )
        started = time.perf_counter()
        allowed = await client.filter_allowed(cold_ids, TOPIC, CHANNEL)
        cold_ms = (time.perf_counter() - started) * 1000
        assert allowed == cold_ids
    async with await OptoutClient.connect(settings, local_cache=True) as client:
        await client.filter_allowed(campaign, TOPIC, CHANNEL)
        local = await _timed(
            lambda: client.filter_allowed(campaign, TOPIC, CHANNEL), CAMPAIGN_ROUNDS
        )
    redis = create_redis(settings.redis_dsn)
    cache = RedisStateCache(redis, settings.redis_prefix)
    keys = [cache.key(SubjectKey("default", sid)) for sid in campaign]

    async def pipelined() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "d")
            await pipe.execute()

    try:
        baseline = await _timed(pipelined, 5)
    finally:
        await redis.aclose()
    return {
        "ids": CAMPAIGN,
        "sdk_redis_first_call_ms": round(first_ms, 2),
        "sdk_redis": warm,
        "sdk_local_cache": local,
        "cold_unknown_subjects_ms": round(cold_ms, 2),
        "baseline_pipelined_hget": baseline,
    }


async def run(settings: Settings) -> dict[str, Any]:
    """Measure the read path on isolated resources; returns the figures (also written to
    ``bench-results/read_path.json``)."""
    isolation = Isolation(uuid.uuid4().hex[:10])
    mine = isolation.service_settings(settings).model_copy(
        update={"api_tokens": SecretStr(f"bench:{TOKEN}:read")}
    )
    rng = random.Random(4)
    try:
        await isolation.prepare_schema(mine)
        await ensure_topics(KafkaConnection(mine.kafka_bootstrap), contract_topics(mine))
        redis = create_redis(mine.redis_dsn)
        try:
            states = _states(rng)
            cache = RedisStateCache(redis, mine.redis_prefix)
            for start in range(0, len(states), 2_000):
                await cache.write(states[start : start + 2_000])
        finally:
            await redis.aclose()
        ids = [s.key.subject_id for s in states]
        figures: dict[str, Any] = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sizes": {
                "subjects": SUBJECTS,
                "with_rules": WITH_RULES,
                "question": f"{TOPIC} on {CHANNEL}",
                "sequential_checks": SEQUENTIAL_CHECKS,
                "local_checks": LOCAL_CHECKS,
                "http_checks": HTTP_CHECKS,
            },
            "is_allowed_redis": await _redis_path(mine, ids, rng),
            "is_allowed_local_cache": await _local_path(mine, ids, rng),
            "is_allowed_http": await _http_path(mine, ids, rng),
            "filter_allowed": await _filter(mine, ids, rng),
        }
    finally:
        await isolation.cleanup(mine)
    sdk_p99 = figures["is_allowed_redis"]["sdk_is_allowed"]["p99_ms"]
    local_rate = figures["is_allowed_local_cache"]["checks_per_s"]
    filter_p50 = figures["filter_allowed"]["sdk_redis"]["p50_ms"]
    figures["aims"] = {
        "sdk_redis_p99_under_1_ms": sdk_p99 < 1.0,
        "local_cache_over_500k_checks_per_s": local_rate > 500_000,
        "filter_10000_p50_under_50_ms": filter_p50 < 50.0,
    }
    write_json(RESULTS_DIR / "read_path.json", figures)
    return figures


if __name__ == "__main__":
    import json
    import logging

    from service.logging import configure_logging

    configure_logging("WARNING", "console")
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    print(json.dumps(asyncio.run(run(Settings())), indent=2))
