"""Read-path pieces that need no service: tokens, the local cache, decoding."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from service.adapters.redis_reader import decode
from service.adapters.state_codec import encode_state
from service.client.follower import event_state
from service.client.local_cache import LocalCache
from service.contract.encode import event_json
from service.domain.catalog import DEFAULT_CATALOG, UnknownTopic
from service.domain.decision import is_allowed
from service.domain.events import AppliedChange, PreferenceChanged
from service.domain.model import Decision, Rule, SubjectKey, SubjectState
from service.entrypoints.http.security import Authenticator, parse_tokens

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
KEY = SubjectKey("default", "u1")


def state(version: int, *rules: Rule, key: SubjectKey = KEY) -> SubjectState:
    return SubjectState(key, version, {(r.topic, r.channel): r for r in rules})


def opt_out(topic: str = "marketing", channel: str = "email") -> Rule:
    return Rule(topic, channel, "opt_out", T0, "web", "c1")


# --- tokens -------------------------------------------------------------------------------


def test_tokens_parse_with_scopes_and_colons_in_the_token() -> None:
    tokens = parse_tokens(
        " a:aaaaaaaaaaaaaaaa:read , b:bb:bbbbbbbbbbbbbb:read+write,c:cccccccccccccccc:write,"
    )
    assert [(t.name, sorted(t.scopes)) for t in tokens] == [
        ("a", ["check"]),
        ("b", ["check", "write"]),
        ("c", ["write"]),
    ]
    assert tokens[1].secret == b"bb:bbbbbbbbbbbbbb"
    assert "bbbbbbbb" not in repr(tokens[1])


@pytest.mark.parametrize(
    "spec",
    [
        "a:aaaaaaaaaaaaaaaa",
        "a:aaaaaaaaaaaaaaaa:root",
        ":aaaaaaaaaaaaaaaa:read",
        "a:tiny:read",
        "a:aaaaaaaaaaaaaaaa:read,a:bbbbbbbbbbbbbbbb:read",
    ],
)
def test_bad_token_specs_fail_without_revealing_the_token(spec: str) -> None:
    with pytest.raises(ValueError, match="OPTOUT_API_TOKENS") as error:
        parse_tokens(spec)
    assert "aaaaaaaaaaaaaaaa" not in str(error.value)
    assert "tiny" not in str(error.value)


def test_authenticate() -> None:
    auth = Authenticator(parse_tokens("a:aaaaaaaaaaaaaaaa:read,b:bbbbbbbbbbbbbbbb:write"))
    assert auth.authenticate(None) is None
    assert auth.authenticate("Bearer ") is None
    assert auth.authenticate("Basic aaaaaaaaaaaaaaaa") is None
    assert auth.authenticate("Bearer aaaaaaaaaaaaaaa") is None
    assert auth.authenticate("Bearer aaaaaaaaaaaaaaaaa") is None
    found = auth.authenticate("bearer bbbbbbbbbbbbbbbb")
    assert found is not None
    assert found.name == "b"
    assert Authenticator([]).authenticate("Bearer aaaaaaaaaaaaaaaa") is None


# --- local cache --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def decide(s: SubjectState, topic: str, channel: str) -> Decision:
    return is_allowed(DEFAULT_CATALOG, s, topic, channel)


def cache(clock: Clock, size: int = 3) -> LocalCache:
    local = LocalCache(decide, max_entries=size, max_age_seconds=10.0, clock=clock)
    assert local.vouch(math.inf)
    return local


def put(local: LocalCache, s: SubjectState) -> None:
    local.put(s, local.generation())


def test_local_cache_keeps_the_newest_version() -> None:
    local = cache(Clock())
    put(local, state(1))
    assert local.decision("default", "u1", "marketing", "email") == decide(
        state(1), "marketing", "email"
    )
    local.apply(state(2, opt_out()))
    denied = local.decision("default", "u1", "marketing", "email")
    assert denied is not None
    assert not denied.allowed
    put(local, state(1))  # an older read arriving late changes nothing
    local.apply(state(1))  # nor does an older event
    assert local.get(KEY) == state(2, opt_out())
    with pytest.raises(UnknownTopic):
        local.decision("default", "u1", "nope", "email")


def test_local_cache_is_a_bounded_lru() -> None:
    local = cache(Clock(), size=2)
    a, b, c = (SubjectKey("default", n) for n in "abc")
    put(local, state(1, key=a))
    put(local, state(1, key=b))
    assert local.get(a) is not None  # a is now the most recently used
    put(local, state(1, key=c))
    assert len(local) == 2
    assert local.get(b) is None
    assert local.get(a) is not None
    assert local.get(c) is not None


def test_local_cache_entries_expire_after_max_age() -> None:
    clock = Clock()
    local = cache(clock)
    put(local, state(1))
    clock.now = 9.9
    assert local.get(KEY) is not None
    put(local, state(1))  # the same version read again restarts the clock
    clock.now = 19.0
    assert local.get(KEY) is not None
    clock.now = 20.0
    assert local.get(KEY) is None
    assert local.decision("default", "u1", "marketing", "email") is None


def test_a_switched_off_local_cache_is_empty_and_stores_nothing() -> None:
    local = cache(Clock())
    put(local, state(1))
    local.switch_off()
    assert not local.switched_on
    assert len(local) == 0
    assert local.get(KEY) is None
    put(local, state(2))
    local.apply(state(2))
    assert local.peek(KEY) is None
    assert local.vouch(math.inf)
    assert local.get(KEY) is None


# --- decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("s", [state(0), state(17), state(3, opt_out(), opt_out("*", "sms"))])
def test_redis_reader_decodes_what_the_codec_encodes(s: SubjectState) -> None:
    assert decode(KEY, encode_state(s)) == s


def test_event_state_rebuilds_the_full_rule_set() -> None:
    rules = (opt_out(), opt_out("data.sale", "*"))
    event = PreferenceChanged(
        event_id="e1",
        tenant="default",
        subject_id="u1",
        version=4,
        effective_at=T0,
        command_id="c1",
        source_channel="web",
        source_app=None,
        changes=(AppliedChange("opt_out", "marketing", "email", T0),),
        preferences=rules,
    )
    assert event_state(event_json(event)) == state(4, *rules)


# --- OpenAPI ------------------------------------------------------------------------------
