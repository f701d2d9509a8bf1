"""The HTTP API as a process serves it: without Kafka, over a real socket, and until a signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

TOKEN = "reader-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_tokens": SecretStr(f"reader:{TOKEN}:read")})


def base(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.http_port}"


async def test_the_api_alone_needs_no_kafka(api_settings: Settings) -> None:
    nowhere = api_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    async with Service(nowhere, with_worker=False) as service:
        assert service.container is not None
        assert service.container.worker_state is None
        async with httpx.AsyncClient(base_url=base(nowhere), timeout=10) as http:
            ready = await http.get(f"http://127.0.0.1:{nowhere.admin_port}/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"postgresql": None, "redis": None}
            answer = await http.get(
                "/v1/subjects/u1/check",
                params={"topic": "marketing.newsletter", "channel": "email"},
                headers=AUTH,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["reason"]["basis"] == "default"


async def test_request_bodies_are_capped_over_the_wire(api_settings: Settings) -> None:
    limit = 64 * 1024
    capped = api_settings.model_copy(update={"http_max_body_bytes": limit})
    check = b'{"subject_id": "s", "topic": "marketing", "channel": "sms"}'
    big = b'{"checks": [' + b",".join([check] * (16 * limit // len(check))) + b"]}"

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    async with (
        Service(capped, with_worker=False),
        httpx.AsyncClient(base_url=base(capped), headers=AUTH, timeout=10) as http,
    ):
        json_body = {"Content-Type": "application/json"}
        for content in (big, chunks()):
            response = await http.post("/v1/check", content=content, headers=json_body)
            assert response.status_code == 413
            assert response.json() == {
                "error": "too_large",
                "detail": f"the request body is larger than {limit} bytes",
                "field": None,
            }
        small = json.loads(big)["checks"][:1_000]
        answered = await http.post("/v1/check", json={"checks": small})
        assert answered.status_code == 200


async def wait_until_serving(url: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            assert process.returncode is None, "the service exited while starting"
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize(
    ("command", "stop"), [("api", signal.SIGTERM), ("api", signal.SIGINT), ("run", signal.SIGTERM)]
)
async def test_the_cli_stops_cleanly_on_a_signal(
    settings: Settings, tmp_path: Path, command: str, stop: signal.Signals
) -> None:
    """uvicorn catches the signal while it serves; the process must still unwind everything."""
    log = tmp_path / "service.log"
    env = {**os.environ, **settings.as_environment(), "OPTOUT_LOG_FORMAT": "json"}
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.entrypoints.cli",
            command,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        await wait_until_serving(f"http://127.0.0.1:{settings.admin_port}/healthz", process)
        process.send_signal(stop)
        code = await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = log.read_text()
    events = [json.loads(line)["event"] for line in text.splitlines() if line.startswith("{")]
    assert code == 0, text
    assert events[-1] == "service_stopped", events
    assert "service_stopping" in events[events.index("service_started") :], events


ADMIN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/asyncapi.json")


async def test_the_public_port_serves_no_admin_route_and_the_admin_port_no_public_one(
    api_settings: Settings,
) -> None:
    admin = f"http://127.0.0.1:{api_settings.admin_port}"
    check = "/v1/subjects/u1/check?topic=marketing.newsletter&channel=email"
    async with (
        Service(api_settings, with_worker=False),
        httpx.AsyncClient(base_url=base(api_settings), timeout=10) as public,
    ):
        # The positive control: the public port answers its own routes.
        assert (await public.get(check, headers=AUTH)).status_code == 200
        for path in (*ADMIN_PATHS, "/docs", "/redoc", "/docs/oauth2-redirect"):
            assert (await public.get(path)).status_code == 404, path
        served = {path: await public.get(admin + path) for path in ADMIN_PATHS}
        assert {path: r.status_code for path, r in served.items()} == dict.fromkeys(
            ADMIN_PATHS, 200
        )
        assert "optout_ready 1.0" in served["/metrics"].text
        assert "/v1/subjects/{subject_id}/check" in served["/openapi.json"].json()["paths"]
        assert served["/asyncapi.json"].json()["asyncapi"].startswith("3.")
        assert (await public.get(admin + check, headers=AUTH)).status_code == 404


async def test_a_worker_alone_serves_the_admin_port_and_no_public_port(settings: Settings) -> None:
    async with (
        Service(settings, with_worker=True, public=False),
        httpx.AsyncClient(timeout=10) as http,
    ):
        admin = f"http://127.0.0.1:{settings.admin_port}"
        assert (await http.get(f"{admin}/healthz")).status_code == 200
        assert (await http.get(f"{admin}/metrics")).status_code == 200
        assert (await http.get(f"{admin}/openapi.json")).status_code == 404  # no public API
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{base(settings)}/v1/subjects/u1/check")
