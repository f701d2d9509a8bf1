"""The latency waterfall on the real stack: a worker that applied a few commands shows every
step of `optout_waterfall_seconds` on its admin port's /metrics."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.application.waterfall import STEPS
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command

pytestmark = pytest.mark.integration


def step_counts(text: str) -> dict[str, float]:
    return {
        sample.labels["step"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "optout_waterfall_seconds_count"
    }


async def test_every_step_of_the_waterfall_is_observed(settings: Settings) -> None:
    async with Service(settings, with_worker=True), ContractClient(settings) as client:
        admin = f"http://127.0.0.1:{settings.admin_port}/metrics"
        async with httpx.AsyncClient(timeout=10) as http:
            before = step_counts((await http.get(admin)).text)
            # Present from the start (at zero), so a rate has something to compare with.
            assert before == dict.fromkeys(STEPS, 0.0)
            for n in range(5):
                outcome = await client.apply(command(f"w{n}", [("opt_out", "marketing", "email")]))
                assert outcome["status"] == "applied"
            response = await http.get(admin)
    assert response.status_code == 200
    after = step_counts(response.text)
    assert set(after) == set(STEPS)
    for step in STEPS:
        assert after[step] > 0, step
