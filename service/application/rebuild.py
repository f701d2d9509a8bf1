"""Refill the Redis cache from PostgreSQL (``optout cache rebuild``).

For a Redis that lost its data (restart without persistence, failover to an empty replica,
a flush, a new cluster): without a rebuild every subject's first check goes to PostgreSQL
and the cache fills one miss at a time, with the read path's fill expiry.

Each page of subjects is written through the cache's compare-and-set, the same one the
worker uses: a state is stored only if its version is higher than the cached one. That is
what makes a rebuild safe while the worker runs. The worker writes a state to Redis after
committing it, so whichever of the two writes a subject last, Redis ends with the higher
version: a rebuild can never put back a state older than one the worker already cached.

One case the version cannot decide: a row deleted after the page was read (erasure deletes
an identifier's row and its key). Writing the page could bring the key back with the state
read before the deletion, so after each page the rebuild reads which of its subjects still
exist and deletes the keys of those that do not. A row deleted later than that re-read had
its key deleted by whoever deleted it, after our write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.application.subject_pages import (
    NO_PROGRESS,
    Progress,
    Scope,
    SubjectPages,
    Tally,
)
from service.domain.model import SubjectKey, SubjectState


class CacheRefill(Protocol):
    async def write(self, states: Sequence[SubjectState]) -> int:
        """Store each state unless the cache holds a newer one; how many were stored."""
        ...

    async def forget(self, keys: Sequence[SubjectKey]) -> int:
        """Drop the subjects' cached states; how many there were."""
        ...


@dataclass
class RebuildTally(Tally):
    written: int = 0  # stored in Redis
    newer_cached: int = 0  # left alone: Redis already held that version or a newer one
    removed: int = 0  # keys of rows deleted while the page was being written


class RebuildCache:
    def __init__(
        self, pages: SubjectPages, cache: CacheRefill, progress: Progress = NO_PROGRESS
    ) -> None:
        self._pages = pages
        self._cache = cache
        self._progress = progress

    async def run(
        self,
        scope: Scope,
        batch: int,
        tally: RebuildTally | None = None,
        stop: asyncio.Event | None = None,
    ) -> RebuildTally:
        """Walk every subject of ``scope``, ``batch`` per page; return after the last page,
        or after the page in progress once ``stop`` is set."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        tally = tally if tally is not None else RebuildTally()
        tally.total = await self._pages.count(scope)
        self._progress.started(tally.total)
        after: SubjectKey | None = None
        while stop is None or not stop.is_set():
            page = await self._pages.page(scope, after, batch)
            if not page:
                break
            written = await self._cache.write([s.state for s in page])
            keys = [s.key for s in page]
            existing = await self._pages.marks(keys)
            gone = [k for k in keys if k not in existing]
            if gone:
                await self._cache.forget(gone)
            tally.written += written
            tally.newer_cached += len(page) - written
            tally.removed += len(gone)
            tally.done += len(page)
            # A subject created during the walk, after the count, is walked too.
            tally.total = max(tally.total, tally.done)
            self._progress.advanced(tally.done)
            after = page[-1].key
        return tally
