"""The worker's poll: no sleep after an empty poll; a failing poll pauses briefly, growing,
with one log line per episode, not faststream's 5 s."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, UnsupportedCodecError
from structlog.testing import capture_logs

from service.adapters.kafka.poll_errors import PollErrors, guard_polls


class Consumer:
    """aiokafka's consumer as far as the poll sees it: ``getmany`` answers from a script."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Any:
        self.asked.append((timeout_ms, max_records))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Subscriber:
    """faststream's batch subscriber as far as the guard sees it."""

    batch_timeout_ms = 50
    max_records = 7

    async def get_msg(self, consumer: Any) -> Any:
        raise AssertionError("replaced by the guard")


def sleeps() -> tuple[list[float], Any]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return slept, sleep


async def test_records_come_flat_and_an_empty_poll_does_not_sleep() -> None:
    slept, sleep = sleeps()
    subscriber = Subscriber()
    guard_polls(subscriber, errors=PollErrors(sleep=sleep))
    consumer = Consumer([{"tp0": ["a", "b"], "tp1": ["c"]}, {}])
    assert await subscriber.get_msg(consumer) == ("a", "b", "c")
    assert await subscriber.get_msg(consumer) == ()
    assert consumer.asked == [(50, 7), (50, 7)]  # the subscriber's own settings
    assert slept == []


async def test_errors_pause_briefly_growing_then_polls_go_on() -> None:
    slept, sleep = sleeps()
    subscriber = Subscriber()
    state = guard_polls(
        subscriber, errors=PollErrors(first_pause_s=0.05, max_pause_s=1.0, sleep=sleep)
    )
    consumer = Consumer([KafkaConnectionError()] * 6 + [{"tp": ["r1"]}, {}])
    with capture_logs() as logs:
        answers = [await subscriber.get_msg(consumer) for _ in range(8)]
    assert answers == [()] * 6 + [("r1",), ()]
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert max(slept) < 5  # faststream's own pause after a KafkaError is 5 s
    assert [e["event"] for e in logs] == ["kafka_poll_failed", "kafka_poll_recovered"]
    assert logs[0]["error"] == "KafkaConnectionError"
    assert state.failures == 0


async def test_a_success_resets_the_pause() -> None:
    slept, sleep = sleeps()
    subscriber = Subscriber()
    guard_polls(subscriber, errors=PollErrors(first_pause_s=0.05, sleep=sleep))
    errors = [KafkaConnectionError(), KafkaConnectionError()]
    consumer = Consumer([*errors, {}, *errors])
    for _ in range(5):
        await subscriber.get_msg(consumer)
    assert slept == [0.05, 0.1, 0.05, 0.1]


async def test_a_missing_codec_is_left_to_faststream() -> None:
    subscriber = Subscriber()
    guard_polls(subscriber)
    with pytest.raises(UnsupportedCodecError):
        await subscriber.get_msg(Consumer([UnsupportedCodecError()]))
