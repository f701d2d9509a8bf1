"""When each inbound SMS was first received, by the provider's message id (SET NX).

The SMS webhook derives a command's `occurred_at` from this, so a replayed request builds
the same command, byte for byte, and the worker answers `duplicate`. An entry lives at
least as long as processed commands are kept: until then a replay finds the command id in
the processed log and its first time here.
"""

from __future__ import annotations

from datetime import datetime

from service.adapters.redis_client import RedisClient


class RedisReceiptClock:
    def __init__(self, redis: RedisClient, prefix: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_seconds = ttl_seconds

    def key(self, message_id: str) -> str:
        return f"{self._prefix}:sms-receipt:{message_id}"

    async def first_seen(self, message_id: str, now: datetime) -> datetime:
        key = self.key(message_id)
        stamp = now.isoformat(timespec="microseconds")
        while True:
            if await self._redis.set(key, stamp, nx=True, ex=self._ttl_seconds):
                return datetime.fromisoformat(stamp)
            stored = await self._redis.get(key)
            if stored is not None:  # else it expired in between: set it again
                text = stored.decode() if isinstance(stored, bytes) else str(stored)
                return datetime.fromisoformat(text)
