"""Bodies of the HTTP decision API; the OpenAPI document is generated from these models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.application.decisions import SubjectPreferences
from service.domain.model import Decision, Rule

MAX_BATCH = 1_000

SubjectId = Field(min_length=1, max_length=256, description="Opaque id of the person.")
Tenant = Field(default="default", min_length=1, max_length=64)
TopicName = Field(min_length=1, max_length=128, description="A catalog topic.")
ChannelName = Field(
    min_length=1, max_length=64, description="A catalog channel, or `*` for a data use."
)


class _Body(BaseModel):
    # Unknown fields are ignored, as on the Kafka contract, so clients can roll out first.
    model_config = ConfigDict(extra="ignore", frozen=True)


class RuleOut(_Body):
    """A stored statement of the subject: what decided, when, and from which channel."""

    topic: str
    channel: str
    action: Literal["opt_out", "opt_in"]
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

    An unknown subject has version 0, no rules, and the catalog defaults.
    """

    subject_id: str
    tenant: str
    version: int
    rules: list[RuleOut]
    decisions: list[EffectiveOut]

    @classmethod
    def of(cls, prefs: SubjectPreferences) -> PreferencesOut:
        state = prefs.state
        return cls(
            subject_id=state.key.subject_id,
            tenant=state.key.tenant,
            version=state.version,
            rules=[RuleOut.of(rule) for rule in state.sorted_rules()],
            decisions=[
                EffectiveOut(
                    topic=topic, channel=channel, allowed=d.allowed, reason=ReasonOut.of(d)
                )
                for (topic, channel), d in prefs.decisions.items()
            ],
        )


class SubjectIn(_Body):
    subject_id: str = SubjectId
    tenant: str = Tenant


class CheckIn(SubjectIn):
    topic: str = TopicName
    channel: str = ChannelName


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
