"""The command pipeline's use case, one batch at a time: decode, decide, store, cache, publish.

The order is the delivery guarantee: the PostgreSQL transaction commits first, then the new
states go to Redis, then events and outcomes are published and acknowledged; only when this
returns does the worker commit the batch's offsets. A failure anywhere raises, the offsets
stay where they were, and the retry (or the next owner of the partition) finds the commands
in the processed log and replays their stored answers instead of applying them again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

import structlog

from service.application.ports import (
    DeadLetterRecord,
    EventMessage,
    Loaded,
    OutcomeMessage,
    Publisher,
    StateCache,
    TombstoneLog,
    ToSave,
    UnitOfWorkFactory,
)
from service.application.records import RawRecord
from service.application.rekey_erased import rekey_erased
from service.application.telemetry import NO_TELEMETRY, LaneFigures, PipelineTelemetry
from service.application.waterfall import StepClock
from service.contract.decode import DeadLetter, decode_command
from service.contract.encode import encode_events, outcome_json
from service.domain.apply import BatchResult, Pseudonym, apply_batch
from service.domain.catalog import Catalog
from service.domain.commands import Delivery, Malformed, Received, content_hash
from service.domain.events import Outcome
from service.domain.identifiers import is_identifier, pseudonym
from service.domain.keyed_hashes import ContentSeal, ErasureRekeying
from service.domain.model import SubjectKey

log = structlog.get_logger(__name__)


@dataclass
class _LaneReport:
    records: int = 0
    dead_letters: int = 0
    replayed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    decode_seconds: float = 0.0
    postgres_seconds: float = 0.0
    redis_seconds: float = 0.0
    kafka_seconds: float = 0.0


@dataclass
class _Outputs:
    """A decided batch in wire form: what the store writes and what Kafka receives."""

    to_save: ToSave
    events: list[EventMessage]
    outcomes: list[OutcomeMessage]


@dataclass(frozen=True)
class _StoredLane:
    """A lane after its transaction committed: what its second stage sends."""

    records: Sequence[RawRecord]
    commands: list[Received | Malformed]
    dead: list[DeadLetterRecord]
    outputs: _Outputs
    decode_seconds: float
    store_seconds: float
    decoded_at: float


Finish = Callable[[], Awaitable[None]]

# Records a batch needs per lane before it is split into lanes.
RECORDS_PER_LANE = 100


def encode_outputs(result: BatchResult, loaded: Loaded) -> _Outputs:
    """Encode every output once; a redelivered record's stored bytes are used as they are.

    Redelivered records come first in the events, as they were published before; an outcome
    the core answered with the very object it was given from the log is a replay, and its
    stored bytes go out again. The outcome of a new log entry is encoded once for the log
    and for Kafka.
    """
    new_events = encode_events(result.events)
    encoded: dict[int, tuple[Outcome, bytes]] = {}
    processed_outcomes = []
    for entry in result.processed:
        payload = outcome_json(entry.outcome)
        encoded[id(entry.outcome)] = (entry.outcome, payload)
        processed_outcomes.append(payload)
    for entry in result.replayed:
        answer = loaded.answers.get(entry.key)
        if answer is not None:
            encoded[id(entry.outcome)] = (entry.outcome, answer.outcome)
    events = [
        message
        for entry in result.replayed
        if (answer := loaded.answers.get(entry.key)) is not None
        for message in answer.events
    ]
    events.extend(EventMessage(e.event.tenant, e.event.subject_id, e.payload) for e in new_events)
    events.extend(EventMessage(t.tenant, t.subject_id, None) for t in result.tombstones)

    def outcome_bytes(outcome: Outcome) -> bytes:
        known = encoded.get(id(outcome))
        return known[1] if known is not None and known[0] is outcome else outcome_json(outcome)

    outcomes = [OutcomeMessage(o.command_id, o.tenant, outcome_bytes(o)) for o in result.outcomes]
    return _Outputs(ToSave(result, new_events, processed_outcomes), events, outcomes)


def as_refused(
    decoded: Received | Malformed | DeadLetter, failure: str
) -> Received | Malformed | DeadLetter:
    """A record a dependency refuses, answered like an invalid one: `rejected` when it has a
    readable command id (stored in the processed log like any answer, so a redelivery
    replays it), else the DLQ with the failure as `x-error`."""
    if isinstance(decoded, Received):
        command = decoded.command
        return Malformed(
            command_id=command.command_id,
            subject_id=command.subject_id,
            tenant=command.tenant,
            detail=failure,
            delivery=decoded.delivery,
            content_hash=content_hash(command),
        )
    if isinstance(decoded, Malformed):
        return replace(decoded, detail=failure)
    return DeadLetter(failure)


def _figures(
    records: Sequence[RawRecord],
    commands: Sequence[Received | Malformed],
    result: BatchResult,
    dead: Sequence[DeadLetterRecord],
    stages: tuple[float, float, float, float],
) -> LaneFigures:
    """A lane's figures for on-call. `result.outcomes` has one answer per command, in order,
    so an applied answer is paired with its record's Kafka timestamp and `occurred_at`."""
    figures = LaneFigures(*stages)
    figures.outcomes.update((o.status, o.reason or "") for o in result.outcomes)
    figures.dead_letters.update(d.code for d in dead)
    now = time.time()
    stamps = {(r.topic, r.partition, r.offset): r.timestamp_ms / 1000 for r in records}
    for record, outcome in zip(commands, result.outcomes, strict=True):
        if outcome.status != "applied" or not isinstance(record, Received):
            continue
        delivery = record.delivery
        stamp = stamps.get((delivery.topic, delivery.partition, delivery.offset))
        if stamp is not None:
            figures.record_to_event_seconds.append(max(0.0, now - stamp))
        if outcome.effective_at is not None:
            figures.occurred_to_effective_seconds.append(
                (outcome.effective_at - record.command.occurred_at).total_seconds()
            )
    return figures


