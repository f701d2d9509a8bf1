"""Reads of cached subject states on Redis Cluster, for the read path.

The standalone bulk read (``redis_reader``) builds key names inside Redis, which a cluster
forbids: a script may touch only the keys it is given, all of one hash slot. Here the ids
are grouped by the slot of their key (at most ``BUCKETS`` slots, see ``redis_cluster_cache``)
and one script call per slot receives its keys in KEYS, the calls pipelined per node. A
pipelined HGET per id was measured slower: redis-py spends its time packing and parsing one
command per id, where here it handles one per slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster

from service.adapters.redis_cluster_cache import ClusterStateCache, keys_by_slot
from service.adapters.redis_cluster_script import PerSlotScript, SlotCall
from service.adapters.redis_reader import EMPTY_TAIL, RulesMemo, decode
from service.application.decisions import Forward
from service.domain.decision import Rules
from service.domain.model import SubjectKey, SubjectState

T = TypeVar("T")

# KEYS = subject keys of one slot; ARGV[1] = the tail that marks an encoded state without
# rules, or "" to return every state in full. Answers per key as the standalone bulk read:
# the encoded state, 1 for a state without rules (when asked), or false for a miss (a
# forward never ends in that tail, so it comes back in full).
SLOT_HGET = """
local empty = ARGV[1]
local cut = -string.len(empty)
local out = {}
for i, key in ipairs(KEYS) do
  local d = redis.call('HGET', key, 'd')
  if d and empty ~= '' and string.sub(d, cut) == empty then
    out[i] = 1
  else
    out[i] = d
  end
end
return out
"""


def _concatenated(parts: list[list[Any]]) -> list[Any]:
    return [answer for part in parts for answer in part]


def _decode_state(tenant: str, subject_id: str, raw: bytes) -> SubjectState:
    return decode(SubjectKey(tenant, subject_id), raw)


class ClusterStateReader:
    """``RedisStateReader`` for a cluster: same answers, keys grouped by slot."""

    def __init__(self, redis: RedisCluster, cache: ClusterStateCache) -> None:
        self._redis = redis
        self._cache = cache
        self._bulk = PerSlotScript(redis, SLOT_HGET, args_per_key=0, merge=_concatenated)
        self._memo = RulesMemo()

    async def read_one(self, key: SubjectKey) -> SubjectState | None:
        raw = await self._redis.hget(self._cache.key(key), "d")
        # decode_responses is off (create_redis), so the answer is bytes or None.
        return decode(key, raw) if isinstance(raw, bytes) and raw else None

    async def read_many(self, tenant: str, subject_ids: Sequence[str]) -> list[SubjectState | None]:
        """The cached state of each id of one tenant, in order; ``None`` for a miss."""
        return await self._read(tenant, subject_ids, _decode_state, b"")

    async def read_many_rules(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> list[Rules | Forward | None]:
        """Like ``read_many``, rules only: what a campaign-sized filter can afford to build;
        a forward's place holds ``Forward``."""
        return await self._read(tenant, subject_ids, self._memo.decode, EMPTY_TAIL)

    async def _read(
        self,
        tenant: str,
        subject_ids: Sequence[str],
        decoder: Callable[[str, str, Any], T],
        empty_tail: bytes,
    ) -> list[T | None]:
        if not subject_ids:
            return []
        keys, groups = keys_by_slot(
            self._cache.prefix, [SubjectKey(tenant, sid) for sid in subject_ids]
        )
        answers = await self._bulk.run(
            [SlotCall([keys[i] for i in group]) for group in groups], [empty_tail]
        )
        raws: list[Any] = [None] * len(keys)
        for group, found in zip(groups, answers, strict=True):
            for i, raw in zip(group, found, strict=True):
                raws[i] = raw
        return [
            decoder(tenant, sid, raw) if raw else None
            for sid, raw in zip(subject_ids, raws, strict=True)
        ]
