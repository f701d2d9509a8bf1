"""The read path's use cases: "may I send this?" for one subject, a batch, or a campaign.

States come from Redis; a miss is read from PostgreSQL and copied into Redis through the
same version compare-and-set the worker uses, so a reader holding an old state can never
overwrite the worker's newer one. Every answer comes from the domain's ``is_allowed``: the
SDK, the HTTP API, the CLI and the worker share one rule.

A state may be a forward (``merged_into``): an identifier linked to a subject, a subject merged
into another, or an erased identifier's clear name pointing at its suppression. Every path
asks the subject it leads to instead, and answers with that subject's decision. Storage
keeps forwards one hop deep, but a merge re-pointing them may race a read, so up to
``MAX_FORWARD_HOPS`` are followed; a longer chain (a cycle) is an error, never the default.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from service.application.telemetry import NO_TELEMETRY, ReadTelemetry
from service.domain.catalog import Catalog
from service.domain.decision import Rules, effective_preferences, is_allowed
from service.domain.identifiers import is_erased
from service.domain.model import Decision, SubjectKey, SubjectState

MAX_FORWARD_HOPS = 8


class ForwardChainTooLong(RuntimeError):
    """An asked id leads through more than ``MAX_FORWARD_HOPS`` forwards (a cycle, or
    re-points racing far more than they can): no subject to answer for. Answering the
    catalog default instead could allow a message the person opted out of."""

    def __init__(self) -> None:
        super().__init__(f"more than {MAX_FORWARD_HOPS} forwards from the asked subject")


class IdentifierKeyMissing(RuntimeError):
    """An identifier without a row of its own, in a tenant that has erased subjects, asked
    without ``OPTOUT_IDENTIFIER_KEY``: it may be an erased identifier whose suppression
    cannot be found without the key, and the default answer could contact that person."""

    def __init__(self) -> None:
        super().__init__(
            "OPTOUT_IDENTIFIER_KEY is not set: erased identifiers cannot be recognised"
        )


@dataclass(frozen=True, slots=True)
class Forward:
    """The rules-only bulk read's answer for a forward: ask ``target`` instead."""

    target: str


