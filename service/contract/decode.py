"""Turning raw Kafka record values into something the core can answer.

Three tiers, so a bad record never stops its partition: undecodable bytes go to the DLQ
untouched; a readable object with a command id but an invalid shape still gets a
`rejected` outcome the producer can see; everything else reaches the core.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from service.contract.direct import command_from_document
from service.contract.storable import is_storable_text
from service.contract.v1 import TENANT_PATTERN, CommandV1
from service.domain.commands import Delivery, Malformed, Received
from service.domain.identifiers import InvalidIdentifier, is_identifier, normalize

_MAX_ERRORS_IN_DETAIL = 5
_TENANT = re.compile(TENANT_PATTERN.removeprefix("^").removesuffix("$"))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record nobody can be answered about; `error` becomes the DLQ `x-error` header.

    The error text is fixed per failure kind and never quotes the payload.
    """

    error: str
    code: str = "poison"  # a stable class for metrics: `not_json`, `too_large`, ...


def _summarise(exc: ValidationError) -> str:
    """Field locations and error types only: input values may be personal data."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        location = ".".join(str(part) for part in error["loc"]) or "(root)"
        # Our own validators' messages never quote the input; pydantic's types say enough.
        what = (
            error["msg"].removeprefix("Value error, ")
            if error["type"] == "value_error"
            else error["type"]
        )
        parts.append(f"{location}: {what}")
    shown = parts[:_MAX_ERRORS_IN_DETAIL]
    more = len(parts) - len(shown)
    summary = "; ".join(shown)
    return f"invalid payload: {summary}" + (f" (+{more} more)" if more else "")


def _text(document: dict[str, Any], name: str, max_length: int) -> str | None:
    """A field good enough to answer under: a string the outcome's stores can hold."""
    value = document.get(name)
    if isinstance(value, str) and 1 <= len(value) <= max_length and is_storable_text(value):
        return value
    return None


def _subject(document: dict[str, Any]) -> str | None:
    """An invalid command's subject, normalised when it is a valid identifier: the answer is
    stored under it, and an erasure of the identifier must find (and rewrite) it."""
    value = _text(document, "subject_id", 256)
    if value is not None and is_identifier(value):
        try:
            return normalize(value)
        except InvalidIdentifier:
            return value
    return value


def _tenant(document: dict[str, Any]) -> str:
    value = document.get("tenant")
    if isinstance(value, str) and _TENANT.fullmatch(value):
        return value
    return "default"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _lenient_json(text: str) -> Any:
    """Parse JSON that orjson refuses but that still names a command: lone surrogates
    (``"\\ud800"``), numbers beyond a double. Such a command is then answered
    `invalid_payload` with the field named, instead of going to the DLQ unanswered.
    """
    return json.loads(text, parse_constant=_refuse_constant)


def _canonical_hash(document: dict[str, Any]) -> str:
    """Hash of the parsed object, so re-sent malformed content is recognised as the same."""
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def decode_command(
    value: bytes | None, delivery: Delivery, *, max_bytes: int
) -> Received | Malformed | DeadLetter:
    """Classify one record value as a command, an answerable invalid command, or DLQ."""
    if not value:
        return DeadLetter("empty value", "empty")
    if len(value) > max_bytes:
        return DeadLetter(f"value larger than {max_bytes} bytes", "too_large")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return DeadLetter("value is not valid UTF-8", "not_utf8")
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            document = _lenient_json(text)
        except (ValueError, RecursionError):
            return DeadLetter("value is not valid JSON", "not_json")
    if not isinstance(document, dict):
        return DeadLetter("value is not a JSON object", "not_object")
    command_id = _text(document, "command_id", 128)
    if command_id is None:
        return DeadLetter("no readable command_id (a string of 1-128 characters)", "no_command_id")
    direct = command_from_document(document)
    if direct is not None:
        return Received(direct, delivery)
    try:
        # The model's validator itself: exactly what `model_validate` calls, minus a
        # Python-level wrapper that costs a noticeable share of decoding a small command.
        model: CommandV1 = CommandV1.__pydantic_validator__.validate_python(document)
    except ValidationError as exc:
        try:
            digest = _canonical_hash(document)
        except (TypeError, orjson.JSONEncodeError):
            digest = hashlib.sha256(value).hexdigest()
        return Malformed(
            command_id=command_id,
            subject_id=_subject(document),
            tenant=_tenant(document),
            detail=_summarise(exc),
            delivery=delivery,
            content_hash=digest,
        )
    return Received(model.to_domain(), delivery)
