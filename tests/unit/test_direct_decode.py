"""Decoding straight to the domain agrees with the contract's model on every document.

`command_from_document` may decline anything (the model then decodes it), but what it
accepts must be exactly the command the model gives, and it must accept every plain
`preferences` document the model accepts, or the fast path would be a dead one.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from benchmarks.common import CommandGenerator
from service.contract.decode import decode_command
from service.contract.direct import command_from_document
from service.contract.v1 import CommandV1
from service.domain.commands import SOURCE_CHANNELS, Command, Delivery, Received

_REMOVE = object()
_ascii = st.characters(min_codepoint=32, max_codepoint=126)
_ids = st.text(alphabet=_ascii, min_size=1, max_size=8)
_STRINGS: tuple[Any, ...] = ("", "\x00", "a\x00b", "é", "\ud800", "a\n", 7, None, True, [], _REMOVE)

# Valid values of each field, and values at or past each rule's edge.
_CHANGE: dict[str, tuple[st.SearchStrategy[Any], tuple[Any, ...]]] = {
    "action": (st.sampled_from(["opt_out", "opt_in", "restore"]), ("block", *_STRINGS)),
    "topic": (st.sampled_from(["marketing", "*", "billing"]), ("x" * 128, "x" * 129, *_STRINGS)),
    "channel": (st.sampled_from(["email", "sms", "*"]), ("x" * 64, "x" * 65, *_STRINGS)),
}
_SOURCE: dict[str, tuple[st.SearchStrategy[Any], tuple[Any, ...]]] = {
    "channel": (st.sampled_from(sorted(SOURCE_CHANNELS)), ("fax", *_STRINGS)),
    "app": (_ids, ("x" * 128, "x" * 129, *_STRINGS)),
    "ip": (_ids, ("x" * 64, "x" * 65, *_STRINGS)),
    "user_agent": (_ids, ("x" * 512, "x" * 513, *_STRINGS)),
}
_TOP: dict[str, tuple[st.SearchStrategy[Any], tuple[Any, ...]]] = {
    "command_id": (_ids, ("x" * 128, "x" * 129, *_STRINGS)),
    "subject_id": (
        st.sampled_from(
            ["user-1", "email: Alice@Example.COM ", "phone:+1 415 555 2671", "device:abc"]
        ),
        ("x" * 256, "x" * 257, "email:nope", "phone:12", *_STRINGS),
    ),
    "occurred_at": (
        st.sampled_from(
            [
                "2026-01-01T00:00:00Z",
                "2026-01-01T10:00:00.123456789+02:00",
                "2026-01-01t00:00:00.5z",
            ]
        ),
        ("2026-01-01", "0001-01-01T00:00:00+01:00", "2026-13-01T00:00:00Z", 1_700_000_000),
    ),
    "kind": (st.just("preferences"), ("link", "erase", *_STRINGS)),
    "identifier": (st.none(), ("email:a@b.c", _REMOVE)),
    "into": (st.none(), ("user-2", _REMOVE)),
    "reason": (st.none() | _ids, ("x" * 500, "x" * 501, *_STRINGS)),
    "tenant": (st.sampled_from(["default", "acme_1", "b-2"]), ("Acme", "x" * 65, *_STRINGS)),
    "actor": (_ids, ("x" * 128, "x" * 129, *_STRINGS)),
    "source": (st.just({}), ("web", [], None)),
    "changes": (st.just([]), ([], None, {"action": "opt_out"}, [1])),
}
_OPTIONAL = ("kind", "identifier", "into", "reason", "tenant", "actor", "app", "ip", "user_agent")


def _valid(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    required = {k: v for k, (v, _) in fields.items() if k not in _OPTIONAL}
    optional = {k: v for k, (v, _) in fields.items() if k in _OPTIONAL}
    return st.fixed_dictionaries(required, optional=optional)


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document, then at most two of its fields (anywhere) set to an edge value."""
    document = draw(_valid(_TOP))
    document["source"] = draw(_valid(_SOURCE))
    document["changes"] = draw(st.lists(_valid(_CHANGE), min_size=1, max_size=3))
    if draw(st.booleans()):
        document["extra"] = draw(st.integers())
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.sampled_from(["top", "source", "change"]))
        changes = document.get("changes")
        first = changes[0] if isinstance(changes, list) and changes else None
        places: dict[str, tuple[Any, dict[str, tuple[st.SearchStrategy[Any], tuple[Any, ...]]]]] = {
            "top": (document, _TOP),
            "source": (document.get("source"), _SOURCE),
            "change": (first, _CHANGE),
        }
        target, fields = places[where]
        if not isinstance(target, dict):
            continue
        name = draw(st.sampled_from(sorted(fields)))
        value = draw(st.sampled_from(fields[name][1]))
        if value is _REMOVE:
            target.pop(name, None)
        else:
            target[name] = value
    if draw(st.integers(0, 30)) == 0 and isinstance(document.get("changes"), list):
        document["changes"] = document["changes"] * 40  # past the limit of 100 changes
    return document


_document = _documents()


def _by_model(document: dict[str, Any]) -> Command | None:
    try:
        return CommandV1.__pydantic_validator__.validate_python(document).to_domain()  # type: ignore[no-any-return]
    except ValidationError:
        return None


def _plain(value: Any) -> bool:
    """Only ASCII strings, anywhere in the document (keys included)."""
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return True


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(document=_document)
def test_the_direct_path_gives_what_the_model_gives(document: dict[str, Any]) -> None:
    direct = command_from_document(document)
    expected = _by_model(document)
    if direct is not None:
        assert direct == expected
    if (
        expected is not None
        and expected.kind == "preferences"
        and document.get("identifier") is None
        and document.get("into") is None
        and _plain(document)
    ):
        assert direct == expected


def test_generated_commands_take_the_direct_path_and_decode_as_before() -> None:
    generator = CommandGenerator(1_000, 3)
    for offset in range(300):
        value = generator.next()[2]
        direct = command_from_document(orjson.loads(value))
        assert direct is not None
        assert direct == _by_model(orjson.loads(value))
        delivery = Delivery("commands", 0, offset)
        assert decode_command(value, delivery, max_bytes=65_536) == Received(direct, delivery)


def test_what_it_declines_is_still_decoded_by_the_model() -> None:
    link = {
        "command_id": "c-1",
        "subject_id": "user-1",
        "occurred_at": "2026-01-01T00:00:00Z",
        "source": {"channel": "web"},
        "kind": "link",
        "identifier": "email:A@B.example",
    }
    assert command_from_document(link) is None
    decoded = decode_command(orjson.dumps(link), Delivery("c", 0, 0), max_bytes=65_536)
    assert isinstance(decoded, Received)
    assert decoded.command.target == "email:a@b.example"
    assert decoded.command == _by_model(link)
