"""One at a time on an idle stack: each probe is sent only once the one before took effect.

The service's probe is an opt-out sent to the commands topic and timed until the sender's
SDK says "no" (``benchmarks.sender``, the real worker and follower in between); the
Kafka-only probe goes the same two hops through the passthrough (commands topic, the
passthrough's consumer and producer, its output topic, a consumer here). Nothing else runs
meanwhile, so these figures are absolute: the floor the service is compared with, and its
stalls (a maximum far above the passthrough's is something holding the path).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks.common import Command, CommandGenerator, OutputReader, command_id_in_value
from benchmarks.latency import SenderProcess
from benchmarks.load import Sent, latency_figures, upstream_producer
from benchmarks.waterfall import (
    SDK_METRIC,
    WORKER_METRIC,
    pair,
    phase_waterfall,
    read_buckets,
)
from service.settings import Settings

WARM_UP_PROBES = 20
PROBE_TIMEOUT_S = 5.0
POLL_S = 0.0005


def opt_outs(subjects: int, seed: int) -> Iterator[Command]:
    """Generated commands that opt out of something (what a sender must stop for)."""
    generator = CommandGenerator(subjects, seed)
    while True:
        command = generator.command()
        if command.opts_out:
            yield command


async def one_at_a_time(
    producer: AIOKafkaProducer,
    topic: str,
    commands: Iterator[Command],
    count: int,
    arrived: Callable[[bytes], bool],
    *,
    warm_up: int = WARM_UP_PROBES,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> Sent:
    """Send ``warm_up`` + ``count`` probes, each once the one before ``arrived`` (or after
    ``timeout_s``); the first ``warm_up`` are not measured."""
    sent = Sent()
    for i in range(warm_up + count):
        c = next(commands)
        stamp = time.perf_counter()
        sent.at[c.command_id] = stamp
        if i >= warm_up:
            sent.measured.append(c.command_id)
            sent.opts_out.add(c.command_id)
            if sent.first_measured_at is None:
                sent.first_measured_at = stamp
        await (await producer.send(topic, c.value, key=c.key))
        # Polled: the arrival is stamped where it happens, not here.
        while True:
            if arrived(c.command_id) or time.perf_counter() - stamp >= timeout_s:
                break
            await asyncio.sleep(POLL_S)
        sent.last_at = time.perf_counter()
    return sent


async def passthrough_probes(
    settings: Settings, output_topic: str, count: int, *, subjects: int, seed: int
) -> tuple[dict[str, Any], list[float]]:
    reader = OutputReader(settings.kafka_bootstrap, output_topic, settings.topic_partitions)
    reader.key_of = command_id_in_value
    await reader.start(from_end=True)
    producer = upstream_producer(settings.kafka_bootstrap)
    await producer.start()
    try:
        sent = await one_at_a_time(
            producer,
            settings.topic_commands,
            opt_outs(subjects, seed),
            count,
            lambda c: c in reader.arrivals,
        )
    finally:
        await producer.stop()
        await reader.stop()
    figures, samples = latency_figures(sent, reader.arrivals)
    return {"produce_to_output": figures}, samples


async def service_probes(
    settings: Settings,
    sender: SenderProcess,
    count: int,
    *,
    subjects: int,
    seed: int,
    worker_metrics_url: str | None,
) -> tuple[dict[str, Any], list[float]]:
    producer = upstream_producer(settings.kafka_bootstrap)
    await producer.start()
    worker_before = await read_buckets(worker_metrics_url, WORKER_METRIC)
    sdk_before = await read_buckets(sender.metrics_url, SDK_METRIC)
    try:
        sent = await one_at_a_time(
            producer,
            settings.topic_commands,
            opt_outs(subjects, seed),
            count,
            lambda c: c in sender.effects,
        )
    finally:
        await producer.stop()
    waterfall = phase_waterfall(
        pair(worker_before, await read_buckets(worker_metrics_url, WORKER_METRIC)),
        pair(sdk_before, await read_buckets(sender.metrics_url, SDK_METRIC)),
    )
    figures, samples = latency_figures(sent, sender.effects)
    return {"produce_to_sender_no": figures, "waterfall": waterfall}, samples
