"""Contract v1: commands in, preference-changed events and outcomes out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from service.contract.storable import STORABLE_TEXT, parse_instant
from service.domain.commands import (
    TARGET_FIELD,
    Change,
    Command,
    CommandKind,
    Source,
    SourceChannel,
)
from service.domain.events import AppliedChange, Outcome, PreferenceChanged, Reason, Status
from service.domain.identifiers import normalize
from service.domain.model import Action, Rule


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


TENANT_PATTERN = r"^[a-z0-9_-]{1,64}$"
KAFKA_ACTOR = "kafka"


class _Wire(BaseModel):
    # Unknown fields are ignored so producers can roll out v1.x additions before we read them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class SourceV1(_Wire):
    """Where the person acted; ip and user agent go to the consent history only."""

    channel: SourceChannel
    app: Annotated[str, Field(min_length=1, max_length=128, pattern=STORABLE_TEXT)] | None = None
    ip: Annotated[str, Field(min_length=1, max_length=64, pattern=STORABLE_TEXT)] | None = None
    user_agent: (
        Annotated[str, Field(min_length=1, max_length=512, pattern=STORABLE_TEXT)] | None
    ) = None


class ChangeV1(_Wire):
    """One statement about one (topic, channel) pair; `*` is the wildcard on either side.

    `restore` (topic `*`, channel `sms` only) undoes every SMS keyword stop (an `opt_out` of
    `*` on `sms` with source channel `sms`) made before it: the subject's SMS rules are what
    they were before those stops, and no other rule changes.
    """

    action: Action
    topic: str = Field(min_length=1, max_length=128, pattern=STORABLE_TEXT)
    channel: str = Field(min_length=1, max_length=64, pattern=STORABLE_TEXT)


_SUBJECT = Annotated[str, Field(min_length=1, max_length=256, pattern=STORABLE_TEXT)]


class CommandV1(_Wire):
    """A command as published to `optout.commands.v1`.

    `kind` defaults to `preferences` (opt-outs and opt-ins in `changes`, contract v1 as first
    published); `link` and `unlink` name an `identifier` (`email:`, `phone:`, `device:`),
    `merge` names the subject to merge `into`, `erase` names nothing more. A subject id or
    identifier with one of those prefixes is normalised here (``domain.identifiers``).

    Catalog membership is checked later, by the domain, so an unknown topic gets a precise
    `unknown_topic` outcome instead of a generic `invalid_payload`. Every string and the
    timestamp are checked for what the stores can hold (``storable``).
    """

    command_id: str = Field(min_length=1, max_length=128, pattern=STORABLE_TEXT)
    subject_id: _SUBJECT
    occurred_at: AwareDatetime
    source: SourceV1
    kind: CommandKind = "preferences"
    changes: list[ChangeV1] = Field(default_factory=list, max_length=100, validate_default=True)
    identifier: _SUBJECT | None = Field(default=None, validate_default=True)
    into: _SUBJECT | None = Field(default=None, validate_default=True)
    reason: str | None = Field(default=None, max_length=500, pattern=STORABLE_TEXT)
    # No `:` (the event key is `{tenant}:{subject_id}`), lower case, so one tenant has one name.
    tenant: str = Field(default="default", pattern=TENANT_PATTERN)
    # Who carried the command: set by the service's own producers (the HTTP intake from the
    # token's name, the pages, the SMS webhook, imports), never by a person's client; a
    # producer writing straight to the topic (trusted through the topic's ACLs) that names
    # none is recorded as `kafka`.
    actor: str = Field(default=KAFKA_ACTOR, min_length=1, max_length=128, pattern=STORABLE_TEXT)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _rfc3339_within_range(cls, value: object) -> object:
        return parse_instant(value)

    @field_validator("subject_id")
    @classmethod
    def _normalised(cls, value: str) -> str:
        return normalize(value)

    # Each check is on its own field, so an error names it (`changes`, `identifier`, `into`);
    # `kind` is declared before them and already validated when they are.
    @field_validator("changes")
    @classmethod
    def _changes_of_kind(cls, value: list[ChangeV1], info: ValidationInfo) -> list[ChangeV1]:
        kind = info.data.get("kind", "preferences")
        if kind == "preferences" and not value:
            raise ValueError("a preferences command needs 1 to 100 changes")
        if kind != "preferences" and value:
            raise ValueError(f"a {kind} command takes none")
        return value

    @field_validator("identifier", "into")
    @classmethod
    def _target_of_kind(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind", "preferences")
        needed = TARGET_FIELD.get(kind)
        if value is None:
            if needed == info.field_name:
                raise ValueError(f"required by a {kind} command")
            return None
        if needed != info.field_name:
            raise ValueError(f"not a field of a {kind} command")
        return normalize(value)

    def to_domain(self) -> Command:
        return Command(
            command_id=self.command_id,
            subject_id=self.subject_id,
            tenant=self.tenant,
            occurred_at=_utc(self.occurred_at),
            source=Source(
                channel=self.source.channel,
                app=self.source.app,
                ip=self.source.ip,
                user_agent=self.source.user_agent,
                actor=self.actor,
            ),
            changes=tuple(Change(c.action, c.topic, c.channel) for c in self.changes),
            reason=self.reason,
            kind=self.kind,
            target=self.identifier if self.identifier is not None else self.into,
        )


class PreferenceV1(_Wire):
    """One stored rule, with enough provenance to explain a decision made from it.

    Topics `#kept` and `#restore` (channel `sms`) are the SMS keyword registers: the latest
    statement about all SMS other than a keyword stop, and the latest `restore`. The cell
    (`*`, `sms`) is decided by its own rule, unless that rule is a keyword stop (`opt_out`,
    source channel `sms`) older than the `#restore` rule: then the `#kept` rule decides it,
    or nothing does. A reader that ignores both registers never allows more than this.
    """

    topic: str
    channel: str
    action: Action
    occurred_at: datetime
    source_channel: str
    command_id: str

    @classmethod
    def from_domain(cls, rule: Rule) -> PreferenceV1:
        return cls(
            topic=rule.topic,
            channel=rule.channel,
            action=rule.action,
            occurred_at=_utc(rule.occurred_at),
            source_channel=rule.source_channel,
            command_id=rule.command_id,
        )

    def to_domain(self) -> Rule:
        return Rule(
            self.topic,
            self.channel,
            self.action,
            self.occurred_at,
            self.source_channel,
            self.command_id,
        )


class AppliedChangeV1(_Wire):
    """A change that altered state; older changes in the same command are left out."""

    action: Action
    topic: str
    channel: str
    occurred_at: datetime


class EventSourceV1(_Wire):
    """The source, minus ip and user agent: events fan out widely and must stay PII-light."""

    channel: str
    app: str | None = None


class PreferenceChangedV1(_Wire):
    """Published to the compacted `optout.preferences.v1`; carries the full rule set."""

    event_id: str
    tenant: str
    subject_id: str
    version: int
    effective_at: datetime
    command_id: str
    source: EventSourceV1
    changes: list[AppliedChangeV1]
    preferences: list[PreferenceV1]

    @classmethod
    def from_domain(cls, event: PreferenceChanged) -> PreferenceChangedV1:
        return cls(
            event_id=event.event_id,
            tenant=event.tenant,
            subject_id=event.subject_id,
            version=event.version,
            effective_at=_utc(event.effective_at),
            command_id=event.command_id,
            source=EventSourceV1(channel=event.source_channel, app=event.source_app),
            changes=[
                AppliedChangeV1(
                    action=c.action,
                    topic=c.topic,
                    channel=c.channel,
                    occurred_at=_utc(c.occurred_at),
                )
                for c in event.changes
            ],
            preferences=[PreferenceV1.from_domain(rule) for rule in event.preferences],
        )

    def to_domain(self) -> PreferenceChanged:
        return PreferenceChanged(
            event_id=self.event_id,
            tenant=self.tenant,
            subject_id=self.subject_id,
            version=self.version,
            effective_at=self.effective_at,
            command_id=self.command_id,
            source_channel=self.source.channel,
            source_app=self.source.app,
            changes=tuple(
                AppliedChange(c.action, c.topic, c.channel, c.occurred_at) for c in self.changes
            ),
            preferences=tuple(p.to_domain() for p in self.preferences),
        )


class OutcomeV1(_Wire):
    """Published to `optout.outcomes.v1`, one per consumed command, keyed by command id.

    `detail` is human text the originating channel may show; it never contains input values.
    """

    command_id: str
    tenant: str
    subject_id: str | None
    status: Status
    reason: Reason | None = None
    detail: str | None = None
    version: int | None = None
    effective_at: datetime | None = None
    # The subject the command applied to, when it named another id (an identifier linked to
    # it, a subject merged into it, an erased identifier's suppression).
    applied_to: str | None = None

    @classmethod
    def from_domain(cls, outcome: Outcome) -> OutcomeV1:
        return cls(
            command_id=outcome.command_id,
            tenant=outcome.tenant,
            subject_id=outcome.subject_id,
            status=outcome.status,
            reason=outcome.reason,
            detail=outcome.detail,
            version=outcome.version,
            effective_at=None if outcome.effective_at is None else _utc(outcome.effective_at),
            applied_to=outcome.applied_to,
        )

    def to_domain(self) -> Outcome:
        return Outcome(
            command_id=self.command_id,
            tenant=self.tenant,
            subject_id=self.subject_id,
            status=self.status,
            reason=self.reason,
            detail=self.detail,
            version=self.version,
            effective_at=self.effective_at,
            applied_to=self.applied_to,
        )
