"""Poison isolation: a record that a dependency keeps refusing never stalls its partition.

The batch is processed as one call first, so the happy path costs nothing extra. A failure
of a dependency itself (`DependencyUnavailable`) is raised to the consumer, which retries
with backoff and holds the offsets. Any other failure is retried once; if it repeats, the
batch is bisected: each half is processed on its own, a half that fails again is split
again, down to the record(s) that fail alone. Such a record is answered `rejected`
(`invalid_payload`, the detail naming the failure class) through the normal pipeline, so the
answer is stored in the processed log and a redelivery replays it; if even that cannot be
stored, the rejection is published as it is, and a record without a readable command id
goes to the DLQ with the failure as `x-error`.

The guarantees hold through bisection: halves are processed in order and split by position
in the batch, whose records are in offset order per partition, so a subject's commands keep
their order; records of a half that committed before a later failure are found in the
processed log and replayed, never applied twice; and this returns only after every record's
outputs were acknowledged, so the consumer commits offsets only then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import structlog

from service.application.errors import failure_name, unavailable_in
from service.application.ports import DeadLetterRecord, OutcomeMessage, Publisher
from service.application.records import RawRecord
from service.application.telemetry import NO_TELEMETRY, PipelineTelemetry
from service.contract.decode import DeadLetter, decode_command
from service.contract.encode import outcome_json
from service.domain.commands import Delivery, Received
from service.domain.events import Outcome

log = structlog.get_logger(__name__)


class BatchProcess(Protocol):
    async def __call__(
        self, records: Sequence[RawRecord], refused: Mapping[Delivery, str] | None = None
    ) -> None: ...


def refusing_dependency(failure: str) -> str:
    """Which dependency refused a record, from the failure's name (for metrics)."""
    lowered = failure.lower()
    for name in ("postgresql", "redis", "kafka"):
        if name in lowered:
            return name
    return "unknown"


def _delivery(record: RawRecord) -> Delivery:
    return Delivery(record.topic, record.partition, record.offset)


class IsolatingProcessor:
    def __init__(
        self,
        process: BatchProcess,
        publisher: Publisher,
        *,
        max_record_bytes: int,
        telemetry: PipelineTelemetry = NO_TELEMETRY,
    ) -> None:
        self._telemetry = telemetry
        self._process = process
        self._publisher = publisher
        self._max_record_bytes = max_record_bytes

    async def __call__(self, records: Sequence[RawRecord]) -> None:
        try:
            await self._process(records)
            return
        except Exception as exc:
            self._raise_if_unavailable(exc)
            log.warning("batch_failed_retrying_once", error=failure_name(exc), records=len(records))
        try:
            await self._process(records)
            return
        except Exception as exc:
            self._raise_if_unavailable(exc)
            log.error("batch_failed_isolating", error=failure_name(exc), records=len(records))
        await self._bisect(records)

    @staticmethod
    def _raise_if_unavailable(exc: Exception) -> None:
        unavailable = unavailable_in(exc)
        if unavailable is not None:
            raise unavailable from exc

    async def _bisect(self, records: Sequence[RawRecord]) -> None:
        """`records` failed as a whole: process each half, split again whatever fails."""
        middle = len(records) // 2
        for half in (records[:middle], records[middle:]):
            if not half:
                continue
            try:
                await self._process(half)
            except Exception as exc:
                self._raise_if_unavailable(exc)
                if len(half) == 1:
                    await self._reject(half[0], failure_name(exc))
                else:
                    await self._bisect(half)

    async def _reject(self, record: RawRecord, failure: str) -> None:
        self._telemetry.poison_record(refusing_dependency(failure))
        log.error(
            "record_isolated",
            command_id=self._command_id(record),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=failure,
        )
        delivery = _delivery(record)
        try:
            await self._process([record], {delivery: failure})
            return
        except Exception as exc:
            self._raise_if_unavailable(exc)
            log.error(
                "record_rejection_not_stored",
                command_id=self._command_id(record),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=failure_name(exc),
            )
        await self._publish_unstored(record, failure)

    def _command_id(self, record: RawRecord) -> str | None:
        """The record's command id for the log line, when it has a readable one."""
        decoded = decode_command(record.value, _delivery(record), max_bytes=self._max_record_bytes)
        if isinstance(decoded, Received):
            return decoded.command.command_id
        if isinstance(decoded, DeadLetter):
            return None
        return decoded.command_id

    async def _publish_unstored(self, record: RawRecord, failure: str) -> None:
        """Even storing the rejection failed: answer anyway, from what the record says."""
        decoded = decode_command(record.value, _delivery(record), max_bytes=self._max_record_bytes)
        outcome: OutcomeMessage | None = None
        if not isinstance(decoded, DeadLetter):
            subject_id: str | None
            if isinstance(decoded, Received):
                command_id = decoded.command.command_id
                tenant, subject_id = decoded.command.tenant, decoded.command.subject_id
            else:
                command_id, tenant, subject_id = (
                    decoded.command_id,
                    decoded.tenant,
                    decoded.subject_id,
                )
            rejected = Outcome(
                command_id, tenant, subject_id, "rejected", "invalid_payload", failure
            )
            try:
                outcome = OutcomeMessage(command_id, tenant, outcome_json(rejected))
            except (TypeError, ValueError) as exc:
                # Text JSON cannot carry (a lone surrogate): the DLQ keeps the bytes.
                log.warning("outcome_not_encodable", error=type(exc).__name__)
        if outcome is not None:
            await self._publisher.publish([], [outcome], [])
        else:
            await self._publisher.publish([], [], [DeadLetterRecord(record, failure)])
