"""Write-through cache of subject states in Redis, guarded by a version compare-and-set.

Every writer (the worker after a commit, a reader filling a miss from PostgreSQL) goes
through the same Lua script: it stores the state only if its version is higher than the one
cached, so a slow writer holding an older state can never overwrite a newer one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.asyncio import Redis

from service.adapters.state_codec import decode_state, encode_state
from service.domain.model import SubjectKey, SubjectState

# KEYS[1] = subject key; ARGV = version, encoded state, ttl seconds (0 = none).
_CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'v')
local version = tonumber(ARGV[1])
if current and tonumber(current) >= version then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
"""


class RedisStateCache:
    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int = 0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._cas = redis.register_script(_CAS_SCRIPT)

    def key(self, subject: SubjectKey) -> str:
        # Tenant and subject are joined with a separator they cannot contain unescaped.
        return f"{self._prefix}:s:{len(subject.tenant)}:{subject.tenant}:{subject.subject_id}"

    async def write(self, states: Iterable[SubjectState]) -> int:
        """Store each state unless a newer one is cached; one round trip for all of them."""
        states = list(states)
        if not states:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for state in states:
                await self._cas(
                    keys=[self.key(state.key)],
                    args=[state.version, encode_state(state), self._ttl],
                    client=pipe,
                )
            results = await pipe.execute()
        return sum(int(r) for r in results)

    async def read(self, subjects: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]:
        """The cached states of the subjects that have one; a miss is simply absent."""
        if not subjects:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for subject in subjects:
                pipe.hget(self.key(subject), "d")
            raws = await pipe.execute()
        return {s: decode_state(s, raw) for s, raw in zip(subjects, raws, strict=True) if raw}
