"""The bulk lane: live commands are read first, bulk ones behind them, a bounded number at a time.

Imports and other bulk producers publish contract v1 commands to a topic of their own
(``OPTOUT_TOPIC_COMMANDS_BULK``), created with the live commands topic's partition count and
keyed the same way (the subject id, Kafka's murmur2 rule), so a subject's commands are on
partition p of either topic. One worker consumer subscribes to both topics in one group with
the range assignor, which lays out each topic's partitions over the members sorted the same
way: partition p of the live topic and partition p of the bulk topic always belong to the
same member. That member has one serial pipeline (``consumer.py``) for both lanes.

Why a subject's events stay in version order: every command of a subject, whichever lane it
came on, is handled by the member owning partition p, in that member's one pipeline, whose
batches are applied one after the other (the next batch's PostgreSQL stage starts after the
one before committed, outputs go out in batch order). Inside a batch the processor spreads
records over lanes by partition *number*, so live p and bulk p share a transaction and are
applied in batch order. Versions are given in the order of application and the events leave
in that order on the subject's one preferences partition. The two topics have no order
between them (they are written independently); the decision rule (latest ``occurred_at``
wins) makes the state independent of which lane's command was applied first, while each
lane keeps its own per-partition order.

Why a live command never waits behind more than a bounded amount of bulk work: aiokafka
hands out fetched records partition by partition in the order they were fetched, and a bulk
partition's fetch holds thousands of records, so one plain ``getmany`` after an import
returned nothing but bulk records for many batches. The fetch step here (which replaces
faststream's ``getmany`` for the subscriber) takes whatever the live partitions have fetched
first, and then at most ``bulk_max_records`` bulk records; records it leaves stay in
aiokafka's buffer, where the next call finds them (nothing is sought or dropped, positions
only move over records handed to the handler). A live record fetched while a batch is in
flight therefore waits for that batch (at most ``bulk_max_records`` bulk records) and the
second stage before it, never for the bulk backlog.

What this does not remove: aiokafka sends no new fetch to a broker while a partition's
fetched records are younger than its fixed ``prefetch_backoff`` (100 ms) and not yet handed
out, so right after a bulk partition's buffer was refilled a live record may wait up to that
long to be fetched at all. The bulk buffers are refilled about once per
``max_partition_fetch_bytes`` of bulk records (1 MiB, thousands of commands).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

from aiokafka import TopicPartition


class Fetching(Protocol):
    """The part of aiokafka's consumer the fetch step uses."""

    def assignment(self) -> set[TopicPartition]: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]: ...


@dataclass(frozen=True, slots=True)
class LaneBudget:
    """How many records a batch takes from each lane: pure arithmetic, unit-tested."""

    max_records: int
    bulk_max_records: int

    def bulk_room(self, *, live: int, bulk: int) -> int:
        """Bulk records the batch may still take after `live` live and `bulk` bulk ones."""
        return max(0, min(self.bulk_max_records - bulk, self.max_records - live - bulk))

    def live_room(self, *, live: int, bulk: int) -> int:
        return max(0, self.max_records - live - bulk)

    @property
    def first_wait(self) -> int:
        """What the wait for a batch's first records may return: bounded by the bulk lane's
        budget, since those records may all be bulk ones."""
        return min(self.max_records, self.bulk_max_records)


def split_lanes(
    assignment: Iterable[TopicPartition], bulk_topic: str
) -> tuple[list[TopicPartition], list[TopicPartition]]:
    """The assigned partitions as (live, bulk), each in partition order."""
    ordered = sorted(assignment, key=lambda tp: (tp.topic, tp.partition))
    return (
        [tp for tp in ordered if tp.topic != bulk_topic],
        [tp for tp in ordered if tp.topic == bulk_topic],
    )


class LiveFirstFetch:
    """A batch for the worker: live records first, then bulk ones within their budget."""

    def __init__(self, *, bulk_topic: str, budget: LaneBudget, wait_ms: int) -> None:
        self._bulk_topic = bulk_topic
        self._budget = budget
        self._wait_ms = wait_ms

    async def __call__(self, consumer: Fetching) -> tuple[Any, ...]:
        live, bulk = split_lanes(consumer.assignment(), self._bulk_topic)
        taken = _Taken(self._bulk_topic)
        # What is already fetched: live first, then the bulk lane within its budget.
        await taken.add(consumer, live, self._budget.live_room(live=0, bulk=0))
        await taken.add(consumer, bulk, self._budget.bulk_room(live=taken.live, bulk=0))
        if not taken.records:
            # Nothing fetched yet: wait for the first records of either lane (at most the
            # bulk budget of them), then take the live records fetched meanwhile.
            got = await consumer.getmany(
                timeout_ms=self._wait_ms, max_records=self._budget.first_wait
            )
            taken.merge(got)
            await taken.add(
                consumer, live, self._budget.live_room(live=taken.live, bulk=taken.bulk)
            )
        # Nothing after the wait: the next poll comes at once (``poll_errors.py``).
        return tuple(chain.from_iterable(taken.records.values()))


class _Taken:
    """A batch's records per partition, in offset order, counted per lane."""

    def __init__(self, bulk_topic: str) -> None:
        self._bulk_topic = bulk_topic
        self.records: dict[TopicPartition, list[Any]] = {}
        self.live = 0
        self.bulk = 0

    async def add(self, consumer: Fetching, partitions: list[TopicPartition], room: int) -> None:
        # An empty list of partitions means "all of them" to aiokafka: never pass one.
        if partitions and room > 0:
            self.merge(await consumer.getmany(*partitions, timeout_ms=0, max_records=room))

    def merge(self, got: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in got.items():
            self.records.setdefault(tp, []).extend(records)
            if tp.topic == self._bulk_topic:
                self.bulk += len(records)
            else:
                self.live += len(records)
