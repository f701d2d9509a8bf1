"""What the service tells the world: preference-changed events, outcomes and consent history."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from service.domain.commands import Source
from service.domain.frozen import quick_init
from service.domain.model import Action, Rule, SubjectKey, SubjectState

Status = Literal["applied", "unchanged", "duplicate", "rejected"]
Reason = Literal[
    "invalid_payload",
    "unknown_topic",
    "unknown_channel",
    "mandatory_topic",
    "future_timestamp",
    "command_id_conflict",
    "erased",
    "erasure_unavailable",
    "identifier_linked_elsewhere",
    "not_linked",
]
HistoryAction = Literal["opt_out", "opt_in", "restore", "link", "unlink", "merge", "erase"]

# Fixed forever: event ids derived from it must stay stable across releases and replays.
EVENT_NAMESPACE = uuid.UUID("6f1d2c3e-8a4b-5c6d-9e7f-0a1b2c3d4e5f")
_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


@quick_init
@dataclass(frozen=True, slots=True)
class AppliedChange:
    """A change that actually altered the stored rules (older ones are left out of events)."""

    action: Action
    topic: str
    channel: str
    occurred_at: datetime


@quick_init
@dataclass(frozen=True, slots=True)
class PreferenceChanged:
    """One event per state-changing command, carrying the full rule set.

    The full set lets a compacted topic serve as a complete snapshot, so a new sender can
    bootstrap without asking the service.
    """

    event_id: str
    tenant: str
    subject_id: str
    version: int
    effective_at: datetime
    command_id: str
    source_channel: str
    source_app: str | None
    changes: tuple[AppliedChange, ...]
    preferences: tuple[Rule, ...]

    def snapshot(self) -> SubjectState:
        """The subject's whole state after this event: what a follower of the topic keeps."""
        return SubjectState(
            SubjectKey(self.tenant, self.subject_id),
            self.version,
            {(rule.topic, rule.channel): rule for rule in self.preferences},
        )


@quick_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to exactly one consumed command, so the originating channel can confirm it."""

    command_id: str
    tenant: str
    subject_id: str | None
    status: Status
    reason: Reason | None = None
    detail: str | None = None
    version: int | None = None
    effective_at: datetime | None = None
    applied_to: str | None = None
    """The subject the command applied to, when not the one it named (a forward)."""


@dataclass(frozen=True, slots=True)
class Tombstone:
    """The end of a subject id on the compacted topic (value null): it was merged into
    another subject, linked to one, or erased. Stored with the events, so a redelivery of
    its command publishes it again."""

    tenant: str
    subject_id: str
    version: int
    command_id: str
    effective_at: datetime


@quick_init
@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A proof-of-consent row: who changed what, when, and how (GDPR Art. 7).

    The only place ip and user agent are kept; they never reach logs or events. Identity
    changes are rows too (topic and channel empty; `related` names the identifier linked or
    the subject merged in), and `addressed_as` names the id a command used when it forwarded
    to `key`.
    """

    key: SubjectKey
    command_id: str
    action: HistoryAction
    topic: str | None
    channel: str | None
    occurred_at: datetime
    effective_at: datetime
    source: Source
    reason: str | None
    addressed_as: str | None = None
    related: str | None = None


def event_id_for(tenant: str, subject_id: str, version: int) -> str:
    """A deterministic id, so a republished event is recognisably the same event.

    This is `str(uuid.uuid5(EVENT_NAMESPACE, name))` spelled out (RFC 4122 section 4.3: SHA-1
    of namespace and name, first 16 bytes, version and variant bits set), because building
    a `uuid.UUID` object only to format it is most of the cost of one event; a unit test pins
    it to `uuid.uuid5`.
    """
    name = f"{tenant}\x1f{subject_id}\x1f{version}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
