"""The worker's poll: records as soon as they are there, and a Kafka error costs a short pause.

faststream's batch poll (``get_msg``) sleeps a whole ``batch_timeout_ms`` after every poll
that found nothing, on top of the poll's own wait: a record that arrived during that sleep
waited for it, on an idle worker up to that long for every command. The poll here asks
aiokafka with the same timeout (``getmany`` returns at once when records are buffered, or as
soon as a fetch brings some) and does not sleep after an empty answer.

faststream's consume loop also answers any ``KafkaError`` raised by a poll by sleeping five
seconds (and logs it through the broker's logger, which is off here). aiokafka raises from
``getmany`` what its group coordination could not handle itself (an error while joining the
group again after a broker restart, say): every partition of the worker then sat still for
five seconds after the broker answered again. Here an error is logged once per episode (its
type only), the poll answers "no records", and the next poll comes after a pause that starts
at ``first_pause_s`` and doubles up to ``max_pause_s``. Nothing of a batch is touched: no
records were handed out by a poll that raised, and offsets are committed only by the
handler, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import structlog
from aiokafka.errors import KafkaError, UnsupportedCodecError

log = structlog.get_logger(__name__)

# One batch's records from the consumer (``priority.LiveFirstFetch`` with a bulk lane).
Fetch = Callable[[Any], Awaitable[Sequence[Any]]]


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


class GuardedPoll:
    """The subscriber's poll: ``fetch`` one batch; a Kafka error costs a short pause."""

    def __init__(self, fetch: Fetch, errors: PollErrors) -> None:
        self.fetch = fetch
        self.errors = errors

    async def __call__(self, consumer: Any) -> tuple[Any, ...]:
        try:
            records = await self.fetch(consumer)
        except UnsupportedCodecError:
            raise  # a missing compression library: faststream logs it and waits longer
        except KafkaError as exc:
            await self.errors.failed(exc)
            return ()
        self.errors.succeeded()
        return tuple(records)


def guard_polls(
    subscriber: Any, *, fetch: Fetch | None = None, errors: PollErrors | None = None
) -> PollErrors:
    """Replace faststream's batch poll (``subscriber.get_msg``) with a ``GuardedPoll`` of
    ``fetch`` (by default one ``getmany`` with the subscriber's own ``batch_timeout_ms`` and
    ``max_records``); returns the error episode."""
    state = errors or PollErrors()

    async def plain(consumer: Any) -> tuple[Any, ...]:
        batches = await consumer.getmany(
            timeout_ms=subscriber.batch_timeout_ms, max_records=subscriber.max_records
        )
        return tuple(chain.from_iterable(batches.values()))

    subscriber.get_msg = GuardedPoll(fetch or plain, state)
    return state
