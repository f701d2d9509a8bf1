"""Batch-first application of commands: the heart of the worker, with no I/O.

The worker loads the states and processed-log entries a batch needs, calls `apply_batch`
once, then persists the result in one transaction. Doing the whole batch in memory is what
makes the throughput aims reachable, and keeping it pure is what makes idempotency and
convergence provable by tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.domain.catalog import Catalog
from service.domain.commands import Command, Delivery, Malformed, Received, content_hash
from service.domain.events import (
    AppliedChange,
    HistoryAction,
    HistoryEntry,
    Outcome,
    PreferenceChanged,
    Reason,
    Status,
    Tombstone,
    event_id_for,
)
from service.domain.frozen import quick_init
from service.domain.identifiers import is_erased, is_identifier
from service.domain.model import WILDCARD, Rule, SubjectKey, SubjectState
from service.domain.sms_restore import KEYWORD_CHANNEL, cells_of, statements_of
from service.domain.validation import validate

CommandKey = tuple[str, str]
"""(tenant, command_id): command ids are unique per tenant, idempotency is judged on both."""

Pseudonym = Callable[[SubjectKey], SubjectKey]
"""The key of an identifier's erased suppression (``identifiers.pseudonym`` under the key)."""

Seal = Callable[[str], str]
"""The stored, keyed form of a content hash (``keyed_hashes.ContentSeal``)."""


