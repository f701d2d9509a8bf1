"""Publishes the service's outputs: preference-changed events, outcomes, dead letters.

Each record is sent with its own key (``publish_batch`` would put a whole batch on one
partition and break per-subject order); the sends are issued without waiting and the
broker acknowledgements are gathered at the end, so a batch costs one flush, not one
round trip per record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faststream.kafka import KafkaBroker

from service.application.records import RawRecord
from service.contract.encode import event_json, outcome_json
from service.contract.v1 import OutcomeV1, PreferenceChangedV1
from service.domain.events import Outcome, PreferenceChanged

_JSON = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    record: RawRecord
    error: str


class ContractPublisher:
    def __init__(self, broker: KafkaBroker, *, preferences: str, outcomes: str, dlq: str) -> None:
        self._events = broker.publisher(
            preferences,
            title="preference-changed",
            description="One event per applied command, keyed by subject_id; compacted.",
            schema=PreferenceChangedV1,
        )
        self._outcomes = broker.publisher(
            outcomes,
            title="outcome",
            description="One outcome per consumed command, keyed by command_id.",
            schema=OutcomeV1,
        )
        self._dlq = broker.publisher(
            dlq,
            title="dead-letter",
            description="Undecodable command records, original bytes, with x-error headers.",
        )

    async def publish(
        self,
        events: Sequence[PreferenceChanged],
        outcomes: Sequence[Outcome],
        dead_letters: Sequence[DeadLetterRecord],
    ) -> None:
        sends = [
            *((self._events, event_json(e), e.subject_id.encode(), _JSON) for e in events),
            *((self._outcomes, outcome_json(o), o.command_id.encode(), _JSON) for o in outcomes),
            *(
                (self._dlq, d.record.value or b"", d.record.key, _dlq_headers(d))
                for d in dead_letters
            ),
        ]
        pending: list[asyncio.Future[Any]] = [
            await publisher.publish(value, key=key, headers=headers, no_confirm=True)
            for publisher, value, key, headers in sends
        ]
        if pending:
            await asyncio.gather(*pending)


def _dlq_headers(dead: DeadLetterRecord) -> dict[str, str]:
    return {
        "x-error": dead.error,
        "x-original-topic": dead.record.topic,
        "x-original-partition": str(dead.record.partition),
        "x-original-offset": str(dead.record.offset),
    }
