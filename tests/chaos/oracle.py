"""The chaos suite's oracle: contract v1 written again, without importing the service.

A bug shared by the worker and its checker would hide itself, so the shipped catalog, the
semantic validation of a well-formed command, idempotency per (tenant, command_id),
last-writer-wins and the decision rule are restated here from the brief. ``Fold`` reads
the command log in partition order (the order the worker must respect; a subject's
commands share a key, hence a partition) and gives the expected outcome of every record
and the expected rules and version of every subject.

The oracle knows the statements a person made, per (topic, channel). The stores also keep
the SMS restore registers, topics ``#kept`` and ``#restore`` on `sms`, as ordinary rule rows
(bookkeeping for START undoing a keyword STOP; `#` never starts a catalog topic). A store is
compared with the oracle without them (``is_register``); decisions, which they shape, are
judged whole, and store-to-store comparisons keep them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

WILDCARD = "*"
CHANNELS = frozenset({"email", "sms", "push", "in_app", "voice", "whatsapp"})
SOURCE_CHANNELS = frozenset(
    {"web", "mobile", "api", "email", "sms", "push", "voice", "support", "import", "system"}
)
# The SMS restore registers, restated (the service's ``domain/sms_restore``).
REGISTERS = frozenset({"#kept", "#restore"})


def is_register(topic: str) -> bool:
    """A stored row that is an SMS restore register, not a statement the oracle knows."""
    return topic in REGISTERS


@dataclass(frozen=True)
class TopicInfo:
    mandatory: bool = False
    data_use: bool = False
    default_allowed: bool = True


# The brief's shipped catalog. A unit test compares it with the service's, so a catalog
# change shows up there rather than as a chaos failure.
TOPICS: Mapping[str, TopicInfo] = {
    "marketing": TopicInfo(),
    "marketing.newsletter": TopicInfo(),
    "marketing.promotions": TopicInfo(),
    "product": TopicInfo(),
    "product.updates": TopicInfo(),
    "product.tips": TopicInfo(),
    "reminders": TopicInfo(),
    "data.analytics": TopicInfo(data_use=True),
    "data.personalization": TopicInfo(data_use=True),
    "data.sale": TopicInfo(data_use=True),
    "security": TopicInfo(mandatory=True),
    "security.alerts": TopicInfo(mandatory=True),
    "transactional": TopicInfo(mandatory=True),
    "transactional.receipts": TopicInfo(mandatory=True),
}
MESSAGE_TOPICS = tuple(t for t, i in TOPICS.items() if not i.mandatory and not i.data_use)
DATA_USE_TOPICS = tuple(t for t, i in TOPICS.items() if i.data_use)
MANDATORY_TOPICS = tuple(t for t, i in TOPICS.items() if i.mandatory)


def lineage(topic: str) -> list[str]:
    """The topic, then each ancestor: `marketing` covers `marketing.newsletter`."""
    parts = topic.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def is_mandatory(topic: str) -> bool:
    return any(t in TOPICS and TOPICS[t].mandatory for t in lineage(topic))


@dataclass(frozen=True, order=True)
class Statement:
    """One stored rule. Field order is the precedence: latest, then opt-out, then larger id."""

    occurred_at: datetime
    opt_out: bool
    command_id: str

    @property
    def action(self) -> str:
        return "opt_out" if self.opt_out else "opt_in"


Rules = dict[tuple[str, str], Statement]


def decide(rules: Mapping[tuple[str, str], Statement], topic: str, channel: str) -> bool:
    """The brief's decision rule: mandatory, then the latest covering statement, then default."""
    if is_mandatory(topic):
        return True
    channels = (WILDCARD,) if channel == WILDCARD else (channel, WILDCARD)
    candidates = [
        rules[(t, c)] for t in (*lineage(topic), WILDCARD) for c in channels if (t, c) in rules
    ]
    if not candidates:
        return TOPICS[topic].default_allowed
    return not max(candidates).opt_out


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def rejection(doc: Mapping[str, Any], now: datetime, max_future: timedelta) -> str | None:
    """The reason code a well-formed command is rejected with, or None if it is valid."""
    if parse_time(doc["occurred_at"]) > now + max_future:
        return "future_timestamp"
    for change in doc["changes"]:
        topic, channel = change["topic"], change["channel"]
        if topic != WILDCARD and topic not in TOPICS:
            return "unknown_topic"
        if channel != WILDCARD and channel not in CHANNELS:
            return "unknown_channel"
        if topic != WILDCARD and channel != WILDCARD and TOPICS[topic].data_use:
            return "unknown_channel"
        if change["action"] == "opt_out" and topic != WILDCARD and is_mandatory(topic):
            return "mandatory_topic"
    return None


def content_of(doc: Mapping[str, Any]) -> str:
    """What a command says, whatever its formatting: equal content means `duplicate`."""
    source = doc.get("source", {})
    return json.dumps(
        [
            doc["command_id"],
            doc["subject_id"],
            doc.get("tenant", "default"),
            parse_time(doc["occurred_at"]).timestamp(),
            [source.get(k) for k in ("channel", "app", "ip", "user_agent")],
            [[c["action"], c["topic"], c["channel"]] for c in doc["changes"]],
            doc.get("reason"),
        ]
    )


@dataclass(frozen=True)
class Expected:
    status: str
    reason: str | None = None


SubjectRef = tuple[str, str]


@dataclass
class Fold:
    """Commands in partition order in, expected outcomes and states out."""

    now: datetime
    max_future: timedelta = timedelta(seconds=300)
    processed: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    rules: dict[SubjectRef, Rules] = field(default_factory=dict)
    versions: Counter[SubjectRef] = field(default_factory=Counter)
    # The rules after each applied version, for judging reads made at a known version.
    history: dict[SubjectRef, list[Rules]] = field(default_factory=dict)

    def feed(self, doc: Mapping[str, Any]) -> Expected:
        tenant = doc.get("tenant", "default")
        command_id = doc["command_id"]
        content = content_of(doc)
        prior = self.processed.get((tenant, command_id))
        if prior is not None and prior[1] != "rejected":
            if prior[0] == content:
                return Expected("duplicate")
            return Expected("rejected", "command_id_conflict")
        reason = rejection(doc, self.now, self.max_future)
        if reason is not None:
            self.processed[(tenant, command_id)] = (content, "rejected")
            return Expected("rejected", reason)
        subject = (tenant, doc["subject_id"])
        rules = self.rules.setdefault(subject, {})
        occurred_at = parse_time(doc["occurred_at"])
        chosen: Rules = {}
        for change in doc["changes"]:
            statement = Statement(occurred_at, change["action"] == "opt_out", command_id)
            pair = (change["topic"], change["channel"])
            if pair not in chosen or statement > chosen[pair]:
                chosen[pair] = statement
        changed = False
        for pair, statement in chosen.items():
            if pair not in rules or statement > rules[pair]:
                rules[pair] = statement
                changed = True
        status = "applied" if changed else "unchanged"
        if changed:
            self.versions[subject] += 1
            self.history.setdefault(subject, []).append(dict(rules))
        self.processed[(tenant, command_id)] = (content, status)
        return Expected(status)
