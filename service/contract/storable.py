"""What the stores can hold: the one place that decides which strings and instants are storable.

Pydantic accepts strings PostgreSQL refuses (U+0000; lone surrogates cannot even be encoded
as UTF-8) and aware datetimes that overflow when converted to UTC (years 1 and 9999 with an
offset). A value refused by the store would fail its whole batch again and again, so the
contract refuses it at decoding time, with the field named, as `invalid_payload`.
``tests/unit/test_storable.py`` checks these rules against PostgreSQL itself.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# For pydantic's `pattern` (Rust regex). Checking any pattern makes pydantic-core read the
# string as UTF-8, which refuses lone surrogates (`string_unicode`); the class refuses NUL.
STORABLE_TEXT = r"^[^\x00]*$"

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def is_storable_text(text: str) -> bool:
    """True if PostgreSQL's `text` (UTF-8) can hold the string exactly."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_instant(value: object) -> datetime:
    """An RFC 3339 timestamp string with an offset, as an aware UTC datetime within range.

    Raises ValueError with a reason fit for an outcome's detail (it never quotes the value).
    Numbers and bare numeric strings are refused: read as Unix times, a seconds/milliseconds
    mix-up would pass silently.
    """
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string with an offset, not a number")
    if _RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 timestamp with an offset")
    text = value.upper()
    fraction = text.find(".")
    if fraction != -1:
        # Python reads at most microseconds; RFC 3339 allows more digits: drop the rest.
        end = fraction + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        text = text[: min(end, fraction + 7)] + text[end:]
    try:
        moment = datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("is not a representable instant") from None
    if not EARLIEST <= moment <= LATEST:
        raise ValueError("must lie between 1970-01-01T00:00:00Z and 9999-12-31T00:00:00Z")
    return moment
