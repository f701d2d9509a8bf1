"""Compact JSON form of a subject's state, shared by the Redis cache and its readers.

Rules are stored as arrays rather than objects: the cache is read on every "may I send?"
question, and shorter documents parse faster and take less memory.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from service.domain.model import Rule, SubjectKey, SubjectState


def encode_state(state: SubjectState) -> bytes:
    return orjson.dumps(
        {
            "v": state.version,
            "r": [
                [
                    r.topic,
                    r.channel,
                    r.action,
                    r.occurred_at.isoformat(),
                    r.source_channel,
                    r.command_id,
                ]
                for r in state.sorted_rules()
            ],
        }
    )


def decode_state(key: SubjectKey, raw: bytes) -> SubjectState:
    document: dict[str, Any] = orjson.loads(raw)
    rules = {}
    for topic, channel, action, occurred_at, source_channel, command_id in document["r"]:
        rules[(topic, channel)] = Rule(
            topic=topic,
            channel=channel,
            action=action,
            occurred_at=datetime.fromisoformat(occurred_at),
            source_channel=source_channel,
            command_id=command_id,
        )
    return SubjectState(key=key, version=int(document["v"]), rules=rules)
