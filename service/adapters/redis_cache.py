"""Write-through cache of subject states in Redis, guarded by a version compare-and-set.

Every writer (the worker after a commit, a reader filling a miss from PostgreSQL) goes
through the same Lua script: it stores the state only if its version is higher than the one
cached, so a slow writer holding an older state can never overwrite a newer one.

Redis failures leave translated: the server or the link failing (connection, timeout,
loading, out of memory, read-only replica, cluster down) is `DependencyUnavailable`; any
other answer is a refusal of what was sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from service.adapters.state_codec import encode_state
from service.application.errors import DependencyUnavailable, Refused
from service.domain.model import SubjectKey, SubjectState

# KEYS = subject keys; ARGV = a version, an encoded state and a ttl in seconds (0 = none,
# which also lifts an expiry the read path set) per key. One script call per batch: Redis
# runs it atomically, and the client packs one command instead of one per subject. Redis
# Cluster runs the same script once per hash slot (``redis_cluster_cache``).
CAS_SCRIPT = """
local written = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[3 * i - 2])
  local current = redis.call('HGET', key, 'v')
  if (not current) or tonumber(current) < version then
    redis.call('HSET', key, 'v', version, 'd', ARGV[3 * i - 1])
    local ttl = tonumber(ARGV[3 * i])
    if ttl > 0 then
      redis.call('EXPIRE', key, ttl)
    else
      redis.call('PERSIST', key)
    end
    written = written + 1
  end
end
return written
"""


def state_key(prefix: str, subject: SubjectKey) -> str:
    """The Redis key of a subject's state, the same on a standalone server and a cluster."""
    # Tenant and subject are joined with a separator they cannot contain unescaped.
    return f"{prefix}:s:{len(subject.tenant)}:{subject.tenant}:{subject.subject_id}"


class RedisStateCache:
    """`ttl_seconds` for states with rules (0: no expiry); `unknown_ttl_seconds` for subjects
    the service has never heard of (version 0), which the read path caches so a campaign
    does not ask PostgreSQL about them on every send. Kept short, so that made-up ids asked
    with a read token cannot fill Redis.
    """

    def __init__(
        self, redis: Redis, prefix: str, ttl_seconds: int = 0, unknown_ttl_seconds: int = 0
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._unknown_ttl = unknown_ttl_seconds or ttl_seconds
        self._cas = redis.register_script(CAS_SCRIPT)

    def key(self, subject: SubjectKey) -> str:
        return state_key(self._prefix, subject)

    def _default_ttl(self, state: SubjectState) -> int:
        return self._ttl if state.version else self._unknown_ttl

    async def write(self, states: Iterable[SubjectState], ttl_seconds: int | None = None) -> int:
        """Store each state unless a newer one is cached; one round trip for all of them.

        Returns how many were written (the others were older than what Redis holds).
        `ttl_seconds` overrides the expiry (an erasure's short-lived fences).
        """
        states = list(states)
        if not states:
            return 0
        args: list[bytes | int] = []
        for state in states:
            ttl = ttl_seconds if ttl_seconds is not None else self._default_ttl(state)
            args.extend((state.version, encode_state(state), ttl))
        try:
            written = await self._cas(keys=[self.key(s.key) for s in states], args=args)
        except Exception as exc:
            translated = translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        return int(written)


_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.NoPermissionError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    OSError,
    TimeoutError,
)


def translate(exc: Exception) -> Exception:
    if isinstance(exc, _UNAVAILABLE):
        return DependencyUnavailable("redis", type(exc).__name__)
    if isinstance(exc, redis_errors.RedisError):
        return Refused(f"refused by Redis ({type(exc).__name__})")
    return exc
