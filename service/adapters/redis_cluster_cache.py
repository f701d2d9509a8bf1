"""The write-through cache on Redis Cluster: the standalone compare-and-set, once per hash slot.

``RedisStateCache`` hands all of a batch's keys to one script call, which a cluster refuses
(CROSSSLOT). Here the states are grouped by the hash slot of their key and the same Lua
script runs once per slot, the calls pipelined per node (``PerSlotScript``). The script is
unchanged, so is the rule: a state is stored only if its version is higher than the one
cached, atomically per key. Nothing ever needed atomicity across subjects.

Keys carry a hash tag naming one of ``BUCKETS`` buckets, chosen from the tenant and subject
id: with plain keys a batch of 500 subjects would fall in about 500 slots, so 500 script
calls, and a campaign of 10,000 ids in about 7,500; with the tag, they fall in at most
``BUCKETS`` slots, so a campaign costs a few hundred calls. The tags are picked so that the
buckets' slots are evenly spaced over the 16,384: nodes that own equal slot ranges (what
``redis-cli --cluster create`` and ``rebalance`` produce) hold equal shares of the subjects.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import Iterable
from functools import cache

from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from service.adapters.redis_cache import CAS_SCRIPT
from service.adapters.redis_cluster_script import Arg, PerSlotScript, SlotCall
from service.adapters.state_codec import encode_state
from service.domain.model import SubjectKey, SubjectState

# Changing it renames every key: the cache starts cold (misses are read from PostgreSQL)
# and the keys of the old layout stay until deleted.
BUCKETS = 256


@cache
def bucket_tags() -> tuple[str, ...]:
    """For each bucket, the shortest decimal tag whose slot is the bucket's: slot
    ``bucket * 16384 / BUCKETS``. Computed once (tens of thousands of CRC16 of short
    strings); the result never changes, the unit tests pin it to the slots."""
    step = REDIS_CLUSTER_HASH_SLOTS // BUCKETS
    tags: list[str | None] = [None] * BUCKETS
    missing = BUCKETS
    candidate = 0
    while missing:
        text = str(candidate)
        slot = key_slot(text.encode())
        if slot % step == 0 and tags[slot // step] is None:
            tags[slot // step] = text
            missing -= 1
        candidate += 1
    return tuple(t for t in tags if t is not None)


def _bucket_and_key(prefix: str, subject: SubjectKey) -> tuple[int, str]:
    natural = f"{len(subject.tenant)}:{subject.tenant}:{subject.subject_id}"
    bucket = crc_hqx(natural.encode(), 0) % BUCKETS
    return bucket, f"{prefix}:s:{{{bucket_tags()[bucket]}}}:{natural}"


def cluster_state_key(prefix: str, subject: SubjectKey) -> str:
    """``{prefix}:s:{tag}:{tenant length}:{tenant}:{subject id}``: the standalone key with a
    bucket tag, so that a subject's key is in its bucket's slot."""
    return _bucket_and_key(prefix, subject)[1]


def keys_by_slot(prefix: str, subjects: Iterable[SubjectKey]) -> tuple[list[str], list[list[int]]]:
    """The subjects' keys, and their positions grouped by hash slot (a bucket is one slot).

    Grouped by the bucket already computed for the key: hashing every key again for its
    slot would cost as much as building it.
    """
    keys: list[str] = []
    buckets: dict[int, list[int]] = {}
    for position, subject in enumerate(subjects):
        bucket, key = _bucket_and_key(prefix, subject)
        keys.append(key)
        buckets.setdefault(bucket, []).append(position)
    return keys, list(buckets.values())


class ClusterStateCache:
    """``RedisStateCache`` for a cluster: same script, same expiry settings, tagged keys.

    A prefix holding ``{`` would put its own hash tag first and every key in one slot, so
    it is refused.
    """

    def __init__(
        self, redis: RedisCluster, prefix: str, ttl_seconds: int = 0, unknown_ttl_seconds: int = 0
    ) -> None:
        if "{" in prefix:
            raise ValueError("a Redis Cluster key prefix cannot contain '{'")
        self.prefix = prefix
        self._ttl = ttl_seconds
        self._unknown_ttl = unknown_ttl_seconds or ttl_seconds
        self._cas = PerSlotScript(redis, CAS_SCRIPT, args_per_key=3, merge=_total)

    def key(self, subject: SubjectKey) -> str:
        return cluster_state_key(self.prefix, subject)

    def _default_ttl(self, state: SubjectState) -> int:
        return self._ttl if state.version else self._unknown_ttl

    async def write(self, states: Iterable[SubjectState], ttl_seconds: int | None = None) -> int:
        """Store each state unless a newer one is cached; one round trip per node.

        Returns how many were written (the others were older than what Redis holds).
        `ttl_seconds` overrides the expiry (an erasure's short-lived fences).
        """
        states = list(states)
        if not states:
            return 0
        keys, groups = keys_by_slot(self.prefix, (s.key for s in states))
        calls: list[SlotCall] = []
        for positions in groups:
            args: list[Arg] = []
            for i in positions:
                state = states[i]
                ttl = ttl_seconds if ttl_seconds is not None else self._default_ttl(state)
                args.extend((state.version, encode_state(state), ttl))
            calls.append(SlotCall([keys[i] for i in positions], args))
        written = await self._cas.run(calls)
        return sum(int(n) for n in written)


def _total(counts: list[int]) -> int:
    return sum(int(n) for n in counts)
