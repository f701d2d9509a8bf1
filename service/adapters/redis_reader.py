"""Fast reads of cached subject states for the read path: one subject, or thousands at once.

Pipelining one HGET per subject, redis-py spends most of a large campaign filter packing
those commands. Here a bulk read is one script call per chunk of subject ids that receives
the ids as a single length-prefixed argument and builds the keys inside Redis, so the client
packs three arguments instead of one per id.

The script touches keys it was not given in KEYS: fine on a standalone Redis, not on Redis
Cluster, which has its own reader grouping keys by hash slot (``redis_cluster_reader``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from cachetools import LRUCache
from redis.asyncio import Redis

from service.adapters.redis_cache import RedisStateCache
from service.adapters.state_codec import decode_state
from service.application.decisions import Forward
from service.domain.decision import Rules
from service.domain.model import SubjectKey, SubjectState

T = TypeVar("T")

# ARGV[1] = key prefix of one tenant, ARGV[2] = comma-separated byte lengths of the ids,
# ARGV[3] = the ids concatenated, ARGV[4] = the tail that marks an encoded state without
# rules, or "" to return every state in full. Returns per id the encoded state, 1 for a
# state without rules (when asked), or false for a miss. A forward never ends in that tail
# (the codec writes "m" after "r"), so it comes back in full.
_BULK_HGET = """
local base = ARGV[1]
local ids = ARGV[3]
local empty = ARGV[4]
local cut = -string.len(empty)
local out = {}
local pos = 1
local i = 0
for n in string.gmatch(ARGV[2], '%d+') do
  i = i + 1
  local len = tonumber(n)
  local d = redis.call('HGET', base .. string.sub(ids, pos, pos + len - 1), 'd')
  if d and empty ~= '' and string.sub(d, cut) == empty then
    out[i] = 1
  else
    out[i] = d
  end
  pos = pos + len
end
return out
"""

# What ``encode_state`` writes for a subject with no rules (the most common cached state in
# a campaign): recognised without a JSON parse. Anything else takes the codec's path.
_EMPTY_HEAD = b'{"v":'
EMPTY_TAIL = b',"r":[]}'


NO_RULES: Rules = MappingProxyType({})


def _is_empty(raw: bytes) -> bool:
    return (
        raw.startswith(_EMPTY_HEAD)
        and raw.endswith(EMPTY_TAIL)
        and raw[len(_EMPTY_HEAD) : -len(EMPTY_TAIL)].isdigit()
    )


def decode(key: SubjectKey, raw: bytes) -> SubjectState:
    if _is_empty(raw):
        return SubjectState(key, int(raw[len(_EMPTY_HEAD) : -len(EMPTY_TAIL)]), {})
    return decode_state(key, raw)


class RulesMemo:
    """Decoded rule sets keyed by their encoded bytes: a bounded LRU.

    Keyed by content, never by subject, so it cannot serve a stale state: a changed state
    is different bytes. It spares a campaign filter the JSON and datetime parsing of the
    subjects it saw in the previous send. A forward decodes to ``Forward``: its own rules
    are empty, and taking them for the subject's would answer the catalog default.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self._entries: LRUCache[bytes, Rules | Forward] = LRUCache(maxsize=max_entries)

    def decode(self, tenant: str, subject_id: str, raw: bytes | int) -> Rules | Forward:
        if isinstance(raw, int):  # Redis answers 1 for a state without rules
            return NO_RULES
        rules = self._entries.get(raw)
        if rules is None:
            state = decode_state(SubjectKey(tenant, subject_id), raw)
            rules = state.rules if state.merged_into is None else Forward(state.merged_into)
            self._entries[raw] = rules
        return rules


def _decode_state(tenant: str, subject_id: str, raw: bytes) -> SubjectState:
    return decode(SubjectKey(tenant, subject_id), raw)


class RedisStateReader:
    def __init__(self, redis: Redis, cache: RedisStateCache, chunk: int = 2_000) -> None:
        self._redis = redis
        self._cache = cache
        self._chunk = chunk
        self._bulk = redis.register_script(_BULK_HGET)
        self._memo = RulesMemo()

    async def read_one(self, key: SubjectKey) -> SubjectState | None:
        raw = await self._redis.hget(self._cache.key(key), "d")
        # decode_responses is off (create_redis), so the answer is bytes or None.
        return decode(key, raw) if isinstance(raw, bytes) and raw else None

    async def read_many(self, tenant: str, subject_ids: Sequence[str]) -> list[SubjectState | None]:
        """The cached state of each id of one tenant, in order; ``None`` for a miss.

        Chunks go out concurrently: Redis runs them one after another, while the client
        decodes the first answers.
        """
        return await self._read(tenant, subject_ids, _decode_state, b"")

    async def _read(
        self,
        tenant: str,
        subject_ids: Sequence[str],
        decoder: Callable[[str, str, Any], T],
        empty_tail: bytes,
    ) -> list[T | None]:
        if not subject_ids:
            return []
        base = self._cache.key(SubjectKey(tenant, ""))
        chunks = [subject_ids[i : i + self._chunk] for i in range(0, len(subject_ids), self._chunk)]
        answers = await asyncio.gather(
            *(self._read_chunk(base, chunk, empty_tail) for chunk in chunks)
        )
        found: list[T | None] = []
        for chunk, raws in zip(chunks, answers, strict=True):
            found.extend(
                decoder(tenant, sid, raw) if raw else None
                for sid, raw in zip(chunk, raws, strict=True)
            )
        return found

    async def read_many_rules(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> list[Rules | Forward | None]:
        """Like ``read_many``, rules only: what a campaign-sized filter can afford to build;
        a forward's place holds ``Forward``."""
        return await self._read(tenant, subject_ids, self._memo.decode, EMPTY_TAIL)

    async def _read_chunk(
        self, base: str, subject_ids: Sequence[str], empty_tail: bytes
    ) -> list[bytes | int | None]:
        encoded = [sid.encode() for sid in subject_ids]
        raws: list[bytes | int | None] = await self._bulk(
            keys=[],
            args=[base, ",".join(str(len(e)) for e in encoded), b"".join(encoded), empty_tail],
        )
        return raws
