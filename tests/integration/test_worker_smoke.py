"""The worker consumes, commits its offsets, and reports readiness honestly."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.ports import free_port
from tests.support.throwaway import throwaway_postgres

pytestmark = pytest.mark.integration


async def _committed(settings: Settings) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.consumer_group)
    finally:
        await admin.close()
    return sum(
        meta.offset
        for tp, meta in offsets.items()
        if isinstance(tp, TopicPartition) and tp.topic == settings.topic_commands
    )


async def _ready(url: str, want: int, within_s: float = 30.0) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            response = await http.get(url)
            if response.status_code == want:
                body: dict[str, object] = response.json()
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"readyz stayed {response.status_code}: {response.text}")
            await asyncio.sleep(0.2)


async def test_worker_consumes_and_commits_offsets(settings: Settings) -> None:
    async with Service(settings, with_worker=True):
        assert await _committed(settings) == 0
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for i in range(7):
                await producer.send_and_wait(settings.topic_commands, b"not json", key=b"%d" % i)
        finally:
            await producer.stop()
        deadline = asyncio.get_running_loop().time() + 30
        while await _committed(settings) < 7:
            assert asyncio.get_running_loop().time() < deadline, "offsets did not advance"
            await asyncio.sleep(0.2)
        assert await _committed(settings) == 7


async def test_readyz_follows_postgres(settings: Settings) -> None:
    with throwaway_postgres(free_port()) as pg:
        own = settings.model_copy(update={"database_url": SecretStr(pg.url)})
        async with Service(own, with_worker=True):
            url = f"http://127.0.0.1:{own.admin_port}/readyz"
            async with httpx.AsyncClient() as http:
                assert (await http.get(url.replace("readyz", "healthz"))).status_code == 200
            body = await _ready(url, 200)
            assert body["status"] == "ready"
            pg.stop()
            body = await _ready(url, 503)
            checks = body["checks"]
            assert isinstance(checks, dict)
            assert checks["postgresql"] is not None
            assert checks["redis"] is None
            pg.start()
            await _ready(url, 200)
