"""Hostile record classes, each one switchable, each with the answer the contract demands.

A class builds a few records (``variant`` picks among its forms) around a subject and a
command id of their own, so anything that goes wrong is attributable to the class. The
brief's rules being checked: record headers are never interpreted; undecodable values go
to the DLQ with their original bytes; a decodable command that breaks the schema is
`rejected`/`invalid_payload`; no string may hold U+0000 or a lone surrogate; timestamps are
RFC 3339 text between 1970 and 9999-12-31; a value over ``OPTOUT_MAX_RECORD_BYTES`` goes
to the DLQ (cut, and marked so, when too large to re-send); idempotency is per tenant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tests.chaos.commands import (
    DLQ,
    DLQ_OR_REJECTED,
    FOLD,
    REJECTED_FUTURE,
    REJECTED_INVALID,
    CommandFactory,
    Headers,
    Planned,
)

Builder = Callable[[CommandFactory, int], list[Planned]]

# Fields that hold free text or ids: each gets a U+0000 class and a lone-surrogate class.
STRING_FIELDS = (
    "subject_id",
    "reason",
    "source.app",
    "source.ip",
    "source.user_agent",
    "command_id",
    "tenant",
)

# A value of several megabytes that gzip shrinks to a few kilobytes: the broker takes it,
# the worker decompresses it, and it is far too large to be re-sent to the DLQ as it is.
COMPRESSIBLE_BYTES = 3 * 1024 * 1024
OVERSIZED_BYTES = 100 * 1024


@dataclass(frozen=True)
class HostileClass:
    name: str
    family: str
    expects: str
    build: Builder
    # Most instances in one stream: a few megabyte-sized records prove the point.
    limit: int | None = None


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    target = doc
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    target[last] = value


def _headers(header: bytes | None) -> Builder:
    def build(f: CommandFactory, variant: int) -> list[Planned]:
        doc = f.fresh()
        headers: Headers = (
            ("x-trace", header if header is None else header + bytes([variant % 7])),
        )
        if variant % 2:
            headers = (("content-type", b"application/json"), *headers)
        return [f.planned("", doc, headers=headers)]

    return build


def _raw(values: list[bytes | None]) -> Builder:
    def build(f: CommandFactory, variant: int) -> list[Planned]:
        doc = f.fresh()
        value = values[variant % len(values)]
        return [f.planned("", doc, expect=DLQ, value=value)]

    return build


def _bad_utf8(f: CommandFactory, variant: int) -> list[Planned]:
    doc = f.fresh()
    text = f'{{"command_id": "{doc["command_id"]}", "subject_id": "caf\u00e9"}}'
    values = [
        text.encode("latin-1"),
        b'{"command_id": "\xff\xfe", "subject_id": "x"}',
        b"\xc3\x28\xa0\xa1",
        b"\x80" * 8,
    ]
    return [f.planned("", doc, expect=DLQ, value=values[variant % len(values)])]


def _not_json(f: CommandFactory, variant: int) -> list[Planned]:
    doc = f.fresh()
    values = [
        b"not json",
        b"{",
        f'{{"command_id": "{doc["command_id"]}",}}'.encode(),
        b"{'command_id': 'single quotes'}",
        b"NaN",
    ]
    return [f.planned("", doc, expect=DLQ, value=values[variant % len(values)])]


def _non_object(f: CommandFactory, variant: int) -> list[Planned]:
    doc = f.fresh()
    values = [b"[]", b'["command_id"]', b'"text"', b"42", b"null", b"true"]
    return [f.planned("", doc, expect=DLQ, value=values[variant % len(values)])]


_SCHEMA_WITH_ID: list[tuple[str, Any]] = [
    ("changes", []),
    ("changes", "opt_out everything"),
    ("changes", [{"action": "maybe", "topic": "marketing", "channel": "email"}]),
    ("changes", [{"action": "opt_out", "topic": "marketing", "channel": "email"}] * 101),
    ("source.channel", "fax"),
    ("source", None),
    ("occurred_at", "2026-01-01T00:00:00"),
    ("occurred_at", "yesterday"),
    ("subject_id", ""),
    ("subject_id", "s" * 257),
    ("subject_id", 42),
    ("reason", "r" * 501),
    ("tenant", "t" * 65),
]


def _schema_with_id(f: CommandFactory, variant: int) -> list[Planned]:
    doc = f.fresh()
    path, value = _SCHEMA_WITH_ID[variant % len(_SCHEMA_WITH_ID)]
    _set(doc, path, value)
    return [f.planned("", doc, expect=REJECTED_INVALID)]


def _schema_without_id(f: CommandFactory, variant: int) -> list[Planned]:
    doc = f.fresh()
    forms: list[Any] = [None, 42, "", "c" * 129, ["id"]]
    form = forms[variant % len(forms)]
    if form is None:
        del doc["command_id"]
    else:
        doc["command_id"] = form
    planned = f.planned("", doc, expect=DLQ)
    return [planned]


def _poisoned_string(path: str, poison: str) -> Builder:
    def build(f: CommandFactory, variant: int) -> list[Planned]:
        doc = f.fresh()
        base = "acme" if path == "tenant" else f"x{variant}"
        value = base + poison if variant % 2 else poison + base
        _set(doc, path, value)
        expects = DLQ_OR_REJECTED if path == "command_id" or poison != "\x00" else REJECTED_INVALID
        return [f.planned("", doc, expect=expects)]

    return build


def _timestamp(values: list[Any], expects: str) -> Builder:
    def build(f: CommandFactory, variant: int) -> list[Planned]:
        doc = f.fresh()
        value = values[variant % len(values)]
        doc["occurred_at"] = value(f) if callable(value) else value
        return [f.planned("", doc, expect=expects)]

    return build


def _far_future(f: CommandFactory) -> str:
    # From the stream's own clock, so a seed still names every byte: a month past its base.
    return (f.base_time + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _oversized(f: CommandFactory, variant: int) -> list[Planned]:
    doc = f.fresh()
    doc["padding"] = "x" * (OVERSIZED_BYTES + 97 * variant)
    return [f.planned("", doc, expect=DLQ)]


def _oversized_compressed(f: CommandFactory, variant: int) -> list[Planned]:
    doc = f.fresh()
    doc["padding"] = " " * (COMPRESSIBLE_BYTES + 13 * variant)
    return [f.planned("", doc, expect=DLQ, compressed=True)]


def _tenant_reuse(f: CommandFactory, variant: int) -> list[Planned]:
    """One command id in two tenants, same subject id: two commands, both applied."""
    subject = f.hostile_subject()
    command_id = f.command_id()
    moment = f.moment()
    first = f.doc(subject, "acme", [f.change("opt_out")], command_id=command_id, occurred_at=moment)
    second = f.doc(
        subject, "globex", [f.change("opt_out")], command_id=command_id, occurred_at=moment
    )
    first["tenant"], second["tenant"] = "acme", "globex"
    return [f.planned("", first), f.planned("", second)]


def _tenant_pattern(f: CommandFactory, variant: int) -> list[Planned]:
    doc = f.fresh()
    doc["tenant"] = ["ACME", "a:b", "two words", "tenant.dot"][variant % 4]
    return [f.planned("", doc, expect=REJECTED_INVALID)]


def _classes() -> list[HostileClass]:
    found = [
        HostileClass("header_non_utf8", "headers", FOLD, _headers(b"\xff\xfe\x80")),
        HostileClass("header_null", "headers", FOLD, _headers(None)),
        HostileClass("value_bad_utf8", "value", DLQ, _bad_utf8),
        HostileClass("value_not_json", "value", DLQ, _not_json),
        HostileClass("value_json_non_object", "value", DLQ, _non_object),
        HostileClass("value_empty", "value", DLQ, _raw([b""])),
        HostileClass("value_null", "value", DLQ, _raw([None])),
        HostileClass("schema_invalid_with_id", "schema", REJECTED_INVALID, _schema_with_id),
        HostileClass("schema_invalid_without_id", "schema", DLQ, _schema_without_id),
        HostileClass("tenant_outside_pattern", "schema", REJECTED_INVALID, _tenant_pattern),
    ]
    for path in STRING_FIELDS:
        name = path.replace(".", "_")
        found.append(
            HostileClass(
                f"nul_{name}",
                "nul",
                DLQ_OR_REJECTED if path == "command_id" else REJECTED_INVALID,
                _poisoned_string(path, "\x00"),
            )
        )
    for path in STRING_FIELDS:
        name = path.replace(".", "_")
        found.append(
            HostileClass(
                f"surrogate_{name}", "surrogate", DLQ_OR_REJECTED, _poisoned_string(path, "\ud800")
            )
        )
    found += [
        HostileClass(
            "timestamp_year_1",
            "timestamp",
            REJECTED_INVALID,
            _timestamp(["0001-01-01T00:00:00+01:00"], REJECTED_INVALID),
        ),
        HostileClass(
            "timestamp_year_9999",
            "timestamp",
            REJECTED_INVALID,
            _timestamp(["9999-12-31T23:30:00-01:00"], REJECTED_INVALID),
        ),
        HostileClass(
            "timestamp_before_1970",
            "timestamp",
            REJECTED_INVALID,
            _timestamp(["1969-12-31T23:59:59Z", "1900-01-01T00:00:00Z"], REJECTED_INVALID),
        ),
        HostileClass(
            "timestamp_numeric_string",
            "timestamp",
            REJECTED_INVALID,
            _timestamp(["1700000000", "1700000000.5", "0"], REJECTED_INVALID),
        ),
        HostileClass(
            "timestamp_number",
            "timestamp",
            REJECTED_INVALID,
            _timestamp([1700000000, 1.7e9, 0], REJECTED_INVALID),
        ),
        HostileClass(
            "timestamp_far_future",
            "timestamp",
            REJECTED_FUTURE,
            _timestamp([_far_future, "9999-12-30T00:00:00Z"], REJECTED_FUTURE),
        ),
        HostileClass("oversized", "size", DLQ, _oversized, limit=20),
        HostileClass("oversized_compressed", "size", DLQ, _oversized_compressed, limit=6),
        HostileClass("tenant_command_id_reuse", "idempotency", FOLD, _tenant_reuse),
    ]
    return found


CLASSES: dict[str, HostileClass] = {c.name: c for c in _classes()}


def build(name: str, factory: CommandFactory, variant: int) -> list[Planned]:
    """The records of one instance of a class, labelled with the class name."""
    records = CLASSES[name].build(factory, variant)
    return [
        Planned(
            label=name,
            key=r.key,
            value=r.value,
            expect=r.expect,
            doc=r.doc,
            command_id=r.command_id,
            subject=r.subject,
            headers=r.headers,
            compressed=r.compressed,
        )
        for r in records
    ]


def select(only: list[str] | None = None, without: list[str] | None = None) -> list[str]:
    """Class names switched on: `only` (names or family names), minus `without`."""

    def expand(names: list[str]) -> set[str]:
        chosen: set[str] = set()
        for name in names:
            matched = {c.name for c in CLASSES.values() if name in (c.name, c.family)}
            if not matched:
                raise ValueError(f"unknown hostile class or family {name!r}")
            chosen |= matched
        return chosen

    chosen = expand(only) if only else set(CLASSES)
    chosen -= expand(without or [])
    return [name for name in CLASSES if name in chosen]
