"""The local cache's bound without Kafka: the catch-up bookkeeping, generations, the follower's
switch, each against a model or with fakes. tests/integration/test_sdk_follower.py runs the
same guarantees against a real broker and worker."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from service.adapters.kafka.connection import KafkaConnection
from service.client.catch_up import MAX_PENDING_ENDS, CatchUp
from service.client.follower import PreferencesFollower, _Session, tombstoned
from service.client.local_cache import LocalCache
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import is_allowed
from service.domain.model import Decision, Rule, SubjectKey, SubjectState

KEY = SubjectKey("default", "u1")
BOUND = 0.5


def state(version: int, *rules: Rule, key: SubjectKey = KEY) -> SubjectState:
    return SubjectState(key, version, {(r.topic, r.channel): r for r in rules})


def opt_out() -> Rule:
    return Rule("marketing", "email", "opt_out", datetime(2026, 1, 1, tzinfo=UTC), "web", "c1")


def decide(s: SubjectState, topic: str, channel: str) -> Decision:
    return is_allowed(DEFAULT_CATALOG, s, topic, channel)


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the bookkeeping against a timeline ---------------------------------------------------

# Lags and waits around the bound, where mistakes show.
moments = st.sampled_from([0.0, 0.1, 0.3, 0.45, 0.55, 1.0])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), moments),
        st.tuples(st.just("append"), st.integers(0, 2)),
        st.tuples(st.just("observe"), st.integers(0, 2), moments),
        st.tuples(st.just("consume"), st.integers(0, 2), st.integers(1, 3)),
        st.tuples(st.just("list"), moments),
        st.tuples(st.just("add_partition")),
        st.tuples(st.just("check")),
    ),
    max_size=40,
)


@settings(max_examples=600, deadline=None)
@given(operations)
# The cases random search reaches least often, spelled out: an event on a partition created
# after the last listing; an end observed while one record short of it.
@example([("add_partition",), ("append", 1), ("wait", 1.0), ("observe", 0, 0.0), ("check",)])
@example([("append", 0), ("wait", 1.0), ("list", 0.0), ("observe", 0, 0.0), ("check",)])
def test_a_usable_cache_has_applied_every_event_older_than_the_bound(ops: list[Any]) -> None:
    """The guarantee itself: whenever the bookkeeping says the cache may answer at ``t``, the
    follower has applied every event Kafka acknowledged before ``t - bound``, on every
    partition, including partitions created after the follower started."""
    now = 0.0
    appended: list[list[float]] = [[]]  # per partition: the time each offset was written
    positions = [0]
    followed = {0}
    catch_up = CatchUp(BOUND)
    catch_up.follow(0, now)
    catch_up.end_seen(0, 0, now)
    catch_up.consumed_to(0, 0)
    catch_up.listed(now)
    last_listing = now
    for op in ops:
        kind = op[0]
        if kind == "wait":
            now += op[1]
        elif kind == "append" and op[1] < len(appended):
            appended[op[1]].append(now)
        elif kind == "observe" and op[1] in followed:
            # The broker reports the end as of now; the stamp may be earlier, never later.
            stamp = max(now - op[2], 0.0)
            catch_up.end_seen(op[1], len(appended[op[1]]), stamp)
        elif kind == "consume" and op[1] in followed:
            p = op[1]
            positions[p] = min(positions[p] + op[2], len(appended[p]))
            catch_up.consumed_to(p, positions[p])
        elif kind == "list":
            stamp = max(now - op[1], last_listing)
            last_listing = stamp
            for p in range(len(appended)):
                if p not in followed:
                    followed.add(p)
                    catch_up.follow(p, stamp)  # read from offset 0
            catch_up.listed(stamp)
        elif kind == "add_partition" and len(appended) < 3:
            appended.append([])
            positions.append(0)
        elif kind == "check" and now < catch_up.usable_until():
            for p, times in enumerate(appended):
                missed = [i for i, at in enumerate(times) if at < now - BOUND and i >= positions[p]]
                assert not missed, (p, missed)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("end"), st.integers(0, 40), st.floats(0, 100)),
            st.tuples(st.just("position"), st.integers(0, 40)),
        ),
        max_size=MAX_PENDING_ENDS,
    )
)
def test_caught_up_time_is_the_latest_end_reached(ops: list[Any]) -> None:
    catch_up = CatchUp(BOUND)
    catch_up.follow(0, 0.0)
    catch_up.listed(math.inf)
    ends: list[tuple[int, float]] = []
    position = -1
    for kind, *args in ops:
        if kind == "end":
            ends.append((args[0], args[1]))
            catch_up.end_seen(0, args[0], args[1])
        else:
            position = max(position, args[0])
            catch_up.consumed_to(0, args[0])
        reached = [at for end, at in ends if end <= position]
        assert catch_up.caught_up_at() == max(reached, default=-math.inf)


def test_more_pending_ends_than_kept_only_delay_the_catch_up() -> None:
    catch_up = CatchUp(BOUND)
    catch_up.follow(0, 0.0)
    catch_up.listed(math.inf)
    for i in range(MAX_PENDING_ENDS * 2):
        catch_up.end_seen(0, 10 + i, float(i))
    catch_up.consumed_to(0, 10)  # the end seen at 0.0 was dropped for room
    assert catch_up.caught_up_at() == -math.inf
    catch_up.consumed_to(0, 10 + MAX_PENDING_ENDS * 2)
    assert catch_up.caught_up_at() == MAX_PENDING_ENDS * 2 - 1


def test_a_partition_found_later_holds_the_cache_until_it_is_read_up_to_an_end() -> None:
    catch_up = CatchUp(BOUND)
    catch_up.follow(0, 0.0)
    catch_up.end_seen(0, 5, 0.0)
    catch_up.consumed_to(0, 5)
    catch_up.listed(0.0)
    assert catch_up.usable_until() == BOUND
    catch_up.listed(1.0)
    catch_up.end_seen(0, 5, 1.0)
    catch_up.follow(1, 1.0)
    assert catch_up.usable_until() == -math.inf
    catch_up.end_seen(1, 3, 1.1)
    catch_up.consumed_to(1, 2)
    assert catch_up.usable_until() == -math.inf
    catch_up.consumed_to(1, 3)
    assert catch_up.usable_until() == 1.0 + BOUND
    assert catch_up.partitions == [0, 1]
    assert catch_up.last_heard() == 1.0


# --- the cache: usable window and generations ---------------------------------------------


def cache(clock: Clock, size: int = 3) -> LocalCache:
    return LocalCache(decide, max_entries=size, max_age_seconds=10.0, clock=clock)


def test_the_cache_answers_only_until_the_time_the_follower_vouched_for() -> None:
    clock = Clock()
    local = cache(clock)
    assert not local.vouch(-1.0)  # a past time does not switch it on
    assert local.vouch(BOUND)
    local.put(state(1), local.generation())
    assert local.get(KEY) == state(1)
    clock.now = BOUND
    assert not local.usable()
    assert local.get(KEY) is None
    assert local.decision("default", "u1", "marketing", "email") is None
    assert local.peek(KEY) == state(1)  # kept: the follower may catch up again
    assert not local.vouch(2 * BOUND)  # already on: just moves the time
    assert local.get(KEY) == state(1)


@pytest.mark.parametrize(
    "drop",
    ["clear", "eviction", "expiry", "switch_off_and_on"],
)
def test_a_read_that_began_before_a_drop_is_not_stored(drop: str) -> None:
    """A Redis read returns version 1; meanwhile the event with version 2 arrives and its
    entry is dropped: storing the late read would answer from version 1 until max age."""
    clock = Clock()
    local = cache(clock, size=2)
    local.vouch(math.inf)
    generation = local.generation()  # the read of u1 begins
    local.apply(state(2, opt_out()))
    if drop == "clear":
        local.clear()
    elif drop == "eviction":
        for name in ("a", "b"):
            local.apply(state(1, key=SubjectKey("default", name)))
    elif drop == "expiry":
        clock.now = 11.0
        assert local.get(KEY) is None
    else:
        local.switch_off()
        local.vouch(math.inf)
    local.put(state(1), generation)  # the read returns
    assert local.peek(KEY) is None
    local.put(state(1), local.generation())  # a read begun now is stored
    assert local.peek(KEY) == state(1)


def test_a_read_is_stored_while_the_cache_is_bypassed_but_on() -> None:
    clock = Clock()
    local = cache(clock)
    local.vouch(1.0)
    clock.now = 2.0
    local.put(state(1), local.generation())
    assert local.peek(KEY) == state(1)


# --- the follower's switch, with fakes ----------------------------------------------------


class FakeConsumer:
    def __init__(self, polled_ms: int | None, highwater: int, position: int) -> None:
        self.polled_ms = polled_ms
        self.high = highwater
        self.at = position

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.polled_ms

    def highwater(self, tp: TopicPartition) -> int:
        return self.high

    async def position(self, tp: TopicPartition) -> int:
        return self.at


def session(consumer: FakeConsumer, clock: Clock) -> _Session:
    catch_up = CatchUp(BOUND)
    catch_up.follow(0, clock.now)
    catch_up.end_seen(0, 10, clock.now)
    catch_up.consumed_to(0, 10)
    catch_up.listed(math.inf)  # the partition list is not what these tests are about
    return _Session(
        consumer,  # aiokafka is untyped: any object passes
        None,
        catch_up,
        [TopicPartition("t", 0)],
        opened_at=clock.now,
        next_listing=math.inf,
        next_probe=math.inf,
        asked_since={TopicPartition("t", 0): clock.now},
    )


async def test_fetch_answers_keep_the_cache_usable_and_silence_switches_it_off() -> None:
    clock = Clock(time.monotonic())
    local = cache(clock)
    follower = PreferencesFollower(KafkaConnection("unused:9092"), "t", local, bound_seconds=BOUND)
    consumer = FakeConsumer(None, 10, 10)
    current = session(consumer, clock)
    t0 = clock.now
    follower._publish(current)
    assert local.usable()
    local.apply(state(1))

    async def answer(after_seconds: float, highwater: int) -> None:
        """A fetch answer, processed ``after_seconds`` later, reports ``highwater``."""
        clock.now += after_seconds
        # A new stamp, not before the wall clock's now: the follower reads it as "now".
        consumer.polled_ms = max((consumer.polled_ms or 0) + 1, round(time.time() * 1000) + 1)
        consumer.high = highwater
        await follower._observe(current)
        follower._publish(current)

    # An answer's end holds as of the previous answer (before its request was sent).
    await answer(0.3, 10)  # holds as of t0: usable until t0 + bound
    await answer(0.1, 12)  # a new end, holding as of t0 + 0.3, not reached yet
    clock.now = t0 + 0.55
    assert not local.usable()
    assert local.peek(KEY) == state(1)  # bypassed, not emptied
    consumer.at = 12
    await follower._observe(current)
    follower._publish(current)
    assert local.usable()  # caught up as of t0 + 0.4 (the answer before the one with 12)

    # The loop was held up for a second and processes an answer only now: that answer is
    # stamped now by aiokafka, but its end held only as of the answer before the hold-up.
    await answer(1.0, 12)
    assert not local.usable()
    await answer(0.01, 12)
    assert local.usable()

    # Heard nothing for longer than the stall time: off and emptied, until answers return.
    clock.now += 2.5
    with capture_logs() as logs:
        follower._publish(current)
    assert not local.switched_on
    assert len(local) == 0
    assert [e["event"] for e in logs] == ["sdk_local_cache_off"]
    assert logs[0]["reason"] == "stalled"
    with capture_logs() as logs:
        await answer(0.0, 12)  # heard again, but its end holds only as of before the stall
        assert not local.switched_on
        await answer(0.01, 12)
    assert local.switched_on
    assert local.usable()
    assert [e["event"] for e in logs] == ["sdk_local_cache_on"]


async def test_a_failing_loop_switches_the_cache_off_logs_once_and_retries() -> None:
    local = LocalCache(decide)
    follower = PreferencesFollower(
        KafkaConnection("unused:9092"), "t", local, bound_seconds=BOUND, retry_max_seconds=0.01
    )
    local.vouch(math.inf)
    local.apply(state(1))
    attempts = 0
    five_attempts = asyncio.Event()

    async def broken() -> _Session:
        nonlocal attempts
        attempts += 1
        if attempts == 5:
            five_attempts.set()
        raise ConnectionError("secret host name")

    follower._open = broken  # type: ignore[method-assign]
    with capture_logs() as logs:
        task = asyncio.create_task(follower._run())
        await asyncio.wait_for(five_attempts.wait(), 5.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not local.switched_on
    assert len(local) == 0
    failed = [e for e in logs if e["event"] == "sdk_follower_failed"]
    assert failed == [
        {
            "event": "sdk_follower_failed",
            "log_level": "error",
            "topic": "t",
            "error": "ConnectionError",
        }
    ]
    assert not any("secret" in str(e) for e in logs)
    assert follower.failures >= 5


# --- tombstones and forwards --------------------------------------------------------------


def test_a_tombstone_evicts_only_its_subject() -> None:
    local = cache(Clock(), size=10)
    local.vouch(math.inf)
    follower = PreferencesFollower(KafkaConnection("unused:9092"), "t", local, bound_seconds=BOUND)
    keys = [SubjectKey("default", "u1"), SubjectKey("default", "u2"), SubjectKey("other", "u1")]
    for k in keys:
        local.apply(state(1, key=k))
    generation = local.generation()  # a read of u1 begins
    follower._apply(b"default:u1", None)
    assert local.peek(keys[0]) is None
    assert local.peek(keys[1]) == state(1, key=keys[1])
    assert local.peek(keys[2]) == state(1, key=keys[2])  # same id, other tenant: kept
    local.put(state(1, key=keys[0]), generation)  # the read, begun before, returns
    assert local.peek(keys[0]) is None
    # A subject id holding colons: the tenant ends at the first one.
    local.apply(state(1, key=SubjectKey("default", "urn:x:1")))
    follower._apply(b"default:urn:x:1", None)
    assert local.peek(SubjectKey("default", "urn:x:1")) is None
    assert local.peek(keys[1]) is not None
    # A tombstone for a subject that is not here still voids reads in flight.
    generation = local.generation()
    follower._apply(b"default:absent", None)
    local.put(state(1, key=SubjectKey("default", "absent")), generation)
    assert local.peek(SubjectKey("default", "absent")) is None


@pytest.mark.parametrize("record_key", [None, b"", b"no-colon", b":u1", b"default:", b"\xff:u1"])
def test_a_tombstone_without_a_readable_key_empties_the_cache(record_key: bytes | None) -> None:
    local = cache(Clock(), size=10)
    local.vouch(math.inf)
    follower = PreferencesFollower(KafkaConnection("unused:9092"), "t", local, bound_seconds=BOUND)
    local.apply(state(1))
    local.apply(state(1, key=SubjectKey("default", "u2")))
    follower._apply(record_key, None)
    assert len(local) == 0


@given(
    tenant=st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True),
    subject_id=st.text(min_size=1),
)
def test_tombstone_keys_name_the_tenant_and_subject_they_were_made_of(
    tenant: str, subject_id: str
) -> None:
    try:
        record_key = f"{tenant}:{subject_id}".encode()
    except UnicodeEncodeError:
        return  # a lone surrogate: no event is ever keyed so (not storable)
    assert tombstoned(record_key) == SubjectKey(tenant, subject_id)


def test_a_forward_is_never_kept() -> None:
    local = cache(Clock(), size=10)
    local.vouch(math.inf)
    local.apply(state(1, opt_out()))
    forward = SubjectState(KEY, 2, {}, merged_into="u9")
    generation = local.generation()
    local.put(forward, generation)
    assert local.peek(KEY) is None  # the older plain state is dropped too
    assert local.decision("default", "u1", "marketing", "email") is None
    local.apply(forward)
    assert local.peek(KEY) is None
    local.put(state(1), generation)  # a read begun before the drop is not stored
    assert local.peek(KEY) is None
