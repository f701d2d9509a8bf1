"""A record the worker sends, free of any client library's types."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (the compacted topic drops the key)
    headers: tuple[tuple[str, bytes], ...] = ()