@quick_init
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
    tombstones: subject ids that ended (merged, linked, erased), for the compacted topic.
    replaced: subjects whose whole rule set is rewritten (erased, emptied by a merge, a copy
        given back by an unlink): their stored rules are deleted before `changed` is saved.
    erasures: per erased id, what replaces it (its keyed hash for an identifier, itself
        otherwise); ids replaced by a hash are removed from storage.
    repointed: forwards to re-point, (tenant, old target, new target), so every forward
        stays one hop deep.
    fences: short-lived cache entries under erased identifiers' keys (a forward to the
        suppression, at a higher version), so a reader's older fill cannot land there.
    discarded: ids the load created that resolved to a suppression: not kept.
    """

    outcomes: list[Outcome] = field(default_factory=list)
    states: dict[SubjectKey, SubjectState] = field(default_factory=dict)
    changed: dict[SubjectKey, SubjectState] = field(default_factory=dict)
    upserted_rules: list[tuple[SubjectKey, Rule]] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    events: list[PreferenceChanged] = field(default_factory=list)
    processed: list[ProcessedRecord] = field(default_factory=list)
    replayed: list[ProcessedRecord] = field(default_factory=list)
    tombstones: list[Tombstone] = field(default_factory=list)
    replaced: set[SubjectKey] = field(default_factory=set)
    erasures: list[Erasure] = field(default_factory=list)
    repointed: list[tuple[str, str, str]] = field(default_factory=list)
    fences: list[SubjectState] = field(default_factory=list)
    discarded: set[SubjectKey] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Erasure:
    """One id of an erased person and what it becomes: `replacement` is the keyed hash of
    an identifier, or the id itself for an opaque id (kept, its personal fields erased)."""

    tenant: str
    subject_id: str
    replacement: str
    erased_at: datetime
    command_id: str


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
        pseudonym: Pseudonym | None,
        forwarders: Mapping[SubjectKey, Sequence[str]],
        seal: Seal | None = None,
    ) -> None:
        self.catalog = catalog
        self.base_states = states
        self.base_processed = processed
        self.now = now
        self.effective_at = effective_at
        self.max_future = max_future
        self.pseudonym = pseudonym
        self.forwarders = forwarders
        self.seal = seal
        self.result = BatchResult()
        self.new_processed: dict[CommandKey, ProcessedRecord] = {}
        self.merged_away: list[SubjectKey] = []

    def resolve(self, key: SubjectKey) -> SubjectKey:
        """The subject an id stands for: its erased suppression, or the end of its forwards.

        Storage keeps forwards one hop deep; a chain only forms within a batch (A merged
        into B, then B into C) and is followed here. A cycle cannot form, since a merge
        joins two different ends; meeting one is a bug, and raises.
        """
        seen: set[SubjectKey] = set()
        while True:
            if self.pseudonym is not None and is_identifier(key.subject_id):
                hashed = self.pseudonym(key)
                if self.known_state(hashed) is not None:
                    key = hashed  # erased: its suppression, or the erased subject it names
            state = self.known_state(key)
            if state is None or state.merged_into is None:
                return key
            seen.add(key)
            key = SubjectKey(key.tenant, state.merged_into)
            if key in seen:
                raise RuntimeError("forward cycle")

    def needs_resolving(self, key: SubjectKey, state: SubjectState | None) -> bool:
        # One attribute test for the common case; identifiers also look for a suppression.
        return (state is not None and state.merged_into is not None) or (
            self.pseudonym is not None and is_identifier(key.subject_id)
        )

    def keep(self, state: SubjectState) -> None:
        """A new state for the subject: cached, saved, its version risen."""
        self.result.states[state.key] = state
        self.result.changed[state.key] = state

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

        plain = (
            record.content_hash if isinstance(record, Malformed) else content_hash(record.command)
        )
        # What is stored is keyed (keyed_hashes.py), so it names no one once erased.
        digest = plain if self.seal is None else self.seal(plain)
        if prior is not None and prior.outcome.status != "rejected":
            if prior.content_hash == plain:
                digest = plain  # stored before content hashes were keyed: the same content
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
            state = self.known_state(key)
            if self.needs_resolving(key, state):
                resolved = self.resolve(key)
                if resolved != key:
                    self.settle(key, state)
                    key = resolved
            self.result.states[key] = self.state(key)

    def settle(self, addressed: SubjectKey, state: SubjectState | None) -> None:
        """An id that resolved elsewhere: a forward's own state goes to the cache; a row the
        load created for an erased identifier is dropped (never its clear id in a store)."""
        if state is not None and state.merged_into is not None:
            self.result.states[addressed] = state
        elif state is None or state.version == 0:
            self.result.discarded.add(addressed)

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
        addressed = command.key
        command_id = command.command_id
        rejection = validate(self.catalog, command, now=self.now, max_future=self.max_future)
        if rejection is not None:
            reason, detail = rejection
            self.finish(command, digest, delivery, "rejected", reason, detail)
            return
        if command.kind != "preferences":
            self.identity(command, digest, delivery)
            return

        # Most subjects in a batch are new: for them, skip building an empty state that
        # would only be read for version 0 and no rules.
        key = addressed
        state = self.known_state(key)
        if self.needs_resolving(key, state):
            key = self.resolve(addressed)
            if key != addressed:
                self.settle(addressed, state)
                state = self.known_state(key)
        if state is not None and state.erased:
            self.suppressed(command, digest, delivery, state)
            return
        version = 0 if state is None else state.version
        rules = {} if state is None else dict(state.rules)
        applied: list[Rule] = []
        for rule in _effective_rules(command):
            pair = (rule.topic, rule.channel)
            current = rules.get(pair)
            if current is None or rule.precedence_key() > current.precedence_key():
                rules[pair] = rule
                applied.append(rule)

        applied_to = None if key is addressed else key.subject_id
        if not applied:
            outcome = Outcome(
                command_id,
                addressed.tenant,
                addressed.subject_id,
                "unchanged",
                None,
                "every change is older than the rule already stored",
                version,
                None,
                applied_to,
            )
            self.answer(outcome)
            self.result.states[key] = SubjectState.empty(key) if state is None else state
            self.store(ProcessedRecord(command_id, digest, delivery, outcome))
            return

        # `rules` is this call's own copy and is never touched again: adopt it, don't copy it.
        new_state = SubjectState.adopting(key, version + 1, rules)
        effective_at, source = self.effective_at, command.source
        self.publish(new_state, command, applied)
        outcome = Outcome(
            command_id,
            addressed.tenant,
            addressed.subject_id,
            "applied",
            None,
            None,
            new_state.version,
            effective_at,
            applied_to,
        )
        self.answer(outcome)
        self.keep(new_state)
        # List comprehensions rather than generators: measurably cheaper for a few items.
        self.result.upserted_rules.extend([(key, rule) for rule in applied])
        addressed_as = None if applied_to is None else addressed.subject_id
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
                    addressed_as,
                )
                for rule in statements_of(applied)
            ]
        )
        self.store(ProcessedRecord(command_id, digest, delivery, outcome))

    def publish(self, state: SubjectState, command: Command, applied: Sequence[Rule]) -> None:
        """The preference-changed event of `state`, new with `command`."""
        key = state.key
        # Positional arguments (in field order, as for `Outcome`): keyword matching is a
        # measurable share of building these on the hot path.
        self.result.events.append(
            PreferenceChanged(
                event_id_for(key.tenant, key.subject_id, state.version),
                key.tenant,
                key.subject_id,
                state.version,
                self.effective_at,
                command.command_id,
                command.source.channel,
                command.source.app,
                tuple(
                    [
                        AppliedChange(rule.action, rule.topic, rule.channel, rule.occurred_at)
                        for rule in statements_of(applied)
                    ]
                ),
                state.sorted_rules(),
            )
        )

    def finish(
        self,
        command: Command,
        digest: str,
        delivery: Delivery,
        status: Status,
        reason: Reason | None,
        detail: str | None,
        version: int | None = None,
        applied_to: SubjectKey | None = None,
        subject_id: str | None = None,
    ) -> None:
        """Answer `command` and log the answer; `applied_to` when it is not the id named."""
        outcome = Outcome(
            command.command_id,
            command.tenant,
            command.subject_id if subject_id is None else subject_id,
            status,
            reason,
            detail,
            version,
            self.effective_at if status == "applied" else None,
            None if applied_to is None or applied_to == command.key else applied_to.subject_id,
        )
        self.answer(outcome)
        self.store(ProcessedRecord(command.command_id, digest, delivery, outcome))

    def suppressed(
        self, command: Command, digest: str, delivery: Delivery, state: SubjectState
    ) -> None:
        """A command for an erased person: opt-outs are already in force; anything else
        would contact someone who asked to be forgotten, and is refused."""
        self.result.states[state.key] = state
        # The answer is stored: it names the identifier by its hash, never in clear again.
        named = self.public_id(command.key)
        if all(change.action == "opt_out" for change in command.changes):
            self.finish(
                command,
                digest,
                delivery,
                "unchanged",
                None,
                "the subject was erased and stays suppressed",
                state.version,
                state.key,
                named,
            )
            return
        self.finish(
            command,
            digest,
            delivery,
            "rejected",
            "erased",
            "the subject was erased; it stays suppressed and cannot be opted in",
            state.version,
            state.key,
            named,
        )

    # Identity: link, unlink, merge and erase.

    def identity(self, command: Command, digest: str, delivery: Delivery) -> None:
        addressed = command.key
        subject = self.resolve(addressed)
        if subject != addressed:
            self.settle(addressed, self.known_state(addressed))
        if command.kind == "erase":
            self.erase(command, digest, delivery, subject)
            return
        assert command.target is not None  # validated
        named = SubjectKey(command.tenant, command.target)
        if self.state(subject).erased:
            self.finish(
                command,
                digest,
                delivery,
                "rejected",
                "erased",
                "the subject was erased",
                subject_id=self.public_id(command.key),
            )
            return
        if command.kind == "merge":
            into = self.resolve(named)
            if into != named:
                self.settle(named, self.known_state(named))
            if self.state(into).erased:
                self.finish(
                    command, digest, delivery, "rejected", "erased", "into names an erased subject"
                )
                return
            if into == subject:
                self.finish(
                    command,
                    digest,
                    delivery,
                    "unchanged",
                    None,
                    "both ids already stand for the same subject",
                    self.state(into).version,
                    into,
                )
                return
            version = self.merge(command, subject, into, related=subject.subject_id)
            self.finish(command, digest, delivery, "applied", None, None, version, into)
            return
        if command.kind == "link":
            self.link(command, digest, delivery, subject, named)
            return
        self.unlink(command, digest, delivery, subject, named)

    def link(
        self,
        command: Command,
        digest: str,
        delivery: Delivery,
        subject: SubjectKey,
        identifier: SubjectKey,
    ) -> None:
        """Linking is merging the identifier into the subject: the identifier's own rules
        join the subject's by the latest-statement rule, so no opt-out made under the
        identifier is lost, and it forwards to the subject from then on."""
        resolved = self.resolve(identifier)
        if resolved != identifier and resolved != subject:
            own = self.known_state(identifier)
            if own is None or own.merged_into is None:  # resolved to its suppression
                self.settle(identifier, own)
                self.finish(
                    command, digest, delivery, "rejected", "erased", "the identifier was erased"
                )
                return
            self.finish(
                command,
                digest,
                delivery,
                "rejected",
                "identifier_linked_elsewhere",
                "the identifier is linked to another subject; unlink it first",
            )
            return
        if resolved == subject:
            self.finish(
                command,
                digest,
                delivery,
                "unchanged",
                None,
                "the identifier already stands for this subject",
                self.state(subject).version,
                subject,
            )
            return
        version = self.merge(command, identifier, subject, related=identifier.subject_id)
        self.finish(command, digest, delivery, "applied", None, None, version, subject)

    def unlink(
        self,
        command: Command,
        digest: str,
        delivery: Delivery,
        subject: SubjectKey,
        identifier: SubjectKey,
    ) -> None:
        """The identifier becomes a subject of its own again, keeping a copy of the rules
        that applied to it: an address that was opted out stays opted out."""
        own = self.known_state(identifier)
        if own is None or own.merged_into is None or self.resolve(identifier) != subject:
            self.finish(
                command,
                digest,
                delivery,
                "rejected",
                "not_linked",
                "the identifier is not linked to this subject",
            )
            return
        rules = dict(self.state(subject).rules)
        freed = SubjectState.adopting(identifier, own.version + 1, rules)
        self.keep(freed)
        self.result.replaced.add(identifier)
        self.publish(freed, command, freed.sorted_rules())
        self.record(command, subject, "unlink", related=identifier.subject_id)
        self.record(command, identifier, "unlink", related=subject.subject_id)
        self.finish(command, digest, delivery, "applied", None, None, freed.version, identifier)

    def merge(self, command: Command, source: SubjectKey, into: SubjectKey, related: str) -> int:
        """Merge `source` into `into`; returns `into`'s new version.

        Per (topic, channel) the statement with the higher precedence survives (the later
        one; on a tie the opt-out): exactly the rule a decision over both rule sets would
        apply, so the merged subject answers as the person's latest statements say.
        """
        gone = self.state(source)
        kept = self.state(into)
        rules = dict(kept.rules)
        adopted: list[Rule] = []
        for pair, rule in gone.rules.items():
            current = rules.get(pair)
            if current is None or rule.precedence_key() > current.precedence_key():
                rules[pair] = rule
                adopted.append(rule)
        merged = SubjectState.adopting(into, kept.version + 1, rules)
        forward = SubjectState.adopting(source, gone.version + 1, {}, merged_into=into.subject_id)
        self.keep(merged)
        self.keep(forward)
        self.result.replaced.add(source)
        self.result.upserted_rules.extend([(into, rule) for rule in adopted])
        self.publish(merged, command, adopted)
        self.tombstone(source, forward.version, command)
        self.merged_away.append(source)
        self.record(command, into, "merge" if command.kind == "merge" else "link", related)
        return merged.version

    def erase(self, command: Command, digest: str, delivery: Delivery, subject: SubjectKey) -> None:
        """Remove the person's personal data and keep them suppressed.

        Every id of the person (the subject and each id forwarding to it) is erased; an
        identifier is replaced by its keyed hash, which keeps the suppression (an opt-out
        of everything) so a later command or check for the same identifier finds it. The
        consent history keeps what happened and when (the proof of consent), without ip,
        user agent, reasons or identifiers in clear.
        """
        pseudonym = self.pseudonym
        if pseudonym is None:
            self.finish(
                command,
                digest,
                delivery,
                "rejected",
                "erasure_unavailable",
                "erasure needs OPTOUT_IDENTIFIER_KEY, the key of the identifiers' hashes",
            )
            return
        current = self.state(subject)
        if current.erased:
            self.finish(
                command,
                digest,
                delivery,
                "unchanged",
                None,
                "the subject was already erased",
                current.version,
                subject,
                self.public_id(command.key),
            )
            return
        names = self.names_of(subject)
        final = pseudonym(subject) if is_identifier(subject.subject_id) else subject
        suppression = Rule(
            WILDCARD,
            WILDCARD,
            "opt_out",
            command.occurred_at,
            command.source.channel,
            command.command_id,
        )
        erased_at = self.effective_at
        identifiers = 0
        for name in names:
            state = self.state(name)
            if is_identifier(name.subject_id):
                identifiers += 1
                hashed = pseudonym(name)
                self.result.erasures.append(
                    Erasure(
                        name.tenant,
                        name.subject_id,
                        hashed.subject_id,
                        erased_at,
                        command.command_id,
                    )
                )
                self.tombstone(name, state.version + 1, command)
                self.result.changed.pop(name, None)
                self.result.states.pop(name, None)
                self.result.replaced.add(name)
                self.result.discarded.discard(name)
                self.result.fences.append(
                    SubjectState.adopting(name, state.version + 1, {}, hashed.subject_id)
                )
                if hashed != final:
                    self.keep(
                        SubjectState.adopting(
                            hashed,
                            self.state(hashed).version + 1,
                            {},
                            final.subject_id,
                            erased=True,
                        )
                    )
            else:
                self.result.erasures.append(
                    Erasure(
                        name.tenant, name.subject_id, name.subject_id, erased_at, command.command_id
                    )
                )
                if name != subject:
                    self.tombstone(name, state.version + 1, command)
                    self.keep(
                        SubjectState.adopting(
                            name, state.version + 1, {}, final.subject_id, erased=True
                        )
                    )
        base = self.state(final)
        erased = SubjectState.adopting(
            final,
            max(base.version, current.version) + 1,
            {(WILDCARD, WILDCARD): suppression},
            erased=True,
        )
        self.keep(erased)
        self.result.replaced.add(final)
        if final == subject:
            # An opaque id names no one by itself: its suppression is published, so a sender
            # that follows the compacted topic alone keeps the person suppressed too.
            self.publish(erased, command, [suppression])
        else:
            self.result.erasures.append(
                Erasure(
                    final.tenant, final.subject_id, final.subject_id, erased_at, command.command_id
                )
            )
            self.result.repointed.append((subject.tenant, subject.subject_id, final.subject_id))
        self.record(command, final, "erase", related=None)
        others = len(names) - identifiers
        self.finish(
            command,
            digest,
            delivery,
            "applied",
            None,
            (
                f"erased: {identifiers} identifier(s) in clear, replaced by keyed hashes; the"
                " ip addresses, user agents and reasons of the consent history; the events"
                f" of the identifiers. kept: a suppression of every identifier and of"
                f" {others} opaque id(s), so the person is never contacted again (an opt-out"
                " of everything; mandatory topics stay allowed); the consent history"
                " without personal fields, as the proof of consent; the commands and"
                " outcomes in Kafka until the topics' retention removes them"
            ),
            erased.version,
            final,
            self.public_id(command.key),
        )

    def public_id(self, key: SubjectKey) -> str:
        """The id an erasure's answer may name: never an identifier in clear."""
        if self.pseudonym is not None and is_identifier(key.subject_id):
            return self.pseudonym(key).subject_id
        return key.subject_id

    def names_of(self, subject: SubjectKey) -> list[SubjectKey]:
        """Every id that stands for `subject`: itself and each forward to it, stored or
        made in this batch."""
        candidates = {subject}
        candidates.update(self.base_states)
        candidates.update(self.result.states)
        for owner, ids in self.forwarders.items():
            candidates.update(SubjectKey(owner.tenant, sid) for sid in ids)
        names = [
            key
            for key in sorted(candidates)
            if key.tenant == subject.tenant
            and not is_erased(key.subject_id)
            and self.state(key).version > 0
            and self.resolve(key) == subject
        ]
        return names if subject in names else [subject, *names]

    def tombstone(self, key: SubjectKey, version: int, command: Command) -> None:
        self.result.tombstones.append(
            Tombstone(key.tenant, key.subject_id, version, command.command_id, self.effective_at)
        )

    def record(
        self, command: Command, key: SubjectKey, action: HistoryAction, related: str | None
    ) -> None:
        addressed = command.subject_id
        self.result.history.append(
            HistoryEntry(
                key,
                command.command_id,
                action,
                None,
                None,
                command.occurred_at,
                self.effective_at,
                command.source,
                command.reason,
                None if addressed == key.subject_id else addressed,
                related,
            )
        )

    def flatten(self) -> None:
        """Every forward made in the batch points at the end of its chain, and stored
        forwards to a merged-away subject are re-pointed there: forwards stay one hop."""
        for key, state in list(self.result.changed.items()):
            if state.merged_into is None:
                continue
            end = self.resolve(key)
            if end.subject_id != state.merged_into:
                self.keep(
                    SubjectState.adopting(key, state.version, {}, end.subject_id, state.erased)
                )
        self.result.repointed.extend(
            (key.tenant, key.subject_id, self.resolve(key).subject_id) for key in self.merged_away
        )


