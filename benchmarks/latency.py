"""Latency at a steady rate: produce → event, → outcome, → a sender's SDK answering "no".

Commands are sent at a fixed rate (``load.send_at_rate``), each stamped just before the
send. In this process, one consumer stamps each preference-changed event and one each
outcome on arrival, matched by ``command_id``; a sender's process (``benchmarks.sender``)
reports when its SDK's local cache first answers "no" for each opt-out. All stamps come
from the system's monotonic clock. The passthrough is measured the same way at the same
rate (its copied records stand for the events), right before the service.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks.common import (
    Child,
    Command,
    CommandGenerator,
    CpuWindow,
    OutputReader,
    command_id_in_value,
    end_process,
    free_port,
    outcome_reader_key,
    python_argv,
)
from benchmarks.load import Sent, latency_figures, send_at_rate, upstream_producer
from benchmarks.throughput import batch_figures
from benchmarks.waterfall import SDK_METRIC, WORKER_METRIC, pair, phase_waterfall, read_buckets
from service.settings import Settings

SETTLE_IDLE_S = 10.0


@dataclass
class SenderProcess:
    """The sender's process and the effect times it reported, by command id."""

    proc: asyncio.subprocess.Process
    metrics_url: str | None = None
    effects: dict[bytes, float] = field(default_factory=dict)
    source_of: dict[bytes, str] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, env: dict[str, str]) -> SenderProcess:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *python_argv("-m", "benchmarks.sender", "--metrics-port", str(port)),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # its warnings (cache off, follower failed) belong in the report
        )
        sender = cls(proc, f"http://127.0.0.1:{port}/metrics")
        sender._reader = asyncio.create_task(sender._read())
        waiter = asyncio.create_task(sender.ready.wait())
        exited = asyncio.create_task(proc.wait())
        await asyncio.wait({waiter, exited}, timeout=60, return_when="FIRST_COMPLETED")
        waiter.cancel()
        exited.cancel()
        if not sender.ready.is_set():
            await sender.stop()
            raise RuntimeError("the sender's SDK did not switch its local cache on")
        return sender

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            parts = line.split()
            if parts == [b"ready"]:
                self.ready.set()
            elif len(parts) == 3 and parts[0] not in self.effects:
                self.effects[parts[0]] = float(parts[1])
                self.source_of[parts[0]] = parts[2].decode()

    async def stop(self) -> None:
        await end_process(self.proc, self._reader, grace_seconds=15)


async def _settle(done: Callable[[], bool], progress: Callable[[], int]) -> bool:
    """Wait until ``done()``, giving up after SETTLE_IDLE_S without progress."""
    last, since = progress(), time.perf_counter()
    while not done():
        await asyncio.sleep(0.05)
        now_progress = progress()
        if now_progress != last:
            last, since = now_progress, time.perf_counter()
        elif time.perf_counter() - since > SETTLE_IDLE_S:
            return done()
    return True


def _commands(subjects: int, seed: int, count: int) -> list[Command]:
    generator = CommandGenerator(subjects, seed)
    return [generator.command() for _ in range(count)]


def _common(sent: Sent, rate: float, cpu: CpuWindow) -> dict[str, Any]:
    return {
        "target_rate_per_s": rate,
        "achieved_rate_per_s": sent.achieved_rate(),
        "commands_measured": len(sent.measured),
        "cpu": cpu.result,
    }


def _applied(ids: Iterable[bytes], statuses: dict[bytes, str]) -> list[bytes]:
    """The ids, in order, whose outcome is ``applied`` (or not seen yet)."""
    return [c for c in ids if statuses.get(c, "applied") == "applied"]


def _behind(sent: Sent, arrivals: dict[bytes, float]) -> int:
    """Commands still unanswered when the last one was sent: near zero when the process
    keeps up with the rate, growing with the run when it does not."""
    return sum(1 for c in sent.measured if arrivals.get(c, float("inf")) > sent.last_at)


