"""A record the worker sends, free of any client library's types."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone on a compacted topic
    headers: tuple[tuple[str, bytes], ...] = ()
