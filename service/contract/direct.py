"""Decoding the everyday command straight to the domain, without the pydantic model.

Nearly every record is a `preferences` command of plain ASCII strings. For those, building
the domain `Command` from the parsed document directly costs a fraction of validating a
`CommandV1` and converting it (its validators run in Python and its models are then copied
into domain objects). `command_from_document` applies exactly the model's rules to such a
document and returns None for anything else: another kind, a non-ASCII string, a value of
an unexpected type, or any rule broken. The caller then decodes it through the model, which
gives every error its field; so the model stays the one definition of the contract, and a
property test (tests/unit/test_direct_decode.py) checks that both agree on what they accept.
"""

from __future__ import annotations

import re
from typing import Any

from service.contract.storable import parse_instant
from service.contract.v1 import KAFKA_ACTOR, TENANT_PATTERN
from service.domain.commands import SOURCE_CHANNELS, Change, Command, Source
from service.domain.identifiers import InvalidIdentifier, normalize

_TENANT = re.compile(TENANT_PATTERN)
_ACTIONS = frozenset(("opt_out", "opt_in", "restore"))
_MAX_CHANGES = 100


def _plain(value: object, low: int, high: int) -> str | None:
    """`value` if it is a str of `low` to `high` ASCII characters without NUL, else None.

    ASCII text is storable as is (``storable``); anything else takes the model's way."""
    if type(value) is str and low <= len(value) <= high and value.isascii() and "\x00" not in value:
        return value
    return None


def _optional(document: dict[str, Any], name: str, low: int, high: int) -> tuple[bool, str | None]:
    """(acceptable, value) for an optional string field: absent and null are both None."""
    value = document.get(name)
    if value is None:
        return True, None
    text = _plain(value, low, high)
    return text is not None, text


def command_from_document(document: dict[str, Any]) -> Command | None:
    """The domain command a plain `preferences` document states, or None (see above)."""
    if document.get("kind", "preferences") != "preferences":
        return None
    if document.get("identifier") is not None or document.get("into") is not None:
        return None
    command_id = _plain(document.get("command_id"), 1, 128)
    subject = _plain(document.get("subject_id"), 1, 256)
    if command_id is None or subject is None:
        return None
    tenant = document.get("tenant", "default")
    if type(tenant) is not str or not tenant.isascii() or _TENANT.fullmatch(tenant) is None:
        return None
    actor = document.get("actor", KAFKA_ACTOR)
    if _plain(actor, 1, 128) is None:
        return None
    ok, reason = _optional(document, "reason", 0, 500)
    if not ok:
        return None
    source = _source(document.get("source"), actor)
    changes = _changes(document.get("changes"))
    if source is None or changes is None:
        return None
    try:
        occurred_at = parse_instant(document.get("occurred_at"))
        subject_id = normalize(subject)
    except (ValueError, InvalidIdentifier):
        return None
    return Command(command_id, subject_id, tenant, occurred_at, source, changes, reason)


def _source(value: object, actor: str) -> Source | None:
    if type(value) is not dict:
        return None
    channel = value.get("channel")
    if type(channel) is not str or channel not in SOURCE_CHANNELS:
        return None
    ok_app, app = _optional(value, "app", 1, 128)
    ok_ip, ip = _optional(value, "ip", 1, 64)
    ok_agent, agent = _optional(value, "user_agent", 1, 512)
    if not (ok_app and ok_ip and ok_agent):
        return None
    return Source(channel, app, ip, agent, actor)


def _changes(value: object) -> tuple[Change, ...] | None:
    if type(value) is not list or not 1 <= len(value) <= _MAX_CHANGES:
        return None
    changes = []
    for item in value:
        if type(item) is not dict:
            return None
        action = item.get("action")
        topic = _plain(item.get("topic"), 1, 128)
        channel = _plain(item.get("channel"), 1, 64)
        if type(action) is not str or action not in _ACTIONS or topic is None or channel is None:
            return None
        changes.append(Change(action, topic, channel))  # type: ignore[arg-type]
    return tuple(changes)