def _precedes(delivery: Delivery, other: Delivery) -> bool:
    """True if `delivery` was necessarily consumed before `other` (same partition, lower offset)."""
    return (
        delivery.topic == other.topic
        and delivery.partition == other.partition
        and delivery.offset < other.offset
    )


def _effective_rules(command: Command) -> list[Rule]:
    """One stored rule per (topic, channel) the command writes: a statement about all SMS
    also writes an SMS register (``sms_restore.cells_of``).

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
        for cell in cells_of(rule) if channel == KEYWORD_CHANNEL else (rule,):
            pair = (cell.topic, cell.channel)
            current = chosen.get(pair)
            if current is None or cell.precedence_key() > current.precedence_key():
                chosen[pair] = cell
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
    pseudonym: Pseudonym | None = None,
    forwarders: Mapping[SubjectKey, Sequence[str]] | None = None,
    seal: Seal | None = None,
) -> BatchResult:
    """Apply a batch of records in order and return everything to persist and publish.

    `states` must hold the stored state of every subject in the batch that has one (a missing
    subject is taken to be new, version 0) and `processed` the stored entry of every (tenant,
    command id) in the batch that has one. `effective_at` is the commit time stamped on applied
    outcomes and events; `now` is the clock used to refuse future-dated commands.

    Identity commands need more: the stored state of every id they name and of every
    forward's target, the suppression of every identifier that has one (`pseudonym` names
    it; without it nothing can be erased), and for an erasure the ids forwarding to each
    subject (`forwarders`, by subject). `seal` keys the content hashes it stores; a stored
    hash of before keying still matches the same content.
    """
    batch = _Batch(
        catalog,
        states,
        processed,
        now,
        effective_at,
        max_future,
        pseudonym,
        forwarders or {},
        seal,
    )
    for record in records:
        batch.handle(record)
    if batch.merged_away or batch.result.erasures:
        batch.flatten()
    batch.result.processed = list(batch.new_processed.values())
    return batch.result
