"""`optout dlq replay` against real Kafka and a real worker: the chosen dead letters' original
bytes go to the bulk lane and are judged again; a second replay changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.channels import published
from tests.support.contract_client import ContractClient, command

pytestmark = pytest.mark.integration

OPTOUT = str(Path(sys.executable).with_name("optout"))


async def replay(settings: Settings, *args: str) -> dict[str, object]:
    env = {**os.environ, **settings.as_environment()}
    done = await asyncio.to_thread(
        subprocess.run,
        [OPTOUT, "dlq", "replay", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


async def test_replay_sends_the_chosen_dead_letters_to_the_bulk_lane(settings: Settings) -> None:
    refused = [command(f"dlq-{i}", [("opt_out", "marketing", "email")]) for i in range(3)]
    other = command("dlq-other", [("opt_out", "marketing", "email")])
    async with ContractClient(settings) as client:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for doc in refused:
                await producer.send_and_wait(
                    settings.topic_dlq,
                    json.dumps(doc).encode(),
                    key=doc["subject_id"].encode(),
                    headers=[("x-error", b"failed with UniqueViolationError")],
                )
            await producer.send_and_wait(
                settings.topic_dlq,
                json.dumps(other).encode(),
                key=b"dlq-other",
                headers=[("x-error", b"invalid payload: changes: missing")],
            )
            await producer.send_and_wait(
                settings.topic_dlq,
                b'{"command_id": "cut',
                key=b"dlq-cut",
                headers=[("x-error", b"failed with X"), ("x-truncated", b"true")],
            )
        finally:
            await producer.stop()
        dry = await replay(settings, "--reason", "failed with", "--dry-run")
        assert (dry["replayed"], dry["truncated"]) == (3, 1)
        assert await published(settings, settings.commands_bulk_topic) == 0
        first = await replay(settings, "--reason", "failed with")
        assert (first["read"], first["chosen"], first["replayed"]) == (5, 4, 3)
        assert await published(settings, settings.commands_bulk_topic) == 3
        async with Service(settings, with_worker=True):
            ids = [d["command_id"] for d in refused]
            await client.wait_for(lambda: all(i in client.outcomes for i in ids), 60)
            assert {client.outcomes[i][0]["status"] for i in ids} == {"applied"}
            # The same dead letters again: answered, never applied twice.
            await replay(settings, "--reason", "failed with")
            await client.wait_for(lambda: all(len(client.outcomes[i]) == 2 for i in ids), 60)
            assert {client.outcomes[i][1]["status"] for i in ids} == {"duplicate"}
        # The letter of another reason was never chosen.
        assert other["command_id"] not in client.outcomes
