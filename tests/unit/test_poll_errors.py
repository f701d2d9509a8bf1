"""A failing Kafka poll: a short, growing pause and one log line per episode, not 5 s."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, UnsupportedCodecError
from structlog.testing import capture_logs

from service.adapters.kafka.poll_errors import PollErrors, guard_polls


class Subscriber:
    """faststream's subscriber as far as the guard sees it: a ``get_msg`` to wrap."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers

    async def get_msg(self, consumer: Any) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_errors_pause_briefly_growing_then_polls_go_on() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    subscriber = Subscriber([KafkaConnectionError()] * 6 + [("r1",), ()])
    state = guard_polls(subscriber, PollErrors(first_pause_s=0.05, max_pause_s=1.0, sleep=sleep))
    with capture_logs() as logs:
        answers = [await subscriber.get_msg(None) for _ in range(8)]
    assert answers == [()] * 6 + [("r1",), ()]
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert max(slept) < 5  # faststream's own pause after a KafkaError is 5 s
    events = [e["event"] for e in logs]
    assert events == ["kafka_poll_failed", "kafka_poll_recovered"]
    assert logs[0]["error"] == "KafkaConnectionError"
    assert state.failures == 0


async def test_a_success_resets_the_pause() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    errors = [KafkaConnectionError(), KafkaConnectionError()]
    subscriber = Subscriber([*errors, (), *errors])
    guard_polls(subscriber, PollErrors(first_pause_s=0.05, sleep=sleep))
    for _ in range(5):
        await subscriber.get_msg(None)
    assert slept == [0.05, 0.1, 0.05, 0.1]


async def test_a_missing_codec_is_left_to_faststream() -> None:
    subscriber = Subscriber([UnsupportedCodecError()])
    guard_polls(subscriber)
    with pytest.raises(UnsupportedCodecError):
        await subscriber.get_msg(None)
