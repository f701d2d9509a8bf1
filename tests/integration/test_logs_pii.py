"""A worker's logs, for a run full of personal data, hold none of it.

Subjects are email addresses and phone numbers, commands carry IPs, user agents and free
text; some are invalid or hostile so the error paths log too. The log is JSON, one object
per line, and no line may contain any of those values (ids and counts only).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.oracle import start_worker
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

EMAILS = ["ada.lovelace@example.org", "grace+news@example.com"]
PHONES = ["+14155550123", "+447700900123"]
IPS = ["203.0.113.77", "2001:db8::42"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) PrivateBrowser/9.1"]
REASON = "stop emailing ada.lovelace@example.org please"


async def test_worker_logs_carry_no_personal_data(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"log_format": "json"})
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path, free_port())
    sent = []
    try:
        async with ContractClient(settings) as client:
            for i, subject in enumerate([*EMAILS, *(f"phone:{p}" for p in PHONES)]):
                doc = command(
                    subject,
                    [("opt_out", "marketing", "email"), ("opt_in", "product", "sms")],
                    reason=REASON,
                    source={"channel": "web", "ip": IPS[i % 2], "user_agent": AGENTS[0]},
                )
                sent.append(doc["command_id"])
                await client.send(doc)
            # Rejected and malformed ones, so the error paths run too.
            mandatory = command(EMAILS[0], [("opt_out", "security", "email")], reason=REASON)
            invalid = command(PHONES[0], [("opt_out", "marketing", "email")])
            invalid["occurred_at"] = "yesterday at " + IPS[0]
            nul = command(EMAILS[1], [("opt_out", "marketing", "email")], reason=REASON + "\x00")
            for doc in (mandatory, invalid, nul):
                sent.append(doc["command_id"])
                await client.send(doc)
            await client.send(("not json " + EMAILS[0]).encode(), key=EMAILS[0])
            await client.wait_for(lambda: all(c in client.outcomes for c in sent), 60)
            await client.wait_for(lambda: len(client.dead_letters) >= 1, 30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    text = log_path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    assert any(json.loads(line).get("event") == "batch" for line in lines)
    for line in lines:
        json.loads(line)  # every line is one JSON object
    for secret in [*EMAILS, *PHONES, *IPS, *AGENTS, "ada.lovelace", "PrivateBrowser"]:
        assert secret not in text, f"{secret!r} reached the logs"
