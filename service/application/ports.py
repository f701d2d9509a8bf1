"""What the command pipeline needs from the outside world, and the data it hands over.

The adapters implement these; the pipeline depends only on them, so its orchestration can
be read (and replaced in a test) without PostgreSQL, Redis or Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from service.application.records import RawRecord
from service.contract.encode import EncodedEvent
from service.domain.apply import BatchResult
from service.domain.commands import Malformed, Received
from service.domain.events import Outcome
from service.domain.model import SubjectState


class AppliedBatch(NamedTuple):
    result: BatchResult
    events: list[EncodedEvent]  # re-published ones first, then the new ones


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    record: RawRecord
    error: str


class CommandStore(Protocol):
    async def apply(self, records: Sequence[Received | Malformed]) -> AppliedBatch: ...


class StateCache(Protocol):
    async def write(self, states: Sequence[SubjectState]) -> int: ...


class Publisher(Protocol):
    async def publish(
        self,
        events: Sequence[EncodedEvent],
        outcomes: Sequence[Outcome],
        dead_letters: Sequence[DeadLetterRecord],
    ) -> None: ...
