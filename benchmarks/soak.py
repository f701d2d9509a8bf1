"""Memory over a long run: the worker's resident size while it takes a steady rate.

Commands are sent at ``rate`` for ``seconds``; the worker's ``VmRSS`` is sampled every
second from ``/proc``. Growth is (RSS at the end - RSS after the warm-up) / RSS after the
warm-up; the peak is the kernel's high-water mark (``VmHWM``) of the process's life. The
outcomes are followed too, to show that the worker kept up (a worker falling behind holds
more in memory for a reason that is not a leak).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from benchmarks.common import (
    Child,
    CommandGenerator,
    CpuWindow,
    OutputReader,
    command_id_in_value,
    process_memory,
)
from benchmarks.load import latency_figures, send_at_rate, upstream_producer
from benchmarks.throughput import batch_figures
from service.settings import Settings

MIB = 2**20


def rss_growth_pct(samples: list[tuple[float, int]], warmup_s: float) -> float | None:
    """(last - first after the warm-up) / first after the warm-up, in percent."""
    after = [rss for t, rss in samples if t >= warmup_s]
    if len(after) < 2 or after[0] <= 0:
        return None
    return round((after[-1] - after[0]) / after[0] * 100, 2)


async def soak(
    settings: Settings,
    worker: Child,
    rate: float,
    seconds: float,
    warmup_s: float,
    *,
    subjects: int,
    seed: int,
) -> tuple[dict[str, Any], list[tuple[float, int]]]:
    worker.phase = "soak"
    samples: list[tuple[float, int]] = []
    started = time.perf_counter()

    async def sample() -> None:
        while True:
            rss = worker.rss_bytes()
            if rss is not None:
                samples.append((round(time.perf_counter() - started, 2), rss))
            await asyncio.sleep(1.0)

    outcomes = OutputReader(
        settings.kafka_bootstrap, settings.topic_outcomes, settings.topic_partitions
    )
    outcomes.key_of = command_id_in_value
    await outcomes.start(from_end=True)
    producer = upstream_producer(settings.kafka_bootstrap)
    await producer.start()
    sampler = asyncio.create_task(sample())
    generator = CommandGenerator(subjects, seed)
    total = int(rate * seconds)
    # Made as they are sent: a long run's commands would not fit in memory made up front.
    commands = (generator.command() for _ in range(total))
    try:
        with CpuWindow([worker.proc.pid]) as cpu:
            sent = await send_at_rate(
                producer, settings.topic_commands, commands, total, rate, int(rate * warmup_s)
            )
            await outcomes.wait_until(
                lambda: all(c in outcomes.arrivals for c in sent.measured), idle_s=10
            )
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await producer.stop()
        await outcomes.stop()
    peak = process_memory(worker.proc.pid).get("VmHWM")
    after = [rss for t, rss in samples if t >= warmup_s]
    to_outcome, _ = latency_figures(sent, outcomes.arrivals)
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "achieved_rate_per_s": sent.achieved_rate(),
        "commands": len(sent.at),
        "rss_after_warmup_mib": round(after[0] / MIB, 1) if after else None,
        "rss_at_end_mib": round(after[-1] / MIB, 1) if after else None,
        "rss_max_sampled_mib": round(max(after) / MIB, 1) if after else None,
        "rss_growth_pct": rss_growth_pct(samples, warmup_s),
        "peak_rss_mib": round(peak / MIB, 1) if peak else None,
        "produce_to_outcome": to_outcome,
        "cpu": cpu.result,
        "per_batch": batch_figures([worker], "soak"),
    }, samples
