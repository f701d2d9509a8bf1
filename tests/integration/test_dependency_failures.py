"""PostgreSQL, Redis or Kafka going away mid-stream: the worker waits, then catches up.

While a dependency is down the worker keeps its offsets uncommitted, retries with capped
backoff and reports not ready; when the dependency returns, every command gets exactly one
application and its outcome. Each test stops a server of its own, never the shared stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from service.adapters.postgres.migrator import migrate
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.ports import free_port
from tests.support.throwaway import throwaway_kafka, throwaway_postgres, throwaway_redis

pytestmark = pytest.mark.integration


def batch_of(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        command(
            f"{prefix}-{i % 5}", [("opt_out", "marketing", "email"), ("opt_in", "product", "*")]
        )
        for i in range(n)
    ]


async def readyz(settings: Settings) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{settings.admin_port}/readyz")
        body: dict[str, Any] = r.json()
        return r.status_code, body


async def until_not_ready(settings: Settings, check: str) -> dict[str, Any]:
    for _ in range(150):
        status, body = await readyz(settings)
        if status == 503 and body["checks"].get(check):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"readyz never reported {check}: {body}")


async def applied_once(settings: Settings, docs: list[dict[str, Any]]) -> None:
    """Every command has one history row per change and the versions count the commands."""
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        rows = await conn.fetch(
            "SELECT command_id, count(*) AS n FROM consent_history GROUP BY command_id"
        )
        versions = await conn.fetchval("SELECT sum(version) FROM subjects")
    finally:
        await conn.close()
    counts = {r["command_id"]: r["n"] for r in rows}
    for doc in docs:
        assert counts.get(doc["command_id"], 0) <= len(doc["changes"])
    assert versions == sum(1 for d in docs if counts.get(d["command_id"]))


async def send_all(client: ContractClient, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        await client.send(doc)


async def assert_survives_outage(
    own: Settings, prefix: str, check: str, stop: Callable[[], None], start: Callable[[], None]
) -> None:
    """Answer a first batch, lose the dependency, send a second, get it back: all answered once.

    While the dependency is down the consumer reports not ready naming it, and no outcome
    is published: PostgreSQL may even have committed, but no outcome may claim "applied"
    before the cache agrees with it.
    """
    first, second = batch_of(prefix, 10), batch_of(prefix, 10)
    async with Service(own, with_worker=True), ContractClient(own) as client:
        await send_all(client, first)
        await client.wait_for(lambda: len(client.outcomes) == 10)
        stop()
        await send_all(client, second)
        body = await until_not_ready(own, "consumer")
        assert body["checks"][check] is not None
        await asyncio.sleep(1.0)
        assert len(client.outcomes) == 10, f"nothing may be answered while {check} is down"
        start()
        await client.wait_for(lambda: len(client.outcomes) == 20, 60)
        # The handler clears its failure right after the acks, a moment after the outcomes.
        for _ in range(100):
            if (await readyz(own))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert (await readyz(own))[0] == 200
        # A batch retried after a partial failure re-publishes identical answers.
        assert all(all(a == v[0] for a in v) for v in client.outcomes.values())
        for doc in second:
            assert client.outcomes[doc["command_id"]][0]["status"] == "applied"
        await applied_once(own, first + second)


async def test_postgres_outage(settings: Settings) -> None:
    with throwaway_postgres(free_port()) as pg:
        conn = await asyncpg.connect(pg.url)
        try:
            await migrate(conn, settings.database_schema)
        finally:
            await conn.close()
        own = settings.model_copy(
            update={"database_url": SecretStr(pg.url), "retry_backoff_max_seconds": 0.5}
        )
        await assert_survives_outage(own, "pg", "postgresql", pg.stop, pg.start)


async def test_redis_outage(settings: Settings) -> None:
    with throwaway_redis(free_port()) as redis:
        own = settings.model_copy(
            update={"redis_url": SecretStr(redis.url), "retry_backoff_max_seconds": 0.5}
        )
        await assert_survives_outage(own, "rd", "redis", redis.stop, redis.start)


async def test_kafka_outage(settings: Settings) -> None:
    with throwaway_kafka(free_port(), free_port()) as kafka:
        own = settings.model_copy(
            update={"kafka_bootstrap": kafka.bootstrap, "retry_backoff_max_seconds": 0.5}
        )
        first, second = batch_of("kf", 10), batch_of("kf", 10)
        async with Service(own, with_worker=True), ContractClient(own) as client:
            await send_all(client, first)
            await client.wait_for(lambda: len(client.outcomes) == 10, 60)
            kafka.stop()
            body = await until_not_ready(own, "kafka")
            assert body["checks"]["postgresql"] is None
            kafka.start()
            await send_all(client, second)
            await client.wait_for(lambda: len(client.outcomes) == 20, 120)
            await applied_once(own, first + second)


async def test_the_first_read_after_a_redis_restart_is_answered(settings: Settings) -> None:
    """A pooled connection the restart closed is reopened and the command tried again: the
    first read after Redis is back answers 200, not 503 (and no rate-limit check fails)."""
    token = "restart-reader-0123456789"
    with throwaway_redis(free_port()) as redis:
        own = settings.model_copy(
            update={
                "redis_url": SecretStr(redis.url),
                "http_port": 0,
                "api_tokens": SecretStr(f"reader:{token}:check"),
            }
        )
        async with (
            Service(own, with_worker=False) as service,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{service.ports['http']}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ) as http,
        ):

            async def read() -> int:
                answer = await http.get("/v1/subjects/restarted/preferences")
                return answer.status_code

            assert await read() == 200  # the pool holds a connection from now on
            redis.stop()
            redis.start()
            with capture_logs() as logs:
                assert await read() == 200
            redis.stop()
            assert await read() == 503  # positive control: a Redis error does show as 503
    assert [e for e in logs if e["event"].endswith("_unavailable")] == []
