"""Write every subject's current snapshot to the compacted preferences topic
(``optout events republish``).

For a topic that no longer holds every subject's latest record (retention or compaction
settings changed, the topic recreated, a new cluster): a sender bootstrapping from it would
miss subjects. Each subject gets one record under the worker's key, ``{tenant}:{subject_id}``:

- a live subject: the stored payload of the event of its current version
  (``preference_events``), byte for byte what the worker published; when none is stored
  (rows written by an import or by hand, events pruned), a snapshot built from its state:
  ``event_id`` is the id the worker gives that version's event (``event_id_for``), so a
  consumer that deduplicates by event id sees the same event; ``effective_at`` is when the
  version was set; ``preferences`` are its rules; ``changes`` is empty (the record changes
  nothing, it restates); ``command_id`` is the empty string, which no command can carry (a
  command id has at least one character), so no consumer can mistake the snapshot for the
  answer to a command; ``source`` is ``{"channel": "system", "app": "optout-republish"}``;
- a forward (``merged_into`` set) or an erased identifier's hash: a tombstone (value null),
  as the worker writes when it merges or erases; an erased opaque subject is live (its
  snapshot is the suppression, as the worker published it);
- a subject whose row disappeared during the walk (erasure deletes identifiers' rows): a
  tombstone too.

Safe while commands keep flowing, although Kafka has no compare-and-set. The worker commits
a version to PostgreSQL before it publishes that version's event. After a page's records
are acknowledged, the page's subjects are read again; a subject whose version (or liveness,
or existence) moved since it was read is published again from the new read, and re-read,
until none moves. Why the last record of a key is then never older than PostgreSQL's state:

  Let R be our last record for key k, carrying version v, acknowledged at time t1, and let
  the re-read that found k still at v start at t2 > t1 (it sees every commit before t2).
  Any version w > v of k is therefore committed after t2, and the worker publishes w only
  after committing it, so after t1: its record is appended to k's partition after R, which
  was appended before it was acknowledged. So either nothing newer than v exists and R is
  current, or a newer record follows R. Whatever the worker appends after R is what it
  would have appended without a republish; the republish only ever adds records that are
  current when acknowledged, or followed by newer ones.

Without the re-read it could: read v, the worker commits v+1 and publishes it, our v is
appended after it, and the topic says v for good. A subject that keeps changing in every
round is given ``MAX_ROUNDS`` rounds; still moving after that, the walk stops with
``StillChanging`` rather than claim a result it cannot prove.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.application.subject_pages import (
    NO_PROGRESS,
    Mark,
    Progress,
    Scope,
    StoredSubject,
    SubjectPages,
    Tally,
)
from service.contract.encode import event_json
from service.domain.events import PreferenceChanged, event_id_for
from service.domain.model import SubjectKey

MAX_ROUNDS = 100

SNAPSHOT_COMMAND_ID = ""
SNAPSHOT_SOURCE_CHANNEL = "system"
SNAPSHOT_SOURCE_APP = "optout-republish"


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """One record for the compacted topic; ``payload`` None is a tombstone."""

    tenant: str
    subject_id: str
    payload: bytes | None


class SnapshotSink(Protocol):
    async def send(self, records: Sequence[SnapshotRecord]) -> None:
        """Return once the broker acknowledged every record, in order per key."""
        ...


class StillChanging(Exception):
    """Subjects that moved in every one of ``MAX_ROUNDS`` rounds: their last record is not
    proven current."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} subjects still changing after {MAX_ROUNDS} rounds")
        self.count = count


@dataclass
class RepublishTally(Tally):
    records: int = 0  # acknowledged, every round included
    stored: int = 0  # stored event payloads sent as they are
    synthesized: int = 0  # snapshots built from a state without a stored event
    tombstones: int = 0
    resent: int = 0  # records sent again because their subject moved meanwhile


def snapshot_payload(subject: StoredSubject) -> bytes:
    """The event document of a live subject's current state (see the module docstring)."""
    state = subject.state
    return event_json(
        PreferenceChanged(
            event_id=event_id_for(state.key.tenant, state.key.subject_id, state.version),
            tenant=state.key.tenant,
            subject_id=state.key.subject_id,
            version=state.version,
            effective_at=subject.updated_at,
            command_id=SNAPSHOT_COMMAND_ID,
            source_channel=SNAPSHOT_SOURCE_CHANNEL,
            source_app=SNAPSHOT_SOURCE_APP,
            changes=(),
            preferences=state.sorted_rules(),
        )
    )


class RepublishSnapshots:
    def __init__(
        self, pages: SubjectPages, sink: SnapshotSink, progress: Progress = NO_PROGRESS
    ) -> None:
        self._pages = pages
        self._sink = sink
        self._progress = progress

    async def run(
        self,
        scope: Scope,
        batch: int,
        tally: RepublishTally | None = None,
        stop: asyncio.Event | None = None,
    ) -> RepublishTally:
        """Walk every subject of ``scope`` that has a version (version 0 never had an event),
        ``batch`` per page; return after the last page, or once ``stop`` is set after the
        page in progress has settled (an interrupted page could leave an older record last).
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        scope = Scope(scope.tenant, include_unknown=False)
        tally = tally if tally is not None else RepublishTally()
        tally.total = await self._pages.count(scope)
        self._progress.started(tally.total)
        after: SubjectKey | None = None
        while stop is None or not stop.is_set():
            page = await self._pages.page(scope, after, batch)
            if not page:
                break
            await self._settle(page, tally)
            tally.done += len(page)
            tally.total = max(tally.total, tally.done)
            self._progress.advanced(tally.done)
            after = page[-1].key
        return tally

    async def _settle(self, page: Sequence[StoredSubject], tally: RepublishTally) -> None:
        # A bare key stands for a subject whose row is gone: its record is a tombstone.
        pending: list[StoredSubject | SubjectKey] = list(page)
        for round_number in range(MAX_ROUNDS):
            records = [self._record(s, tally) for s in pending]
            await self._sink.send(records)
            tally.records += len(records)
            if round_number:
                tally.resent += len(records)
            sent = dict(_key_and_mark(s) for s in pending)
            now = await self._pages.marks(list(sent))
            moved = [key for key, mark in sent.items() if now.get(key) != mark]
            if not moved:
                return
            reloaded = {s.key: s for s in await self._pages.load(moved)}
            pending = [reloaded.get(key, key) for key in moved]
        raise StillChanging(len(pending))

    @staticmethod
    def _record(subject: StoredSubject | SubjectKey, tally: RepublishTally) -> SnapshotRecord:
        if isinstance(subject, SubjectKey):
            tally.tombstones += 1
            return SnapshotRecord(subject.tenant, subject.subject_id, None)
        key = subject.key
        if not subject.live:
            tally.tombstones += 1
            return SnapshotRecord(key.tenant, key.subject_id, None)
        if subject.event is not None:
            tally.stored += 1
            return SnapshotRecord(key.tenant, key.subject_id, subject.event)
        tally.synthesized += 1
        return SnapshotRecord(key.tenant, key.subject_id, snapshot_payload(subject))


def _key_and_mark(subject: StoredSubject | SubjectKey) -> tuple[SubjectKey, Mark | None]:
    """A gone subject's mark is None: it stays settled while its row stays gone."""
    if isinstance(subject, SubjectKey):
        return subject, None
    return subject.key, subject.mark
