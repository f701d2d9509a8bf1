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
    """`m` (a forward's target) and `e` (erased) follow `r` and appear only when set: a
    cached state without rules must end in `"r":[]}` for the readers' fast path, and a
    forward or suppression must not."""
    document: dict[str, Any] = {
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
    if state.merged_into is not None:
        document["m"] = state.merged_into
    if state.erased:
        document["e"] = 1
    return orjson.dumps(document)


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
    return SubjectState(
        key=key,
        version=int(document["v"]),
        rules=rules,
        merged_into=document.get("m"),
        erased=bool(document.get("e")),
    )
