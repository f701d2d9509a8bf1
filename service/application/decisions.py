"""The read path's use cases: "may I send this?" for one subject, a batch, or a campaign.

States come from Redis; a miss is read from PostgreSQL and copied into Redis through the
same version compare-and-set the worker uses, so a reader holding an old state can never
overwrite the worker's newer one. Every answer comes from the domain's ``is_allowed``: the
SDK, the HTTP API, the CLI and the worker share one rule.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.application.telemetry import NO_TELEMETRY, ReadTelemetry
from service.domain.catalog import Catalog
from service.domain.decision import Rules, effective_preferences, is_allowed
from service.domain.model import Decision, SubjectKey, SubjectState


class CachedStates(Protocol):
    async def read_one(self, key: SubjectKey) -> SubjectState | None: ...
    async def read_many(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> list[SubjectState | None]: ...
    async def read_many_rules(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> list[Rules | None]: ...


class StateFiller(Protocol):
    async def write(self, states: Iterable[SubjectState]) -> int: ...


class StoredStates(Protocol):
    async def load_states(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]: ...


class LocalStates(Protocol):
    """An in-process cache in front of Redis (the SDK's), with memoised decisions.

    ``generation()`` is taken before a state is read elsewhere and handed back to ``put``:
    the cache keeps the state only if it dropped nothing in between, since a dropped entry
    may have held a newer version than the one the read brings back.
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
    """A subject's stored rules and what they mean for every catalog topic and channel."""

    state: SubjectState
    decisions: dict[tuple[str, str], Decision]


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
        return (await self._state_and_source(key))[0]

    async def _state_and_source(self, key: SubjectKey) -> tuple[SubjectState, str]:
        local = self._local
        if local is not None and (kept := local.get(key)) is not None:
            return kept, "local"
        generation = local.generation() if local is not None else 0
        cached = await self._cache.read_one(key)
        if cached is not None:
            state, source = cached, "redis"
        else:
            state, source = (await self._fill([key]))[key], "postgresql"
        if local is not None:
            local.put(state, generation)
        return state, source

    async def states(self, tenant: str, subject_ids: Sequence[str]) -> list[SubjectState]:
        """States of many subjects of one tenant, in order: a few Redis calls, one SQL query."""
        cached = await self._cache.read_many(tenant, subject_ids)
        missing = [
            SubjectKey(tenant, sid) for sid, s in zip(subject_ids, cached, strict=True) if s is None
        ]
        if not missing:
            return [s for s in cached if s is not None]
        loaded = await self._fill(missing)
        return [
            s if s is not None else loaded[SubjectKey(tenant, sid)]
            for sid, s in zip(subject_ids, cached, strict=True)
        ]

    async def _fill(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]:
        loaded = await self._store.load_states(keys)
        # Unknown subjects are cached too (version 0), so a campaign does not query
        # PostgreSQL for them on every send; the worker's first write (version 1) wins the CAS.
        await self._filler.write(loaded.values())
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
        return self.preferences_of(await self.state(key))

    def preferences_of(self, state: SubjectState) -> SubjectPreferences:
        return SubjectPreferences(state, effective_preferences(self.catalog, state))

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
            for state in await self.states(tenant, unique):
                states[state.key] = state
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
        rules = (
            (sid, r if r is not None else loaded[SubjectKey(tenant, sid)].rules)
            for sid, r in zip(subject_ids, found, strict=True)
        )
        return self.allowed_among(rules, topic, channel)

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
        fetched = await self.states(tenant, missing) if missing else []
        for state in fetched:
            local.put(state, generation)
        allowed_new = set(
            self.allowed_among(((s.key.subject_id, s.rules) for s in fetched), topic, channel)
        )
        return [
            sid
            for sid, d in zip(subject_ids, known, strict=True)
            if (d.allowed if d is not None else sid in allowed_new)
        ]
