"""The read path follows forwards (linked identifiers, merged subjects, erased identifiers'
suppressions) in every ``DecisionService`` path, on fakes of its ports: a forward answers
like the subject it leads to, is never kept in the local cache, and a chain longer than
``MAX_FORWARD_HOPS`` is an error, never the default. The fakes hold the states as the cache
codec encodes them and answer the bulk reads as the Redis scripts do, so the readers'
decoding (``RulesMemo``, ``decode``) is the real one.

tests/integration/test_identity_reads.py runs the same on PostgreSQL, Redis, HTTP and the SDK.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.adapters.redis_reader import EMPTY_TAIL, RulesMemo, decode
from service.adapters.state_codec import encode_state
from service.application.decisions import (
    MAX_FORWARD_HOPS,
    DecisionService,
    Forward,
    ForwardChainTooLong,
    Question,
)
from service.client import InvalidIdentifier, OptoutClient
from service.client.local_cache import LocalCache
from service.client.sdk import normalized
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import Rules, is_allowed
from service.domain.model import Action, Decision, Rule, SubjectKey, SubjectState

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
TENANT = "default"
QUESTIONS = [
    ("marketing.newsletter", "email"),
    ("marketing.promotions", "sms"),
    ("product.tips", "push"),
    ("data.sale", "*"),
    ("security.alerts", "email"),
]
RULE_CHOICES = [
    ("marketing", "email"),
    ("marketing.newsletter", "email"),
    ("*", "sms"),
    ("*", "*"),
    ("product", "push"),
    ("data.sale", "*"),
]


def key(subject_id: str) -> SubjectKey:
    return SubjectKey(TENANT, subject_id)


def rule(topic: str, channel: str, action: Action, second: int = 0) -> Rule:
    return Rule(topic, channel, action, T0.replace(second=second), "web", f"c-{topic}-{channel}")


def plain(subject_id: str, version: int, *rules: Rule) -> SubjectState:
    return SubjectState(key(subject_id), version, {(r.topic, r.channel): r for r in rules})


def forward(subject_id: str, version: int, target: str) -> SubjectState:
    return SubjectState(key(subject_id), version, {}, merged_into=target)


class FakeRedis:
    """``CachedStates`` and ``StateFiller``: encoded states under the version compare-and-set;
    the rules-only bulk read answers 1 for a state without rules, as the scripts do."""

    def __init__(self, states: Iterable[SubjectState] = ()) -> None:
        self.raw: dict[SubjectKey, bytes] = {}
        self.reads = 0
        self._memo = RulesMemo()
        self.write_now(states)

    def write_now(self, states: Iterable[SubjectState]) -> int:
        written = 0
        for state in states:
            current = self.raw.get(state.key)
            if current is None or decode(state.key, current).version < state.version:
                self.raw[state.key] = encode_state(state)
                written += 1
        return written

    async def write(self, states: Iterable[SubjectState]) -> int:
        return self.write_now(states)

    async def read_one(self, subject: SubjectKey) -> SubjectState | None:
        self.reads += 1
        raw = self.raw.get(subject)
        return None if raw is None else decode(subject, raw)

    async def read_many(self, tenant: str, subject_ids: Sequence[str]) -> list[SubjectState | None]:
        self.reads += 1
        return [await self._one(SubjectKey(tenant, sid)) for sid in subject_ids]

    async def _one(self, subject: SubjectKey) -> SubjectState | None:
        raw = self.raw.get(subject)
        return None if raw is None else decode(subject, raw)

    async def read_many_rules(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> list[Rules | Forward | None]:
        self.reads += 1
        found: list[Rules | Forward | None] = []
        for sid in subject_ids:
            raw = self.raw.get(SubjectKey(tenant, sid))
            if raw is None:
                found.append(None)
            else:
                found.append(self._memo.decode(tenant, sid, 1 if raw.endswith(EMPTY_TAIL) else raw))
        return found


class FakeStore:
    """``StoredStates``: PostgreSQL as a dict; ``extra`` adds states to answers, as the
    PostgreSQL reader adds an erased identifier's suppression."""

    def __init__(self, states: Iterable[SubjectState] = ()) -> None:
        self.states = {s.key: s for s in states}
        self.extra: dict[SubjectKey, SubjectState] = {}
        self.loads = 0

    async def load_states(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]:
        self.loads += 1
        answer = {k: self.states.get(k, SubjectState.empty(k)) for k in keys}
        for k in keys:
            state = answer[k]
            if state.merged_into is not None and key(state.merged_into) in self.extra:
                answer[key(state.merged_into)] = self.extra[key(state.merged_into)]
        return answer


