"""Load for the benchmarks: a backlog written at once, or commands sent at a steady rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks.common import Command, percentiles


def upstream_producer(bootstrap: str) -> AIOKafkaProducer:
    """What an upstream application would use: acknowledged by all replicas, no lingering."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )


@dataclass
class Sent:
    """When each command was handed to the producer (``perf_counter``, which is the system's
    monotonic clock on Linux, so other processes on the machine can be compared with it)."""

    at: dict[bytes, float] = field(default_factory=dict)
    measured: list[bytes] = field(default_factory=list)  # sent after the warm-up
    opts_out: set[bytes] = field(default_factory=set)
    first_measured_at: float | None = None
    last_at: float = 0.0
    schedule_lag_ms: list[float] = field(default_factory=list)

    def achieved_rate(self) -> float | None:
        if self.first_measured_at is None or len(self.measured) < 2:
            return None
        span = self.last_at - self.first_measured_at
        return round((len(self.measured) - 1) / span, 1) if span > 0 else None


async def send_at_rate(
    producer: AIOKafkaProducer,
    topic: str,
    commands: Iterable[Command],
    total: int,
    rate: float,
    warmup: int,
) -> Sent:
    """Send ``total`` of ``commands`` at ``rate`` per second on an absolute schedule
    (command i is due at start + i / rate, so a late wake-up is caught up at once instead of
    drifting the rate down); the first ``warmup`` are sent but not measured. Returns once all
    are acknowledged.
    """
    sent = Sent()
    acks: list[asyncio.Future[Any]] = []
    start = time.perf_counter() + 0.05
    i = 0
    source = iter(commands)
    while i < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        while i < due:
            c = next(source)
            stamp = time.perf_counter()
            sent.at[c.command_id] = stamp
            if i >= warmup:
                sent.measured.append(c.command_id)
                sent.schedule_lag_ms.append((stamp - (start + i / rate)) * 1000)
                if sent.first_measured_at is None:
                    sent.first_measured_at = stamp
                if c.opts_out:
                    sent.opts_out.add(c.command_id)
            acks.append(await producer.send(topic, c.value, key=c.key))
            i += 1
        sent.last_at = time.perf_counter()
        delay = start + i / rate - time.perf_counter()
        await asyncio.sleep(max(delay, 0))
    await asyncio.gather(*acks)
    return sent


def latency_figures(
    sent: Sent, arrivals: dict[bytes, float], ids: Sequence[bytes] | None = None
) -> tuple[dict[str, Any], list[float]]:
    """Percentiles of arrival minus send time over ``ids`` (default: every measured id),
    with how many never arrived; also the samples, in send order."""
    wanted = sent.measured if ids is None else ids
    samples = [(arrivals[c] - sent.at[c]) * 1000 for c in wanted if c in arrivals]
    figures: dict[str, Any] = percentiles(samples)
    figures["expected"] = len(wanted)
    figures["missing"] = len(wanted) - len(samples)
    return figures, samples
