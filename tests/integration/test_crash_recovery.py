"""Workers killed with SIGKILL mid-stream, and partitions moving between workers.

After each scenario PostgreSQL, Redis and the last event of every subject equal an
independent oracle's state, every command has its outcome, and nothing was applied twice.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from service.adapters.kafka.connection import KafkaConnection
from service.settings import Settings
from tests.support.contract_client import ContractClient
from tests.support.oracle import assert_matches_oracle, random_stream, start_worker
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


async def produce(client: ContractClient, stream: list[dict[str, object]]) -> None:
    for i, doc in enumerate(stream):
        await client.send(doc)
        if i % 50 == 0:
            await asyncio.sleep(0.05)


async def test_sigkill_twice_mid_stream(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"batch_max_records": 50})
    stream = random_stream(seed=7, n=900, subjects=40)
    worker = start_worker(settings, tmp_path / "worker.log", free_port())
    try:
        async with ContractClient(settings) as client:
            producing = asyncio.create_task(produce(client, stream))
            for kill_after in (150, 450):
                await client.wait_for(lambda n=kill_after: len(client.outcomes) >= n, 60)
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                worker = start_worker(settings, tmp_path / "worker.log", free_port())
            await producing
            await client.wait_for(lambda: len(client.outcomes) == len(stream), 120)
            await assert_matches_oracle(settings, client, stream)
    finally:
        stop(worker)


async def test_partitions_move_between_workers(settings: Settings, tmp_path: Path) -> None:
    """A second worker joins mid-stream, then the first leaves: two rebalances."""
    settings = settings.model_copy(update={"batch_max_records": 50})
    stream = random_stream(seed=11, n=900, subjects=40)
    second_log = tmp_path / "second.log"
    first = start_worker(settings, tmp_path / "first.log", free_port())
    second: subprocess.Popen[bytes] | None = None
    try:
        async with ContractClient(settings) as client:
            await produce(client, stream[:300])
            await client.wait_for(lambda: len(client.outcomes) >= 200, 60)
            second = start_worker(settings, second_log, free_port())
            # Commands keep coming while the second worker starts and joins, so the first
            # rebalance happens mid-stream however fast the first worker drains.
            sent = 300
            while not last_assignment(second_log) and sent < 600:
                await client.send(stream[sent])
                sent += 1
                await asyncio.sleep(0.1)
            assert last_assignment(second_log), "the second worker never joined the group"
            producing = asyncio.create_task(produce(client, stream[sent:]))
            await client.wait_for(lambda: len(client.outcomes) >= sent + 50, 60)
            stop(first)
            await producing
            await client.wait_for(lambda: len(client.outcomes) == len(stream), 120)
            await assert_matches_oracle(settings, client, stream)
        for _ in range(100):
            if last_assignment(second_log) == [0, 1, 2]:
                break
            await asyncio.sleep(0.1)
        assert last_assignment(second_log) == [0, 1, 2]
    finally:
        stop(first)
        if second is not None:
            stop(second)


def last_assignment(log: Path) -> list[int]:
    """The partitions a worker's log says it holds now (empty before its first assignment)."""
    if not log.exists():
        return []
    lines = [line for line in log.read_text().splitlines() if '"partitions_assigned"' in line]
    return list(json.loads(lines[-1])["partitions"]) if lines else []


async def test_three_workers_one_killed_partitions_move_and_lag_drains(
    settings: Settings, tmp_path: Path
) -> None:
    """Scale-out on one machine: three workers share six partitions; one is SIGKILLed and its
    partitions move to the others; every command gets its outcome once, and the lag drains."""
    from service.adapters.kafka.lag import group_lag

    settings = settings.model_copy(
        update={"batch_max_records": 50, "topic_partitions": 6, "log_format": "json"}
    )
    stream = random_stream(seed=23, n=1200, subjects=60)
    workers = [start_worker(settings, tmp_path / f"worker{i}.log", free_port()) for i in range(3)]
    try:
        # All three in the group before the stream starts: one worker alone drains 1,200
        # commands in a few seconds, before slower-starting ones have joined at all.
        for _ in range(600):
            if all(last_assignment(tmp_path / f"worker{i}.log") for i in range(3)):
                break
            await asyncio.sleep(0.1)
        async with ContractClient(settings) as client:
            producing = asyncio.create_task(produce(client, stream))
            await client.wait_for(lambda: len(client.outcomes) >= 300, 90)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)
            await producing
            await client.wait_for(lambda: len(client.outcomes) == len(stream), 180)
            await assert_matches_oracle(settings, client, stream)
            for _ in range(60):
                lag = await group_lag(
                    KafkaConnection(settings.kafka_bootstrap),
                    settings.consumer_group,
                    settings.topic_commands,
                )
                if sum(p.lag_records for p in lag) == 0:
                    break
                await asyncio.sleep(1)
            assert sum(p.lag_records for p in lag) == 0
            assert len(lag) == 6
        # The survivors hold every partition between them: the killed worker's moved.
        final: set[int] = set()
        for survivor in (1, 2):
            assigned = [
                json.loads(line)["partitions"]
                for line in (tmp_path / f"worker{survivor}.log").read_text().splitlines()
                if '"partitions_assigned"' in line
            ]
            final.update(assigned[-1])
        assert final == set(range(6))
    finally:
        for worker in workers:
            stop(worker)
