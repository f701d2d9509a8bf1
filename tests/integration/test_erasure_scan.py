"""After an erasure, nothing in PostgreSQL or Redis gives the erased phone number back.

The scan reads every row of every table of the test's schema (each row as text: every
text, json and bytea column) and every Redis key under the test's prefix with its value,
and looks for:

- the identifier in clear (`phone:+1…`, the E.164 number, its digits);
- the identifier alone under SHA-256, SHA-1 and MD5 (hex; raw bytes too in Redis, and in
  PostgreSQL a bytea column shows as hex);
- every hash the service computes over it: the content hash and the import id of each
  command sent (as an attacker who knows every other field would recompute them), and of
  each command rebuilt from the surviving fields of every consent-history row with the
  identifier put back; the ids of the identifier's events (UUIDv5 over it).

A keyless service first processes an SMS STOP and an imported row, as a deployment before
content hashes were keyed did; then a service with the identifier key takes over, and the
person is erased. The same scan before the erasure finds the identifier and the plain
hashes (the positive control). Kafka's topics keep their records until retention (README).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from service.application.importing import command_id_for, command_value
from service.contract.decode import decode_command
from service.domain.commands import Change, Command, Delivery, Received, Source, content_hash
from service.domain.events import event_id_for
from service.domain.keyed_hashes import ImportIds
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, at, command

pytestmark = pytest.mark.integration

KEY = "erasure-scan-identifier-key-0123456789abcdef"
PHONE = "phone:+14155550123"
SPELT = "phone:+1 (415) 555-0123"
CLEAR = (PHONE, "+14155550123", "14155550123", "4155550123", SPELT, "(415) 555-0123")


def decoded(value: bytes) -> Command:
    """The command exactly as the worker reads it."""
    found = decode_command(value, Delivery("t", 0, 0), max_bytes=65_536)
    assert isinstance(found, Received), found
    return found.command


def imported(seconds: float, topic: str) -> Command:
    """A row as `optout import` turns it into a command (its id set by the caller)."""
    return Command(
        "",
        PHONE,
        "default",
        at(seconds),
        Source("import", "import:csv"),
        (Change("opt_out", topic, "sms"),),
    )


def plain_hashes(commands: Iterable[Command]) -> set[str]:
    """The content hash and the import id of each command, unkeyed, as before keying."""
    found = set()
    for c in commands:
        found.add(content_hash(c))
        found.add("import-" + content_hash(dataclasses.replace(c, command_id="")))
    return found


def digests(text: str) -> tuple[set[str], set[bytes]]:
    hexes, raws = set(), set()
    for name in ("sha256", "sha1", "md5"):
        digest = hashlib.new(name, text.encode())
        hexes.add(digest.hexdigest())
        raws.add(digest.digest())
    return hexes, raws


def needles(
    sent: Iterable[Command], history: Iterable[asyncpg.Record]
) -> tuple[set[str], set[bytes]]:
    texts: set[str] = set(CLEAR)
    raws: set[bytes] = set()
    for form in CLEAR:
        hexes, raw = digests(form)
        texts |= hexes
        raws |= raw
    texts |= plain_hashes(sent)
    # The ids of the identifier's own events (UUIDv5, SHA-1 over tenant, id and version).
    for version in range(1, 21):
        event_id = event_id_for("default", PHONE, version)
        texts |= {event_id, event_id.replace("-", "")}
    texts |= plain_hashes(rebuilt(row) for row in history)
    return texts, raws


def rebuilt(row: asyncpg.Record) -> Command:
    """A consent-history row's surviving fields, the identifier put back (ip, user agent
    and reason are gone: an SMS STOP had none to begin with)."""
    changes = () if row["topic"] is None else (Change(row["action"], row["topic"], row["channel"]),)
    return Command(
        row["command_id"],
        PHONE,
        row["tenant"],
        row["occurred_at"],
        Source(row["source_channel"], row["source_app"]),
        changes,
    )


def content_hash_of_document(document: dict[str, Any]) -> str:
    """What the worker hashes for a command it cannot read: the sorted document."""
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )


async def history_rows(settings: Settings) -> list[asyncpg.Record]:
    conn = await connect(settings)
    try:
        return list(await conn.fetch("SELECT * FROM consent_history ORDER BY id"))
    finally:
        await conn.close()


async def scan(settings: Settings, texts: set[str], raws: set[bytes]) -> list[str]:
    """Where any needle is found: `table: needle` and `redis key: needle`."""
    found: list[str] = []
    lowered = {t.lower() for t in texts}
    conn = await connect(settings)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
                settings.database_schema,
            )
        ]
        assert {"processed_commands", "consent_history", "subjects", "rules"} <= set(tables)
        for table in tables:
            for row in await conn.fetch(f'SELECT t::text AS line FROM "{table}" t'):
                line = row["line"].lower()
                found.extend(f"{table}: {n}" for n in lowered if n in line)
    finally:
        await conn.close()
    redis = Redis.from_url(settings.redis_dsn)
    try:
        async for key in redis.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
            blob = key + b"\x00".join(await redis_values(redis, key))
            low = blob.lower()
            found.extend(f"redis {key!r}: {n}" for n in lowered if n.encode() in low)
            found.extend(f"redis {key!r}: raw {n.hex()}" for n in raws if n in blob)
    finally:
        await redis.aclose()
    return found


async def redis_values(redis: Redis, key: bytes) -> list[bytes]:
    found = await redis.type(key)
    kind = found.decode() if isinstance(found, bytes) else found
    values: list[Any] = []
    if kind == "string":
        values = [await redis.get(key)]
    elif kind == "hash":
        values = [b for pair in (await redis.hgetall(key)).items() for b in pair]
    elif kind == "list":
        values = list(await redis.lrange(key, 0, -1))
    elif kind == "set":
        values = list(await redis.smembers(key))
    elif kind == "zset":
        values = list(await redis.zrange(key, 0, -1))
    else:
        raise AssertionError(f"a Redis value of type {kind} is not scanned")
    return [v for v in values if isinstance(v, bytes)]


async def send(client: ContractClient, value: bytes) -> dict[str, Any]:
    command_id = orjson.loads(value)["command_id"]
    seen = len(client.outcomes.get(command_id, []))
    await client.send(value, key=PHONE)
    await client.wait_for(lambda: len(client.outcomes.get(command_id, [])) > seen)
    return client.outcomes[command_id][seen]


def stop_value(seconds: float) -> bytes:
    """An SMS STOP as the webhook sends it: no ip, a fixed source."""
    doc = command(
        PHONE,
        [("opt_out", "*", "sms")],
        occurred_at=at(seconds),
        channel="sms",
        command_id=f"sms-stop-{seconds}",
    )
    doc["source"] = {"channel": "sms", "app": "optout-sms"}
    return json.dumps(doc).encode()


def identity(kind: str, subject_id: str, moment: datetime, **fields: Any) -> bytes:
    doc = command(subject_id, [], occurred_at=moment, kind=kind, channel="support", **fields)
    del doc["changes"]
    return json.dumps(doc).encode()


async def test_after_an_erasure_no_row_or_cached_value_gives_the_identifier_back(
    settings: Settings,
) -> None:
    keyless = settings.model_copy(update={"erasure_fence_seconds": 1})
    keyed = keyless.model_copy(update={"identifier_key": SecretStr(KEY)})
    sent: list[Command] = []
    async with ContractClient(keyless) as client:
        # Before keying: a plain content hash, and an import id of the old form.
        async with Service(keyless, with_worker=True):
            value = stop_value(1)
            sent.append(decoded(value))
            assert (await send(client, value))["status"] == "applied"
            old_row = imported(2, "marketing")
            old_row = dataclasses.replace(old_row, command_id="import-" + content_hash(old_row))
            sent.append(old_row)
            assert (await send(client, command_value(old_row)))["status"] == "applied"
        async with Service(keyed, with_worker=True):
            new_row = imported(3, "product")
            new_row = dataclasses.replace(
                new_row, command_id=command_id_for(new_row, ImportIds.from_root(KEY.encode()))
            )
            sent.append(new_row)
            assert (await send(client, command_value(new_row)))["status"] == "applied"
            web = json.loads(stop_value(4))
            web["source"] = {"channel": "web", "app": "prefs", "ip": "203.0.113.9"}
            web["changes"] = [{"action": "opt_in", "topic": "reminders", "channel": "sms"}]
            web["reason"] = "ticked the box"
            sent.append(decoded(json.dumps(web).encode()))
            assert (await send(client, json.dumps(web).encode()))["status"] == "applied"
            # An invalid command naming the number as its producer spelt it.
            malformed = {"command_id": "bad-1", "subject_id": SPELT, "changes": "STOP"}
            answer = await send(client, json.dumps(malformed).encode())
            assert answer["reason"] == "invalid_payload"
            link = identity("link", "user-5", at(5), identifier=PHONE)
            sent.append(decoded(link))
            assert (await send(client, link))["status"] == "applied"
            # The same command produced again: a duplicate, whichever form its hash has.
            assert (await send(client, stop_value(1)))["status"] == "duplicate"

            texts, raws = needles(sent, await history_rows(keyed))
            texts.add(content_hash_of_document(malformed))
            before = await scan(keyed, texts, raws)
            # The positive control: the identifier, the plain content hash of the STOP and
            # the old import id are there to be found before the erasure.
            assert any(f.endswith(f": {PHONE}") for f in before), before
            assert f"processed_commands: {content_hash(sent[0])}" in before
            assert f"consent_history: {old_row.command_id}" in before
            assert f"preference_events: {event_id_for('default', PHONE, 1)}" in before
            assert not any(new_row.command_id[len("import-k1-") :] in f for f in before)

            erase = identity("erase", PHONE, at(10))
            erased = await send(client, erase)
            assert erased["status"] == "applied"
            sent.append(decoded(erase))
            texts, raws = needles(sent, await history_rows(keyed))
            texts.add(content_hash_of_document(malformed))
            # The fences under the identifier's key expire (1 s here) and its tombstone is
            # forgotten once Kafka has it; until then the scan may still find them.
            deadline = time.monotonic() + 60
            after = await scan(keyed, texts, raws)
            while after and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                after = await scan(keyed, texts, raws)
            assert after == []
            # Still suppressed, and the STOP produced again is still a duplicate.
            assert (await send(client, stop_value(1)))["status"] == "duplicate"
            replay = await send(client, command_value(old_row))
            assert replay["status"] in ("unchanged", "duplicate")
