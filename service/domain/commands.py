"""Commands: what an upstream app asks the service to record, in domain form.

These mirror contract v1 but carry no parsing concerns, so the core can be driven by tests,
imports or a future HTTP intake without going through JSON.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

import orjson

from service.domain.frozen import quick_init
from service.domain.model import Action, SubjectKey

SourceChannel = Literal[
    "web", "mobile", "api", "email", "sms", "push", "voice", "support", "import", "system"
]
SOURCE_CHANNELS: frozenset[str] = frozenset(get_args(SourceChannel))

CommandKind = Literal["preferences", "link", "unlink", "merge", "erase"]
"""`preferences` changes rules (contract v1 as first published); the others change identity:
`link`/`unlink` an identifier (`target`) to/from the subject, `merge` the subject into
another (`target`), `erase` the subject's personal data."""

TARGET_FIELD: dict[str, str] = {"link": "identifier", "unlink": "identifier", "merge": "into"}
"""The contract field that carries an identity command's `target`, by kind."""


@quick_init
@dataclass(frozen=True, slots=True)
class Change:
    """One statement about exactly one (topic, channel) pair, wildcards included."""

    action: Action
    topic: str
    channel: str


@quick_init
@dataclass(frozen=True, slots=True)
class Source:
    """Where the person acted; ip and user agent are proof of consent and stay out of logs.

    `actor` names the credential or channel that carried the command (an API token's name,
    `optout-pages`, `sms-inbound`, `import:<file>`, `kafka`): set by the service, never by
    the person's client, and kept in the consent history. It is not part of what a command
    says, so it stays out of `content_hash`.
    """

    channel: str
    app: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    actor: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Command:
    """A person's statement, made at `occurred_at`, that changes one or more rules at once."""

    command_id: str
    subject_id: str
    tenant: str
    occurred_at: datetime
    source: Source
    changes: tuple[Change, ...]
    reason: str | None = None
    kind: CommandKind = "preferences"
    target: str | None = None

    @property
    def key(self) -> SubjectKey:
        return SubjectKey(self.tenant, self.subject_id)


def content_hash(command: Command) -> str:
    """A fingerprint of what a command says, independent of its wire formatting.

    Idempotency compares content, not bytes: a producer that re-serialises the same command
    (key order, whitespace, `Z` vs `+00:00`) must get `duplicate`, not `command_id_conflict`.
    """
    occurred_at = command.occurred_at.astimezone(UTC)
    # The canonical text is `isoformat(timespec="microseconds")` of the UTC time. orjson writes
    # an aware datetime exactly so, faster, except that it drops a zero
    # fraction and refuses datetime subclasses: only then is the text made here (a unit test
    # pins the equivalence).
    stamp: datetime | str = occurred_at
    if not occurred_at.microsecond or type(occurred_at) is not datetime:
        stamp = occurred_at.isoformat(timespec="microseconds")
    canonical = {
        "command_id": command.command_id,
        "subject_id": command.subject_id,
        "tenant": command.tenant,
        "occurred_at": stamp,
        "source": {
            "channel": command.source.channel,
            "app": command.source.app,
            "ip": command.source.ip,
            "user_agent": command.source.user_agent,
        },
        "changes": [
            {"action": change.action, "topic": change.topic, "channel": change.channel}
            for change in command.changes
        ],
        "reason": command.reason,
    }
    # Only identity commands carry these: a preference command hashes exactly as before, so
    # the hashes already in the processed log keep recognising duplicates.
    if command.kind != "preferences":
        canonical["kind"] = command.kind
        canonical["target"] = command.target
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


@quick_init
@dataclass(frozen=True, slots=True, order=True)
class Delivery:
    """Where a record was read from; the same delivery seen twice means a crash redelivery."""

    topic: str
    partition: int
    offset: int


@quick_init
@dataclass(frozen=True, slots=True)
class Received:
    """A record that passed schema validation and is ready for the core."""

    command: Command
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Malformed:
    """A record readable enough to answer (it has a command id) but not a valid command.

    It still gets a `rejected`/`invalid_payload` outcome, so the originating channel can tell
    the person something went wrong instead of waiting forever.
    """

    command_id: str
    subject_id: str | None
    tenant: str
    detail: str
    delivery: Delivery
    content_hash: str
