"""The HTTP API as a process serves it."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from service.entrypoints.server import Service
from service.settings import Settings
from tests.conftest import free_port

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
        assert service.container.broker is None
        async with httpx.AsyncClient(base_url=base(nowhere), timeout=10) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"postgresql": None, "redis": None}
            answer = await http.get(
                "/v1/subjects/u1/check",
                params={"topic": "marketing.newsletter", "channel": "email"},
                headers=AUTH,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["reason"]["basis"] == "default"
