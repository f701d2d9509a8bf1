"""SIGTERM under load: the worker takes no new batch, finishes and commits the one in flight,
and exits within its deadline; the next worker finds nothing of it to redo."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.settings import Settings
from tests.support.contract_client import ContractClient
from tests.support.oracle import assert_matches_oracle, random_stream, start_worker
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


async def committed_offsets(settings: Settings) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(settings.consumer_group)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in found.items()
        if isinstance(tp, TopicPartition) and tp.topic == settings.topic_commands
    }


async def test_sigterm_under_load_commits_the_batch_in_flight(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={"batch_max_records": 100, "shutdown_deadline_seconds": 10, "log_format": "json"}
    )
    stream = random_stream(seed=11, n=1500, subjects=60)
    first_log = tmp_path / "first.log"
    worker = start_worker(settings, first_log, free_port())
    try:
        await _stop_under_load(settings, worker, first_log, stream, tmp_path)
    finally:
        if worker.poll() is None:  # the test failed before the worker exited: no orphan
            worker.kill()
            worker.wait()


async def _stop_under_load(
    settings: Settings,
    worker: subprocess.Popen[bytes],
    first_log: Path,
    stream: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    async with ContractClient(settings) as client:
        where: dict[str, tuple[int, int]] = {}

        async def produce() -> None:
            for doc in stream:
                metadata = await client.send(doc)
                where[doc["command_id"]] = (metadata.partition, metadata.offset)

        producing = asyncio.create_task(produce())
        await client.wait_for(lambda: len(client.outcomes) >= 300, 90)
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 120)
        assert code == 0
        await asyncio.sleep(1.0)  # outcomes published before the exit reach the reader
        committed = await committed_offsets(settings)
        answered = [where[c] for c in list(client.outcomes) if c in where]
        assert answered
        for partition, offset in answered:
            # Every record answered before the exit has its offset committed: nothing of
            # it is left for the next worker to redo.
            assert committed.get(partition, 0) > offset, (partition, offset)
        text = await asyncio.to_thread(first_log.read_text)
        events = [json.loads(line)["event"] for line in text.splitlines()]
        # Within its deadline: the drain's own verdict, not a clock read by the test (a busy
        # machine slows the exit after the drain, not the drain's deadline).
        assert "worker_drained" in events
        assert "worker_drain_deadline_passed" not in events

        await producing
        second = start_worker(settings, tmp_path / "second.log", free_port())
        try:
            ids = [doc["command_id"] for doc in stream]
            await client.wait_for(lambda: all(c in client.outcomes for c in ids), 120)
            await assert_matches_oracle(settings, client, stream)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.to_thread(second.wait, 30)
