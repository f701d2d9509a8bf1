"""`optout worker --processes 2`: two processes in one group share the partitions."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.oracle import worker_env

pytestmark = pytest.mark.integration


async def group_members(settings: Settings) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([settings.consumer_group])
        (group,) = response.to_object()["groups"]
        return len(group["members"])
    finally:
        await admin.close()


async def test_two_processes_share_the_group_and_stop_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    env = worker_env(settings)
    # Each process picks a free port: with a fixed port P the second takes P + 1, which
    # nothing here reserved (another process may hold it).
    env["OPTOUT_ADMIN_PORT"] = "0"
    log = (tmp_path / "workers.log").open("ab")
    supervisor = subprocess.Popen(  # noqa: ASYNC220 (a long-lived child, not awaited here)
        [sys.executable, "-m", "service.entrypoints.cli", "worker", "--processes", "2"],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        async with ContractClient(settings) as client:
            docs = [command(f"p-{i}", [("opt_out", "marketing", "email")]) for i in range(60)]
            for doc in docs:
                await client.send(doc)
            await client.wait_for(lambda: all(d["command_id"] in client.outcomes for d in docs), 90)
            assert {client.outcomes[d["command_id"]][0]["status"] for d in docs} == {"applied"}
            for _ in range(100):
                if await group_members(settings) == 2:
                    break
                await asyncio.sleep(0.2)
            assert await group_members(settings) == 2
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        log.close()