class ProcessCommands:
    """Processes a batch in lanes, partitions spread over them, the lanes side by side.

    A subject's commands all arrive on one partition (the key is the subject id), so lanes
    touch disjoint subjects and per-subject order is kept within each lane; running them
    concurrently overlaps their PostgreSQL transactions. The lanes' outputs then go out
    together (``_send``). Should a producer key otherwise, the row locks still serialise the
    lanes on a shared subject. A failing lane cancels the others; the whole batch is then
    retried and the lanes that had committed replay their stored answers.

    Each lane pays the fixed cost of a transaction, so a batch gets one lane per
    `RECORDS_PER_LANE` records, up to `max_lanes` (README, Benchmarks).
    """

    def __init__(
        self,
        unit_of_work: UnitOfWorkFactory,
        cache: StateCache,
        publisher: Publisher,
        catalog: Catalog,
        *,
        max_record_bytes: int,
        max_future: timedelta,
        max_lanes: int = 4,
        telemetry: PipelineTelemetry = NO_TELEMETRY,
        identifier_key: bytes | None = None,
        tombstones: TombstoneLog | None = None,
        fence_seconds: int = 10,
    ) -> None:
        self._telemetry = telemetry
        self._pseudonym: Pseudonym | None = None
        self._seal: ContentSeal | None = None
        self._rekeying: ErasureRekeying | None = None
        if identifier_key:
            key = identifier_key
            self._seal = ContentSeal.from_root(key)
            self._rekeying = ErasureRekeying.from_root(key)

            def hashed(subject: SubjectKey) -> SubjectKey:
                return SubjectKey(
                    subject.tenant, pseudonym(key, subject.tenant, subject.subject_id)
                )

            self._pseudonym = hashed
        self._tombstones = tombstones
        self._fence_seconds = fence_seconds
        self._unit_of_work = unit_of_work
        self._cache = cache
        self._publisher = publisher
        self._catalog = catalog
        self._max_record_bytes = max_record_bytes
        self._max_future = max_future
        self._max_lanes = max_lanes

    async def __call__(
        self, records: Sequence[RawRecord], refused: Mapping[Delivery, str] | None = None
    ) -> None:
        """Process `records`; those whose delivery is in `refused` are answered `rejected`
        (`invalid_payload`, the given detail) without being applied: the isolation policy
        (``isolation.py``) found that a dependency refuses them."""
        finish = await self.store(records, refused)
        await finish()

    async def store(
        self,
        records: Sequence[RawRecord],
        refused: Mapping[Delivery, str] | None = None,
        *,
        clock: StepClock | None = None,
    ) -> Finish:
        """The first stage: decode, decide and commit the batch to PostgreSQL.

        Returns the second stage (Redis, then Kafka until acknowledged). The worker runs a
        batch's second stage while the next batch is in its first; the second stages run in
        batch order, so a key's events keep their order on the topic. A failure in either
        stage raises; the records' answers are in the processed log from the first stage's
        commit on, so processing the batch again replays them.

        `clock`, when given, is told when the batch's steps end (``waterfall.py``): decoding
        (every lane's), PostgreSQL (every lane committed), the wait for the earlier batch's
        outputs, Redis, and through the publisher the acknowledgements.
        """
        started = time.perf_counter()
        # A small batch (a steady rate rather than a backlog) is cheaper, in CPU and in
        # latency, as one transaction.
        count = max(1, min(self._max_lanes, len(records) // RECORDS_PER_LANE))
        lanes: dict[int, list[RawRecord]] = defaultdict(list)
        for record in records:
            lanes[record.partition % count].append(record)
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._store_lane(lane, refused or {})) for lane in lanes.values()
            ]
        stored = [t.result() for t in tasks]
        if clock is not None:
            clock.mark("decode", at=max(lane.decoded_at for lane in stored))
            if any(lane.commands for lane in stored):
                clock.mark("postgresql")

        async def finish() -> None:
            if clock is not None:
                clock.mark("outputs_queued")
            self._log_batch(len(records), await self._send(stored, clock), started)

        return finish

    @staticmethod
    def _log_batch(records: int, reports: Sequence[_LaneReport], started: float) -> None:
        if not reports:
            return
        statuses: Counter[str] = sum((r.statuses for r in reports), Counter())
        log.info(
            "batch",
            records=records,
            lanes=len(reports),
            dead_letters=sum(r.dead_letters for r in reports),
            replayed=sum(r.replayed for r in reports),
            **statuses,
            total_seconds=round(time.perf_counter() - started, 6),
            decode_seconds=round(max(r.decode_seconds for r in reports), 6),
            postgres_seconds=round(max(r.postgres_seconds for r in reports), 6),
            redis_seconds=round(max(r.redis_seconds for r in reports), 6),
            kafka_seconds=round(max(r.kafka_seconds for r in reports), 6),
        )

    def _decode(
        self, records: Sequence[RawRecord], refused: Mapping[Delivery, str]
    ) -> tuple[list[Received | Malformed], list[DeadLetterRecord]]:
        commands: list[Received | Malformed] = []
        dead: list[DeadLetterRecord] = []
        for record in records:
            delivery = Delivery(record.topic, record.partition, record.offset)
            decoded = decode_command(record.value, delivery, max_bytes=self._max_record_bytes)
            if refused and delivery in refused:
                decoded = as_refused(decoded, refused[delivery])
            if isinstance(decoded, DeadLetter):
                dead.append(DeadLetterRecord(record, decoded.error, decoded.code))
            else:
                commands.append(decoded)
        return commands, dead

    async def _decide_and_store(self, commands: Sequence[Received | Malformed]) -> _Outputs:
        """Load, decide with the pure core, save: one transaction, committed on return."""
        named: set[SubjectKey] = set()
        erasing = False
        for r in commands:
            if isinstance(r, Received):
                command = r.command
                named.add(command.key)
                if command.target is not None:
                    named.add(SubjectKey(command.tenant, command.target))
                erasing = erasing or command.kind == "erase"
        keys = sorted(named)
        hashed = self._pseudonym
        lookups = (
            sorted({hashed(k) for k in keys if is_identifier(k.subject_id)})
            if hashed is not None
            else []
        )
        command_keys = list(
            {
                (r.command.tenant, r.command.command_id)
                if isinstance(r, Received)
                else (r.tenant, r.command_id)
                for r in commands
            }
        )
        async with self._unit_of_work() as uow:
            loaded = await uow.load(
                keys, command_keys, {r.delivery for r in commands}, lookups, erasing
            )
            result = apply_batch(
                self._catalog,
                loaded.states,
                loaded.processed,
                commands,
                now=loaded.now,
                effective_at=loaded.now,
                max_future=self._max_future,
                pseudonym=hashed,
                forwarders=loaded.forwarders,
                seal=self._seal,
            )
            outputs = encode_outputs(result, loaded)
            await uow.save(outputs.to_save)
            if result.erasures and self._rekeying is not None:
                await rekey_erased(uow, result.erasures, self._rekeying)
        return outputs

    async def _store_lane(
        self, records: Sequence[RawRecord], refused: Mapping[Delivery, str]
    ) -> _StoredLane:
        started = time.perf_counter()
        commands, dead = self._decode(records, refused)
        decoded_at = time.perf_counter()
        if commands:
            outputs = await self._decide_and_store(commands)
        else:
            outputs = _Outputs(ToSave(BatchResult(), [], []), [], [])
        return _StoredLane(
            records,
            commands,
            dead,
            outputs,
            decoded_at - started,
            time.perf_counter() - decoded_at,
            decoded_at,
        )

    async def _send(
        self, lanes: Sequence[_StoredLane], clock: StepClock | None = None
    ) -> list[_LaneReport]:
        """The second stage of every lane at once: one Redis write, then one wave of events
        and one of outcomes for the whole batch (each wave is a produce request that waits
        for the broker, so one per lane cost a request per lane)."""
        results = [lane.outputs.to_save.result for lane in lanes]
        started = time.perf_counter()
        states = [s for r in results for s in r.states.values()]
        await self._cache.write(states)
        fences = [f for r in results for f in r.fences]
        if fences:
            await self._cache.write(fences, ttl_seconds=self._fence_seconds)
        cached = time.perf_counter()
        if clock is not None and (states or fences):
            clock.mark("redis", at=cached)
        events = [e for lane in lanes for e in lane.outputs.events]
        await self._publisher.publish(
            events,
            [o for lane in lanes for o in lane.outputs.outcomes],
            [d for lane in lanes for d in lane.dead],
            clock=clock,
        )
        tombstones = [e for e in events if e.payload is None]
        if tombstones and self._tombstones is not None:
            await self._tombstones.forget_published(tombstones)
        published = time.perf_counter()
        reports = []
        for lane, result in zip(lanes, results, strict=True):
            stages = (lane.decode_seconds, lane.store_seconds, cached - started, published - cached)
            self._telemetry.lane(_figures(lane.records, lane.commands, result, lane.dead, stages))
            reports.append(
                _LaneReport(
                    records=len(lane.records),
                    dead_letters=len(lane.dead),
                    replayed=len(result.replayed),
                    statuses=Counter(o.status for o in result.outcomes),
                    decode_seconds=lane.decode_seconds,
                    postgres_seconds=lane.store_seconds,
                    redis_seconds=cached - started,
                    kafka_seconds=published - cached,
                )
            )
        return reports