def decide(state: SubjectState, topic: str, channel: str) -> Decision:
    return is_allowed(DEFAULT_CATALOG, state, topic, channel)


def local_cache() -> LocalCache:
    local = LocalCache(decide, max_entries=1_000)
    local.vouch(math.inf)
    return local


def service(redis: FakeRedis, store: FakeStore, local: LocalCache | None = None) -> DecisionService:
    return DecisionService(DEFAULT_CATALOG, redis, redis, store, local)


def answers(state: SubjectState) -> list[bool]:
    return [decide(state, t, c).allowed for t, c in QUESTIONS]


async def every_path(decisions: DecisionService, asked: str, target: SubjectState) -> None:
    """Each path answers for ``asked`` exactly what it answers for ``target``."""
    want = [decide(target, t, c) for t, c in QUESTIONS]
    for (topic, channel), expected in zip(QUESTIONS, want, strict=True):
        assert await decisions.is_allowed(key(asked), topic, channel) == expected
    assert await decisions.state(key(asked)) == target
    prefs = await decisions.preferences(key(asked))
    assert prefs.state == target
    assert prefs.addressed_as == (None if asked == target.key.subject_id else asked)
    assert prefs.decisions == decisions.preferences_of(target).decisions
    other = plain("other", 4, rule("*", "*", "opt_out"))
    assert await decisions.states(TENANT, [asked, "other", "never", asked]) == [
        target,
        other,
        SubjectState.empty(key("never")),
        target,
    ]
    questions = [Question(s, t, c) for s in (asked, "other", "never") for t, c in QUESTIONS]
    assert await decisions.check_many(questions) == [
        decide(s, q.topic, q.channel)
        for s, q in zip(
            [target] * 5 + [other] * 5 + [SubjectState.empty(key("never"))] * 5,
            questions,
            strict=True,
        )
    ]
    for (topic, channel), expected in zip(QUESTIONS, want, strict=True):
        allowed = await decisions.filter_allowed(TENANT, [asked, "other", asked], topic, channel)
        other_allowed = decide(other, topic, channel).allowed
        assert allowed == [
            s
            for s, ok in (
                (asked, expected.allowed),
                ("other", other_allowed),
                (asked, expected.allowed),
            )
            if ok
        ]


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(0, MAX_FORWARD_HOPS),
    cached=st.lists(st.booleans(), min_size=MAX_FORWARD_HOPS + 1, max_size=MAX_FORWARD_HOPS + 1),
    target_rules=st.sets(st.tuples(st.sampled_from(RULE_CHOICES), st.booleans())),
    with_local=st.booleans(),
)
def test_a_chain_of_forwards_answers_like_its_target_in_every_path(
    length: int,
    cached: list[bool],
    target_rules: set[tuple[tuple[str, str], bool]],
    with_local: bool,
) -> None:
    """``id0`` forwards to ``id1`` ... to ``id{length}``; each link is in Redis or only in
    PostgreSQL (a cold cache), and the answer is always the last subject's."""
    target = plain(
        f"id{length}",
        7,
        *(
            rule(t, c, "opt_out" if out else "opt_in", i)
            for i, ((t, c), out) in enumerate(target_rules)
        ),
    )
    chain = [forward(f"id{i}", i + 1, f"id{i + 1}") for i in range(length)] + [target]
    other = plain("other", 4, rule("*", "*", "opt_out"))
    redis = FakeRedis(s for s, hot in zip(chain, cached, strict=False) if hot)
    redis.write_now([other])
    store = FakeStore([*chain, other])
    local = local_cache() if with_local else None
    decisions = service(redis, store, local)

    async def run() -> None:
        await every_path(decisions, "id0", target)
        await every_path(decisions, "id0", target)  # again: now from Redis (and memory)

    asyncio.run(run())
    if local is not None:
        for link in chain[:-1]:
            assert local.peek(link.key) is None  # a forward is never kept
            assert local.decision(TENANT, link.key.subject_id, *QUESTIONS[0]) is None
        assert local.peek(target.key) == target  # its target may be


