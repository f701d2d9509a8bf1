"""Wire bytes of the service's outputs: the same bytes go to Kafka and to the event log."""

from __future__ import annotations

import orjson

from service.contract.v1 import OutcomeV1, PreferenceChangedV1
from service.domain.events import Outcome, PreferenceChanged


def event_json(event: PreferenceChanged) -> bytes:
    return orjson.dumps(PreferenceChangedV1.from_domain(event).model_dump(mode="json"))


def outcome_json(outcome: Outcome) -> bytes:
    return orjson.dumps(OutcomeV1.from_domain(outcome).model_dump(mode="json"))
