"""Effect receipts in Redis: what a receipt lookup and `optout lag --senders` read.

- ``{prefix}:effect:{tenant}:{command_id}``, a hash: the event's place, one field `at`
  holding `partition:offset:effective_at` (one HSETNX per event, not three: the feed writes
  one for every opt-out the worker publishes), and one field per sender instance that had
  it in effect (`e:{sender}/{instance}`, milliseconds, first value kept); it expires
  ``ttl_seconds`` after its last write, so there are about (opt-outs per second x ttl).
- ``{prefix}:senders``, a hash: each sender instance's latest report (JSON); instances silent
  for ``forget_seconds`` are removed when the hash is read.
- ``{prefix}:sender-effects:{sender}``, a list: the sender's latest ``RECENT`` effect times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from service.adapters.redis_client import RedisClient
from service.application.receipts import StoredReceipt
from service.domain.receipts import AppliedReport, Effect, Reporter, SenderState, WatchedEvent

RECENT = 1_000
_EFFECT_FIELD = "e:"
_PLACE_FIELD = "at"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisEffectReceipts:
    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        *,
        ttl_seconds: int,
        forget_seconds: float = 86_400.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._forget = forget_seconds
        self._senders_key = f"{prefix}:senders"

    def _key(self, tenant: str, command_id: str) -> str:
        return f"{self._prefix}:effect:{tenant}:{command_id}"

    async def save_events(self, events: Sequence[WatchedEvent]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for e in events:
            key = self._key(e.tenant, e.command_id)
            # A republished event (a redelivered command) keeps the first publication's place.
            pipe.hsetnx(key, _PLACE_FIELD, f"{e.partition}:{e.offset}:{e.effective_at!r}")
            pipe.expire(key, self._ttl)
        await pipe.execute()

    async def save_effects(self, effects: Sequence[Effect]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        by_sender: dict[str, list[str]] = {}
        for f in effects:
            key = self._key(f.event.tenant, f.event.command_id)
            field = f"{_EFFECT_FIELD}{f.reporter.sender}/{f.reporter.instance}"
            pipe.hsetnx(key, field, f"{f.seconds * 1000:.3f}")
            pipe.expire(key, self._ttl)
            by_sender.setdefault(f.reporter.sender, []).append(f"{f.seconds:.6f}")
        for sender, seconds in by_sender.items():
            recent = f"{self._prefix}:sender-effects:{sender}"
            pipe.lpush(recent, *seconds[-RECENT:])
            pipe.ltrim(recent, 0, RECENT - 1)
            pipe.expire(recent, max(self._ttl, 86_400))
        await pipe.execute()

    async def save_report(self, report: AppliedReport) -> None:
        body = json.dumps(
            {"at": report.applied_at, "positions": {str(p): o for p, o in report.positions.items()}}
        )
        field = f"{report.reporter.sender}/{report.reporter.instance}"
        await self._redis.hset(self._senders_key, field, body)

    async def load_receipt(self, tenant: str, command_id: str) -> StoredReceipt | None:
        raw: dict[Any, Any] = await self._redis.hgetall(self._key(tenant, command_id))
        found = {_text(k): _text(v) for k, v in raw.items()}
        if _PLACE_FIELD in found:
            partition, offset, effective_at = found[_PLACE_FIELD].split(":", 2)
            found.update(partition=partition, offset=offset, effective_at=effective_at)
        if "offset" not in found or "partition" not in found:
            return None
        effects: dict[Reporter, float] = {}
        for name, value in found.items():
            if name.startswith(_EFFECT_FIELD):
                sender, _, instance = name.removeprefix(_EFFECT_FIELD).partition("/")
                effects[Reporter(sender, instance)] = float(value)
        return StoredReceipt(
            int(found["partition"]),
            int(found["offset"]),
            float(found.get("effective_at", "0")),
            effects,
        )

    async def load_senders(self) -> list[SenderState]:
        raw: dict[Any, Any] = await self._redis.hgetall(self._senders_key)
        now = time.time()
        states, gone = [], []
        for name, body in raw.items():
            sender, _, instance = _text(name).partition("/")
            data = json.loads(_text(body))
            if now - float(data["at"]) > self._forget:
                gone.append(name)
                continue
            positions = {int(p): int(o) for p, o in data["positions"].items()}
            states.append(SenderState(Reporter(sender, instance), float(data["at"]), positions))
        if gone:
            await self._redis.hdel(self._senders_key, *gone)
        return states

    async def recent_effects(self, sender: str) -> list[float]:
        raw = await self._redis.lrange(f"{self._prefix}:sender-effects:{sender}", 0, RECENT - 1)
        return [float(_text(v)) for v in raw]
