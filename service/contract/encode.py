"""Wire bytes of the service's outputs, built straight from the domain objects.

The pydantic models in ``v1`` define the contract and its JSON Schemas; building them for
every event (each carries the subject's whole rule set) cost more CPU than the rest of the
pipeline together, so the hot path writes the same documents as plain dicts through orjson.
``tests/unit/test_encode.py`` checks, on generated events, that the bytes equal the models'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.domain.events import Outcome, PreferenceChanged
from service.domain.frozen import quick_init

_OPTIONS = orjson.OPT_UTC_Z


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def event_document(event: PreferenceChanged) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "tenant": event.tenant,
        "subject_id": event.subject_id,
        "version": event.version,
        "effective_at": _utc(event.effective_at),
        "command_id": event.command_id,
        "source": {"channel": event.source_channel, "app": event.source_app},
        "changes": [
            {
                "action": c.action,
                "topic": c.topic,
                "channel": c.channel,
                "occurred_at": _utc(c.occurred_at),
            }
            for c in event.changes
        ],
        "preferences": [
            {
                "topic": r.topic,
                "channel": r.channel,
                "action": r.action,
                "occurred_at": _utc(r.occurred_at),
                "source_channel": r.source_channel,
                "command_id": r.command_id,
            }
            for r in event.preferences
        ],
    }


def event_json(event: PreferenceChanged) -> bytes:
    return orjson.dumps(event_document(event), option=_OPTIONS)


@quick_init
@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event with its wire bytes, encoded once for the event log and for Kafka."""

    event: PreferenceChanged
    payload: bytes


def encode_events(events: list[PreferenceChanged]) -> list[EncodedEvent]:
    return [EncodedEvent(e, event_json(e)) for e in events]


def outcome_json(outcome: Outcome) -> bytes:
    return orjson.dumps(
        {
            "command_id": outcome.command_id,
            "tenant": outcome.tenant,
            "subject_id": outcome.subject_id,
            "status": outcome.status,
            "reason": outcome.reason,
            "detail": outcome.detail,
            "version": outcome.version,
            "effective_at": None if outcome.effective_at is None else _utc(outcome.effective_at),
            "applied_to": outcome.applied_to,
        },
        option=_OPTIONS,
    )
