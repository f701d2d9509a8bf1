"""Reads a sender makes right after an `applied` opt-out: Redis, the HTTP API, the SDK.

Each applied outcome of a command with an opt-out triggers one question that the opt-out
covers, asked through every read path at once. Answers are judged after the run
(``stale_allow``), when every later state of the subject is known: a read counts as a stale
allow only if it said "allowed" while every state from the outcome's version on denies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from service.adapters.redis_cache import RedisStateCache
from service.adapters.redis_client import create_redis
from service.client import OptoutClient
from service.domain.model import SubjectKey
from service.settings import Settings
from tests.chaos.generator import poll_question
from tests.chaos.oracle import Rules, Statement, decide

READERS = ("redis", "http", "sdk")


@dataclass(frozen=True)
class Read:
    reader: str
    tenant: str
    subject_id: str
    topic: str
    channel: str
    version: int
    allowed: bool | None
    error: str | None
    at: float


def rules_from_cache(raw: bytes) -> tuple[int, Rules]:
    """The cached state's version and rules, from the cache's compact JSON form."""
    doc = json.loads(raw)
    rules: Rules = {}
    for topic, channel, action, occurred_at, _source, command_id in doc["r"]:
        rules[(topic, channel)] = Statement(
            datetime.fromisoformat(occurred_at), action == "opt_out", command_id
        )
    return int(doc["v"]), rules


@dataclass
class SenderReads:
    settings: Settings
    docs: Mapping[tuple[str, str], Sequence[dict[str, Any]]]
    readers: tuple[str, ...] = READERS
    api_url: str | None = None
    token: str | None = None
    client: OptoutClient | None = None
    seed: int = 0
    max_pending: int = 200
    reads: list[Read] = field(default_factory=list)
    skipped: int = 0
    _pending: set[asyncio.Task[None]] = field(default_factory=set)
    _http: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._redis = create_redis(self.settings.redis_dsn)
        self._keys = RedisStateCache(self._redis, self.settings.redis_prefix)

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=3.0)

    async def stop(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=10)
        for task in list(self._pending):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
        await self._redis.aclose()

    async def on_outcome(self, outcome: dict[str, Any]) -> None:
        """Ask about the opt-out an applied outcome announces, as a sender would.

        Redis and the HTTP API are asked at once: once an outcome says applied they must
        agree with PostgreSQL. The SDK's local cache is the one read path the brief lets
        trail, within its stated bound (``OPTOUT_CLIENT_LOCAL_CACHE_BOUND_SECONDS``): it is
        asked when that bound has passed since the outcome, so any allow then breaks it.
        """
        if outcome.get("status") != "applied" or not isinstance(outcome.get("version"), int):
            return
        tenant = outcome.get("tenant") or "default"
        docs = self.docs.get((tenant, outcome["command_id"]), ())
        question = None
        for doc in docs:
            question = poll_question(doc, self._rng)
            if question is not None and doc.get("subject_id") == outcome.get("subject_id"):
                break
        if question is None:
            return
        if len(self._pending) >= self.max_pending:
            self.skipped += 1
            return
        ask = (tenant, outcome["subject_id"], *question, outcome["version"])
        for reader in self.readers:
            delay = self.settings.client_local_cache_bound_seconds if reader == "sdk" else 0.0
            task = asyncio.create_task(self._ask(reader, *ask, after=delay))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _ask(
        self,
        reader: str,
        tenant: str,
        subject_id: str,
        topic: str,
        channel: str,
        version: int,
        *,
        after: float = 0.0,
    ) -> None:
        if after:
            await asyncio.sleep(after)
        allowed: bool | None = None
        error: str | None = None
        try:
            allowed = await asyncio.wait_for(
                self._answer(reader, tenant, subject_id, topic, channel), 3.0
            )
        except Exception as exc:
            error = type(exc).__name__
        self.reads.append(
            Read(reader, tenant, subject_id, topic, channel, version, allowed, error, time.time())
        )

    async def _answer(
        self, reader: str, tenant: str, subject_id: str, topic: str, channel: str
    ) -> bool | None:
        if reader == "redis":
            raw = await self._redis.hget(self._keys.key(SubjectKey(tenant, subject_id)), "d")
            if not isinstance(raw, bytes):
                return None  # a miss: a sender would go on to PostgreSQL, not allow
            return decide(rules_from_cache(raw)[1], topic, channel)
        if reader == "http":
            assert self._http is not None
            assert self.api_url is not None
            response = await self._http.get(
                f"{self.api_url}/v1/subjects/{quote(subject_id, safe='')}/check",
                params={"topic": topic, "channel": channel, "tenant": tenant},
                headers={"Authorization": f"Bearer {self.token}"},
            )
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")
            return bool(response.json()["allowed"])
        assert self.client is not None
        decision = await self.client.is_allowed(subject_id, topic, channel, tenant)
        return decision.allowed


def stale_allow(read: Read, states: Mapping[int, Sequence[Rules]]) -> bool | None:
    """True if the read allowed although every state from its version on denies.

    `states`: the subject's candidate rules by version (from its events and from the oracle;
    a read is only stale if every candidate denies). None when not every state from the
    read's version on is known, so the read cannot be judged.
    """
    if read.allowed is None or not states or max(states) < read.version:
        return None
    versions = range(read.version, max(states) + 1)
    if any(not states.get(v) for v in versions):
        return None  # a state in between is unknown: it might have allowed
    if not read.allowed:
        return False
    return all(not decide(rules, read.topic, read.channel) for v in versions for rules in states[v])


async def close_quietly(client: OptoutClient | None) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)
