"""Write-path benchmark: backlog throughput and produce-to-event latency, with a baseline.

Two figures, each measured for the service and for a passthrough baseline in the same run
on the same machine (``benchmarks.passthrough``: the same Kafka client settings, no
PostgreSQL, no Redis), so the report can say what the service costs on top of Kafka:

(a) **Backlog throughput.** N commands are written to the commands topic while nothing
    consumes it; then the process under test starts and the clock runs from the moment it
    logs ``partitions_assigned`` (process start-up and group join excluded) until its last
    output is seen: for the service the outcome of the N-th command (outcomes are the last
    thing a batch publishes before its offsets are committed), for the baseline the N-th
    copied record. commands/s = N / elapsed. A second figure, timed from the first output
    instead, is reported beside it.
(b) **Latency at a steady rate.** With the same process still running and caught up,
    commands are produced at BENCH_RATE per second for BENCH_SECONDS, each stamped just
    before the send; a consumer in this process stamps each preference-changed event (or
    copied record) on arrival and matches it by ``command_id``. Both stamps come from one
    monotonic clock in one process. The first BENCH_WARMUP seconds are sent but not counted.

The process under test always runs as its own OS process (the real ``optout worker``
command, or ``python -m benchmarks.passthrough``) so that the load generator and the
reader do not share its Python thread. Everything runs on one machine, so the generator,
Kafka, PostgreSQL and Redis compete with it for the same cores: the per-phase CPU figures
in the output show how busy the machine was.

Sizes come from the environment: BENCH_BACKLOG (50000), BENCH_RATE (1000), BENCH_SECONDS
(20), BENCH_WARMUP (2), BENCH_SUBJECTS (100000), BENCH_SEED (1). BENCH_PROFILE=1 runs both
processes under cProfile (``bench-results/<name>.prof``) to see where their time goes; the
figures of such a run are not comparable with normal runs. The service's own settings
(batch size and wait, partitions, pool size) come from the ``OPTOUT_*`` variables as usual.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks.common import (
    RESULTS_DIR,
    Child,
    CommandGenerator,
    CpuWindow,
    Isolation,
    OutputReader,
    command_id_in_value,
    create_topics,
    env_float,
    env_int,
    machine_info,
    percentiles,
    preload,
    process_env,
    ratio,
    write_json,
)
from service.adapters.kafka.topics import ensure_topics
from service.bootstrap import contract_topics
from service.settings import Settings

AIM_COMMANDS_PER_S = 5_000
AIM_P99_MS = 25.0


@dataclass(frozen=True)
class Sizes:
    backlog: int
    rate: float
    seconds: float
    warmup_s: float
    subjects: int
    seed: int

    @classmethod
    def from_env(cls) -> Sizes:
        return cls(
            backlog=env_int("BENCH_BACKLOG", 50_000),
            rate=env_float("BENCH_RATE", 1_000.0),
            seconds=env_float("BENCH_SECONDS", 20.0),
            warmup_s=env_float("BENCH_WARMUP", 2.0),
            subjects=env_int("BENCH_SUBJECTS", 100_000),
            seed=env_int("BENCH_SEED", 1),
        )


@dataclass(frozen=True)
class Target:
    """One process under test and where its answers appear."""

    name: str
    settings: Settings
    args: tuple[str, ...]
    env: dict[str, str]
    backlog_output: str  # one record per command: outcomes / copied records
    latency_output: str  # what a notification sender waits for: events / copied records


# --- phases ----------------------------------------------------------------------------


async def _backlog(
    target: Target, backlog: list[tuple[bytes, bytes]], sizes: Sizes
) -> tuple[Child, dict[str, Any]]:
    s = target.settings
    preload_s = await preload(s.kafka_bootstrap, s.topic_commands, backlog)
    reader = OutputReader(s.kafka_bootstrap, target.backlog_output, s.topic_partitions)
    reader.key_of = command_id_in_value
    await reader.start(from_end=False)
    spawned = time.perf_counter()
    child = await Child.start(target.name, target.args, target.env)
    child.phase = "backlog"
    try:
        assigned = await child.wait_assigned(120)
        with CpuWindow(child.proc.pid) as cpu:
            complete = await reader.wait_until(
                lambda: len(reader.arrivals) >= sizes.backlog, idle_s=30
            )
    except BaseException:
        await child.stop()
        await reader.stop()
        raise
    await reader.stop()
    seen = len(reader.arrivals)
    # The batch log line comes a moment after the batch's outputs; wait for it, so that the
    # per-batch figures of this phase are complete before the next phase relabels them.
    for _ in range(500):
        logged = sum(int(b.get("records", 0)) for b in child.batches if b["phase"] == "backlog")
        if logged >= seen:
            break
        await asyncio.sleep(0.01)
    last = reader.last_at or assigned
    first = reader.first_at or assigned
    elapsed = last - assigned
    from_first = last - first
    figures: dict[str, Any] = {
        "commands": sizes.backlog,
        "outputs_seen": seen,
        "complete": complete,
        "preload_s": round(preload_s, 2),
        "startup_to_assignment_s": round(assigned - spawned, 2),
        "elapsed_from_assignment_s": round(elapsed, 3),
        "commands_per_s": round(seen / elapsed, 1) if elapsed > 0 else None,
        "first_output_after_assignment_ms": round((first - assigned) * 1000, 1),
        "elapsed_from_first_output_s": round(from_first, 3),
        "commands_per_s_from_first_output": (
            round((seen - 1) / from_first, 1) if from_first > 0 else None
        ),
        "cpu": cpu.result,
    }
    return child, figures


async def _latency(target: Target, child: Child, sizes: Sizes) -> dict[str, Any]:
    s = target.settings
    child.phase = "latency"
    reader = OutputReader(s.kafka_bootstrap, target.latency_output, s.topic_partitions)
    reader.key_of = command_id_in_value
    await reader.start(from_end=True)
    # What an upstream app would use: acknowledged by all replicas, no lingering.
    producer = AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )
    await producer.start()
    generator = CommandGenerator(sizes.subjects, sizes.seed + 1)
    total = int(sizes.rate * (sizes.seconds + sizes.warmup_s))
    warmup = int(sizes.rate * sizes.warmup_s)
    sent_at: dict[bytes, float] = {}
    lag_ms: list[float] = []
    measured: list[bytes] = []
    acks: list[asyncio.Future[Any]] = []
    try:
        with CpuWindow(child.proc.pid) as cpu:
            # Absolute schedule: command i is due at start + i / rate, so a late wake-up is
            # caught up at once instead of drifting the rate down.
            start = time.perf_counter() + 0.05
            i = 0
            while i < total:
                now = time.perf_counter()
                due = min(total, int((now - start) * sizes.rate) + 1)
                while i < due:
                    command_id, key, value = generator.next()
                    ident = command_id.encode()
                    stamp = time.perf_counter()
                    sent_at[ident] = stamp
                    lag_ms.append((stamp - (start + i / sizes.rate)) * 1000)
                    acks.append(await producer.send(s.topic_commands, value, key=key))
                    if i >= warmup:
                        measured.append(ident)
                    i += 1
                delay = start + i / sizes.rate - time.perf_counter()
                await asyncio.sleep(max(delay, 0))
            last_send = time.perf_counter()
            await asyncio.gather(*acks)
            complete = await reader.wait_until(
                lambda: all(c in reader.arrivals for c in measured), idle_s=10
            )
    finally:
        await producer.stop()
        await reader.stop()
    samples = [(reader.arrivals[c] - sent_at[c]) * 1000 for c in measured if c in reader.arrivals]
    first_measured = sent_at[measured[0]] if measured else last_send
    quarter = max(1, len(samples) // 4)
    # Commands still unanswered when the last one was sent: near zero when the process keeps
    # up with the rate, growing with the run when it does not (latency is then queueing).
    behind = sum(1 for c in measured if reader.arrivals.get(c, float("inf")) > last_send)
    duration = last_send - first_measured
    return {
        "target_rate_per_s": sizes.rate,
        "achieved_rate_per_s": round((len(measured) - 1) / duration, 1) if duration > 0 else None,
        "measured_s": round(duration, 2),
        "warmup_commands_excluded": warmup,
        "commands_measured": len(measured),
        "outputs_matched": len(samples),
        "missing": len(measured) - len(samples),
        "complete": complete,
        "produce_to_output": percentiles(samples),
        "p50_first_quarter_ms": percentiles(samples[:quarter]).get("p50_ms"),
        "p50_last_quarter_ms": percentiles(samples[-quarter:]).get("p50_ms"),
        "unanswered_at_last_send": behind,
        "schedule_lag": percentiles(lag_ms[warmup:]),
        "cpu": cpu.result,
    }


def _batch_figures(child: Child, phase: str) -> dict[str, Any]:
    """What the process under test logged per batch in one phase: sizes and where time went."""
    lines = [b for b in child.batches if b.get("phase") == phase]
    if not lines:
        return {"batches": 0}
    records = sum(int(b.get("records", 0)) for b in lines)
    out: dict[str, Any] = {
        "batches": len(lines),
        "records": records,
        "mean_records_per_batch": round(records / len(lines), 1),
    }
    for stage in ("postgres", "redis", "kafka"):
        name = f"{stage}_ms"
        values = [float(b[f"{stage}_seconds"]) * 1000 for b in lines if f"{stage}_seconds" in b]
        if values:
            out[name] = {
                "total": round(sum(values), 1),
                "per_batch": percentiles(values),
                "per_command": round(sum(values) / records, 4) if records else None,
            }
    return out


async def _measure(
    target: Target, backlog: list[tuple[bytes, bytes]], sizes: Sizes, say: Callable[[str], None]
) -> dict[str, Any]:
    say(f"[{target.name}] preloading {sizes.backlog} commands, then draining the backlog")
    child, backlog_figures = await _backlog(target, backlog, sizes)
    try:
        say(
            f"[{target.name}] backlog: {backlog_figures['commands_per_s']} commands/s; "
            f"latency at {sizes.rate:g}/s for {sizes.seconds:g} s (+{sizes.warmup_s:g} s warm-up)"
        )
        latency = await _latency(target, child, sizes)
    finally:
        await child.stop()
    backlog_figures["per_batch"] = _batch_figures(child, "backlog")
    latency["per_batch"] = _batch_figures(child, "latency")
    return {"backlog": backlog_figures, "latency": latency, "log": str(child.log_path)}


# --- report ----------------------------------------------------------------------------


def _compare(service: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    sb, bb = service["backlog"], baseline["backlog"]
    sl, bl = service["latency"]["produce_to_output"], baseline["latency"]["produce_to_output"]
    throughput = sb.get("commands_per_s")
    p99 = sl.get("p99_ms")
    return {
        "backlog_commands_per_s_ratio": ratio(throughput, bb.get("commands_per_s")),
        "latency_p50_ratio": ratio(sl.get("p50_ms"), bl.get("p50_ms")),
        "latency_p99_ratio": ratio(p99, bl.get("p99_ms")),
        "aims": {
            "commands_per_s": AIM_COMMANDS_PER_S,
            "p99_ms_at_rate": AIM_P99_MS,
            "commands_per_s_reached": throughput is not None and throughput >= AIM_COMMANDS_PER_S,
            "p99_reached": p99 is not None and p99 < AIM_P99_MS,
        },
    }


def format_table(result: dict[str, Any]) -> str:
    svc, base = result["service"], result["passthrough"]
    cmp_ = result["comparison"]
    m = result["machine"]

    def row(label: str, a: Any, b: Any, r: Any) -> str:
        def cell(v: Any) -> str:
            return "-" if v is None else (f"{v:,.1f}" if isinstance(v, float) else str(v))

        return f"  {label:<36} {cell(a):>12} {cell(b):>12} {cell(r):>8}"

    sl, bl = svc["latency"]["produce_to_output"], base["latency"]["produce_to_output"]
    lines = [
        f"write path on {m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}",
        f"  settings: {result['settings']}",
        f"  {'':<36} {'service':>12} {'passthrough':>12} {'ratio':>8}",
        row(
            "backlog commands/s (from assignment)",
            svc["backlog"]["commands_per_s"],
            base["backlog"]["commands_per_s"],
            cmp_["backlog_commands_per_s_ratio"],
        ),
        row(
            "backlog commands/s (from 1st output)",
            svc["backlog"]["commands_per_s_from_first_output"],
            base["backlog"]["commands_per_s_from_first_output"],
            ratio(
                svc["backlog"]["commands_per_s_from_first_output"],
                base["backlog"]["commands_per_s_from_first_output"],
            ),
        ),
        row(
            f"latency @{result['sizes']['rate']:g}/s achieved rate",
            svc["latency"]["achieved_rate_per_s"],
            base["latency"]["achieved_rate_per_s"],
            None,
        ),
    ]
    for q in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        lines.append(
            row(f"  produce->output {q}", sl.get(q), bl.get(q), ratio(sl.get(q), bl.get(q)))
        )
    lines.append(
        row("  outputs missing", svc["latency"]["missing"], base["latency"]["missing"], None)
    )
    for phase in ("backlog", "latency"):
        lines.append(
            row(
                f"{phase}: machine CPU utilisation",
                svc[phase]["cpu"]["machine_utilisation"],
                base[phase]["cpu"]["machine_utilisation"],
                None,
            )
        )
    aims = cmp_["aims"]
    lines.append(
        f"  aims: >= {aims['commands_per_s']} commands/s: "
        f"{'reached' if aims['commands_per_s_reached'] else 'NOT reached'}; "
        f"p99 < {aims['p99_ms_at_rate']} ms at the rate: "
        f"{'reached' if aims['p99_reached'] else 'NOT reached'}"
    )
    for phase in ("backlog", "latency"):
        pb = svc[phase]["per_batch"]
        if pb.get("batches"):
            parts = [
                f"{name.removesuffix('_ms')} p50 {pb[name]['per_batch']['p50_ms']} / "
                f"p99 {pb[name]['per_batch']['p99_ms']} ms"
                for name in ("postgres_ms", "redis_ms", "kafka_ms")
                if name in pb
            ]
            lines.append(
                f"  worker {phase}: {pb['batches']} batches, {pb['mean_records_per_batch']} "
                f"records/batch; " + ", ".join(parts)
            )
    return "\n".join(lines)


async def run(
    settings: Settings | None = None, *, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run both targets on private topics/schema/prefix, write bench-results/write_path.json."""
    base = settings or Settings()
    sizes = Sizes.from_env()
    isolation = Isolation(uuid.uuid4().hex[:10])
    service_settings = isolation.service_settings(base)
    passthrough_settings, passthrough_out = isolation.passthrough_settings(base)
    machine = await machine_info(base)
    generator = CommandGenerator(sizes.subjects, sizes.seed)
    backlog = [generator.next()[1:] for _ in range(sizes.backlog)]
    targets = [
        Target(
            "passthrough",
            passthrough_settings,
            ("-m", "benchmarks.passthrough", "--output-topic", passthrough_out),
            process_env(passthrough_settings),
            passthrough_out,
            passthrough_out,
        ),
        Target(
            "service",
            service_settings,
            ("-m", "service.entrypoints.cli", "worker"),
            process_env(service_settings),
            service_settings.topic_outcomes,
            service_settings.topic_preferences,
        ),
    ]
    started = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        await isolation.prepare_schema(service_settings)
        await ensure_topics(base.kafka_bootstrap, contract_topics(service_settings))
        await create_topics(
            base.kafka_bootstrap,
            [passthrough_settings.topic_commands, passthrough_out],
            base.topic_partitions,
        )
        for target in targets:
            results[target.name] = await _measure(target, backlog, sizes, say)
    finally:
        problems = await isolation.cleanup(service_settings)
        if problems:
            say(f"cleanup incomplete: {problems}")
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    document: dict[str, Any] = {
        "benchmark": "write_path",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": machine,
        "sizes": asdict(sizes),
        "settings": {
            "batch_max_records": base.batch_max_records,
            "batch_wait_seconds": base.batch_wait_seconds,
            "topic_partitions": base.topic_partitions,
            "database_pool_size": base.database_pool_size,
            "producer": "acks=all, enable_idempotence=True, linger_ms=0",
        },
        "method": {
            "backlog_clock": "from the process under test logging partitions_assigned to the "
            "N-th output seen (service: outcomes; passthrough: copied records)",
            "latency_clock": "perf_counter before producer.send to arrival of the matching "
            "preference-changed event (service) or copied record (passthrough), one process",
            "isolation": "worker and passthrough run as separate OS processes",
        },
        "service": results["service"],
        "passthrough": results["passthrough"],
    }
    document["comparison"] = _compare(results["service"], results["passthrough"])
    write_json(RESULTS_DIR / "write_path.json", document)
    say(format_table(document))
    return document


if __name__ == "__main__":
    asyncio.run(run())
