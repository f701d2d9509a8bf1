"""What the command pipeline needs from the outside world, and the data it hands over.

The adapters implement these; the use case depends only on them, so it runs the same on
PostgreSQL, Redis and Kafka as on the in-memory fakes of ``tests/unit/test_process_commands.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from service.application.records import RawRecord
from service.application.waterfall import StepClock
from service.contract.encode import EncodedEvent
from service.domain.apply import BatchResult, CommandKey, ProcessedRecord
from service.domain.commands import Delivery
from service.domain.frozen import quick_init
from service.domain.model import SubjectKey, SubjectState


@quick_init
@dataclass(frozen=True, slots=True)
class EventMessage:
    """A preference-changed event as published: its subject and its exact bytes, or None
    for a tombstone (the subject id ended: merged, linked or erased)."""

    tenant: str
    subject_id: str
    payload: bytes | None


@quick_init
@dataclass(frozen=True, slots=True)
class OutcomeMessage:
    command_id: str
    tenant: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    record: RawRecord
    error: str
    code: str = "poison"


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A processed command's outcome and events as first published, replayed byte for byte."""

    outcome: bytes
    events: tuple[EventMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class Loaded:
    """What one batch needs to be decided: the stored side of every key and id it names.

    `answers` holds the stored bytes of the entries whose delivery is in the batch (crash
    redeliveries), the only ones published again.
    """

    states: dict[SubjectKey, SubjectState]
    processed: dict[CommandKey, ProcessedRecord]
    answers: dict[CommandKey, StoredAnswer]
    now: datetime
    forwarders: dict[SubjectKey, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToSave:
    """A decided batch with its outputs already encoded, for the store to write as given."""

    result: BatchResult
    events: Sequence[EncodedEvent]  # one per `result.events`, in its order
    processed_outcomes: Sequence[bytes]  # one per `result.processed`, in its order


@dataclass(frozen=True, slots=True)
class UnkeyedHashes:
    """Hashes of before keying in an erased person's rows (``domain/keyed_hashes.py``):
    processed commands (tenant, command id, content hash) whose hash is plain or whose id
    is a plain import id, and the plain import ids their history and events name."""

    processed: Sequence[tuple[str, str, str]]
    import_ids: Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class RekeyedHashes:
    """Their keyed forms: per processed command (tenant, command id, new id, new content
    hash), per import id (tenant, old id, new id)."""

    processed: Sequence[tuple[str, str, str, str]]
    import_ids: Sequence[tuple[str, str, str]]


class CommandUnitOfWork(Protocol):
    """One transaction: `load` locks and reads, `save` writes; commit on a clean exit only."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def load(
        self,
        keys: Sequence[SubjectKey],
        commands: Sequence[CommandKey],
        deliveries: set[Delivery],
        lookups: Sequence[SubjectKey] = (),
        forwarders: bool = False,
    ) -> Loaded:
        """Create and lock `keys`, lock `lookups` where they exist (never created: erased
        identifiers' suppressions), then the target of every forward among them; with
        `forwarders`, also every id forwarding to each subject found (for erasures)."""
        ...

    async def save(self, batch: ToSave) -> None: ...

    async def unkeyed_of(self, names: Sequence[SubjectKey]) -> UnkeyedHashes:
        """After `save`: the hashes of before keying in the rows of `names` (every id of
        the erased persons, before and after erasure)."""
        ...

    async def rekey(self, names: Sequence[SubjectKey], rekeyed: RekeyedHashes) -> None:
        """Replace those hashes by their keyed forms, in the rows of `names` only."""
        ...


class TombstoneLog(Protocol):
    async def forget_published(self, tombstones: Sequence[EventMessage]) -> None:
        """Drop the stored tombstones of erased identifiers once Kafka has them: stored
        only so a redelivery can publish them again, they hold an identifier in clear."""
        ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> CommandUnitOfWork: ...


class StateCache(Protocol):
    async def write(
        self, states: Sequence[SubjectState], ttl_seconds: int | None = None
    ) -> int: ...


class Publisher(Protocol):
    async def publish(
        self,
        events: Sequence[EventMessage],
        outcomes: Sequence[OutcomeMessage],
        dead_letters: Sequence[DeadLetterRecord],
        *,
        clock: StepClock | None = None,
    ) -> None: ...
