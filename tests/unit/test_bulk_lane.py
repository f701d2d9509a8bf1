"""The bulk lane's pure parts: the per-batch budget, the live-first fetch step (on a fake of
aiokafka's fetch buffer, which hands out partitions in the order they were fetched), the
co-partitioning of the range assignor, and the bulk topic's name."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream.kafka import KafkaBroker
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.adapters.kafka.consumer import BulkLane, WorkerState, register_worker
from service.adapters.kafka.priority import LaneBudget, LiveFirstFetch, split_lanes
from service.application.records import RawRecord
from service.settings import Settings, bulk_topic_for

LIVE, BULK = "commands", "commands.bulk"


class FetchBuffer:
    """aiokafka's fetched-record buffer as `getmany` drains it: partitions in the order
    their fetches arrived, each drained before the next, at most `max_records` in all."""

    def __init__(self, buffered: Iterable[tuple[TopicPartition, int]]) -> None:
        self.buffers: dict[TopicPartition, list[tuple[str, int, int]]] = {}
        for tp, count in buffered:
            if count:
                self.buffers[tp] = [(tp.topic, tp.partition, offset) for offset in range(count)]
        self.assigned = set(self.buffers)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        room = max_records if max_records is not None else 10**9
        drained: dict[TopicPartition, list[Any]] = {}
        for tp in list(self.buffers):
            if (partitions and tp not in partitions) or room == 0:
                continue
            taken, self.buffers[tp] = self.buffers[tp][:room], self.buffers[tp][room:]
            if not self.buffers[tp]:
                del self.buffers[tp]
            drained[tp] = taken
            room -= len(taken)
        return drained

    def live_waiting(self) -> int:
        return sum(len(r) for tp, r in self.buffers.items() if tp.topic == LIVE)


@settings(deadline=None)  # a batch size of 1 makes thousands of calls
@given(
    bulk=st.lists(st.integers(0, 2_000), min_size=1, max_size=4),
    live=st.lists(st.integers(0, 500), min_size=1, max_size=4),
    max_records=st.integers(1, 600),
    bulk_max=st.integers(1, 600),
)
async def test_live_records_go_first_and_bulk_ones_within_their_budget(
    bulk: list[int], live: list[int], max_records: int, bulk_max: int
) -> None:
    # The worst case: every bulk partition's fetch arrived before any live one.
    buffer = FetchBuffer(
        [(TopicPartition(BULK, p), n) for p, n in enumerate(bulk)]
        + [(TopicPartition(LIVE, p), n) for p, n in enumerate(live)]
    )
    fetch = LiveFirstFetch(bulk_topic=BULK, budget=LaneBudget(max_records, bulk_max), wait_ms=0)
    handed: list[tuple[str, int, int]] = []
    while buffer.buffers:
        waiting = buffer.live_waiting()
        batch = list(await fetch(buffer))
        assert batch
        bulk_taken = sum(1 for r in batch if r[0] == BULK)
        live_taken = len(batch) - bulk_taken
        assert len(batch) <= max_records
        assert bulk_taken <= bulk_max
        # Bulk records only once every live record waiting is in the batch.
        assert bulk_taken == 0 or live_taken == waiting
        handed += batch
    # Nothing lost, nothing twice, each partition in offset order.
    expected = {(BULK, p): n for p, n in enumerate(bulk)} | {
        (LIVE, p): n for p, n in enumerate(live)
    }
    for (topic, partition), count in expected.items():
        offsets = [o for t, p, o in handed if (t, p) == (topic, partition)]
        assert offsets == list(range(count))


async def test_nothing_fetched_waits_once_and_returns_nothing() -> None:
    fetch = LiveFirstFetch(bulk_topic=BULK, budget=LaneBudget(10, 5), wait_ms=1)
    assert await fetch(FetchBuffer([])) == ()


@given(live=st.integers(0, 1_000), bulk=st.integers(0, 1_000), mx=st.integers(1, 1_000))
def test_the_budget_never_exceeds_either_bound(live: int, bulk: int, mx: int) -> None:
    budget = LaneBudget(max_records=mx, bulk_max_records=200)
    room = budget.bulk_room(live=live, bulk=bulk)
    assert room >= 0
    assert room == 0 or (bulk + room <= 200 and live + bulk + room <= mx)
    assert budget.first_wait == min(mx, 200)


def test_split_lanes_by_topic_in_partition_order() -> None:
    tps = {TopicPartition(BULK, 1), TopicPartition(LIVE, 2), TopicPartition(LIVE, 0)}
    assert split_lanes(tps, BULK) == (
        [TopicPartition(LIVE, 0), TopicPartition(LIVE, 2)],
        [TopicPartition(BULK, 1)],
    )


class _Cluster:
    def __init__(self, partitions: int) -> None:
        self._partitions = set(range(partitions))

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions


@given(members=st.integers(1, 12), partitions=st.integers(1, 24))
def test_the_range_assignor_gives_partition_p_of_both_topics_to_one_member(
    members: int, partitions: int
) -> None:
    metadata = RangePartitionAssignor.metadata([LIVE, BULK])
    assignment = RangePartitionAssignor.assign(
        _Cluster(partitions),
        {f"member-{m:02d}-{m * 7919 % 13}": metadata for m in range(members)},
    )
    owners: dict[tuple[str, int], str] = {}
    for member, assigned in assignment.items():
        for topic, numbers in assigned.assignment:
            for number in numbers:
                owners[(topic, number)] = member
    for p in range(partitions):
        assert owners[(LIVE, p)] == owners[(BULK, p)]


async def _nothing(records: Sequence[RawRecord]) -> None:
    return None


def test_the_worker_subscribes_both_topics_with_the_range_assignor() -> None:
    broker = KafkaBroker("127.0.0.1:1")  # never started: only the subscriber is built
    subscriber = register_worker(
        broker,
        topic=LIVE,
        group_id="group",
        max_records=500,
        wait_seconds=0.005,
        process=_nothing,
        state=WorkerState(),
        backoff_max_seconds=1.0,
        bulk=BulkLane(BULK, 200),
    )
    assert subscriber._connection_args["partition_assignment_strategy"] == (RangePartitionAssignor,)
    assert {t.name for t in subscriber.topics} == {LIVE, BULK}
    assert isinstance(subscriber.get_msg.fetch, LiveFirstFetch)


def test_the_bulk_topic_is_derived_from_the_live_one() -> None:
    assert bulk_topic_for("optout.commands.v1") == "optout.commands.bulk.v1"
    assert bulk_topic_for("t.abc.commands") == "t.abc.commands.bulk"
    assert Settings().commands_bulk_topic == "optout.commands.bulk.v1"
    copy = Settings().model_copy(update={"topic_commands": "chaos.x.commands"})
    assert copy.commands_bulk_topic == "chaos.x.commands.bulk"
    assert Settings(topic_commands_bulk="imports").commands_bulk_topic == "imports"
    with pytest.raises(ValidationError, match="must differ"):
        Settings(topic_commands_bulk="optout.commands.v1")
