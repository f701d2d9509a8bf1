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
        pending: list[asyncio.Future[Any]] = []
        for event in events:
            pending.append(
                await self._events.publish(
                    event_json(event),
                    key=event.subject_id.encode(),
                    headers=_JSON,
                    no_confirm=True,
                )
            )
        for outcome in outcomes:
            pending.append(
                await self._outcomes.publish(
                    outcome_json(outcome),
                    key=outcome.command_id.encode(),
                    headers=_JSON,
                    no_confirm=True,
                )
            )
        for dead in dead_letters:
            pending.append(
                await self._dlq.publish(
                    dead.record.value or b"",
                    key=dead.record.key,
                    headers={
                        "x-error": dead.error,
                        "x-original-topic": dead.record.topic,
                        "x-original-partition": str(dead.record.partition),
                        "x-original-offset": str(dead.record.offset),
                    },
                    no_confirm=True,
                )
            )
        if pending:
            await asyncio.gather(*pending)
