"""Batch-first application of commands: the heart of the worker, with no I/O.

The worker loads the states and processed-log entries a batch needs, calls `apply_batch`
once, then persists the result in one transaction. Doing the whole batch in memory is what
makes the throughput aims reachable, and keeping it pure is what makes idempotency and
convergence provable by tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.domain.catalog import Catalog
from service.domain.commands import Command, Delivery, Malformed, Received, content_hash
from service.domain.events import (
    AppliedChange,
    HistoryEntry,
    Outcome,
    PreferenceChanged,
    Reason,
    event_id_for,
)
from service.domain.model import Rule, SubjectKey, SubjectState
from service.domain.validation import validate

CommandKey = tuple[str, str]
"""(tenant, command_id): command ids are unique per tenant, idempotency is judged on both."""


@dataclass(frozen=True, slots=True)
class ProcessedRecord:
    """The processed-log entry for one command id: what was answered, and for which delivery.

    Keeping the delivery distinguishes a crash redelivery (replay the stored answer and events
    verbatim) from a producer resending the same id as a new record (`duplicate`).
    """

    command_id: str
    content_hash: str
    delivery: Delivery
    outcome: Outcome

    @property
    def key(self) -> CommandKey:
        return (self.outcome.tenant, self.command_id)


@dataclass
class BatchResult:
    """Everything the adapters must persist and publish for one batch.

    outcomes: exactly one per input record, in input order.
    states: the new full state of every subject a record touched (applied, unchanged or
        redelivered), for the write-through cache.
    changed: the subset of `states` whose version rose, to upsert in Postgres.
    upserted_rules: rules that created or replaced a (topic, channel) entry.
    history: proof-of-consent rows, one per applied change.
    events: new events, one per applied command, in version order per subject.
    processed: new or replaced processed-log entries, one per command id (last wins).
    replayed: the log entries of redelivered records, whose stored outcome and events are
        published again unchanged, in input order.
    """

    outcomes: list[Outcome] = field(default_factory=list)
    states: dict[SubjectKey, SubjectState] = field(default_factory=dict)
    changed: dict[SubjectKey, SubjectState] = field(default_factory=dict)
    upserted_rules: list[tuple[SubjectKey, Rule]] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    events: list[PreferenceChanged] = field(default_factory=list)
    processed: list[ProcessedRecord] = field(default_factory=list)
    replayed: list[ProcessedRecord] = field(default_factory=list)


class _Batch:
    """Working copies, so later records in a batch see what earlier ones did."""

    def __init__(
        self,
        catalog: Catalog,
        states: Mapping[SubjectKey, SubjectState],
        processed: Mapping[CommandKey, ProcessedRecord],
        now: datetime,
        effective_at: datetime,
        max_future: timedelta,
    ) -> None:
        self.catalog = catalog
        self.base_states = states
        self.base_processed = processed
        self.now = now
        self.effective_at = effective_at
        self.max_future = max_future
        self.result = BatchResult()
        self.new_processed: dict[CommandKey, ProcessedRecord] = {}

    def known_state(self, key: SubjectKey) -> SubjectState | None:
        """The subject's latest state, from this batch or from storage; None if it is new."""
        found = self.result.states.get(key)
        return found if found is not None else self.base_states.get(key)

    def state(self, key: SubjectKey) -> SubjectState:
        found = self.known_state(key)
        return found if found is not None else SubjectState.empty(key)

    def lookup(self, key: CommandKey) -> ProcessedRecord | None:
        found = self.new_processed.get(key)
        return found if found is not None else self.base_processed.get(key)

    def store(self, record: ProcessedRecord) -> None:
        # Re-inserting moves nothing: one entry per id, the last answer wins.
        self.new_processed[record.key] = record

    def answer(self, outcome: Outcome) -> None:
        self.result.outcomes.append(outcome)

    def handle(self, record: Received | Malformed) -> None:
        subject_id: str | None
        if isinstance(record, Received):
            command_id, delivery = record.command.command_id, record.delivery
            tenant, subject_id = record.command.tenant, record.command.subject_id
        else:
            command_id, delivery = record.command_id, record.delivery
            tenant, subject_id = record.tenant, record.subject_id

        prior = self.lookup((tenant, command_id))
        if prior is not None and prior.delivery == delivery:
            self.replay(prior, tenant, subject_id)
            return

        if (
            prior is not None
            and prior.outcome.status != "rejected"
            and _precedes(delivery, prior.delivery)
        ):
            self.answer(self.superseded(record))
            return

        digest = (
            record.content_hash if isinstance(record, Malformed) else content_hash(record.command)
        )
        if prior is not None and prior.outcome.status != "rejected":
            self.answer(self.repeat(prior, digest, command_id, tenant, subject_id))
            return
        # New, or a retry of a rejected id (a producer may fix a command and resend it).
        if isinstance(record, Malformed):
            outcome = Outcome(
                command_id, tenant, subject_id, "rejected", "invalid_payload", record.detail
            )
            self.answer(outcome)
            self.store(ProcessedRecord(command_id, digest, delivery, outcome))
            return
        self.evaluate(record.command, digest, delivery)

    def replay(self, prior: ProcessedRecord, tenant: str, subject_id: str | None) -> None:
        """A crash redelivery: answer exactly as before, and let the cache be rewritten."""
        self.answer(prior.outcome)
        self.result.replayed.append(prior)
        if subject_id is not None and prior.outcome.status != "rejected":
            key = SubjectKey(tenant, subject_id)
            self.result.states[key] = self.state(key)

    def superseded(self, record: Received | Malformed) -> Outcome:
        """Re-answer a redelivered record whose log entry a later retry has replaced.

        Only rejected entries are ever replaced, so this record was rejected when first
        processed; re-deriving the rejection (deterministic for everything but the clock)
        repeats that answer instead of contradicting it with a `command_id_conflict`.
        """
        if isinstance(record, Malformed):
            return Outcome(
                record.command_id,
                record.tenant,
                record.subject_id,
                "rejected",
                "invalid_payload",
                record.detail,
            )
        command = record.command
        rejection = validate(self.catalog, command, now=self.now, max_future=self.max_future)
        reason: Reason = "future_timestamp"
        # Valid now, so it can only have been ahead of the clock when first seen.
        detail = "occurred_at was in the future when first processed"
        if rejection is not None:
            reason, detail = rejection
        return Outcome(
            command.command_id, command.tenant, command.subject_id, "rejected", reason, detail
        )

    @staticmethod
    def repeat(
        prior: ProcessedRecord, digest: str, command_id: str, tenant: str, subject_id: str | None
    ) -> Outcome:
        if prior.content_hash == digest:
            return Outcome(
                command_id,
                tenant,
                subject_id,
                "duplicate",
                None,
                f"already processed as {prior.outcome.status}",
                prior.outcome.version,
                prior.outcome.effective_at,
            )
        return Outcome(
            command_id,
            tenant,
            subject_id,
            "rejected",
            "command_id_conflict",
            "command_id was already used for a command with different content",
        )

    def evaluate(self, command: Command, digest: str, delivery: Delivery) -> None:
        key = command.key
        command_id = command.command_id
        rejection = validate(self.catalog, command, now=self.now, max_future=self.max_future)
        if rejection is not None:
            reason, detail = rejection
            outcome = Outcome(command_id, key.tenant, key.subject_id, "rejected", reason, detail)
            self.answer(outcome)
            self.store(ProcessedRecord(command_id, digest, delivery, outcome))
            return

        # Most subjects in a batch are new: for them, skip building an empty state that
        # would only be read for version 0 and no rules.
        state = self.known_state(key)
        version = 0 if state is None else state.version
        rules = {} if state is None else dict(state.rules)
        applied: list[Rule] = []
        for rule in _effective_rules(command):
            pair = (rule.topic, rule.channel)
            current = rules.get(pair)
            if current is None or rule.precedence_key() > current.precedence_key():
                rules[pair] = rule
                applied.append(rule)

        if not applied:
            outcome = Outcome(
                command_id,
                key.tenant,
                key.subject_id,
                "unchanged",
                None,
                "every change is older than the rule already stored",
                version,
            )
            self.answer(outcome)
            self.result.states[key] = SubjectState.empty(key) if state is None else state
            self.store(ProcessedRecord(command_id, digest, delivery, outcome))
            return

        # `rules` is this call's own copy and is never touched again: adopt it, don't copy it.
        new_state = SubjectState.adopting(key, version + 1, rules)
        effective_at, source = self.effective_at, command.source
        # Positional arguments (in field order, as for `Outcome`): keyword matching is a
        # measurable share of building these on the hot path.
        event = PreferenceChanged(
            event_id_for(key.tenant, key.subject_id, new_state.version),
            key.tenant,
            key.subject_id,
            new_state.version,
            effective_at,
            command_id,
            source.channel,
            source.app,
            tuple(
                [
                    AppliedChange(rule.action, rule.topic, rule.channel, rule.occurred_at)
                    for rule in applied
                ]
            ),
            new_state.sorted_rules(),
        )
        outcome = Outcome(
            command_id,
            key.tenant,
            key.subject_id,
            "applied",
            None,
            None,
            new_state.version,
            effective_at,
        )
        self.answer(outcome)
        self.result.states[key] = new_state
        self.result.changed[key] = new_state
        # List comprehensions rather than generators: measurably cheaper for a few items.
        self.result.upserted_rules.extend([(key, rule) for rule in applied])
        self.result.history.extend(
            [
                HistoryEntry(
                    key,
                    command_id,
                    rule.action,
                    rule.topic,
                    rule.channel,
                    rule.occurred_at,
                    effective_at,
                    source,
                    command.reason,
                )
                for rule in applied
            ]
        )
        self.result.events.append(event)
        self.store(ProcessedRecord(command_id, digest, delivery, outcome))


