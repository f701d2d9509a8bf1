"""A worker killed with SIGKILL mid-stream, twice: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from typing import Any

import asyncpg
import pytest

from service.adapters.redis_cache import RedisStateCache
from service.adapters.redis_client import create_redis
from service.domain.model import SubjectKey
from service.settings import Settings
from tests.support.contract_client import ContractClient, at, command

pytestmark = pytest.mark.integration

TOPICS = ["marketing", "marketing.newsletter", "product", "reminders", "*"]
CHANNELS = ["email", "sms", "push", "*"]


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"OPTOUT_{name.upper()}"] = str(raw)
    env["OPTOUT_LOG_FORMAT"] = "json"
    return env


def start_worker(settings: Settings, log_path: str) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen(
        [sys.executable, "-m", "service.entrypoints.cli", "worker"],
        env=worker_env(settings),
        stdout=log,
        stderr=log,
    )


def oracle(commands: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], str]]:
    """Final rules per subject, computed independently: latest wins, then opt_out, then id."""
    best: dict[str, dict[tuple[str, str], tuple[str, bool, str, str]]] = defaultdict(dict)
    for doc in commands:
        for change in doc["changes"]:
            pair = (change["topic"], change["channel"])
            # Same-format UTC timestamps compare correctly as text.
            candidate = (
                doc["occurred_at"],
                change["action"] == "opt_out",
                doc["command_id"],
                change["action"],
            )
            current = best[doc["subject_id"]].get(pair)
            if current is None or candidate[:3] > current[:3]:
                best[doc["subject_id"]][pair] = candidate
    return {s: {p: c[3] for p, c in rules.items()} for s, rules in best.items()}


async def test_sigkill_twice_mid_stream(settings: Settings, tmp_path: Any) -> None:
    settings = settings.model_copy(update={"batch_max_records": 50})
    rng = random.Random(7)
    commands = []
    for _ in range(900):
        changes = [
            (rng.choice(["opt_out", "opt_in"]), rng.choice(TOPICS), rng.choice(CHANNELS))
            for _ in range(rng.randint(1, 3))
        ]
        commands.append(
            command(f"s{rng.randrange(40)}", changes, occurred_at=at(rng.randrange(10_000)))
        )
    log_path = str(tmp_path / "worker.log")
    worker = start_worker(settings, log_path)
    try:
        async with ContractClient(settings) as client:

            async def produce() -> None:
                for i, doc in enumerate(commands):
                    await client.send(doc)
                    if i % 50 == 0:
                        await asyncio.sleep(0.05)

            producing = asyncio.create_task(produce())
            for kill_after in (150, 450):
                await client.wait_for(lambda n=kill_after: len(client.outcomes) >= n, 60)
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                worker = start_worker(settings, log_path)
            await producing
            await client.wait_for(lambda: len(client.outcomes) == len(commands), 120)

            # Every command answered; every redelivered answer equal to the first one.
            for doc in commands:
                answers = client.outcomes[doc["command_id"]]
                assert answers, doc["command_id"]
                assert all(a == answers[0] for a in answers), answers
                assert answers[0]["status"] in ("applied", "unchanged")
            applied = Counter(
                doc["subject_id"]
                for doc in commands
                if client.outcomes[doc["command_id"]][0]["status"] == "applied"
            )
            expected = oracle(commands)
            await asyncio.sleep(0.5)  # let the last events arrive
            conn = await asyncpg.connect(
                settings.database_dsn, server_settings={"search_path": settings.database_schema}
            )
            redis = create_redis(settings.redis_dsn)
            try:
                cache = RedisStateCache(redis, settings.redis_prefix)
                for subject, rules in expected.items():
                    rows = await conn.fetch(
                        "SELECT topic, channel, action FROM rules WHERE subject_id = $1", subject
                    )
                    assert {(r["topic"], r["channel"]): r["action"] for r in rows} == rules
                    version = await conn.fetchval(
                        "SELECT version FROM subjects WHERE subject_id = $1", subject
                    )
                    assert version == applied[subject]  # applied once each, never twice
                    cached = (await cache.read([SubjectKey("default", subject)]))[
                        SubjectKey("default", subject)
                    ]
                    assert cached.version == version
                    assert {p: r.action for p, r in cached.rules.items()} == rules
                    last = client.last_event(subject)
                    assert last["version"] == version
                    assert {
                        (p["topic"], p["channel"]): p["action"] for p in last["preferences"]
                    } == rules
                    versions = {e["version"] for e in client.events[subject]}
                    assert versions == set(range(1, version + 1))
                history = await conn.fetchval(
                    "SELECT count(DISTINCT command_id) FROM consent_history"
                )
                assert history == sum(applied.values())
            finally:
                await conn.close()
                await redis.aclose()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
