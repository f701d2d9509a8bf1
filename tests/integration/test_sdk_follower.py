"""The SDK's local cache keeps to its bound against a real broker and a real worker: a
follower that is behind sends every answer to Redis, partitions added to the topic are
followed, and a failure in the follower switches the cache off until it has recovered.

Opt-outs go through the worker (``Service(with_worker=True)``) and the SDK is asked right
after each outcome, as a sender that shows the outcome to a user and then sends would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from structlog.testing import capture_logs

import service.client.follower as follower_module
from service.client import OptoutClient
from service.contract.encode import event_json
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import is_allowed
from service.domain.events import AppliedChange, PreferenceChanged
from service.domain.model import Rule, SubjectKey
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command

pytestmark = pytest.mark.integration

TOPIC, CHANNEL = "marketing.newsletter", "email"
OPT_OUT = [("opt_out", "marketing", "email")]


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[ContractClient]:
    async with Service(settings, with_worker=True), ContractClient(settings) as c:
        yield c


async def until(condition: Callable[[], bool], within_seconds: float, what: str) -> float:
    """Wait for `condition`; returns how long it took."""
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < within_seconds, f"{what}: not within the wait"
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


def allowed_by(client: OptoutClient, subject_id: str) -> bool | None:
    """What the cache's stored state says, whether or not the cache may answer now."""
    assert client.local_cache is not None
    state = client.local_cache.peek(SubjectKey("default", subject_id))
    return None if state is None else is_allowed(DEFAULT_CATALOG, state, TOPIC, CHANNEL).allowed


async def test_a_follower_behind_never_answers_allowed_after_an_opt_out_outcome(
    settings: Settings, stack: ContractClient
) -> None:
    subjects = [f"behind-{i}" for i in range(6)]
    bound = settings.client_local_cache_bound_seconds
    async with await OptoutClient.connect(settings) as client:
        cache, follower = client.local_cache, client.follower
        assert cache is not None
        assert follower is not None
        assert follower.consumer is not None
        for subject in subjects:
            assert (await client.is_allowed(subject, TOPIC, CHANNEL)).allowed
            assert cache.decision("default", subject, TOPIC, CHANNEL) is not None  # in memory

        # Fetching stops; the first opt-out after that lands on a partition the follower no
        # longer reads. Within the bound of that event's outcome, the cache is bypassed.
        follower.consumer.pause(*follower.partitions)
        await stack.apply(command("behind-trigger", OPT_OUT))
        waited = await until(lambda: not cache.usable(), bound + 1.0, "bypassed")
        assert waited < bound + 0.2, waited
        assert cache.switched_on  # bypassed, not emptied: the follower still answers probes

        for subject in subjects:
            outcome = await stack.apply(command(subject, OPT_OUT))
            assert outcome["status"] == "applied"
            assert allowed_by(client, subject) is True  # the cache still holds the allow...
            decision = await client.is_allowed(subject, TOPIC, CHANNEL)
            assert not decision.allowed  # ...and the answer came from Redis
            assert decision.rule is not None
            assert decision.rule.command_id == outcome["command_id"]
            assert not await client.filter_allowed([subject], TOPIC, CHANNEL)

        # Fetching again: caught up, the cache answers from memory, with every opt-out.
        follower.consumer.resume(*follower.partitions)
        await until(cache.usable, 5.0, "usable again")
        for subject in subjects:
            remembered = cache.decision("default", subject, TOPIC, CHANNEL)
            assert remembered is not None
            assert not remembered.allowed


async def test_under_steady_traffic_the_cache_stays_in_use(
    settings: Settings, stack: ContractClient
) -> None:
    """Events keep arriving, so there is always a newer end for a moment: the cache must
    still answer from memory nearly all the time, or it would be useless when busy."""
    async with await OptoutClient.connect(settings) as client:
        cache = client.local_cache
        assert cache is not None
        await client.is_allowed("steady-asked", TOPIC, CHANNEL)
        samples: list[bool] = []

        async def sample() -> None:
            while True:
                samples.append(cache.usable())
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        try:
            for i in range(60):  # about 20 commands a second for 3 s
                await stack.send(command(f"steady-{i % 7}", OPT_OUT))
                await asyncio.sleep(0.05)
        finally:
            sampler.cancel()
        share = sum(samples) / len(samples)
        print(f"local cache usable in {share:.1%} of {len(samples)} samples")
        assert share > 0.9, share
        assert cache.decision("default", "steady-asked", TOPIC, CHANNEL) is not None