async def passthrough_at(
    settings: Settings,
    output_topic: str,
    child: Child,
    rate: float,
    seconds: float,
    warmup_s: float,
    *,
    subjects: int,
    seed: int,
) -> tuple[dict[str, Any], list[float]]:
    child.phase = f"latency@{rate:g}"
    reader = OutputReader(settings.kafka_bootstrap, output_topic, settings.topic_partitions)
    reader.key_of = command_id_in_value
    await reader.start(from_end=True)
    producer = upstream_producer(settings.kafka_bootstrap)
    await producer.start()
    commands = _commands(subjects, seed, int(rate * (seconds + warmup_s)))
    try:
        with CpuWindow([child.proc.pid]) as cpu:
            sent = await send_at_rate(
                producer,
                settings.topic_commands,
                commands,
                len(commands),
                rate,
                int(rate * warmup_s),
            )
            await _settle(
                lambda: all(c in reader.arrivals for c in sent.measured),
                lambda: len(reader.arrivals),
            )
    finally:
        await producer.stop()
        await reader.stop()
    output, samples = latency_figures(sent, reader.arrivals)
    figures = _common(sent, rate, cpu)
    figures["produce_to_output"] = output
    figures["unanswered_at_last_send"] = _behind(sent, reader.arrivals)
    return figures, samples


async def service_at(
    settings: Settings,
    workers: Sequence[Child],
    sender: SenderProcess,
    rate: float,
    seconds: float,
    warmup_s: float,
    *,
    subjects: int,
    seed: int,
    worker_metrics_url: str | None = None,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    phase = f"latency@{rate:g}"
    for w in workers:
        w.phase = phase
    events = OutputReader(
        settings.kafka_bootstrap, settings.topic_preferences, settings.topic_partitions
    )
    events.key_of = command_id_in_value
    outcomes = OutputReader(
        settings.kafka_bootstrap, settings.topic_outcomes, settings.topic_partitions
    )
    statuses: dict[bytes, str] = {}
    outcomes.key_of = outcome_reader_key(statuses)
    await events.start(from_end=True)
    await outcomes.start(from_end=True)
    producer: AIOKafkaProducer = upstream_producer(settings.kafka_bootstrap)
    await producer.start()
    commands = _commands(subjects, seed, int(rate * (seconds + warmup_s)))
    worker_before = await read_buckets(worker_metrics_url, WORKER_METRIC)
    sdk_before = await read_buckets(sender.metrics_url, SDK_METRIC)
    try:
        with CpuWindow([w.proc.pid for w in workers]) as cpu:
            sent = await send_at_rate(
                producer,
                settings.topic_commands,
                commands,
                len(commands),
                rate,
                int(rate * warmup_s),
            )
            await _settle(
                lambda: (
                    all(c in outcomes.arrivals for c in sent.measured)
                    and all(c in events.arrivals for c in sent.measured)
                    and all(c in sender.effects for c in sent.opts_out)
                ),
                lambda: len(outcomes.arrivals) + len(events.arrivals) + len(sender.effects),
            )
    finally:
        await producer.stop()
        await events.stop()
        await outcomes.stop()
    # Over the whole phase, warm-up included: a histogram has no per-command stamps.
    waterfall = phase_waterfall(
        pair(worker_before, await read_buckets(worker_metrics_url, WORKER_METRIC)),
        pair(sdk_before, await read_buckets(sender.metrics_url, SDK_METRIC)),
    )
    # Every command is dated "now", newer than anything stored, so nearly every one is
    # applied and has an event; the few that are not (two commands for one subject within
    # the same millisecond) have no event to wait for.
    applied = _applied(sent.measured, statuses)
    opt_outs = [c for c in applied if c in sent.opts_out]
    to_event, event_samples = latency_figures(sent, events.arrivals, applied)
    to_outcome, outcome_samples = latency_figures(sent, outcomes.arrivals)
    effect, effect_samples = latency_figures(sent, sender.effects, opt_outs)
    # The local cache, or the SDK's read of Redis when the cache could not answer.
    effect["answered_by"] = dict(
        Counter(sender.source_of[c] for c in opt_outs if c in sender.source_of)
    )
    figures = _common(sent, rate, cpu)
    figures["outcomes"] = dict(Counter(statuses.get(c, "none") for c in sent.measured))
    figures["produce_to_event"] = to_event
    figures["produce_to_outcome"] = to_outcome
    figures["produce_to_sender_no"] = effect
    figures["unanswered_at_last_send"] = _behind(sent, outcomes.arrivals)
    figures["per_batch"] = batch_figures(workers, phase)
    figures["waterfall"] = waterfall
    return figures, {"event": event_samples, "outcome": outcome_samples, "sender": effect_samples}
