"""Intake without Kafka (its ports faked): the expectation exists before the command is
published, refusals publish nothing; and ``optout link`` prints the URL and both headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta

import orjson
import pytest
from typer.testing import CliRunner

from service.application.intake import CommandIntake, IntakeRefused
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.events import Outcome
from service.domain.link_tokens import LinkSigner
from service.entrypoints.cli import app
from tests.support.contract_client import command

KEY = "k" * 40


class Outcomes:
    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], asyncio.Future[Outcome]] = {}

    def expect(self, tenant: str, command_id: str) -> asyncio.Future[Outcome]:
        return self.waiting.setdefault(
            (tenant, command_id), asyncio.get_running_loop().create_future()
        )

    def forget(self, tenant: str, command_id: str) -> None:
        self.waiting.pop((tenant, command_id), None)


class Sink:
    """Answers every command at once, as a fast worker would, and records what it saw."""

    def __init__(self, outcomes: Outcomes) -> None:
        self.outcomes = outcomes
        self.published: list[tuple[bytes, bytes]] = []
        self.expected_at_publish: list[bool] = []

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.published.extend(records)
        for key in list(self.outcomes.waiting):
            self.expected_at_publish.append(True)
            self.outcomes.waiting[key].set_result(
                Outcome(key[1], key[0], None, "applied", version=1)
            )


def intake() -> tuple[CommandIntake, Sink]:
    outcomes = Outcomes()
    sink = Sink(outcomes)
    made = CommandIntake(
        DEFAULT_CATALOG, sink, outcomes, max_record_bytes=65_536, max_future=timedelta(minutes=5)
    )
    return made, sink


async def test_the_outcome_is_expected_before_the_command_is_published() -> None:
    made, sink = intake()
    doc = command("user-1", [("opt_out", "marketing", "email")])
    [accepted] = await made.submit([doc], actor="crm", wait_seconds=1)
    assert sink.expected_at_publish == [True]
    assert accepted.outcome is not None
    assert accepted.outcome.status == "applied"
    assert sink.published[0][0] == b"user-1"


async def test_one_refused_command_publishes_none_of_the_batch() -> None:
    made, sink = intake()
    good = command("user-1", [("opt_out", "marketing", "email")])
    bad = command("user-2", [("opt_in", "marketing", "carrier-pigeon")])
    with pytest.raises(IntakeRefused) as refused:
        await made.submit([good, bad], actor="crm")
    assert refused.value.error == "unknown_channel"
    assert refused.value.field == "commands[1].changes[0].channel"
    assert sink.published == []


async def test_the_actor_is_stamped_by_the_service_and_never_taken_from_the_client() -> None:
    made, sink = intake()
    doc = command("user-1", [("opt_out", "marketing", "email")])
    [accepted] = await made.submit([doc], actor="crm")
    assert accepted.command.source.actor == "crm"
    assert orjson.loads(sink.published[0][1])["actor"] == "crm"
    with pytest.raises(IntakeRefused) as claimed:
        await made.submit([{**doc, "actor": "optout-pages"}], actor="crm")
    assert (claimed.value.error, claimed.value.field) == ("invalid_payload", "actor")
    assert len(sink.published) == 1


@pytest.mark.parametrize("app", ["optout-pages", "sms-inbound", "import:list.csv", "kafka"])
async def test_a_client_may_not_name_the_services_own_channels_as_its_app(app: str) -> None:
    made, sink = intake()
    doc = command("user-1", [("opt_out", "marketing", "email")])
    doc["source"] = {"channel": "web", "app": app}
    with pytest.raises(IntakeRefused) as refused:
        await made.submit([doc], actor="crm")
    assert (refused.value.error, refused.value.field) == ("invalid_payload", "source.app")
    assert sink.published == []
    # Positive control: the pages themselves name their own app.
    [accepted] = await made.submit([doc], actor="optout-pages", service_channel=True)
    assert accepted.command.source.app == app


def test_schema_errors_name_the_field() -> None:
    made, _ = intake()
    doc = command("user-1", [("opt_out", "marketing", "email")])
    doc["changes"][0]["action"] = "maybe"
    with pytest.raises(IntakeRefused) as refused:
        made.check(doc)
    assert refused.value.field == "changes[0].action"
    del doc["command_id"]
    with pytest.raises(IntakeRefused) as refused:
        made.check(doc)
    assert refused.value.field == "command_id"


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI configures logging onto the runner's stream, which is closed afterwards:
    later tests would log into a closed file."""
    monkeypatch.setattr("service.entrypoints.cli.configure_logging", lambda *_: None)


def test_optout_link_prints_the_url_and_both_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTOUT_LINK_KEYS", f"k1:{KEY}")
    monkeypatch.setenv("OPTOUT_PUBLIC_BASE_URL", "https://prefs.example.test")
    result = CliRunner().invoke(
        app, ["link", "user-42", "--topic", "marketing", "--channel", "email"]
    )
    assert result.exit_code == 0, result.output
    url, unsubscribe, post = result.output.strip().splitlines()
    assert url.startswith("https://prefs.example.test/u/v1.k1.")
    assert unsubscribe == f"List-Unsubscribe: <{url}>"
    assert post == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    token = url.rsplit("/", 1)[1]
    claim = LinkSigner({"k1": KEY.encode()}, "k1", validity_seconds=60).verify(
        token, now=int(time.time())
    )
    assert (claim.subject_id, claim.topic, claim.channel) == ("user-42", "marketing", "email")
    assert KEY not in result.output


def test_optout_link_refuses_without_keys_and_for_mandatory_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPTOUT_LINK_KEYS", raising=False)
    missing = CliRunner().invoke(app, ["link", "user-42"])
    assert missing.exit_code == 2
    assert "OPTOUT_LINK_KEYS" in missing.output
    monkeypatch.setenv("OPTOUT_LINK_KEYS", f"k1:{KEY}")
    mandatory = CliRunner().invoke(app, ["link", "user-42", "--topic", "security"])
    assert mandatory.exit_code == 2
    assert "mandatory" in mandatory.output
