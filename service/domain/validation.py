"""Semantic validation of a command against the catalog and the clock.

A command is all-or-nothing: applying half of what a person asked for would leave them with
a state they never chose, so one bad change rejects the whole command.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.domain.catalog import Catalog
from service.domain.commands import SOURCE_CHANNELS, Command
from service.domain.events import Reason
from service.domain.model import WILDCARD


def validate(
    catalog: Catalog, command: Command, *, now: datetime, max_future: timedelta
) -> tuple[Reason, str] | None:
    """Return the first rejection (reason code, human detail), or None if the command is valid.

    Future timestamps are refused because last-writer-wins would let a future-dated opt-in
    beat every real opt-out made before that date.
    """
    tzinfo = command.occurred_at.tzinfo
    # UTC (what decoding produces) is aware by identity, sparing the `utcoffset()` call.
    if tzinfo is not UTC and (tzinfo is None or command.occurred_at.utcoffset() is None):
        return "invalid_payload", "occurred_at must carry a UTC offset"
    if command.source.channel not in SOURCE_CHANNELS:
        return "invalid_payload", f"unknown source channel {command.source.channel!r}"
    if not command.changes:
        return "invalid_payload", "a command needs at least one change"
    if command.occurred_at > now + max_future:
        return (
            "future_timestamp",
            f"occurred_at is more than {int(max_future.total_seconds())}s in the future",
        )
    # The catalog's vocabulary and resolved flags as plain sets, looked up once per command
    # rather than through a method call (and a lineage walk) per change.
    topics, channels = catalog.topics, catalog.channels
    mandatory, data_uses = catalog.mandatory_topics, catalog.data_use_topics
    for index, change in enumerate(command.changes):
        topic, channel = change.topic, change.channel
        if topic != WILDCARD and topic not in topics:
            return "unknown_topic", f"changes[{index}]: unknown topic {topic!r}"
        if channel != WILDCARD and channel not in channels:
            return "unknown_channel", f"changes[{index}]: unknown channel {channel!r}"
        if topic != WILDCARD and channel != WILDCARD and topic in data_uses:
            return (
                "unknown_channel",
                f"changes[{index}]: data-use topic {topic!r} takes channel '*' only",
            )
        if change.action == "opt_out" and topic != WILDCARD and topic in mandatory:
            return "mandatory_topic", f"changes[{index}]: {topic!r} is mandatory"
    return None
