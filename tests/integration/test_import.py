"""`optout import` against real Kafka and a real worker: killed midway, then resumed.

The import runs as its own process (as an operator runs it) and is stopped the hard way, by
SIGKILL, while it sends; a second run resumes from the checkpoint. Judged from the outcomes
topic, as any producer would: every valid row's command reached the worker (no gap), none
was applied twice, and what the resumption sent again was answered `duplicate`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from service.client import OptoutClient
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.channels import published
from tests.support.contract_client import ContractClient
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

OPTOUT = str(Path(sys.executable).with_name("optout"))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """With the service's identifier key: imported rows' command ids are keyed under it."""
    return settings.model_copy(
        update={"identifier_key": SecretStr("import-tests-identifier-key-0123456789abcdef")}
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[ContractClient]:
    async with Service(settings, with_worker=True), ContractClient(settings) as c:
        yield c


def write_list(path: Path, rows: int) -> set[str]:
    """A generic list: some rows dated, some not (they take the checkpoint's time), some on
    `marketing` only, every 400th not an address. Returns the valid rows' subjects."""
    valid: set[str] = set()
    with path.open("w") as out:
        out.write("email,topic,occurred_at\n")
        for i in range(rows):
            if i % 400 == 399:
                out.write(f"broken-{i},,\n")
                continue
            topic = "marketing" if i % 2 else ""
            stamp = f"2026-01-01T00:{i % 60:02d}:00Z" if i % 3 else ""
            out.write(f"Person.{i}@Example.com,{topic},{stamp}\n")
            valid.add(f"email:person.{i}@example.com")
    return valid


async def start_import(settings: Settings, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        OPTOUT,
        "import",
        *args,
        env={**os.environ, **settings.as_environment()},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_import(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await start_import(settings, *args)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_for_checkpoint_line(
    checkpoint: Path, proc: asyncio.subprocess.Process, line: int
) -> dict[str, Any]:
    """The checkpoint once it is past `line`, while the import is still running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.returncode is None, "the import ended before it could be interrupted"
        try:
            found: dict[str, Any] = json.loads(await asyncio.to_thread(checkpoint.read_text))
        except (FileNotFoundError, json.JSONDecodeError):
            found = {"line": 0}
        if found["line"] >= line:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("the checkpoint did not move")


def read_json(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def outcomes_by_subject(client: ContractClient) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for documents in client.outcomes.values():
        for document in documents:
            found[document["subject_id"]].append(document)
    return found


def outcome_count(client: ContractClient) -> int:
    return sum(len(documents) for documents in client.outcomes.values())


async def test_an_import_killed_midway_then_resumed_delivers_every_row_and_applies_each_once(
    settings: Settings, client: ContractClient, tmp_path: Path
) -> None:
    path = tmp_path / "suppressions.csv"
    valid = write_list(path, 6_000)
    checkpoint = Path(f"{path}.checkpoint.json")

    proc = await start_import(settings, str(path), "--rate", "1500")
    at_kill = await wait_for_checkpoint_line(checkpoint, proc, 1_500)
    proc.kill()  # SIGKILL: no handler runs, the checkpoint stays as last written
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = read_json(checkpoint)
    assert killed["line"] >= at_kill["line"]
    assert killed["line"] < 6_001
    assert not killed["done"]

    code, out, err = await run_import(settings, str(path), "--json")
    assert code == 0, err
    assert f"resuming after line {killed['line']}" in err
    summary = json.loads(out)
    assert summary["rows"] == 6_000
    assert summary["sent"] == len(valid)
    assert summary["rejected"] == 6_000 - len(valid)
    assert summary["resumed_after_line"] == killed["line"]
    assert not summary["interrupted"]

    # Every record the two runs produced gets its outcome; wait for all of them.
    produced = await published(settings, settings.commands_bulk_topic)
    await client.wait_for(lambda: outcome_count(client) >= produced, within_s=120)
    resent = produced - len(valid)
    assert 0 <= resent <= 3 * 1_000  # at most the waves in flight when it was killed
    by_subject = outcomes_by_subject(client)
    assert set(by_subject) == valid  # no gap: every valid row reached the worker
    for subject, outcomes in by_subject.items():
        statuses = sorted(o["status"] for o in outcomes)
        assert statuses == ["applied"] + ["duplicate"] * (len(outcomes) - 1), subject
        assert len({o["command_id"] for o in outcomes}) == 1, subject
    print(
        f"\nkilled after line {killed['line']} of 6001; {resent} records sent again, "
        "all answered duplicate"
    )

    async with await OptoutClient.connect(settings, local_cache=False) as sdk:
        for i in (0, 1, 2, 3, 5998):
            subject = f"email:person.{i}@example.com"
            decision = await sdk.is_allowed(subject, "marketing.newsletter", "email")
            assert not decision.allowed, subject
        # Rows without a topic opted out of everything on email; `marketing` rows only that.
        assert not (
            await sdk.is_allowed("email:person.0@example.com", "reminders", "email")
        ).allowed
        assert (await sdk.is_allowed("email:person.1@example.com", "reminders", "email")).allowed

    # A finished import is not sent again by accident; on purpose, it is answered duplicate.
    code, _, err = await run_import(settings, str(path))
    assert code == 0
    assert "imported already" in err
    assert await published(settings, settings.commands_bulk_topic) == produced
    code, out, err = await run_import(settings, str(path), "--restart", "--json")
    assert code == 0, err
    again = await published(settings, settings.commands_bulk_topic)
    assert again == produced + len(valid)
    await client.wait_for(lambda: outcome_count(client) >= again, within_s=120)
    for subject, outcomes in outcomes_by_subject(client).items():
        assert [o["status"] for o in outcomes].count("applied") == 1, subject


async def commanded_subjects(settings: Settings) -> list[str]:
    """The subject of every record on the bulk lane's commands topic, duplicates included."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = range(settings.topic_partitions)
        parts = [TopicPartition(settings.commands_bulk_topic, p) for p in partitions]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        subjects: list[str] = []
        while [p for p in parts if await consumer.position(p) < ends[p]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                subjects += [json.loads(r.value)["subject_id"] for r in records]
        return subjects
    finally:
        await consumer.stop()


async def test_sigterm_stops_after_the_waves_in_flight_and_the_next_run_completes(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "list.csv"
    valid = write_list(path, 3_000)
    checkpoint = Path(f"{path}.checkpoint.json")
    proc = await start_import(settings, str(path), "--rate", "1000")
    await wait_for_checkpoint_line(checkpoint, proc, 500)
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 143, err.decode()
    assert "interrupted by SIGTERM" in out.decode()
    stopped = read_json(checkpoint)
    assert 500 <= stopped["line"] < 3_001
    assert not stopped["done"]
    # Everything up to the checkpoint is in Kafka, nothing after it.
    sent = await commanded_subjects(settings)
    assert len(sent) == stopped["sent"]

    code, _, err_text = await run_import(settings, str(path))
    assert code == 0, err_text
    assert read_json(checkpoint)["done"]
    assert set(await commanded_subjects(settings)) == valid


async def test_kafka_not_answering_is_one_line_and_exit_1(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "list.csv"
    write_list(path, 10)
    port = free_port()
    nowhere = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"})
    code, _, err = await run_import(nowhere, str(path))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines == [
        f"optout import: Kafka at 127.0.0.1:{port} did not answer (ConnectionRefusedError)"
    ]
