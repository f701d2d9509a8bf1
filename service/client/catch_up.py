"""How far the SDK's follower has caught up with the events topic: the local cache's bound.

The rule. A check at time ``t`` may be answered from memory only if, for every partition of
the events topic, the follower has applied every record below an end offset (high watermark)
that Kafka reported at or after ``t - bound``, and the partition list itself was read at or
after ``t - bound``. Otherwise the follower is *behind* and the answer comes from Redis.

Why this is the right bound. The worker produces with ``acks=all``: Kafka acknowledges an
event only once it is below the partition's high watermark. So an end offset reported at
time ``s`` covers every event acknowledged before ``s``, and a follower whose position has
reached it has applied all of them. The rule therefore guarantees: a local answer reflects
every preference change whose event Kafka acknowledged more than ``bound`` before the check
began. An outcome is published only after its events are acknowledged, so a sender that
reads an ``applied`` outcome gets the new state from the SDK at the latest ``bound`` later,
and in practice much sooner: the follower keeps a long-poll fetch open on every partition,
which the broker answers the moment an event is acknowledged, so a healthy follower applies
an event before its outcome has even been produced. The bound is what holds when that
practice fails: a paused or starved follower, a slow broker, a burst it has not consumed.

Why not "behind = position below the latest known end". Under steady traffic there is
always a newer end than the position for a moment, so that rule would switch the cache off
and on with every fetch; and a follower that hears nothing would never learn it is behind.
Ends *observed at a known time* make silence count against the follower: with no fresh end,
the cache goes back to Redis after ``bound`` whatever the cause.

Where the ends come from, and the time each counts from: a time no later than the moment
the broker read the end, or the rule would claim more than it knows. Every fetch answer
carries the partition's high watermark; it counts from when the *previous* answer was
processed, since the request of this one was sent after that (the follower's ``_observe``
says why the arrival time would not do). ``end_offsets`` answers, asked for when fetch
answers are late, count from when they were asked. Partitions added to the topic are found
by reading the partition list every half bound; a partition not seen yet cannot be caught
up, hence the list's own time.

The follower turns all of this into one number per loop, ``usable_until()``; a check only
compares the clock with it, so the hot path makes no call to anything.

Pure bookkeeping: times are plain floats from the follower's monotonic clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Pending ends are kept until the position passes them; the oldest are dropped beyond this.
# Dropping one only delays the moment the partition counts as caught up: it stays sound.
MAX_PENDING_ENDS = 32


@dataclass
class _Partition:
    heard_at: float
    caught_up_at: float = -math.inf
    position: int = -1
    pending: list[tuple[int, float]] = field(default_factory=list)  # (end offset, seen at)


class CatchUp:
    """The times as of which the follower had applied everything, per partition."""

    def __init__(self, bound_seconds: float) -> None:
        if bound_seconds <= 0:
            raise ValueError("bound_seconds must be positive")
        self.bound_seconds = bound_seconds
        self._partitions: dict[int, _Partition] = {}
        self._listed_at = -math.inf

    @property
    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def follow(self, partition: int, at: float) -> None:
        """Start tracking a partition; it is behind until an end it reached is observed.

        ``at`` counts as the last time Kafka was heard about it, so a partition that never
        gets an answer is reported silent ``stall`` seconds later, not at once.
        """
        if partition not in self._partitions:
            self._partitions[partition] = _Partition(heard_at=at)

    def listed(self, at: float) -> None:
        """The partition list was read at ``at`` (the time the question was sent)."""
        self._listed_at = max(self._listed_at, at)

    def end_seen(self, partition: int, end: int, at: float) -> None:
        """Kafka reported ``end`` as the partition's end offset at time ``at``."""
        state = self._partitions[partition]
        state.heard_at = max(state.heard_at, at)
        if state.position >= end:
            state.caught_up_at = max(state.caught_up_at, at)
            return
        state.pending.append((end, at))
        if len(state.pending) > MAX_PENDING_ENDS:
            state.pending.remove(min(state.pending, key=lambda p: p[1]))

    def consumed_to(self, partition: int, position: int) -> None:
        """Every record of the partition below ``position`` has been applied to the cache."""
        state = self._partitions[partition]
        if position <= state.position:
            return
        state.position = position
        reached = [p for p in state.pending if p[0] <= position]
        if reached:
            state.caught_up_at = max(state.caught_up_at, *(at for _, at in reached))
            state.pending = [p for p in state.pending if p[0] > position]

    def caught_up_at(self) -> float:
        """The latest time as of which everything on the topic is known to be applied."""
        if not self._partitions:
            return -math.inf
        return min(self._listed_at, *(p.caught_up_at for p in self._partitions.values()))

    def usable_until(self) -> float:
        """The local cache may answer until this time, unless newer ends move it on."""
        return self.caught_up_at() + self.bound_seconds

    def partition_caught_up_at(self, partition: int) -> float:
        return self._partitions[partition].caught_up_at

    def heard(self, partition: int, at: float) -> None:
        """Kafka answered about the partition at ``at``, whatever the answer says."""
        state = self._partitions[partition]
        state.heard_at = max(state.heard_at, at)

    def heard_at(self, partition: int) -> float:
        return self._partitions[partition].heard_at

    def last_heard(self) -> float:
        """The oldest of the partitions' latest answers: silence is judged by the worst one."""
        if not self._partitions:
            return -math.inf
        return min(p.heard_at for p in self._partitions.values())
