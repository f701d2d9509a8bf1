"""SMS replies as commands (the intake's ports faked): tenants by the `To` number, YES only
where configured, a START to an unlisted number refused, and replays byte for byte."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from structlog.testing import capture_logs

from service.application.intake import IntakeRefused
from service.application.sms_replies import (
    SmsNumbers,
    SmsReplies,
    parse_yes_tenants,
)
from tests.support.contract_client import command
from tests.unit.test_intake_and_links import Sink, intake

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
SENDER = "+14155550100"
ACME_BETA = "+15550001111"
GAMMA = "+15550002222"
MAPPING = f"{ACME_BETA}:acme+beta, {GAMMA}:gamma"


class Receipts:
    """The first time each message id was seen, as the Redis adapter keeps it."""

    def __init__(self) -> None:
        self.seen: dict[str, datetime] = {}

    async def first_seen(self, message_id: str, now: datetime) -> datetime:
        return self.seen.setdefault(message_id, now)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def replies(numbers: str = MAPPING, yes: str = "") -> tuple[SmsReplies, Sink]:
    made, sink = intake()
    return (
        SmsReplies(
            made,
            Receipts(),
            numbers=SmsNumbers.parse(numbers),
            yes_tenants=parse_yes_tenants(yes),
            clock=Clock(),
        ),
        sink,
    )


def published(sink: Sink) -> list[dict[str, object]]:
    return [orjson.loads(value) for _, value in sink.published]


async def test_a_stop_applies_in_each_tenant_of_its_number_with_ids_from_the_message() -> None:
    sms, sink = replies()
    assert await sms.handle("stop", sender=SENDER, to=ACME_BETA, message_id="SM1") == "stopped"
    docs = published(sink)
    assert [d["tenant"] for d in docs] == ["acme", "beta"]
    for doc in docs:
        assert doc["command_id"] == "sms:SM1"
        assert doc["subject_id"] == f"phone:{SENDER}"
        assert doc["changes"] == [{"action": "opt_out", "topic": "*", "channel": "sms"}]
        assert doc["source"] == {"channel": "sms", "app": "sms-inbound"}


async def test_a_replay_publishes_the_very_same_bytes() -> None:
    sms, sink = replies()
    await sms.handle("start", sender=SENDER, to=GAMMA, message_id="SM2")
    await sms.handle("start", sender=SENDER, to=GAMMA, message_id="SM2")  # a second later
    first, second = sink.published
    assert first == second
    assert orjson.loads(first[1])["changes"][0]["action"] == "restore"
    # Positive control: another message id is another command, at its own time.
    await sms.handle("start", sender=SENDER, to=GAMMA, message_id="SM3")
    third = orjson.loads(sink.published[2][1])
    assert third["command_id"] == "sms:SM3"
    assert third["occurred_at"] != orjson.loads(first[1])["occurred_at"]


async def test_a_stop_to_an_unlisted_number_applies_everywhere_and_warns_without_the_number() -> (
    None
):
    sms, sink = replies()
    with capture_logs() as logs:
        answer = await sms.handle("stop", sender=SENDER, to="+15559990000", message_id="SM4")
    assert answer == "stopped"
    assert [d["tenant"] for d in published(sink)] == ["acme", "beta", "gamma"]
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "sms_stop_to_unmapped_number"
    assert "555" not in repr(logs)


@pytest.mark.parametrize("to", ["+15559990000", None])
async def test_a_start_to_an_unlisted_number_is_refused_and_writes_nothing(
    to: str | None,
) -> None:
    sms, sink = replies()
    assert await sms.handle("start", sender=SENDER, to=to, message_id="SM5") == "start_refused"
    assert sink.published == []
    # Positive control: the same START to a listed number is written.
    assert await sms.handle("start", sender=SENDER, to=GAMMA, message_id="SM5") == "started"
    assert len(sink.published) == 1


async def test_yes_starts_only_in_the_tenants_that_configure_it() -> None:
    sms, sink = replies()
    answer = await sms.handle("yes", sender=SENDER, to=ACME_BETA, message_id="SM6")
    assert answer == "not_understood"
    assert sink.published == []
    sms, sink = replies(yes="beta")
    assert await sms.handle("yes", sender=SENDER, to=ACME_BETA, message_id="SM7") == "started"
    assert [(d["tenant"], d["changes"]) for d in published(sink)] == [
        ("beta", [{"action": "restore", "topic": "*", "channel": "sms"}])
    ]


async def test_without_a_mapping_every_number_serves_the_default_tenant() -> None:
    sms, sink = replies(numbers="")
    for intent in ("stop", "start"):
        await sms.handle(intent, sender=SENDER, to=None, message_id=f"SM{intent}")
    assert [d["tenant"] for d in published(sink)] == ["default", "default"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("15550001111:acme", "expected +E164:TENANT"),
        ("+15550001111", "expected +E164:TENANT"),
        ("+15550001111:Acme", "tenants are"),
        ("+15550001111:acme+", "tenants are"),
        ("+15550001111:acme,+15550001111:beta", "listed twice"),
    ],
)
def test_a_bad_number_mapping_is_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        SmsNumbers.parse(spec)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="OPTOUT_SMS_YES_TENANTS"):
        parse_yes_tenants("Acme")


async def test_the_intake_refuses_a_restore_of_anything_but_all_sms_naming_the_field() -> None:
    made, sink = intake()
    with pytest.raises(IntakeRefused) as refused:
        await made.submit([command("user-1", [("restore", "marketing", "sms")])], actor="crm")
    assert (refused.value.error, refused.value.field) == ("invalid_payload", "changes[0].action")
    assert sink.published == []
    await made.submit(
        [command("user-1", [("restore", "*", "sms")])], actor="crm"
    )  # positive control
    assert len(sink.published) == 1
