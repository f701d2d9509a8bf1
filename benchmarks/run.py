"""``make bench``: every figure of the performance issue in one run, written to docs/bench/.

Phases, each on private topics, schema, Redis prefix and consumer group (removed after):

1. throughput: a backlog drained by the passthrough (Kafka only), then by one worker;
2. latency at each rate: the passthrough, then the service (event, outcome, and a sender's
   SDK answering "no", with the latency waterfall of the worker's and the SDK's steps), with
   the processes of phase 1 kept running and warm; then, idle, probes one at a time through
   the passthrough and through the service (``probes``);
3. memory: the same worker at a steady rate for a long run (RSS growth, peak);
4. throughput with two worker processes in one group, on a fresh schema;
5. cost growth: throughput with more and more subjects stored (``scaling``);
6. the peer (``benchmarks/peer_debezium.py``, when it is there) and the read path.

Outputs: ``docs/bench/latest.json`` (``summary.build``), the results block of
``docs/bench/README.md`` and the PNG plots (``report``), ``docs/scaling.md`` (``scaling_doc``,
next to the output directory); raw per-phase figures, logs and
samples in ``bench-results/``. A failing phase is recorded under ``errors`` and the run
goes on: it never hides the figures of the others. The exit status is non-zero when one of
this package's own phases failed (the peer's or the read path's failures are only
reported).

Sizes: ``BENCH_QUICK=1`` is a run of under two minutes (smaller backlog, one rate, 10,000 and
100,000 subjects, a 30 s soak, 100 idle probes, no peer unless ``BENCH_PEER=1``, no read
path). Each size can be set on its own: BENCH_BACKLOG, BENCH_SUBJECTS, BENCH_RATES
(comma-separated), BENCH_SECONDS, BENCH_WARMUP, BENCH_TIERS (comma-separated),
BENCH_TIER_BACKLOG, BENCH_SOAK_SECONDS, BENCH_SOAK_WARMUP, BENCH_SOAK_RATE, BENCH_WORKERS
(comma-separated process counts besides the one worker that always runs), BENCH_PEER,
BENCH_READ_PATH (1 or 0), BENCH_PROBES (idle probes of each kind, 0 for none), BENCH_SEED,
BENCH_OUT (default docs/bench). The service's own settings come from the ``OPTOUT_*``
variables as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import report, scaling, scaling_doc, store_parts, summary
from benchmarks.common import (
    RESULTS_DIR,
    Child,
    CommandGenerator,
    Isolation,
    create_topics,
    delete_topics,
    machine_info,
    process_env,
    python_argv,
    worker_argv,
    write_json,
)
from benchmarks.latency import SenderProcess, passthrough_at, service_at
from benchmarks.probes import passthrough_probes, service_probes
from benchmarks.soak import soak
from benchmarks.throughput import Process, drain
from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.bootstrap import contract_topics
from service.logging import configure_logging
from service.settings import Settings

MIB = 2**20


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _ints(name: str, default: str) -> tuple[int, ...]:
    return tuple(int(float(v)) for v in _env(name, default).split(",") if v.strip())


@dataclass(frozen=True)
class Plan:
    quick: bool
    backlog: int
    subjects: int
    workers: tuple[int, ...]
    rates: tuple[int, ...]
    rate_seconds: float
    warmup_s: float
    tiers: tuple[int, ...]
    tier_backlog: int
    soak_rate: float
    soak_seconds: float
    soak_warmup_s: float
    peer: bool
    read_path: bool
    probes: int
    seed: int
    out: str

    @classmethod
    def from_env(cls) -> Plan:
        quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
        q = quick
        return cls(
            quick=quick,
            backlog=int(_env("BENCH_BACKLOG", "10000" if q else "200000")),
            subjects=int(_env("BENCH_SUBJECTS", "100000")),
            workers=_ints("BENCH_WORKERS", "2"),
            rates=_ints("BENCH_RATES", "1000" if q else "200,500,1000,2000"),
            rate_seconds=float(_env("BENCH_SECONDS", "5" if q else "20")),
            warmup_s=float(_env("BENCH_WARMUP", "1" if q else "3")),
            tiers=_ints("BENCH_TIERS", "10000,100000" if q else "10000,1000000,10000000"),
            tier_backlog=int(_env("BENCH_TIER_BACKLOG", "5000" if q else "50000")),
            soak_rate=float(_env("BENCH_SOAK_RATE", "1000")),
            soak_seconds=float(_env("BENCH_SOAK_SECONDS", "30" if q else "600")),
            soak_warmup_s=float(_env("BENCH_SOAK_WARMUP", "5" if q else "60")),
            peer=_env("BENCH_PEER", "0" if q else "1") == "1",
            read_path=_env("BENCH_READ_PATH", "0" if q else "1") == "1",
            probes=int(_env("BENCH_PROBES", "100" if q else "1000")),
            seed=int(_env("BENCH_SEED", "1")),
            out=_env("BENCH_OUT", "docs/bench"),
        )


def say(message: str) -> None:
    print(message, flush=True)


class Run:
    """What one run measured so far, phase by phase, and what failed."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.measurements: dict[str, Any] = {
            "quick": plan.quick,
            "plan": asdict(plan),
            "errors": {},
            "notes": [],
            "throughput": {"workers": {}},
            "latency": {},
        }
        self.latency_samples: dict[str, dict[str, list[float]]] = {}
        self.probe_samples: dict[str, list[float]] = {}
        self.rss_samples: list[tuple[float, int]] = []
        self.own_failures = 0

    @contextlib.asynccontextmanager
    async def phase(self, name: str, *, own: bool = True) -> AsyncIterator[None]:
        """Record a failure of the phase and go on with the next."""
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self.measurements["errors"][name] = f"{type(exc).__name__}: {exc}"
            if own:
                self.own_failures += 1
            say(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            say(f"[{name}] {time.perf_counter() - started:.1f} s")


def _backlog(plan: Plan) -> list[Any]:
    generator = CommandGenerator(plan.subjects, plan.seed)
    return [generator.command() for _ in range(plan.backlog)]


async def _main_phases(run: Run, base: Settings, backlog: list[Any]) -> None:
    """Throughput with one worker and the passthrough, then latency and the soak with the
    same processes, warm."""
    plan = run.plan
    isolation = Isolation(uuid.uuid4().hex[:10])
    # One worker process: its admin port is known, for the waterfall in its /metrics.
    service = isolation.service_settings(base).model_copy(update={"http_port": 0})
    worker_metrics = f"http://{service.admin_host}:{service.admin_port}/metrics"
    passthrough, passthrough_out = isolation.passthrough_settings(base)
    throughput = run.measurements["throughput"]
    pt_child: Child | None = None
    worker: Child | None = None
    sender: SenderProcess | None = None
    try:
        await isolation.prepare_schema(service)
        await ensure_topics(KafkaConnection(base.kafka_bootstrap), contract_topics(service))
        await create_topics(
            base.kafka_bootstrap,
            [passthrough.topic_commands, passthrough_out],
            base.topic_partitions,
        )
        async with run.phase("warm-up", own=False):
            await _warm_up(base, plan)
        async with run.phase("throughput: passthrough"):
            say(f"[throughput] passthrough drains {plan.backlog:,} commands")
            children, figures = await drain(
                passthrough,
                passthrough_out,
                [_passthrough_process("passthrough", passthrough, passthrough_out)],
                backlog,
                phase="backlog",
                say=say,
            )
            pt_child = children[0]
            throughput["passthrough"] = figures
        async with run.phase("throughput: 1 worker"):
            say(f"[throughput] one worker drains {plan.backlog:,} commands")
            children, figures = await drain(
                service,
                service.topic_outcomes,
                [Process("worker-1", worker_argv(), process_env(service))],
                backlog,
                phase="backlog",
                say=say,
            )
            worker = children[0]
            throughput["workers"]["1"] = figures
        if worker is not None:
            async with run.phase("latency: sender"):
                sender = await SenderProcess.start(process_env(service))
        for index, rate in enumerate(plan.rates):
            sides: dict[str, Any] = {}
            samples: dict[str, list[float]] = {}
            run.measurements["latency"][str(rate)] = sides
            run.latency_samples[str(rate)] = samples
            seed = plan.seed + 100 + index
            if pt_child is not None:
                async with run.phase(f"latency@{rate}: passthrough"):
                    say(f"[latency] passthrough at {rate:,}/s for {plan.rate_seconds:g} s")
                    sides["passthrough"], samples["passthrough"] = await passthrough_at(
                        passthrough,
                        passthrough_out,
                        pt_child,
                        rate,
                        plan.rate_seconds,
                        plan.warmup_s,
                        subjects=plan.subjects,
                        seed=seed,
                    )
                    _say_latency("passthrough", sides["passthrough"], "produce_to_output")
            if worker is not None and sender is not None:
                async with run.phase(f"latency@{rate}: service"):
                    say(f"[latency] service at {rate:,}/s for {plan.rate_seconds:g} s")
                    figures, by_path = await service_at(
                        service,
                        [worker],
                        sender,
                        rate,
                        plan.rate_seconds,
                        plan.warmup_s,
                        subjects=plan.subjects,
                        seed=seed,
                        worker_metrics_url=worker_metrics,
                    )
                    sides["service"] = figures
                    samples.update(by_path)
                    for path in ("produce_to_event", "produce_to_outcome", "produce_to_sender_no"):
                        _say_latency("service", figures, path)
        if plan.probes > 0:
            await _idle_probes(
                run, service, passthrough, passthrough_out, pt_child, sender, worker_metrics
            )
        if pt_child is not None:
            await pt_child.stop()
            pt_child = None
        if sender is not None:
            await sender.stop()
            sender = None
        if worker is not None:
            async with run.phase("soak"):
                say(
                    f"[soak] one worker at {plan.soak_rate:g}/s for {plan.soak_seconds:g} s "
                    f"(warm-up {plan.soak_warmup_s:g} s)"
                )
                figures, run.rss_samples = await soak(
                    service,
                    worker,
                    plan.soak_rate,
                    plan.soak_seconds,
                    plan.soak_warmup_s,
                    subjects=plan.subjects,
                    seed=plan.seed + 200,
                )
                run.measurements["soak"] = figures
                say(
                    f"  RSS {figures['rss_after_warmup_mib']} -> {figures['rss_at_end_mib']} MiB "
                    f"({figures['rss_growth_pct']} %), peak {figures['peak_rss_mib']} MiB"
                )
    finally:
        for process in (sender, pt_child, worker):
            if process is not None:
                await process.stop()
        problems = await isolation.cleanup(service)
        if problems:
            say(f"cleanup incomplete: {problems}")


async def _idle_probes(
    run: Run,
    service: Settings,
    passthrough: Settings,
    passthrough_out: str,
    pt_child: Child | None,
    sender: SenderProcess | None,
    worker_metrics: str,
) -> None:
    """One at a time, nothing else running: the Kafka-only two hops, then the service."""
    plan = run.plan
    idle: dict[str, Any] = {"probes": plan.probes}
    run.measurements["idle_probes"] = idle
    seed = plan.seed + 400
    if pt_child is not None:
        async with run.phase("idle probes: passthrough"):
            say(f"[idle] {plan.probes:,} probes one at a time through the passthrough")
            idle["passthrough"], run.probe_samples["passthrough"] = await passthrough_probes(
                passthrough, passthrough_out, plan.probes, subjects=plan.subjects, seed=seed
            )
            _say_latency("passthrough", idle["passthrough"], "produce_to_output")
    if sender is not None:
        async with run.phase("idle probes: service"):
            say(f"[idle] {plan.probes:,} opt-outs one at a time to the sender's SDK")
            idle["service"], run.probe_samples["sender"] = await service_probes(
                service,
                sender,
                plan.probes,
                subjects=plan.subjects,
                seed=seed,
                worker_metrics_url=worker_metrics,
            )
            _say_latency("service", idle["service"], "produce_to_sender_no")


WARM_UP_COMMANDS = 200_000


def _passthrough_process(name: str, settings: Settings, output_topic: str) -> Process:
    return Process(
        name,
        python_argv("-m", "benchmarks.passthrough", "--output-topic", output_topic),
        process_env(settings),
    )


async def _warm_up(base: Settings, plan: Plan) -> None:
    """The passthrough drains commands of its own through topics of its own, unmeasured.

    A broker just started runs its request paths interpreted until the JVM compiles them: the
    first drain after ``make stack`` measured the passthrough at less than half its rate of
    a warm broker, and that first drain is the passthrough's own."""
    isolation = Isolation(uuid.uuid4().hex[:10])
    settings, out = isolation.passthrough_settings(base)
    generator = CommandGenerator(plan.subjects, plan.seed + 300)
    commands = [generator.command() for _ in range(WARM_UP_COMMANDS)]
    say(f"[warm-up] the passthrough drains {len(commands):,} commands, unmeasured")
    try:
        await create_topics(
            base.kafka_bootstrap, [settings.topic_commands, out], base.topic_partitions
        )
        children, _ = await drain(
            settings,
            out,
            [_passthrough_process("warm-up", settings, out)],
            commands,
            phase="warm-up",
            say=say,
        )
        for child in children:
            await child.stop()
    finally:
        await delete_topics(base.kafka_bootstrap, isolation.topic_prefix)


def _say_latency(who: str, figures: dict[str, Any], path: str) -> None:
    q = figures.get(path) or {}
    say(
        f"  {who} {path}: p50 {q.get('p50_ms')} p99 {q.get('p99_ms')} max {q.get('max_ms')} ms, "
        f"missing {q.get('missing')} (achieved {figures.get('achieved_rate_per_s')}/s)"
    )


async def _more_workers(run: Run, base: Settings, backlog: list[Any], count: int) -> None:
    isolation = Isolation(uuid.uuid4().hex[:10])
    service = isolation.service_settings(base).model_copy(update={"http_port": 0, "admin_port": 0})
    try:
        await isolation.prepare_schema(service)
        await ensure_topics(KafkaConnection(base.kafka_bootstrap), contract_topics(service))
        say(f"[throughput] {count} worker processes in one group drain {len(backlog):,} commands")
        children, figures = await drain(
            service,
            service.topic_outcomes,
            [
                Process(f"worker-{count}-{i}", worker_argv(), process_env(service))
                for i in range(count)
            ],
            backlog,
            phase="backlog",
            say=say,
        )
        for child in children:
            await child.stop()
        run.measurements["throughput"]["workers"][str(count)] = figures
    finally:
        problems = await isolation.cleanup(service)
        if problems:
            say(f"cleanup incomplete: {problems}")


def _optional_runner(module_name: str) -> Callable[..., Awaitable[dict[str, Any]]] | None:
    """``module.run`` when the module exists and ``run`` is a coroutine function."""
    if importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    runner = getattr(module, "run", None)
    return runner if inspect.iscoroutinefunction(runner) else None


async def _peer(run: Run, base: Settings) -> None:
    plan = run.plan
    if not plan.peer:
        run.measurements["peer"] = {
            "skipped": "not run (quick run: the peer starts JVMs, Kafka Connect; "
            "BENCH_PEER=1 includes it)"
        }
        return
    runner = _optional_runner("benchmarks.peer_debezium")
    if runner is None:
        run.measurements["peer"] = {"skipped": "benchmarks/peer_debezium.py is not there"}
        return
    say("[peer] Debezium JDBC sink and PostgreSQL source (benchmarks/peer_debezium.py)")
    try:
        figures = await runner(base, plan.quick)
    except Exception as exc:
        run.measurements["peer"] = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    run.measurements["peer"] = figures
    say(
        f"  peer sink {figures.get('peer_sink_cmds_per_s')} records/s, CDC latency "
        f"{figures.get('peer_cdc_latency_ms')} ms"
    )


async def _read_path(run: Run, base: Settings) -> None:
    if not run.plan.read_path:
        return
    runner = _optional_runner("benchmarks.read_path")
    if runner is None:
        return
    say("[read path]")
    run.measurements["read_path"] = await runner(base)


def _write_outputs(run: Run, document: dict[str, Any]) -> None:
    out = Path(run.plan.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "latest.json", document)
    write_json(
        RESULTS_DIR / "samples.json",
        {"latency_ms": run.latency_samples, "rss": run.rss_samples, "probes": run.probe_samples},
    )
    try:
        report.plot_latency(out / "latency_cdf.png", run.latency_samples)
        report.plot_scaling(
            out / "subjects_scaling.png",
            document["subjects_scaling"],
            document["passthrough_msgs_per_s"],
        )
        report.plot_rss(out / "soak_rss.png", run.rss_samples, run.plan.soak_warmup_s)
        report.plot_waterfall(out / "waterfall.png", document)
    except ImportError as exc:  # installed without the bench extra
        document["errors"]["plots"] = f"{type(exc).__name__}: {exc} (install the bench extra)"
        write_json(out / "latest.json", document)
    report.write_readme(out / "README.md", report.markdown(document))
    scaling_doc.write(out.parent / "scaling.md", document)


async def main() -> int:
    plan = Plan.from_env()
    base = Settings()
    configure_logging("WARNING", "console")  # the benchmark's own output is the report
    # A topic created a moment ago is briefly missing from the producer's metadata and
    # aiokafka logs that at ERROR level before it retries: noise in a report.
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    run = Run(plan)
    started = time.perf_counter()
    run.measurements["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = await machine_info(base)
    run.measurements["machine"] = machine
    run.measurements["settings"] = {
        "batch_max_records": base.batch_max_records,
        "batch_wait_seconds": base.batch_wait_seconds,
        "worker_lanes": base.worker_lanes,
        "topic_partitions": base.topic_partitions,
        "database_pool_size": base.database_pool_size,
        "upstream_producer": "acks=all, enable_idempotence=True, linger_ms=0",
    }
    say(f"make bench{' (quick)' if plan.quick else ''}: {asdict(plan)}")
    say(f"machine: {machine}")
    backlog = _backlog(plan)
    async with run.phase("throughput, latency, soak"):
        await _main_phases(run, base, backlog)
    for count in plan.workers:
        if count > 1:
            async with run.phase(f"throughput: {count} workers"):
                await _more_workers(run, base, backlog, count)
    async with run.phase("postgresql by part"):
        batches = 6 if plan.quick else 30
        say(f"[postgresql by part] {batches} batches of 500 commands, each statement variant")
        run.measurements["postgresql_by_part"] = await store_parts.measure(batches, 500)
    async with run.phase("scaling"):
        say(f"[scaling] tiers {plan.tiers}, {plan.tier_backlog:,} commands each")
        run.measurements["scaling"] = await scaling.run(
            base, plan.tiers, plan.tier_backlog, seed_number=plan.seed + 300, say=say
        )
        if "error" in run.measurements["scaling"]:
            raise RuntimeError(run.measurements["scaling"]["error"])
    async with run.phase("peer", own=False):
        await _peer(run, base)
    async with run.phase("read path", own=False):
        await _read_path(run, base)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    run.measurements["duration_s"] = round(time.perf_counter() - started, 1)
    document = summary.build(run.measurements)
    _write_outputs(run, document)
    say("\n" + report.markdown(document))
    say(f"\nwritten: {plan.out}/latest.json, README.md and plots ({document['duration_s']} s)")
    return 1 if run.own_failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
