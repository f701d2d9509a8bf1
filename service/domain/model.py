"""Core value types: who a rule belongs to, what a rule says, and what a decision concluded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal

from service.domain.frozen import quick_init

Action = Literal["opt_out", "opt_in", "restore"]
"""`restore` undoes keyword stops on `sms` (``sms_restore``); it never allows by itself."""
Basis = Literal["rule", "default", "mandatory"]

WILDCARD = "*"


@quick_init
@dataclass(frozen=True, slots=True, order=True)
class SubjectKey:
    """A subject is only unique within its tenant, so every lookup carries both."""

    tenant: str
    subject_id: str


@quick_init
@dataclass(frozen=True, slots=True)
class Rule:
    """The latest statement a subject made about one (topic, channel) pair.

    `command_id` and `source_channel` are kept so any decision can name exactly which
    statement decided it, and when and where it was made.
    """

    topic: str
    channel: str
    action: Action
    occurred_at: datetime
    source_channel: str
    command_id: str

    def __post_init__(self) -> None:
        # Naive times compare against aware ones by raising; refuse them at the door. Nearly
        # every rule is stamped in UTC (decoding normalises to it), so that identity test
        # spares the costlier `utcoffset()` call on the hot path.
        tzinfo = self.occurred_at.tzinfo
        if tzinfo is not UTC and (tzinfo is None or self.occurred_at.utcoffset() is None):
            raise ValueError("Rule.occurred_at must be timezone-aware")

    def precedence_key(self) -> tuple[datetime, bool, str]:
        """The total order of last-writer-wins.

        The latest statement wins; on a tie the opt-out wins (the privacy-safe choice); on a
        full tie the larger command id wins, so the outcome never depends on arrival order.
        """
        return (self.occurred_at, self.action == "opt_out", self.command_id)


@dataclass(frozen=True, slots=True)
class SubjectState:
    """Everything the service knows about one subject, at one version.

    Rules are keyed by (topic, channel): a later statement about the same pair replaces the
    earlier one, so the state stays bounded by the catalog size rather than by history.

    `merged_into` makes the state a forward: the id is an identifier linked to that subject,
    or a subject merged into it, and has no rules of its own; commands and checks follow it.
    `erased` marks a subject whose personal data was erased: its rules are the suppression
    that keeps the person from being contacted again.
    """

    key: SubjectKey
    version: int
    rules: Mapping[tuple[str, str], Rule] = field(default_factory=dict)
    merged_into: str | None = None
    erased: bool = False

    def __post_init__(self) -> None:
        # States are shared between the batch result and adapters; a read-only view keeps
        # one adapter from mutating what another is about to persist.
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))

    @classmethod
    def empty(cls, key: SubjectKey) -> SubjectState:
        """The state of a subject who never said anything: version 0, every default applies."""
        return cls.adopting(key, 0, {})

    @classmethod
    def adopting(
        cls,
        key: SubjectKey,
        version: int,
        rules: dict[tuple[str, str], Rule],
        merged_into: str | None = None,
        erased: bool = False,
    ) -> SubjectState:
        """A state that takes ownership of `rules` instead of copying it.

        For callers that built `rules` themselves and never touch it again (the batch core
        makes one new state per applied command): the read-only view is then all the
        protection needed, and the defensive copy of `__init__` would be pure cost.
        """
        state = object.__new__(cls)
        # Frozen dataclass: its slots are set directly (as ``frozen.quick_init`` does), and
        # `__post_init__` with its copy is skipped.
        _SET_KEY(state, key)
        _SET_VERSION(state, version)
        _SET_RULES(state, MappingProxyType(rules))
        _SET_MERGED_INTO(state, merged_into)
        _SET_ERASED(state, erased)
        return state

    def sorted_rules(self) -> tuple[Rule, ...]:
        """Rules in a stable order, so snapshots and events are byte-for-byte reproducible."""
        rules = self.rules
        return tuple([rules[pair] for pair in sorted(rules)])


_SET_KEY = vars(SubjectState)["key"].__set__
_SET_VERSION = vars(SubjectState)["version"].__set__
_SET_RULES = vars(SubjectState)["rules"].__set__
_SET_MERGED_INTO = vars(SubjectState)["merged_into"].__set__
_SET_ERASED = vars(SubjectState)["erased"].__set__


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer that always carries its reason, so senders and support can explain it.

    `topic` and `channel` are the question asked; they only feed `explain()`.
    """

    allowed: bool
    basis: Basis
    rule: Rule | None
    topic: str | None = None
    channel: str | None = None

    def explain(self) -> str:
        """One human-readable line, fit for a support tool or a confirmation page."""
        verdict = "allowed" if self.allowed else "denied"
        if self.basis == "rule" and self.rule is not None:
            rule = self.rule
            return (
                f"{verdict} by {rule.action} of {rule.topic} on {rule.channel}"
                f" at {_utc_iso(rule.occurred_at)}"
                f" (via {rule.source_channel}, command {rule.command_id})"
            )
        subject = self.topic if self.topic is not None else "this topic"
        if self.basis == "mandatory":
            return f"{verdict}: {subject} is mandatory"
        return f"{verdict}: catalog default for {subject}"
