"""A real Prometheus (Debian's package) scrapes a running worker and evaluates the shipped
alert rules: the counters move, and a dead letter fires the DLQ alert."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


@pytest.fixture
def prometheus(settings: Settings, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is installed by the local stack (make stack)"
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "optout-worker",
                "static_configs": [{"targets": [f"127.0.0.1:{settings.admin_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


async def query(http: httpx.AsyncClient, expression: str) -> float:
    answer = (await http.get("/api/v1/query", params={"query": expression})).json()
    result: list[dict[str, Any]] = answer["data"]["result"]
    return sum(float(r["value"][1]) for r in result)


async def firing(http: httpx.AsyncClient, name: str) -> bool:
    alerts = (await http.get("/api/v1/alerts")).json()["data"]["alerts"]
    return any(a["labels"]["alertname"] == name and a["state"] == "firing" for a in alerts)


async def eventually(check: Any, within_seconds: float = 60) -> None:
    for _ in range(int(within_seconds / 0.5)):
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError("never happened")


async def test_prometheus_scrapes_the_worker_and_fires_the_dlq_alert(
    settings: Settings, prometheus: str
) -> None:
    async with (
        Service(settings, with_worker=True),
        ContractClient(settings) as client,
        httpx.AsyncClient(base_url=prometheus, timeout=10) as http,
    ):
        await eventually(lambda: _ready(http), 60)
        # A few scrapes at zero first: the alert is on an increase.
        await eventually(lambda: _scraped(http), 60)
        assert not await firing(http, "OptoutDeadLettersArriving")
        for i in range(5):
            await client.apply(command(f"p{i}", [("opt_out", "marketing", "email")]))
        await client.send(b"\xff\xfe not a command", key="x")
        await client.wait_for(lambda: len(client.dead_letters) == 1)

        async def counted() -> bool:
            return (
                await query(http, "optout_commands_consumed_total") == 6
                and await query(http, 'optout_outcomes_total{status="applied"}') == 5
                and await query(http, 'optout_dead_letters_total{error="not_utf8"}') == 1
            )

        await eventually(counted)
        await eventually(lambda: firing(http, "OptoutDeadLettersArriving"))


async def _ready(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/-/ready")).status_code == 200
    except httpx.TransportError:
        return False


async def _scraped(http: httpx.AsyncClient) -> bool:
    return await query(http, "count_over_time(optout_ready[1m])") >= 3
