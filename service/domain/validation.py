"""Semantic validation of a command against the catalog and the clock.

A command is all-or-nothing: applying half of what a person asked for would leave them with
a state they never chose, so one bad change rejects the whole command.
"""

from __future__ import annotations

from datetime import datetime, timedelta

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
    if command.occurred_at.tzinfo is None or command.occurred_at.utcoffset() is None:
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
    for index, change in enumerate(command.changes):
        where = f"changes[{index}]"
        if change.topic != WILDCARD and not catalog.has_topic(change.topic):
            return "unknown_topic", f"{where}: unknown topic {change.topic!r}"
        if change.channel != WILDCARD and not catalog.has_channel(change.channel):
            return "unknown_channel", f"{where}: unknown channel {change.channel!r}"
        if (
            change.topic != WILDCARD
            and change.channel != WILDCARD
            and catalog.is_data_use(change.topic)
        ):
            return (
                "unknown_channel",
                f"{where}: data-use topic {change.topic!r} takes channel '*' only",
            )
        if (
            change.action == "opt_out"
            and change.topic != WILDCARD
            and catalog.is_mandatory(change.topic)
        ):
            return "mandatory_topic", f"{where}: {change.topic!r} is mandatory"
    return None