def _precedes(delivery: Delivery, other: Delivery) -> bool:
    """True if `delivery` was necessarily consumed before `other` (same partition, lower offset)."""
    return (
        delivery.topic == other.topic
        and delivery.partition == other.partition
        and delivery.offset < other.offset
    )


def _effective_rules(command: Command) -> list[Rule]:
    """One rule per (topic, channel) the command names.

    A command that names the same pair twice is resolved with the usual precedence (its
    entries share time and id, so the opt-out wins), keeping the result order-independent.
    """
    chosen: dict[tuple[str, str], Rule] = {}
    occurred_at, source_channel = command.occurred_at, command.source.channel
    command_id = command.command_id
    for change in command.changes:
        topic, channel = change.topic, change.channel
        # Positional, in field order: keyword matching is a measurable share of the cost.
        rule = Rule(topic, channel, change.action, occurred_at, source_channel, command_id)
        pair = (topic, channel)
        current = chosen.get(pair)
        if current is None or rule.precedence_key() > current.precedence_key():
            chosen[pair] = rule
    return list(chosen.values())


def apply_batch(
    catalog: Catalog,
    states: Mapping[SubjectKey, SubjectState],
    processed: Mapping[CommandKey, ProcessedRecord],
    records: Sequence[Received | Malformed],
    *,
    now: datetime,
    effective_at: datetime,
    max_future: timedelta,
) -> BatchResult:
    """Apply a batch of records in order and return everything to persist and publish.

    `states` must hold the stored state of every subject in the batch that has one (a missing
    subject is taken to be new, version 0) and `processed` the stored entry of every (tenant,
    command id) in the batch that has one. `effective_at` is the commit time stamped on applied
    outcomes and events; `now` is the clock used to refuse future-dated commands.
    """
    batch = _Batch(catalog, states, processed, now, effective_at, max_future)
    for record in records:
        batch.handle(record)
    batch.result.processed = list(batch.new_processed.values())
    return batch.result
