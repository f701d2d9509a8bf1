"""Effect receipts against the real stack: two SDK instances named as two senders, one of
them no longer applying events; an opt-out's receipt says it is in effect at the one after
N ms and not yet at the other, and the metrics and `optout lag --senders` say the same."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from service.client import OptoutClient
from service.domain.model import SubjectKey
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command

pytestmark = pytest.mark.integration

OPTOUT = str(Path(sys.executable).with_name("optout"))
AUDITOR = "auditor-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
TOPIC, CHANNEL = "marketing.newsletter", "email"


async def until(condition: Callable[[], bool], within_seconds: float, what: str) -> None:
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < within_seconds, f"{what}: not within the wait"
        await asyncio.sleep(0.02)


def sender(settings: Settings, name: str) -> Settings:
    return settings.model_copy(
        update={"client_sender": name, "client_report_interval_seconds": 0.05}
    )


async def test_a_receipt_times_the_sender_that_applied_and_says_not_yet_for_the_one_that_stopped(
    settings: Settings,
) -> None:
    settings = settings.model_copy(
        update={"api_tokens": SecretStr(f"auditor:{AUDITOR}:history,reader:{READER}:check")}
    )
    base = f"http://127.0.0.1:{settings.http_port}"
    admin_base = f"http://127.0.0.1:{settings.admin_port}"
    async with Service(settings, with_worker=True) as service, ContractClient(settings) as kafka:
        assert service.container is not None
        effects = service.container.effects
        assert effects is not None
        await until(lambda: len(effects.tracker.partitions) == 3, 30, "receipts follow")
        mail = await OptoutClient.connect(sender(settings, "mail"))
        sms = await OptoutClient.connect(sender(settings, "sms"))
        try:
            # Both have said where they start, on every partition.
            await until(lambda: len(effects.tracker.positions()) == 2, 30, "both reported")
            assert sms.follower is not None
            assert sms.follower.consumer is not None
            sms.follower.consumer.pause(*sms.follower.partitions)  # stops applying events

            opt_out = [("opt_out", "marketing", "email")]
            outcome = await kafka.apply(command("subject-r1", opt_out, command_id="receipt-1"))
            assert outcome["status"] == "applied"
            assert mail.local_cache is not None
            key = SubjectKey("default", outcome["subject_id"])
            await until(lambda: mail.local_cache.peek(key) is not None, 10, "mail applied")  # type: ignore[union-attr]

            async with httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {AUDITOR}"}
            ) as api:

                async def receipt() -> dict[str, object]:
                    answer = await api.get("/v1/commands/receipt-1/receipt")
                    assert answer.status_code in (200, 404), answer.text
                    return answer.json() if answer.status_code == 200 else {}

                deadline = time.perf_counter() + 15
                body = await receipt()
                while not (
                    body
                    and {s["sender"]: s["status"] for s in body["senders"]}.get("mail")  # type: ignore[attr-defined]
                    == "in_effect"
                ):
                    assert time.perf_counter() < deadline, body
                    await asyncio.sleep(0.05)
                    body = await receipt()
                by_sender = {s["sender"]: s for s in body["senders"]}  # type: ignore[attr-defined]
                # Positive control: the sender still applying has it, timed.
                assert by_sender["mail"]["effect_ms"] > 0
                assert by_sender["mail"]["summary"].startswith("in effect at mail after ")
                # The stopped one: not yet, and behind.
                assert by_sender["sms"]["status"] == "not_yet"
                assert by_sender["sms"]["behind_records"] >= 1
                [event] = kafka.events[outcome["subject_id"]]
                assert body["command_id"] == "receipt-1"
                assert isinstance(body["partition"], int)
                assert isinstance(body["offset"], int)

                unknown = await api.get("/v1/commands/never-sent/receipt")
                assert unknown.status_code == 404
                assert unknown.json()["error"] == "unknown_receipt"
                other_scope = await api.get(
                    "/v1/commands/receipt-1/receipt",
                    headers={"Authorization": f"Bearer {READER}"},
                )
                assert other_scope.status_code == 403
            assert event["command_id"] == "receipt-1"

            async with httpx.AsyncClient(base_url=admin_base) as admin:

                async def metric(line_start: str) -> float | None:
                    text = (await admin.get("/metrics")).text
                    for line in text.splitlines():
                        if line.startswith(line_start):
                            return float(line.split()[-1])
                    return None

                count = 'optout_sender_effect_seconds_count{sender="mail"}'
                assert await metric(count) == 1.0
                assert await metric('optout_sender_effect_seconds_count{sender="sms"}') is None
                deadline = time.perf_counter() + 10
                while (await metric('optout_sender_behind_records{sender="sms"}') or 0) < 1:
                    assert time.perf_counter() < deadline, "sms never shown behind"
                    await asyncio.sleep(0.2)
                assert await metric('optout_sender_behind_records{sender="mail"}') == 0
                age = await metric('optout_sender_last_report_age_seconds{sender="sms"}')
                assert age is not None

            env = {**os.environ, **settings.as_environment()}
            listed = subprocess.run(  # noqa: ASYNC221 (a CLI run to its end)
                [OPTOUT, "lag", "--senders", "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert listed.returncode == 0, listed.stderr
            rows = {r["sender"]: r for r in json.loads(listed.stdout)["senders"]}
            assert rows["mail"]["behind_records"] == 0
            assert rows["mail"]["effect_p50_ms"] == pytest.approx(by_sender["mail"]["effect_ms"])
            assert rows["sms"]["behind_records"] >= 1
            assert rows["sms"]["effect_p50_ms"] is None
            table = subprocess.run(  # noqa: ASYNC221
                [OPTOUT, "lag", "--senders"], capture_output=True, text=True, timeout=60, env=env
            )
            assert table.stdout.splitlines()[0].split()[:4] == [
                "SENDER", "INSTANCES", "POSITION", "BEHIND",
            ]  # fmt: skip
        finally:
            await sms.close()
            await mail.close()
