"""Every stored subject, page by page in key order: what the maintenance commands walk.

``optout cache rebuild`` and ``optout events republish`` rebuild a derived copy (the Redis
cache, the compacted preferences topic) from PostgreSQL, the truth. Both read the
``subjects`` table in pages (keyset pagination on (tenant, subject id), so every page costs
the same however far the walk got), and both check after writing a page whether its subjects
changed in the meantime. This module holds what they share: the port of that reader, the
data it hands over, and how they report their progress.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from service.domain.identifiers import is_erased
from service.domain.model import SubjectKey, SubjectState

Mark = tuple[int, bool]
"""What tells two reads of a subject apart: its version, and whether it is live (neither a
forward nor erased). Versions only rise, so an unchanged mark means an unchanged subject."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Which subjects a walk covers: one tenant or all; with ``include_unknown``, also the
    version-0 rows (subjects named by commands that were all rejected: the service knows
    nothing about them, and the read path caches them briefly on its own)."""

    tenant: str | None = None
    include_unknown: bool = False


@dataclass(frozen=True, slots=True)
class StoredSubject:
    """A subject as PostgreSQL holds it.

    ``state`` carries ``merged_into`` for a forward and ``erased`` for an erased subject.
    ``updated_at`` is when its version was last set. ``event`` is the stored payload of the
    event of its current version, exactly as the worker published it, when the reader was
    asked for events and one is stored (a forward's or erased subject's is not read).
    """

    state: SubjectState
    updated_at: datetime
    event: bytes | None = None

    @property
    def key(self) -> SubjectKey:
        return self.state.key

    @property
    def live(self) -> bool:
        """Published as a snapshot: not a forward, and not an erased identifier's hash (an
        erased opaque subject is published: its suppression keeps senders away)."""
        return self.state.merged_into is None and not is_erased(self.state.key.subject_id)

    @property
    def mark(self) -> Mark:
        return (self.state.version, self.live)


class SubjectPages(Protocol):
    async def count(self, scope: Scope) -> int:
        """How many subjects the scope covers now (the total a progress display shows)."""
        ...

    async def page(
        self, scope: Scope, after: SubjectKey | None, limit: int
    ) -> Sequence[StoredSubject]:
        """Up to ``limit`` subjects following ``after`` (from the first when None), in the
        store's key order; the last one is the ``after`` of the next page."""
        ...

    async def load(self, keys: Sequence[SubjectKey]) -> Sequence[StoredSubject]:
        """The named subjects as they are now; a subject whose row is gone is left out."""
        ...

    async def marks(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, Mark]:
        """The named subjects' marks now, in one cheap read; a row that is gone is absent."""
        ...


class Progress(Protocol):
    def started(self, total: int) -> None: ...

    def advanced(self, done: int) -> None:
        """``done`` subjects handled so far (not an increment)."""
        ...


class NoProgress:
    def started(self, total: int) -> None:
        pass

    def advanced(self, done: int) -> None:
        pass


NO_PROGRESS = NoProgress()


@dataclass
class Tally:
    """A walk's counts, kept up to date page by page: the caller owns it, so an interrupted
    walk can still say how far it got."""

    total: int = 0
    done: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def elapsed_seconds(self) -> float:
        return time.monotonic() - self.started_at

    def rate(self) -> float:
        """Subjects per second since the start."""
        elapsed = self.elapsed_seconds()
        return self.done / elapsed if elapsed > 0 else 0.0
