"""Keyed content hashes and import ids: nothing stored is a plain hash of a person's data.

The processed log's content hash and an import's command id are HMAC under keys derived
from the identifier key; rows of before keying are still recognised, and erasure turns them
into exactly the keyed form a command gets today.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from service.domain.apply import ProcessedRecord, apply_batch
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import Change, Command, Delivery, Received, Source, content_hash
from service.domain.events import Outcome
from service.domain.keyed_hashes import (
    ContentSeal,
    ErasureRekeying,
    ImportIds,
    derived_key,
    is_plain_import_id,
)
from service.settings import Settings, load_settings

ROOT = b"identifier-key-for-tests-0123456789abcdef"
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
PHONE = "phone:+14155550123"


def stop(command_id: str = "sms-1", subject: str = PHONE) -> Command:
    """An SMS STOP: no ip, a fixed source and reason, as the webhook sends it."""
    return Command(
        command_id,
        subject,
        "default",
        NOW - timedelta(minutes=1),
        Source("sms", "optout-sms"),
        (Change("opt_out", "*", "sms"),),
        "stop keyword",
    )


def decide(command: Command, stored: str | None, seal: ContentSeal | None) -> Outcome:
    """The answer to `command` arriving as a new record when a first one is logged with
    `stored` as its content hash."""
    processed = {}
    if stored is not None:
        first = Outcome(command.command_id, "default", PHONE, "applied", None, None, 1, NOW)
        entry = ProcessedRecord(command.command_id, stored, Delivery("c", 0, 1), first)
        processed[entry.key] = entry
    result = apply_batch(
        DEFAULT_CATALOG,
        {},
        processed,
        [Received(command, Delivery("c", 0, 2))],
        now=NOW,
        effective_at=NOW,
        max_future=timedelta(minutes=5),
        seal=seal,
    )
    return result.outcomes[0]


def test_the_stored_content_hash_is_keyed_and_not_the_plain_one() -> None:
    seal = ContentSeal.from_root(ROOT)
    command = stop()
    result = apply_batch(
        DEFAULT_CATALOG,
        {},
        {},
        [Received(command, Delivery("c", 0, 1))],
        now=NOW,
        effective_at=NOW,
        max_future=timedelta(minutes=5),
        seal=seal,
    )
    stored = result.processed[0].content_hash
    plain = content_hash(command)
    assert re.fullmatch(r"k1:[0-9a-f]{64}", stored)
    assert plain not in stored
    assert stored == seal(plain)
    # Another key gives another hash: the stored one cannot be computed without it.
    assert ContentSeal.from_root(b"another-key-of-at-least-32-bytes!!")(plain) != stored


def test_a_redelivered_command_is_a_duplicate_whichever_form_its_log_entry_has() -> None:
    seal = ContentSeal.from_root(ROOT)
    command = stop()
    plain = content_hash(command)
    rekeyed = ErasureRekeying.from_root(ROOT).content_hash(plain)
    for stored in (seal(plain), plain, rekeyed):
        assert decide(command, stored, seal).status == "duplicate", stored
    # The positive control: other content under the same id is a conflict in every form.
    other = dataclasses.replace(command, reason="another reason")
    for stored in (seal(plain), plain, rekeyed):
        outcome = decide(other, stored, seal)
        assert (outcome.status, outcome.reason) == ("rejected", "command_id_conflict")


@settings(max_examples=100, deadline=None)
@given(digest=st.binary(min_size=1, max_size=64).map(lambda b: hashlib.sha256(b).hexdigest()))
def test_rekeying_a_plain_hash_gives_what_sealing_gives_and_is_idempotent(digest: str) -> None:
    rekeying = ErasureRekeying.from_root(ROOT)
    sealed = ContentSeal.from_root(ROOT)(digest)
    assert rekeying.content_hash(digest) == sealed
    assert rekeying.content_hash(sealed) == sealed
    # An import id of before keying becomes the id the same row is given today.
    rekeyed_id = rekeying.command_id("import-" + digest)
    assert rekeyed_id == ImportIds.from_root(ROOT)(digest)
    assert rekeyed_id.startswith("import-k1-")
    assert digest not in rekeyed_id
    assert not is_plain_import_id(rekeyed_id)
    assert rekeying.command_id(rekeyed_id) == rekeyed_id
    assert rekeying.command_id("sms-" + digest) == "sms-" + digest


def test_each_purpose_has_its_own_key() -> None:
    keys = {
        derived_key(ROOT, "content-hash/v1"),
        derived_key(ROOT, "import-command-id/v1"),
        ContentSeal.from_root(ROOT).key,
        ImportIds.from_root(ROOT).key,
    }
    assert len(keys) == 2
    assert ROOT not in keys


@pytest.mark.parametrize("key", ["k" * 31, "é" * 15])
def test_an_identifier_key_shorter_than_32_bytes_is_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(identifier_key=SecretStr(key))
    assert Settings(identifier_key=SecretStr("k" * 32)).identifier_key
    assert Settings(identifier_key=SecretStr("é" * 16)).identifier_key  # 32 bytes
    assert not Settings().identifier_key.get_secret_value()  # unset: erasure is refused


def test_a_short_key_stops_the_start_with_one_line_naming_the_setting_not_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPTOUT_IDENTIFIER_KEY", "short-secret-value")
    with pytest.raises(SystemExit) as stopped:
        load_settings("optout worker")
    message = str(stopped.value.code)
    assert message == (
        "optout worker: OPTOUT_IDENTIFIER_KEY must be at least 32 bytes"
        " (e.g. `openssl rand -base64 48`)"
    )
    assert "short-secret-value" not in message
