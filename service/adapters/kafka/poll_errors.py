"""A Kafka error raised by a poll costs a short, growing pause, not faststream's 5 s.

faststream's consume loop answers any ``KafkaError`` that ``getmany`` raises by sleeping
five seconds (and logs it through the broker's logger, which is off here). aiokafka raises
from ``getmany`` what its group coordination could not handle itself (an error while joining
the group again after a broker restart, say): every partition of the worker then sat still
for five seconds after the broker answered again. ``guard_polls`` wraps the subscriber's
poll: an error is logged once per episode (its type only), the poll answers "no records",
and the next poll comes after a pause that starts at ``first_pause_s`` and doubles up to
``max_pause_s``. Nothing of a batch is touched: no records were handed out by a poll that
raised, and offsets are committed only by the handler, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka.errors import KafkaError, UnsupportedCodecError

log = structlog.get_logger(__name__)

Poll = Callable[[Any], Awaitable[Any]]


@dataclass
class PollErrors:
    """The episode of failing polls in progress (none while polls succeed)."""

    first_pause_s: float = 0.05
    max_pause_s: float = 1.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    failures: int = 0

    def pause_s(self) -> float:
        return min(self.max_pause_s, self.first_pause_s * 2.0 ** max(0, self.failures - 1))

    async def failed(self, exc: KafkaError) -> None:
        self.failures += 1
        if self.failures == 1:
            log.warning("kafka_poll_failed", error=type(exc).__name__)
        await self.sleep(self.pause_s())

    def succeeded(self) -> None:
        if self.failures:
            log.info("kafka_poll_recovered", failed_polls=self.failures)
        self.failures = 0


def guard_polls(subscriber: Any, errors: PollErrors | None = None) -> PollErrors:
    """Wrap ``subscriber.get_msg`` (faststream's poll); returns the episode's state."""
    state = errors or PollErrors()
    poll: Poll = subscriber.get_msg

    async def guarded(consumer: Any) -> Any:
        try:
            records = await poll(consumer)
        except UnsupportedCodecError:
            raise  # a missing compression library: faststream logs it and waits longer
        except KafkaError as exc:
            await state.failed(exc)
            return ()
        state.succeeded()
        return records

    subscriber.get_msg = guarded
    return state