class CachedStates(Protocol):
    """``read_many_rules`` answers a forward with ``Forward``, never with its (empty) rules."""

    async def read_one(self, key: SubjectKey) -> SubjectState | None: ...
    async def read_many(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> list[SubjectState | None]: ...
    async def read_many_rules(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> Sequence[Rules | Forward | None]: ...


class StateFiller(Protocol):
    async def write(self, states: Iterable[SubjectState]) -> int: ...


class StoredStates(Protocol):
    """The state of every asked key (an unknown one: version 0, no rules). The answer may
    hold more keys: the suppression an erased identifier forwards to, read in the same
    round trip. Raises ``IdentifierKeyMissing`` when it cannot tell an erased identifier."""

    async def load_states(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]: ...


class LocalStates(Protocol):
    """An in-process cache in front of Redis (the SDK's), with memoised decisions.

    ``generation()`` is taken before a state is read elsewhere and handed back to ``put``:
    the cache keeps the state only if it dropped nothing in between, since a dropped entry
    may have held a newer version than the one the read brings back.

    It never holds a forward (``put`` is not called with one): answers for a forwarded id
    always go to Redis, where the worker re-points or removes forwards.
    """

    def decision(
        self, tenant: str, subject_id: str, topic: str, channel: str
    ) -> Decision | None: ...
    def get(self, key: SubjectKey) -> SubjectState | None: ...
    def generation(self) -> int: ...
    def put(self, state: SubjectState, generation: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Question:
    subject_id: str
    topic: str
    channel: str
    tenant: str = "default"

    @property
    def key(self) -> SubjectKey:
        return SubjectKey(self.tenant, self.subject_id)


@dataclass(frozen=True, slots=True)
class SubjectPreferences:
    """A subject's stored rules and what they mean for every catalog topic and channel.

    ``addressed_as`` is the id asked when it forwarded to ``state``'s subject, else ``None``.
    """

    state: SubjectState
    decisions: dict[tuple[str, str], Decision]
    addressed_as: str | None = None


class DecisionService:
    """Answers from the local cache when one is given and holds the subject, else from
    Redis, else from PostgreSQL; every state read from Redis or PostgreSQL is kept locally.
    """

    def __init__(
        self,
        catalog: Catalog,
        cache: CachedStates,
        filler: StateFiller,
        store: StoredStates,
        local: LocalStates | None = None,
        telemetry: ReadTelemetry = NO_TELEMETRY,
    ) -> None:
        self.catalog = catalog
        self._cache = cache
        self._filler = filler
        self._store = store
        self._local = local
        self._telemetry = telemetry

    def validate(self, topic: str, channel: str) -> Decision:
        """The answer for a subject with no rules; raises ``UnknownTopic``/``UnknownChannel``.

        Asked before any I/O, so a typo costs no round trip, and with the domain function
        itself, so "valid question" means exactly what the worker means by it.
        """
        return is_allowed(self.catalog, {}, topic, channel)

    def decide(self, state: SubjectState, topic: str, channel: str) -> Decision:
        return is_allowed(self.catalog, state, topic, channel)

    async def state(self, key: SubjectKey) -> SubjectState:
        """The subject's state; for a forward, the state of the subject it leads to."""
        return (await self._state_and_source(key))[0]

    async def _state_and_source(self, key: SubjectKey, hops: int = 0) -> tuple[SubjectState, str]:
        local = self._local
        if local is not None and (kept := local.get(key)) is not None:
            return kept, "local"  # never a forward: those are not kept
        generation = local.generation() if local is not None else 0
        cached = await self._cache.read_one(key)
        if cached is not None:
            state, source = cached, "redis"
        else:
            state, source = (await self._fill([key]))[key], "postgresql"
        if state.merged_into is not None:
            if hops >= MAX_FORWARD_HOPS:
                raise ForwardChainTooLong()
            return await self._state_and_source(SubjectKey(key.tenant, state.merged_into), hops + 1)
        if local is not None:
            local.put(state, generation)
        return state, source

    async def states(self, tenant: str, subject_ids: Sequence[str]) -> list[SubjectState]:
        """States of many subjects of one tenant, in order: a few Redis calls, one SQL query
        (and as many again per hop for forwards, whose place gets their target's state)."""
        return await self._states(tenant, subject_ids, 0)

    async def _states(
        self, tenant: str, subject_ids: Sequence[str], hops: int
    ) -> list[SubjectState]:
        cached = await self._cache.read_many(tenant, subject_ids)
        missing = [
            SubjectKey(tenant, sid) for sid, s in zip(subject_ids, cached, strict=True) if s is None
        ]
        if missing:
            loaded = await self._fill(missing)
            found = [
                s if s is not None else loaded[SubjectKey(tenant, sid)]
                for sid, s in zip(subject_ids, cached, strict=True)
            ]
        else:
            found = [s for s in cached if s is not None]
        forwarded = [(i, s.merged_into) for i, s in enumerate(found) if s.merged_into is not None]
        if forwarded:
            targets = await self._targets(tenant, [t for _, t in forwarded], hops + 1)
            for i, target in forwarded:
                found[i] = targets[target]
        return found

    async def _targets(
        self, tenant: str, target_ids: Sequence[str], hops: int
    ) -> dict[str, SubjectState]:
        """The states forwards lead to, by target id; ``hops`` counts the one just taken."""
        if hops > MAX_FORWARD_HOPS:
            raise ForwardChainTooLong()
        unique = list(dict.fromkeys(target_ids))
        return dict(zip(unique, await self._states(tenant, unique, hops), strict=True))

    async def _fill(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]:
        loaded = await self._store.load_states(keys)
        # Unknown subjects are cached too (version 0), so a campaign does not query
        # PostgreSQL for them on every send; the worker's first write (version 1) wins the CAS.
        # A forward to a suppression is not: it would put an erased identifier back into
        # Redis in clear (the suppression itself is cached under its own key).
        await self._filler.write(
            s for s in loaded.values() if s.merged_into is None or not is_erased(s.merged_into)
        )
        return loaded

    async def is_allowed(self, key: SubjectKey, topic: str, channel: str) -> Decision:
        local = self._local
        if local is not None:
            hit = local.decision(key.tenant, key.subject_id, topic, channel)
            if hit is not None:
                # Counted, not timed: timing would cost more than the answer itself.
                self._telemetry.local_hit(hit.allowed)
                return hit
        empty = self.validate(topic, channel)
        if empty.basis == "mandatory":
            return empty
        started = time.perf_counter()
        state, source = await self._state_and_source(key)
        decision = self.decide(state, topic, channel)
        self._telemetry.check(decision.allowed, source, time.perf_counter() - started)
        return decision

    async def preferences(self, key: SubjectKey) -> SubjectPreferences:
        """The preferences of the subject ``key`` names; of its target for a forward."""
        state = await self.state(key)
        return self.preferences_of(
            state, None if state.key.subject_id == key.subject_id else key.subject_id
        )

    def preferences_of(
        self, state: SubjectState, addressed_as: str | None = None
    ) -> SubjectPreferences:
        return SubjectPreferences(state, effective_preferences(self.catalog, state), addressed_as)

    async def check_many(self, questions: Sequence[Question]) -> list[Decision]:
        """Decisions for mixed questions; every question is validated before any I/O."""
        for question in questions:
            self.validate(question.topic, question.channel)
        by_tenant: dict[str, list[str]] = {}
        for question in questions:
            by_tenant.setdefault(question.tenant, []).append(question.subject_id)
        states: dict[SubjectKey, SubjectState] = {}
        for tenant, ids in by_tenant.items():
            unique = list(dict.fromkeys(ids))
            # By the id asked: a forward's place holds its target's state.
            for sid, state in zip(unique, await self.states(tenant, unique), strict=True):
                states[SubjectKey(tenant, sid)] = state
        return [self.decide(states[q.key], q.topic, q.channel) for q in questions]

    def allowed_among(
        self, subjects: Iterable[tuple[str, Rules]], topic: str, channel: str
    ) -> list[str]:
        """Ids of the (subject id, rules) pairs whose rules allow the message, in order.

        A subject without rules gets the answer computed once for the empty rule set, which
        is what ``is_allowed`` would return for each of them; the rest are decided one by one.
        """
        empty = self.validate(topic, channel)
        catalog = self.catalog
        return [
            subject_id
            for subject_id, rules in subjects
            if (is_allowed(catalog, rules, topic, channel).allowed if rules else empty.allowed)
        ]

    async def filter_allowed(
        self, tenant: str, subject_ids: Sequence[str], topic: str, channel: str
    ) -> list[str]:
        """The ids a campaign may send to, in order; a mandatory topic needs no lookup at all.

        Without a local cache it reads rules only (no full states): for a large campaign, building
        objects is the cost. With one, the cached subjects' memoised answers are used and the
        others are read in bulk and kept.
        """
        empty = self.validate(topic, channel)
        if empty.basis == "mandatory":
            return list(subject_ids)
        if self._local is not None:
            return await self._through_local(self._local, tenant, subject_ids, topic, channel)
        found = await self._cache.read_many_rules(tenant, subject_ids)
        missing = [
            SubjectKey(tenant, sid) for sid, r in zip(subject_ids, found, strict=True) if r is None
        ]
        loaded = await self._fill(missing) if missing else {}
        rules: list[Rules | Forward] = [
            r if r is not None else _rules_or_forward(loaded[SubjectKey(tenant, sid)])
            for sid, r in zip(subject_ids, found, strict=True)
        ]
        forwarded = [(i, r.target) for i, r in enumerate(rules) if isinstance(r, Forward)]
        if forwarded:
            targets = await self._targets(tenant, [t for _, t in forwarded], 1)
            for i, target in forwarded:
                rules[i] = targets[target].rules
        # Every Forward was replaced by its target's rules just above.
        return self.allowed_among(
            zip(subject_ids, cast(list[Rules], rules), strict=True), topic, channel
        )

    async def _through_local(
        self,
        local: LocalStates,
        tenant: str,
        subject_ids: Sequence[str],
        topic: str,
        channel: str,
    ) -> list[str]:
        known = [local.decision(tenant, sid, topic, channel) for sid in subject_ids]
        missing = [sid for sid, d in zip(subject_ids, known, strict=True) if d is None]
        generation = local.generation()
        # A forward's place holds its target's state: the target is kept, the forward not.
        fetched = await self.states(tenant, missing) if missing else []
        for state in fetched:
            local.put(state, generation)
        allowed_new = set(
            self.allowed_among(
                ((sid, s.rules) for sid, s in zip(missing, fetched, strict=True)), topic, channel
            )
        )
        return [
            sid
            for sid, d in zip(subject_ids, known, strict=True)
            if (d.allowed if d is not None else sid in allowed_new)
        ]


def _rules_or_forward(state: SubjectState) -> Rules | Forward:
    return state.rules if state.merged_into is None else Forward(state.merged_into)
