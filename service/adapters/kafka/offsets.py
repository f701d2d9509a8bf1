"""The gap check: offsets are committed only past records the worker actually processed.

A batch that never reaches the handler (faststream swallows an exception raised before it,
such as a parser failure) still advances the consumer's position, and the next batch's
commit would then skip it: records gone without an answer. So the worker remembers, per
partition, the offset it expects next (the consumer's position after the last batch it
processed). A batch that starts beyond it is not processed: the partition is sought back to
the expected offset. Some gaps are legitimate (transaction markers, compacted records,
records removed by retention): those are still there when the partition is fetched again
from the expected offset, and a gap seen twice in a row at the same place is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Partition = tuple[str, int]
Verdict = Literal["in_order", "seek_back", "accept_gap"]


@dataclass
class GapCheck:
    expected: dict[Partition, int] = field(default_factory=dict)
    _seen: dict[Partition, tuple[int, int]] = field(default_factory=dict)

    def knows(self, partition: Partition) -> bool:
        return partition in self.expected

    def judge(self, partition: Partition, first_offset: int) -> Verdict:
        """What to do with a batch whose records of `partition` start at `first_offset`."""
        expected = self.expected.get(partition)
        if expected is None or first_offset <= expected:
            return "in_order"
        if self._seen.get(partition) == (expected, first_offset):
            return "accept_gap"
        self._seen[partition] = (expected, first_offset)
        return "seek_back"

    def processed(self, partition: Partition, next_offset: int) -> None:
        self.expected[partition] = next_offset
        self._seen.pop(partition, None)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions assigned or revoked: their next offset is read again from Kafka."""
        for partition in partitions:
            self.expected.pop(partition, None)
            self._seen.pop(partition, None)
