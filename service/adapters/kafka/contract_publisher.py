"""Maps the pipeline's outputs to contract v1 records: events, outcomes, dead letters.

Events are sent and acknowledged before any outcome is sent: an `applied` outcome promises
that its event is already in Kafka (no stale allow for a sender following the events), so
the outcomes wait for that acknowledgement. Dead letters need no event and travel with the
first wave. A batch without events (all rejected, unchanged or duplicate) is one wave.

A dead letter too large for the DLQ topic is cut to fit (``sizes.py``): sending it whole
would be refused, and the record would never leave its partition.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.adapters.kafka.producer import KafkaOutput, OutgoingRecord
from service.application.ports import DeadLetterRecord, EventMessage, OutcomeMessage
from service.application.waterfall import StepClock

_JSON = (("content-type", b"application/json"),)


def event_key(tenant: str, subject_id: str) -> bytes:
    """`{tenant}:{subject_id}`: tenants cannot contain `:`, so the key is unambiguous and two
    tenants sharing a subject id never share a compaction key."""
    return f"{tenant}:{subject_id}".encode()


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
        *,
        clock: StepClock | None = None,
    ) -> None:
        """Send and wait for the acknowledgements; `clock` learns when each wave was
        acknowledged (`event_ack`, then `outcome_ack`; a single wave is `outcome_ack`)."""
        first = [
            *(
                OutgoingRecord(
                    self._preferences, event_key(e.tenant, e.subject_id), e.payload, _JSON
                )
                for e in events
            ),
            *(
                self._output.fit_dead_letter(
                    OutgoingRecord(self._dlq, d.record.key, d.record.value or b"", _dlq_headers(d))
                )
                for d in dead_letters
            ),
        ]
        answers = [
            OutgoingRecord(self._outcomes, o.command_id.encode(), o.payload, _JSON)
            for o in outcomes
        ]
        if events:
            await self._output.send_all(first)
            if clock is not None:
                clock.mark("event_ack")
            await self._output.send_all(answers)
        else:
            await self._output.send_all([*first, *answers])
        if clock is not None:
            clock.mark("outcome_ack")


def _dlq_headers(dead: DeadLetterRecord) -> tuple[tuple[str, bytes], ...]:
    return (
        ("x-error", dead.error.encode()),
        ("x-original-topic", dead.record.topic.encode()),
        ("x-original-partition", str(dead.record.partition).encode()),
        ("x-original-offset", str(dead.record.offset).encode()),
    )
