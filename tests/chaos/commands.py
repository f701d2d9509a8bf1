"""The records the suite produces, each with what the contract says must become of it.

``Planned`` is one record exactly as it goes to Kafka (key, value bytes, headers, whether
it is sent compressed) plus its expectation: ``FOLD`` (a well-formed command whose outcome
the oracle derives from the log), ``DLQ``, ``DLQ_OR_REJECTED`` or ``rejected:<reason>``.
``CommandFactory`` builds well-formed commands from a seeded ``random.Random``, so a seed
names a whole stream.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tests.chaos.oracle import (
    CHANNELS,
    DATA_USE_TOPICS,
    MANDATORY_TOPICS,
    MESSAGE_TOPICS,
    WILDCARD,
)

FOLD = "fold"
DLQ = "dlq"
DLQ_OR_REJECTED = "dlq_or_rejected"
REJECTED_INVALID = "rejected:invalid_payload"
REJECTED_FUTURE = "rejected:future_timestamp"

Headers = tuple[tuple[str, bytes | None], ...]


class _Encoded:
    """The default of ``CommandFactory.planned``'s value: the document's JSON (None is a value)."""


ENCODED = _Encoded()


@dataclass(frozen=True, eq=False)
class Planned:
    """One record to produce. Compared by identity: two resends of one command are two."""

    label: str
    key: bytes | None
    value: bytes | None
    expect: str
    doc: dict[str, Any] | None = None
    command_id: str | None = None
    subject: tuple[str, str] | None = None
    headers: Headers = ()
    compressed: bool = False

    @property
    def hostile(self) -> bool:
        return not self.label.startswith("base.")


def encode(doc: dict[str, Any]) -> bytes:
    # ensure_ascii (the default) writes a lone surrogate as the escape `\ud800`: valid JSON
    # text that a strict parser refuses, which is exactly the hostile case wanted.
    return json.dumps(doc).encode()


class CommandFactory:
    """Well-formed commands; `rng` decides everything, so a seed reproduces a stream."""

    def __init__(self, rng: random.Random, base_time: datetime, run_id: str) -> None:
        self.rng = rng
        self.base_time = base_time
        self.run_id = run_id
        self._ids = 0

    def command_id(self) -> str:
        self._ids += 1
        return f"{self.run_id}-{self._ids}-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:12]}"

    def hostile_subject(self) -> str:
        self._ids += 1
        return f"{self.run_id}-h{self._ids}"

    def moment(self) -> datetime:
        # A coarse grid over two days: ties between commands happen, and the order of
        # production says nothing about the order of occurred_at.
        return self.base_time + timedelta(seconds=30 * self.rng.randrange(5_760))

    def stamp(self, moment: datetime) -> str:
        roll = self.rng.random()
        if roll < 0.7:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if roll < 0.85:
            # The same instant written with another offset.
            return moment.astimezone(timezone(timedelta(hours=2))).isoformat()
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.123Z")

    def change(self, action: str | None = None, *, wildcard: bool = False) -> dict[str, str]:
        act = action or self.rng.choice(["opt_out", "opt_in"])
        if wildcard:
            topic = self.rng.choice([WILDCARD, *MESSAGE_TOPICS])
            channel = WILDCARD if topic != WILDCARD else self.rng.choice([WILDCARD, *CHANNELS])
            if topic != WILDCARD and self.rng.random() < 0.5:
                channel = WILDCARD
            return {"action": act, "topic": topic, "channel": channel}
        return {
            "action": act,
            "topic": self.rng.choice(MESSAGE_TOPICS),
            "channel": self.rng.choice(sorted(CHANNELS)),
        }

    def data_use_change(self) -> dict[str, str]:
        action = self.rng.choice(["opt_out", "opt_in"])
        return {"action": action, "topic": self.rng.choice(DATA_USE_TOPICS), "channel": WILDCARD}

    def mandatory_change(self, action: str = "opt_out") -> dict[str, str]:
        return {
            "action": action,
            "topic": self.rng.choice(MANDATORY_TOPICS),
            "channel": self.rng.choice(sorted(CHANNELS)),
        }

    def doc(
        self,
        subject_id: str,
        tenant: str,
        changes: list[dict[str, str]],
        *,
        command_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "command_id": command_id or self.command_id(),
            "subject_id": subject_id,
            "occurred_at": self.stamp(occurred_at or self.moment()),
            "source": {
                "channel": self.rng.choice(["web", "mobile", "api", "email", "sms"]),
                "app": "chaos",
                "ip": "203.0.113.7",
                "user_agent": "chaos/1.0",
            },
            "changes": changes,
            "reason": "chaos run",
        }
        if tenant != "default" or self.rng.random() < 0.5:
            doc["tenant"] = tenant
        return doc

    def fresh(self, n_changes: int = 1) -> dict[str, Any]:
        """A valid opt-out for a subject of its own (hostile records never share subjects)."""
        return self.doc(
            self.hostile_subject(),
            "default",
            [self.change("opt_out") for _ in range(n_changes)],
            occurred_at=self.moment(),
        )

    @staticmethod
    def planned(
        label: str,
        doc: dict[str, Any],
        *,
        expect: str = FOLD,
        headers: Headers = (),
        value: bytes | _Encoded | None = ENCODED,
        compressed: bool = False,
    ) -> Planned:
        subject_id = doc.get("subject_id")
        tenant = doc.get("tenant", "default")
        return Planned(
            label=label,
            key=subject_id.encode("utf-8", "surrogatepass")
            if isinstance(subject_id, str)
            else None,
            value=encode(doc) if isinstance(value, _Encoded) else value,
            expect=expect,
            doc=doc if expect == FOLD else None,
            command_id=doc.get("command_id") if isinstance(doc.get("command_id"), str) else None,
            subject=(tenant, subject_id)
            if isinstance(subject_id, str) and isinstance(tenant, str)
            else None,
            headers=headers,
            compressed=compressed,
        )
