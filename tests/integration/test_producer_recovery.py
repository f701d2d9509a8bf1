"""The output producer's sender dying mid-batch: the batch is retried on a new producer and
every command gets its outcome; when no new producer can be started, /healthz fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError

from service.adapters.kafka.producer import KafkaOutput
from service.adapters.redis_cache import RedisStateCache
from service.domain.model import SubjectState
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command

pytestmark = pytest.mark.integration


async def healthz(settings: Settings) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{settings.admin_port}/healthz")).status_code


def kill_sender(output: KafkaOutput) -> None:
    task = output._sender_task(output._producer)
    assert task is not None
    assert not task.done()
    task.cancel()


async def test_sender_killed_mid_batch_is_recreated(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = settings.model_copy(update={"retry_backoff_max_seconds": 0.2})
    async with Service(own, with_worker=True) as service, ContractClient(own) as client:
        assert service.container is not None
        output = service.container.output
        assert output is not None
        await client.apply(command("warm-up", [("opt_out", "marketing", "sms")]))

        # Between the PostgreSQL commit and the publication of the next batch.
        write = RedisStateCache.write
        kills = 0

        async def write_then_kill(self: RedisStateCache, states: Sequence[SubjectState]) -> Any:
            nonlocal kills
            written = await write(self, states)
            if kills == 0:
                kills += 1
                kill_sender(output)
            return written

        monkeypatch.setattr(RedisStateCache, "write", write_then_kill)
        docs = [command(f"r{i}", [("opt_out", "marketing", "email")]) for i in range(10)]
        for doc in docs:
            await client.send(doc)
        await client.wait_for(lambda: all(d["command_id"] in client.outcomes for d in docs), 30)
        assert kills == 1
        assert output.recreated == 1
        assert {client.outcomes[d["command_id"]][0]["status"] for d in docs} == {"applied"}
        # A retried batch re-publishes identical answers, never different ones.
        assert all(all(o == v[0] for o in v) for v in client.outcomes.values())
        assert await healthz(own) == 200

        # Now no replacement can be started: liveness fails until one can.
        build = output._build

        def cannot_build() -> Any:
            raise KafkaConnectionError("no broker")

        monkeypatch.setattr(output, "_build", cannot_build)
        kill_sender(output)
        late = command("late", [("opt_out", "product", "email")])
        await client.send(late)
        for _ in range(100):
            if await healthz(own) == 503:
                break
            await asyncio.sleep(0.05)
        assert await healthz(own) == 503
        assert late["command_id"] not in client.outcomes
        monkeypatch.setattr(output, "_build", build)
        assert (await client.outcome(late["command_id"], 10))["status"] == "applied"
        assert await healthz(own) == 200
        assert output.recreated == 2
