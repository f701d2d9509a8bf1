"""Dead letters always fit the DLQ topic: whole when they fit (if need be compressed), else
cut, saying so in their headers."""

from __future__ import annotations

import os

from aiokafka.codec import zstd_encode
from hypothesis import given, settings
from hypothesis import strategies as st

from service.adapters.kafka.outgoing import OutgoingRecord
from service.adapters.kafka.sizes import SizeLimits, estimated_size, fit_dead_letter

HEADERS = (
    ("x-error", b"value larger than 65536 bytes"),
    ("x-original-topic", b"optout.commands.v1"),
    ("x-original-partition", b"3"),
    ("x-original-offset", b"12345"),
)
LIMITS = SizeLimits(record_bytes=1_048_588, dead_letter_bytes=1_048_588)


def dead(value: bytes, key: bytes | None = b"user-42") -> OutgoingRecord:
    return OutgoingRecord("dlq", key, value, HEADERS)


def test_small_value_is_sent_whole() -> None:
    record = dead(b"{not json")
    assert fit_dead_letter(record, LIMITS, zstd_encode) is record


def test_incompressible_value_over_the_limit_is_cut_with_headers() -> None:
    value = os.urandom(3_000_000)
    fitted = fit_dead_letter(dead(value), LIMITS, zstd_encode)
    headers = dict(fitted.headers)
    assert headers["x-original-size"] == b"3000000"
    assert headers["x-truncated"] == b"true"
    assert {k: v for k, v in HEADERS} == {k: headers[k] for k, _ in HEADERS}
    assert fitted.value is not None
    assert value.startswith(fitted.value)
    assert fitted.key == b"user-42"
    assert estimated_size(fitted.key, fitted.value, fitted.headers) <= LIMITS.dead_letter_bytes
    assert len(fitted.value) > LIMITS.dead_letter_bytes - 1_000


def test_compressible_value_is_sent_whole_when_it_fits_compressed() -> None:
    # The DLQ topic allows less than the producer's request size: compression decides.
    limits = SizeLimits(record_bytes=4_000_000, dead_letter_bytes=100_000)
    value = b'{"command_id": "x", "pad": "' + b"ab" * 1_000_000 + b'"}'
    record = dead(value)
    assert fit_dead_letter(record, limits, zstd_encode) is record


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(0, 400_000),
    key_size=st.integers(0, 50_000),
    limit=st.integers(10_000, 300_000),
)
def test_whatever_the_sizes_the_result_fits(size: int, key_size: int, limit: int) -> None:
    limits = SizeLimits(record_bytes=limit, dead_letter_bytes=limit)
    fitted = fit_dead_letter(dead(os.urandom(size), b"k" * key_size), limits, zstd_encode)
    assert fitted.value is not None
    assert estimated_size(fitted.key, fitted.value, fitted.headers) <= limit
    truncated = dict(fitted.headers).get("x-truncated") == b"true"
    assert truncated == (len(fitted.value) < size or fitted.key != b"k" * key_size)
