"""An independent oracle for streams of commands, and the check that the stack agrees with it.

The oracle knows nothing of the service's code: per (subject, topic, channel) it keeps the
change with the greatest (occurred_at, opt_out, command_id), which is the brief's rule.

It knows only what a person stated. The stores also keep the SMS restore registers
(``#kept`` and ``#restore`` on `sms`, ``service.domain.sms_restore``) as ordinary rule rows:
bookkeeping, not statements. Comparisons of stored rules with the oracle leave them out
(``is_register``, ``statements``) and stay exact for every other row; decisions, which the
registers do shape, are compared whole wherever they are checked.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from service.adapters.redis_client import create_redis
from service.domain.model import SubjectKey
from service.domain.sms_restore import REGISTERS
from service.settings import Settings
from tests.support.contract_client import ContractClient, at, command
from tests.support.services import cached_in_redis

V = TypeVar("V")


def is_register(topic: str) -> bool:
    """A stored row that is an SMS restore register (`#kept`, `#restore`), not a statement.

    `#` never starts a catalog topic, so no rule a person states is ever one of these.
    """
    return topic in REGISTERS


def statements(rules: Mapping[tuple[str, str], V]) -> dict[tuple[str, str], V]:
    """Stored rules keyed by (topic, channel), without the register rows: what the oracle
    knows, to compare with it exactly."""
    return {pair: rule for pair, rule in rules.items() if not is_register(pair[0])}


TOPICS = ["marketing", "marketing.newsletter", "product", "reminders", "*"]
CHANNELS = ["email", "sms", "push", "*"]


def random_stream(seed: int, n: int, subjects: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    stream = []
    for _ in range(n):
        changes = [
            (rng.choice(["opt_out", "opt_in"]), rng.choice(TOPICS), rng.choice(CHANNELS))
            for _ in range(rng.randint(1, 3))
        ]
        stream.append(
            command(f"s{rng.randrange(subjects)}", changes, occurred_at=at(rng.randrange(10_000)))
        )
    return stream


def expected_rules(commands: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], str]]:
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


def worker_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.as_environment(), "OPTOUT_LOG_FORMAT": "json"}


def start_worker(settings: Settings, log_path: Path, admin_port: int) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    env = worker_env(settings)
    env["OPTOUT_ADMIN_PORT"] = str(admin_port)
    return subprocess.Popen(
        [sys.executable, "-m", "service.entrypoints.cli", "worker"],
        env=env,
        stdout=log,
        stderr=log,
    )


async def assert_matches_oracle(
    settings: Settings, client: ContractClient, commands: list[dict[str, Any]]
) -> None:
    """Every command answered consistently; PostgreSQL, Redis and the last events agree."""
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
    expected = expected_rules(commands)
    await client.wait_for(
        lambda: all(
            client.events[s] and client.last_event(s)["version"] == applied[s] for s in expected
        )
    )
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    redis = create_redis(settings.redis_dsn)
    try:
        for subject, rules in expected.items():
            rows = await conn.fetch(
                "SELECT topic, channel, action FROM rules WHERE subject_id = $1", subject
            )
            assert statements({(r["topic"], r["channel"]): r["action"] for r in rows}) == rules
            version = await conn.fetchval(
                "SELECT version FROM subjects WHERE subject_id = $1", subject
            )
            assert version == applied[subject]  # each applied once, never twice
            key = SubjectKey("default", subject)
            cached = await cached_in_redis(redis, settings, key)
            assert cached is not None
            assert cached.version == version
            assert statements({p: r.action for p, r in cached.rules.items()}) == rules
            last = client.last_event(subject)
            preferences = {(p["topic"], p["channel"]): p["action"] for p in last["preferences"]}
            assert statements(preferences) == rules
            assert {e["version"] for e in client.events[subject]} == set(range(1, version + 1))
        history = await conn.fetchval("SELECT count(DISTINCT command_id) FROM consent_history")
        assert history == sum(applied.values())
    finally:
        await conn.close()
        await redis.aclose()
