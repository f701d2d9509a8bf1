"""Semantic validation of a command against the catalog and the clock.

A command is all-or-nothing: applying half of what a person asked for would leave them with
a state they never chose, so one bad change rejects the whole command.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.domain.catalog import Catalog
from service.domain.commands import SOURCE_CHANNELS, TARGET_FIELD, Command
from service.domain.events import Reason
from service.domain.identifiers import is_erased, is_identifier
from service.domain.model import WILDCARD
from service.domain.sms_restore import KEYWORD_CHANNEL


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
    if command.kind != "preferences":
        return _validate_identity(command, now=now, max_future=max_future)
    if not command.changes:
        return "invalid_payload", "a command needs at least one change"
    if command.occurred_at > now + max_future:
        return _future(max_future)
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
        if change.action == "restore" and (topic, channel) != (WILDCARD, KEYWORD_CHANNEL):
            return (
                "invalid_payload",
                f"changes[{index}]: restore takes topic '*' and channel {KEYWORD_CHANNEL!r} only",
            )
    return None


def _future(max_future: timedelta) -> tuple[Reason, str]:
    return (
        "future_timestamp",
        f"occurred_at is more than {int(max_future.total_seconds())}s in the future",
    )


def _validate_identity(
    command: Command, *, now: datetime, max_future: timedelta
) -> tuple[Reason, str] | None:
    """Identity commands name no rules; `link`/`unlink` name an identifier, `merge` a
    subject to merge into. Ids of erased suppressions are the service's own, never input."""
    kind = command.kind
    if command.changes:
        return "invalid_payload", f"a {kind} command takes no changes"
    if is_erased(command.subject_id):
        return "invalid_payload", "subject_id names an erased suppression"
    target_name = TARGET_FIELD.get(kind)
    if target_name is not None:
        target = command.target
        if not target:
            return "invalid_payload", f"a {kind} command needs {target_name}"
        if is_erased(target):
            return "invalid_payload", f"{target_name} names an erased suppression"
        if kind != "merge" and not is_identifier(target):
            return "invalid_payload", "identifier must start with email:, phone: or device:"
    if command.occurred_at > now + max_future:
        return _future(max_future)
    return None