async def test_more_forwards_than_the_limit_is_an_error_in_every_path() -> None:
    too_long = [forward(f"id{i}", 1, f"id{i + 1}") for i in range(MAX_FORWARD_HOPS + 1)]
    cycle = [forward("a", 3, "b"), forward("b", 3, "a")]
    for states, cold in ((too_long, False), (too_long, True), (cycle, False), (cycle, True)):
        redis = FakeRedis(() if cold else states)
        for local in (None, local_cache()):
            decisions = service(redis, FakeStore(states), local)
            asked = states[0].key
            with pytest.raises(ForwardChainTooLong):
                await decisions.is_allowed(asked, "marketing", "email")
            with pytest.raises(ForwardChainTooLong):
                await decisions.preferences(asked)
            with pytest.raises(ForwardChainTooLong):
                await decisions.states(TENANT, ["x", asked.subject_id])
            with pytest.raises(ForwardChainTooLong):
                await decisions.check_many([Question(asked.subject_id, "marketing", "email")])
            with pytest.raises(ForwardChainTooLong):
                await decisions.filter_allowed(TENANT, [asked.subject_id], "marketing", "email")
            # Mandatory topics need no state: allowed without a lookup, as ever.
            assert (await decisions.is_allowed(asked, "security", "email")).allowed


async def test_exactly_the_limit_is_followed() -> None:
    chain = [forward(f"id{i}", 1, f"id{i + 1}") for i in range(MAX_FORWARD_HOPS)]
    target = plain(f"id{MAX_FORWARD_HOPS}", 2, rule("*", "*", "opt_out"))
    decisions = service(FakeRedis([*chain, target]), FakeStore())
    assert not (await decisions.is_allowed(key("id0"), "marketing", "email")).allowed
    assert await decisions.filter_allowed(TENANT, ["id0"], "marketing", "email") == []


async def test_a_plain_subject_costs_what_it_did() -> None:
    """One Redis read for a cached subject, no PostgreSQL; none at all from memory."""
    subject = plain("u1", 1, rule("marketing", "email", "opt_out"))
    redis, store = FakeRedis([subject]), FakeStore([subject])
    local = local_cache()
    decisions = service(redis, store, local)
    assert not (await decisions.is_allowed(key("u1"), "marketing", "email")).allowed
    assert (redis.reads, store.loads) == (1, 0)
    assert not (await decisions.is_allowed(key("u1"), "marketing", "email")).allowed
    assert (redis.reads, store.loads) == (1, 0)
    # A forward is read from Redis every time; its target comes from memory.
    redis.write_now([forward("email:a@b.c", 3, "u1")])
    for reads in (2, 3):
        assert not (await decisions.is_allowed(key("email:a@b.c"), "marketing", "email")).allowed
        assert (redis.reads, store.loads) == (reads, 0)
    # Without the local cache: two reads, the forward and its target.
    bare = service(redis, store)
    assert not (await bare.is_allowed(key("email:a@b.c"), "marketing", "email")).allowed
    assert (redis.reads, store.loads) == (5, 0)


