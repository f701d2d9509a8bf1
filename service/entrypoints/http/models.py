"""Bodies and query parameters of the HTTP decision API; the OpenAPI document comes from these.

Topic and channel names are catalog configuration, not code, so their fields carry a marker
(``CATALOG_ENUM``) instead of an enum; the app fills in the running catalog's names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.application.decisions import SubjectPreferences
from service.domain.model import Action, Decision, Rule
from service.domain.sms_restore import statements_of

MAX_BATCH = 1_000

# JSON Schema key whose value ("topics" or "channels") names the catalog list to enumerate.
CATALOG_ENUM = "x-catalog-enum"

SubjectId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        description="Id of the person; `email:`, `phone:` and `device:` ids are normalised.",
    ),
]
Tenant = Annotated[str, Field(min_length=1, max_length=64)]
TopicName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="A catalog topic.",
        json_schema_extra={CATALOG_ENUM: "topics"},
    ),
]
ChannelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="A catalog channel, or `*` for a data use.",
        json_schema_extra={CATALOG_ENUM: "channels"},
    ),
]


class _Body(BaseModel):
    # Unknown fields are ignored, as on the Kafka contract, so clients can roll out first.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Query(BaseModel):
    # A misspelt `tenant` would otherwise silently answer for the default tenant.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleOut(_Body):
    """A stored statement of the subject: what decided, when, and from which channel."""

    topic: str
    channel: str
    action: Action
    occurred_at: datetime
    source_channel: str
    command_id: str

    @classmethod
    def of(cls, rule: Rule) -> RuleOut:
        return cls(
            topic=rule.topic,
            channel=rule.channel,
            action=rule.action,
            occurred_at=rule.occurred_at,
            source_channel=rule.source_channel,
            command_id=rule.command_id,
        )


class ReasonOut(_Body):
    """Why: the deciding rule (`basis` = `rule`), the catalog `default`, or `mandatory`."""

    basis: Literal["rule", "default", "mandatory"]
    rule: RuleOut | None
    explanation: str

    @classmethod
    def of(cls, decision: Decision) -> ReasonOut:
        return cls(
            basis=decision.basis,
            rule=None if decision.rule is None else RuleOut.of(decision.rule),
            explanation=decision.explain(),
        )


class EffectiveOut(_Body):
    topic: str
    channel: str
    allowed: bool
    reason: ReasonOut


class DecisionOut(_Body):
    subject_id: str
    tenant: str
    topic: str
    channel: str
    allowed: bool
    reason: ReasonOut

    @classmethod
    def of(cls, subject_id: str, tenant: str, decision: Decision) -> DecisionOut:
        return cls(
            subject_id=subject_id,
            tenant=tenant,
            topic=decision.topic or "",
            channel=decision.channel or "",
            allowed=decision.allowed,
            reason=ReasonOut.of(decision),
        )


class PreferencesOut(_Body):
    """The stored rules, plus the effective decision for every catalog topic and channel.

    An unknown subject has version 0, no rules, and the catalog defaults. For an id that
    forwards to another subject (a linked identifier, a merged subject), everything here is
    that subject's, and `applied_to` names it.
    """

    subject_id: str
    tenant: str
    version: int
    rules: list[RuleOut]
    decisions: list[EffectiveOut]
    applied_to: str | None = Field(
        default=None,
        description="The subject these preferences belong to, when `subject_id` forwards to it.",
    )

    @classmethod
    def of(cls, prefs: SubjectPreferences) -> PreferencesOut:
        state = prefs.state
        asked = prefs.addressed_as
        return cls(
            subject_id=state.key.subject_id if asked is None else asked,
            applied_to=None if asked is None else state.key.subject_id,
            tenant=state.key.tenant,
            version=state.version,
            # The SMS registers show as the statements they keep (a restore; an all-SMS
            # rule a STOP replaced), each statement once.
            rules=[RuleOut.of(rule) for rule in statements_of(state.sorted_rules())],
            decisions=[
                EffectiveOut(
                    topic=topic, channel=channel, allowed=d.allowed, reason=ReasonOut.of(d)
                )
                for (topic, channel), d in prefs.decisions.items()
            ],
        )


TENANT_HELP = (
    "The tenant; omitted: the token's only tenant (422 `tenant_required` if it has several)."
)


class PreferencesQuery(_Query):
    tenant: Tenant | None = Field(default=None, description=TENANT_HELP)


class CheckQuery(_Query):
    topic: TopicName
    channel: ChannelName
    tenant: Tenant | None = Field(default=None, description=TENANT_HELP)


class CheckIn(_Body):
    subject_id: SubjectId
    tenant: Tenant | None = Field(default=None, description=TENANT_HELP)
    topic: TopicName
    channel: ChannelName


class CheckBatchIn(_Body):
    checks: list[CheckIn] = Field(min_length=1, max_length=MAX_BATCH)


class CheckBatchOut(_Body):
    """One result per check, in the order asked."""

    results: list[DecisionOut]


class ErrorOut(_Body):
    """`field` names the offending input (`topic`, `checks[3].channel`, ...) on a 422."""

    error: str
    detail: str
    field: str | None = None