async def test_partitions_added_to_the_topic_are_followed_from_their_start(
    settings: Settings, stack: ContractClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await OptoutClient.connect(settings) as client:
        cache, follower = client.local_cache, client.follower
        assert cache is not None
        assert follower is not None
        assert len(follower.partitions) == settings.topic_partitions == 3
        # The follower reads the partition list again only once the events below are
        # written, so they are certainly on partitions it has not seen yet.
        written = asyncio.Event()
        list_partitions = follower._list_partitions

        async def after_the_events(session: Any) -> None:
            await written.wait()
            await list_partitions(session)

        monkeypatch.setattr(follower, "_list_partitions", after_the_events)

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({settings.topic_preferences: NewPartitions(5)})
            # The broker's metadata shows them a moment later; the producer needs them there.
            async with asyncio.timeout(10):
                while True:
                    (described,) = await admin.describe_topics([settings.topic_preferences])
                    if len(described["partitions"]) == 5:
                        break
                    await asyncio.sleep(0.05)
        finally:
            await admin.close()
        # Events on partitions the follower has not seen yet: it must read them from their
        # first offset, not from where their end was when it noticed them.
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for partition in (3, 4):
                subject = f"new-partition-{partition}"
                await producer.send_and_wait(
                    settings.topic_preferences,
                    opted_out_event(subject),
                    key=f"default:{subject}".encode(),
                    partition=partition,
                )
        finally:
            await producer.stop()
        assert len(follower.partitions) == 3
        written.set()

        await until(lambda: len(follower.partitions) == 5, 5.0, "new partitions followed")
        await until(
            lambda: all(allowed_by(client, f"new-partition-{p}") is False for p in (3, 4)),
            5.0,
            "events of the new partitions applied",
        )
        await until(cache.usable, 5.0, "usable with five partitions")
        for partition in (3, 4):
            decision = await client.is_allowed(f"new-partition-{partition}", TOPIC, CHANNEL)
            assert not decision.allowed
            assert decision.rule is not None
            assert decision.rule.command_id == f"np-new-partition-{partition}"


def opted_out_event(subject: str) -> bytes:
    now = datetime.now(UTC)
    rule = Rule("marketing", "email", "opt_out", now, "web", f"np-{subject}")
    event = PreferenceChanged(
        event_id=f"e-{subject}",
        tenant="default",
        subject_id=subject,
        version=1,
        effective_at=now,
        command_id=f"np-{subject}",
        source_channel="web",
        source_app=None,
        changes=(AppliedChange("opt_out", "marketing", "email", now),),
        preferences=(rule,),
    )
    return event_json(event)


async def test_a_failure_in_the_follower_switches_the_cache_off_until_it_recovers(
    settings: Settings, stack: ContractClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_event_state = follower_module.event_state
    failures = 0

    def fails_twice(raw: bytes) -> object:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RuntimeError("a message that must not reach the log: user-7@example.com")
        return real_event_state(raw)

    async with await OptoutClient.connect(settings) as client:
        cache, follower = client.local_cache, client.follower
        assert cache is not None
        assert follower is not None
        first_consumer = follower.consumer
        assert (await client.is_allowed("fails-1", TOPIC, CHANNEL)).allowed
        assert cache.decision("default", "fails-1", TOPIC, CHANNEL) is not None

        monkeypatch.setattr(follower_module, "event_state", fails_twice)
        with capture_logs() as logs:
            outcome = await stack.apply(command("fails-1", OPT_OUT))
            await until(lambda: not cache.switched_on, 5.0, "switched off")
            assert len(cache) == 0
            decision = await client.is_allowed("fails-1", TOPIC, CHANNEL)  # from Redis
            assert not decision.allowed
            # The second failure comes with the next event, after the follower restarted.
            await until(lambda: follower.consumer not in (None, first_consumer), 5.0, "restart")
            await until(cache.usable, 5.0, "back on after the first failure")
            second = await stack.apply(command("fails-2", OPT_OUT))
            await until(lambda: follower.failures == 2, 5.0, "second failure")
            await until(cache.usable, 10.0, "back on after the second failure")
        failed = [e for e in logs if e["event"] == "sdk_follower_failed"]
        assert failed == [
            {
                "event": "sdk_follower_failed",
                "log_level": "error",
                "topic": settings.topic_preferences,
                "error": "RuntimeError",
            }
        ], logs
        assert "example.com" not in repr(logs)
        assert outcome["status"] == second["status"] == "applied"

        # Healthy again: the next opt-out reaches the cache through the events.
        assert (await client.is_allowed("fails-3", TOPIC, CHANNEL)).allowed
        third = await stack.apply(command("fails-3", OPT_OUT))
        await until(
            lambda: (
                (s := cache.peek(SubjectKey("default", "fails-3"))) is not None
                and s.version >= third["version"]
            ),
            2.0,
            "event applied",
        )
        answer = cache.decision("default", "fails-3", TOPIC, CHANNEL)
        assert answer is not None
        assert not answer.allowed


def _follower_counts(client: OptoutClient) -> dict[str, float]:
    assert client.metrics is not None
    return {
        step: client.metrics.registry.get_sample_value(
            "optout_sdk_follower_seconds_count", {"step": step}
        )
        or 0.0
        for step in ("fetch", "apply")
    }


async def test_the_follower_times_each_event_it_applies(
    settings: Settings, stack: ContractClient
) -> None:
    async with await OptoutClient.connect(settings) as client:
        cache = client.local_cache
        assert cache is not None
        assert _follower_counts(client) == {"fetch": 0.0, "apply": 0.0}
        for i in range(3):
            await stack.apply(command(f"timed-{i}", OPT_OUT))
        await until(
            lambda: all(allowed_by(client, f"timed-{i}") is False for i in range(3)),
            10.0,
            "applied",
        )
        counts = _follower_counts(client)
        assert counts["fetch"] >= 3
        assert counts["apply"] >= 3
        assert client.metrics is not None
        fetch_sum = client.metrics.registry.get_sample_value(
            "optout_sdk_follower_seconds_sum", {"step": "fetch"}
        )
        assert fetch_sum is not None
        assert fetch_sum > 0.0
