"""What the JDBC sink is fed, what it should leave behind, and how latencies are summed up.

The sink refuses schemaless JSON, so each record carries Kafka Connect's JSON envelope
(``{"schema": ..., "payload": ...}``) as ``JsonConverter`` with ``schemas.enable=true``
reads it. A command of the contract holds one to three changes; the sink stores one row per
(subject, topic, channel), so each change becomes one record, in the command's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

# The row's key: the sink's primary key (primary.key.mode=record_value).
KEY_FIELDS = ("subject_id", "topic", "channel")

# occurred_at keeps the contract's ISO-8601 text; Debezium's ZonedTimestamp type tells the
# sink it is a timestamp with a zone (timestamptz in PostgreSQL), so nothing is parsed here.
VALUE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "name": "optout.peer.Preference",
    "optional": False,
    "fields": [
        {"field": "subject_id", "type": "string", "optional": False},
        {"field": "topic", "type": "string", "optional": False},
        {"field": "channel", "type": "string", "optional": False},
        {"field": "action", "type": "string", "optional": False},
        {
            "field": "occurred_at",
            "type": "string",
            "optional": False,
            "name": "io.debezium.time.ZonedTimestamp",
            "version": 1,
        },
        {"field": "command_id", "type": "string", "optional": False},
    ],
}

# The table the sink writes into (created up front: schema evolution stays off).
TABLE_COLUMNS = (
    "subject_id text NOT NULL, topic text NOT NULL, channel text NOT NULL, "
    "action text NOT NULL, occurred_at timestamptz NOT NULL, command_id text NOT NULL, "
    "PRIMARY KEY (subject_id, topic, channel)"
)

Key = tuple[str, str, str]


def flatten(command: dict[str, Any]) -> list[dict[str, str]]:
    """One row-shaped payload per change of a contract-v1 command, in the command's order."""
    return [
        {
            "subject_id": command["subject_id"],
            "topic": change["topic"],
            "channel": change["channel"],
            "action": change["action"],
            "occurred_at": command["occurred_at"],
            "command_id": command["command_id"],
        }
        for change in command["changes"]
    ]


def envelope(payload: dict[str, str]) -> bytes:
    """One record value as JsonConverter (schemas.enable=true) expects it."""
    return orjson.dumps({"schema": VALUE_SCHEMA, "payload": payload})


def sink_records(commands: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """(key, value) records for the sink from (key, command document) pairs.

    The Kafka key stays the subject, as for the service, so that one subject's records keep
    their order in one partition.
    """
    out: list[tuple[bytes, bytes]] = []
    for key, value in commands:
        for payload in flatten(orjson.loads(value)):
            out.append((key, envelope(payload)))
    return out


def last_writes(records: Iterable[tuple[bytes, bytes]]) -> dict[Key, str]:
    """The command id each row must hold once the sink has drained: the last record per key
    in Kafka order (per partition, and a key's records share one partition)."""
    final: dict[Key, str] = {}
    for _, value in records:
        payload = orjson.loads(value)["payload"]
        final[(payload["subject_id"], payload["topic"], payload["channel"])] = payload["command_id"]
    return final


def nearest_rank(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile of sorted samples by nearest rank: the smallest sample with at
    least p % of the samples at or below it (no interpolation: always a measured sample)."""
    if not ordered:
        raise ValueError("no samples")
    rank = -(-p * len(ordered) // 100)  # ceil(p/100 * n), in exact arithmetic for whole p
    return ordered[max(0, min(len(ordered) - 1, int(rank) - 1))]


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds, and how many samples they summarise."""
    if not samples_ms:
        return {"count": 0}
    ordered = sorted(samples_ms)
    return {
        "p50": round(nearest_rank(ordered, 50), 2),
        "p95": round(nearest_rank(ordered, 95), 2),
        "p99": round(nearest_rank(ordered, 99), 2),
        "max": round(ordered[-1], 2),
        "count": len(ordered),
    }
