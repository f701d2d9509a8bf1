"""Maps the pipeline's outputs to contract v1 records: events, outcomes, dead letters."""

from __future__ import annotations

from collections.abc import Sequence

from service.adapters.kafka.producer import KafkaOutput, OutgoingRecord
from service.application.ports import DeadLetterRecord, EventMessage, OutcomeMessage

_JSON = (("content-type", b"application/json"),)


class ContractPublisher:
    def __init__(self, output: KafkaOutput, *, preferences: str, outcomes: str, dlq: str) -> None:
        self._output = output
        self._preferences = preferences
        self._outcomes = outcomes
        self._dlq = dlq

    async def publish(
        self,
        events: Sequence[EventMessage],
        outcomes: Sequence[OutcomeMessage],
        dead_letters: Sequence[DeadLetterRecord],
    ) -> None:
        records = [
            *(
                OutgoingRecord(self._preferences, e.subject_id.encode(), e.payload, _JSON)
                for e in events
            ),
            *(
                OutgoingRecord(self._outcomes, o.command_id.encode(), o.payload, _JSON)
                for o in outcomes
            ),
            *(
                OutgoingRecord(self._dlq, d.record.key, d.record.value or b"", _dlq_headers(d))
                for d in dead_letters
            ),
        ]
        await self._output.send_all(records)


def _dlq_headers(dead: DeadLetterRecord) -> tuple[tuple[str, bytes], ...]:
    return (
        ("x-error", dead.error.encode()),
        ("x-original-topic", dead.record.topic.encode()),
        ("x-original-partition", str(dead.record.partition).encode()),
        ("x-original-offset", str(dead.record.offset).encode()),
    )
