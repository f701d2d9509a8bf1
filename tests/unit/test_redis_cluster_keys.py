"""Redis Cluster key layout: every key of one script call must be in one hash slot.

The server refuses a script call whose keys span slots, so the cluster cache groups keys by
the bucket in their hash tag; these properties hold for any tenant and subject id, braces
included, with the server's own slot function (redis-py's ``key_slot``).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from service.adapters.redis_cache import state_key
from service.adapters.redis_cluster_cache import (
    BUCKETS,
    ClusterStateCache,
    bucket_tags,
    cluster_state_key,
    keys_by_slot,
)
from service.domain.model import SubjectKey

subjects = st.builds(
    SubjectKey,
    tenant=st.text(min_size=1, max_size=12),
    subject_id=st.text(max_size=40) | st.sampled_from(["{", "}", "{}", "{a}", "x{y}z", "}{"]),
)
prefixes = st.text(min_size=1, max_size=10).filter(lambda p: "{" not in p)


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_bucket_tags_sit_on_evenly_spaced_slots() -> None:
    tags = bucket_tags()
    step = REDIS_CLUSTER_HASH_SLOTS // BUCKETS
    assert len(tags) == len(set(tags)) == BUCKETS
    assert [key_slot(tag.encode()) for tag in tags] == [b * step for b in range(BUCKETS)]


# No deadline: the first example computes the bucket tags (once per process).
@settings(deadline=None)
@given(prefixes, subjects)
def test_a_key_is_the_standalone_key_with_its_bucket_tag(prefix: str, subject: SubjectKey) -> None:
    key = cluster_state_key(prefix, subject)
    head = f"{prefix}:s:{{"
    assert key.startswith(head)
    tag, _, rest = key[len(head) :].partition("}:")
    assert tag in bucket_tags()
    assert f"{prefix}:s:{rest}" == state_key(prefix, subject)
    assert slot(key) == key_slot(tag.encode())


@settings(deadline=None)
@given(prefixes, st.lists(subjects, max_size=60))
def test_keys_by_slot_puts_each_group_in_one_slot_and_every_key_in_one_group(
    prefix: str, batch: list[SubjectKey]
) -> None:
    keys, groups = keys_by_slot(prefix, batch)
    assert keys == [cluster_state_key(prefix, s) for s in batch]
    assert sorted(i for group in groups for i in group) == list(range(len(batch)))
    for group in groups:
        assert group == sorted(group)  # the order of the batch is kept within a slot
        assert len({slot(keys[i]) for i in group}) == 1
    assert len({slot(keys[group[0]]) for group in groups}) == len(groups)


def test_ids_spread_over_every_bucket_evenly() -> None:
    _, groups = keys_by_slot("optout", [SubjectKey("default", f"user-{i}") for i in range(20_000)])
    assert len(groups) == BUCKETS
    sizes = [len(g) for g in groups]
    mean = 20_000 / BUCKETS
    assert min(sizes) > 0.6 * mean
    assert max(sizes) < 1.4 * mean


def test_a_prefix_with_a_hash_tag_of_its_own_is_refused() -> None:
    client = RedisCluster(host="127.0.0.1", port=1)  # never connects
    with pytest.raises(ValueError, match="prefix"):
        ClusterStateCache(client, "optout{x}")