async def test_an_erased_identifier_is_answered_from_its_suppression_never_cached_in_clear() -> (
    None
):
    """The store answers an erased identifier as a version-0 forward to its suppression,
    with the suppression itself; only the suppression reaches Redis."""
    suppression = SubjectState(
        key("erased:0123abcd"), 1, {("*", "*"): rule("*", "*", "opt_out")}, erased=True
    )
    email = "email:bob@example.com"
    store = FakeStore([forward(email, 0, "erased:0123abcd")])
    store.extra[suppression.key] = suppression
    for local in (None, local_cache()):
        redis = FakeRedis()
        decisions = service(redis, store, local)
        assert not (await decisions.is_allowed(key(email), "marketing", "email")).allowed
        assert (await decisions.is_allowed(key(email), "security.alerts", "email")).allowed
        assert await decisions.filter_allowed(TENANT, [email, "x"], "marketing", "sms") == ["x"]
        assert (await decisions.states(TENANT, [email]))[0] == suppression
        prefs = await decisions.preferences(key(email))
        assert prefs.state == suppression
        assert prefs.addressed_as == email
        assert key(email) not in redis.raw
        assert decode(suppression.key, redis.raw[suppression.key]) == suppression
        if local is not None:
            assert local.peek(key(email)) is None


async def test_a_linked_identifier_forward_read_from_postgresql_is_cached() -> None:
    """Only forwards to suppressions stay out of Redis: a linked identifier is no secret."""
    store = FakeStore([forward("email:a@b.c", 2, "u1"), plain("u1", 1)])
    redis = FakeRedis()
    await service(redis, store).is_allowed(key("email:a@b.c"), "marketing", "email")
    assert decode(key("email:a@b.c"), redis.raw[key("email:a@b.c")]).merged_into == "u1"


def test_the_rules_memo_answers_a_forward_as_such() -> None:
    memo = RulesMemo()
    raw = encode_state(forward("m", 3, "target"))
    assert not raw.endswith(EMPTY_TAIL)  # so the bulk scripts return it in full
    assert memo.decode(TENANT, "m", raw) == Forward("target")
    assert memo.decode(TENANT, "m", raw) == Forward("target")  # memoised alike
    assert memo.decode(TENANT, "n", 1) == {}


# --- the SDK normalises what it is asked --------------------------------------------------


async def test_the_sdk_normalises_identifiers_and_answers_in_the_callers_spelling() -> None:
    alice = plain("email:alice@example.com", 1, rule("marketing", "email", "opt_out"))
    phone = plain("phone:+33612345678", 1, rule("*", "*", "opt_out"))
    decisions = service(FakeRedis([alice, phone]), FakeStore())
    client = OptoutClient(decisions, None, None, AsyncExitStack())
    for spelling in (
        "email:Alice@Example.com",
        " email:alice@example.com"[1:],
        "email:ALICE@example.com ",
    ):
        assert not (await client.is_allowed(spelling, "marketing", "email")).allowed
        assert (await client.preferences(spelling)).state == alice
    assert not (await client.is_allowed("phone:+33 6 12 34 56 78", "product", "sms")).allowed
    asked = ["email:Alice@Example.com", "u1", "phone:+33 6 12 34 56 78", "email:bob@example.com"]
    assert await client.filter_allowed(asked, "marketing", "email") == [
        "u1",
        "email:bob@example.com",
    ]
    assert await client.filter_allowed(["u1", "u2"], "marketing", "email") == ["u1", "u2"]
    for bad in ("email:nobody", "phone:12", "device:"):
        with pytest.raises(InvalidIdentifier) as error:
            await client.is_allowed(bad, "marketing", "email")
        assert isinstance(error.value, ValueError)
        with pytest.raises(InvalidIdentifier):
            await client.filter_allowed(["u1", bad], "marketing", "email")
        with pytest.raises(InvalidIdentifier):
            await client.preferences(bad)


def test_an_opaque_id_is_returned_as_is() -> None:
    opaque = "".join(["user", "-42"])
    assert normalized(opaque) is opaque
    assert normalized("Email:X") == "Email:X"  # prefixes are case-sensitive, as in commands
