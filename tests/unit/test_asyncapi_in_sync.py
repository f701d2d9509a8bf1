"""The checked-in AsyncAPI document matches what faststream generates from the code."""

from __future__ import annotations

import json
from pathlib import Path

from service.entrypoints.asyncapi import ASYNCAPI_FILE, asyncapi_document

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_asyncapi_document_is_in_sync() -> None:
    checked_in = (SCHEMAS / ASYNCAPI_FILE).read_text(encoding="utf-8")
    assert checked_in == asyncapi_document(), "schemas/ drifted: run `make schemas`"


def test_asyncapi_names_every_contract_topic() -> None:
    document = json.loads(asyncapi_document())
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {
        "optout.commands.v1",
        "optout.commands.bulk.v1",
        "optout.preferences.v1",
        "optout.outcomes.v1",
        "optout.commands.dlq.v1",
        "optout.sender-receipts.v1",
    }
    payloads = json.dumps(document["components"]["schemas"])
    for field in (
        "command_id",
        "subject_id",
        "occurred_at",
        "preferences",
        "status",
        "applied_offset",
    ):
        assert field in payloads
