"""What on-call sees: metrics that move while commands flow, and a process that starts while
a dependency is down, says so, and gets to work when it comes back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from structlog.testing import capture_logs

from service.adapters.postgres.migrator import migrate
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.ports import free_port
from tests.support.throwaway import throwaway_kafka, throwaway_postgres, throwaway_redis

pytestmark = pytest.mark.integration

TOKEN = "metrics-test-token-0123456789"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_while_commands_flow(settings: Settings) -> None:
    own = settings.model_copy(update={"api_tokens": SecretStr(f"ops:{TOKEN}:read")})
    base = f"http://127.0.0.1:{own.http_port}"
    async with Service(own, with_worker=True), ContractClient(own) as client:
        outcome = await client.apply(command("m1", [("opt_out", "marketing", "email")]))
        assert outcome["status"] == "applied"
        await client.apply(command("m1", [("opt_out", "security", "email")]))
        await client.send(b"not json", key="m2")
        await client.wait_for(lambda: len(client.dead_letters) == 1)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            check = await http.get(
                "/v1/subjects/m1/check",
                params={"topic": "marketing", "channel": "email"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert check.status_code == 200
            response = await http.get(f"http://127.0.0.1:{own.admin_port}/metrics")
    assert response.status_code == 200
    found = samples(response.text)
    assert value(found, "optout_commands_consumed_total") >= 3
    assert value(found, "optout_outcomes_total", status="applied", reason="") >= 1
    assert value(found, "optout_outcomes_total", status="rejected", reason="mandatory_topic") >= 1
    assert value(found, "optout_dead_letters_total", error="not_json") == 1
    assert value(found, "optout_batch_records_count") >= 1
    for stage in ("decode", "postgresql", "redis", "publish", "commit"):
        assert value(found, "optout_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert value(found, "optout_record_to_event_seconds_count") >= 1
    assert value(found, "optout_occurred_to_effective_seconds_count") >= 1
    assert any(name == "optout_consumer_lag_records" for name, _ in found)
    assert value(found, "optout_ready") == 1
    assert value(found, "optout_dependency_up", dependency="postgresql") == 1
    assert value(found, "optout_checks_total", answer="denied", source="redis") == 1
    assert value(found, "optout_check_duration_seconds_count", source="redis") == 1


async def until(condition: Callable[[], object], within_seconds: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + within_seconds
    while not await condition():  # type: ignore[misc]
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.2)


async def health(settings: Settings) -> tuple[int, int, dict[str, str | None]]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.admin_port}") as http:
        live = await http.get("/healthz")
        ready = await http.get("/readyz")
        return live.status_code, ready.status_code, ready.json()["checks"]


async def started_while_down(
    own: Settings, dependency: str, start: Callable[[], None], *, with_worker: bool
) -> None:
    """The process starts, logs one line naming the dependency, answers /healthz 200 and
    /readyz 503 naming it; once the dependency is started it becomes ready (and consumes)."""
    with capture_logs() as logs:
        async with Service(own, with_worker=with_worker):
            live, ready, checks = await health(own)
            assert (live, ready) == (200, 503)
            reason = checks[dependency]
            assert reason is not None
            assert "since" in reason
            lines = [e for e in logs if e["event"] == "dependency_unreachable"]
            assert [e["dependency"] for e in lines] == [dependency], lines
            assert "Traceback" not in str(lines)
            start()

            async def ready_now() -> bool:
                return (await health(own))[1] == 200

            await until(ready_now, 90)
            if with_worker:
                async with ContractClient(own) as client:
                    doc = command("back", [("opt_out", "marketing", "email")])
                    assert (await client.apply(doc, within_s=60))["status"] == "applied"


@pytest.mark.parametrize("with_worker", [True, False])
async def test_starts_with_postgresql_down(settings: Settings, with_worker: bool) -> None:
    with throwaway_postgres(free_port()) as pg:
        conn = await asyncpg.connect(pg.url)
        try:
            await migrate(conn, settings.database_schema)
        finally:
            await conn.close()
        pg.stop()
        own = settings.model_copy(
            update={"database_url": SecretStr(pg.url), "retry_backoff_max_seconds": 0.5}
        )
        await started_while_down(own, "postgresql", pg.start, with_worker=with_worker)


@pytest.mark.parametrize("with_worker", [True, False])
async def test_starts_with_redis_down(settings: Settings, with_worker: bool) -> None:
    with throwaway_redis(free_port()) as redis:
        redis.stop()
        own = settings.model_copy(
            update={"redis_url": SecretStr(redis.url), "retry_backoff_max_seconds": 0.5}
        )
        await started_while_down(own, "redis", redis.start, with_worker=with_worker)


async def test_starts_with_kafka_down(settings: Settings) -> None:
    with throwaway_kafka(free_port(), free_port()) as kafka:
        kafka.stop()
        own = settings.model_copy(
            update={"kafka_bootstrap": kafka.bootstrap, "retry_backoff_max_seconds": 0.5}
        )
        await started_while_down(own, "kafka", kafka.start, with_worker=True)


async def test_ports_chosen_by_the_system_are_reported(settings: Settings) -> None:
    """Port 0 lets the system choose; the service says which ports it bound, and they answer."""
    own = settings.model_copy(update={"http_port": 0, "admin_port": 0})
    with capture_logs() as logs:
        async with Service(own, with_worker=False) as service:
            assert set(service.ports) == {"http", "admin"}
            assert 0 not in service.ports.values()
            async with httpx.AsyncClient(timeout=10) as http:
                live = await http.get(f"http://127.0.0.1:{service.ports['admin']}/healthz")
                public = await http.get(
                    f"http://127.0.0.1:{service.ports['http']}/v1/subjects/s/check",
                    params={"topic": "marketing", "channel": "email"},
                )
    assert live.status_code == 200
    assert public.status_code == 401  # the public API, asking for a token
    started = [e for e in logs if e["event"] == "service_started"]
    assert started[0]["admin"] == f"http://{own.admin_host}:{service.ports['admin']}"


async def test_a_taken_port_fails_the_start_before_anything_connects(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        own = settings.model_copy(update={"http_port": 0, "admin_port": port})
        with capture_logs() as logs, pytest.raises(OSError, match="in use"):
            async with Service(own, with_worker=True):
                pass
    # Nothing was started, not even a connection attempt that logs (the test above shows a
    # start that binds logging as it goes).
    assert logs == []
