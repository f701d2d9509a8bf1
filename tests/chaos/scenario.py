"""One chaos run: workers in a group, the seeded stream, faults, sender reads, then the checks.

``chaos`` is the whole of it, for servers of the run's own (``make chaos``) or for the
shared stack (the short variant in the test suite, which skips the server restarts).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.bootstrap import contract_topics
from service.client import OptoutClient
from service.settings import Settings
from tests.chaos import hostile
from tests.chaos.commands import Planned
from tests.chaos.environment import Environment
from tests.chaos.faults import FaultPlan, Faults
from tests.chaos.generator import StreamSpec, generate
from tests.chaos.kafka_io import CommandProducer, OutputLog, answered, bounded, read_log
from tests.chaos.monitor import GroupMonitor, Window
from tests.chaos.processes import ApiProcess, WorkerPool, worker_trouble
from tests.chaos.reads import READERS, SenderReads, close_quietly
from tests.chaos.verdict import Evidence, snapshot_postgres, snapshot_redis, verdict

STALL_LIMIT_S = 1.0


@dataclass(frozen=True)
class ChaosConfig:
    seed: int
    records: int
    rate_per_s: float
    faults: FaultPlan
    classes: tuple[str, ...] = tuple(hostile.CLASSES)
    workers: int = 3
    subjects: int = 300
    hostile_share: float = 0.05
    min_per_class: int = 1
    readers: tuple[str, ...] = READERS
    partitions: int = 6
    batch_max_records: int = 100
    retry_backoff_max_seconds: float = 1.0
    drain_idle_s: float = 30.0
    drain_max_s: float = 240.0
    grace_s: float = 1.0
    refill_sample: int = 50


@dataclass
class _Run:
    config: ChaosConfig
    settings: Settings
    env: Environment
    run_dir: Path
    plan: list[Planned] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def checks(report: Mapping[str, Any]) -> dict[str, bool]:
    """The run's pass/fail lines; `passed` is their conjunction."""
    return {
        "nothing_lost": report["lost"] == 0,
        "nothing_applied_twice": report["applied_twice"] == 0,
        "no_stale_allow": report["stale_allow_reads"] == 0,
        "dlq_holds_original_bytes": report["dlq_mismatches"] == 0,
        "no_partition_stall": report["max_partition_stall_s"] <= STALL_LIMIT_S,
        "outcomes_as_contract": report["wrong_outcomes"] == 0 and report["wrong_dispositions"] == 0,
        "postgres_equals_oracle": report["postgres_mismatches"] == 0,
        "redis_equals_postgres": report["redis_mismatches"] == 0
        and report["redis_refill_failures"] == 0,
        "compacted_topic_equals_postgres": report["compacted_mismatches"] == 0,
        "events_without_gaps": report["event_gaps"] == 0,
    }


def _docs_by_command(plan: list[Planned]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    docs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for p in plan:
        if p.doc is not None and p.command_id is not None:
            docs[(str(p.doc.get("tenant", "default")), p.command_id)].append(p.doc)
    return docs


async def _produce(producer: CommandProducer, plan: list[Planned], rate: float) -> None:
    started = time.monotonic()
    for i, planned in enumerate(plan):
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await producer.send(planned)
    await producer.flush()


async def _refill_check(
    run: _Run, api: ApiProcess | None, missing: list[tuple[str, str]]
) -> list[str]:
    """Subjects the flush removed from Redis: a read refills them with PostgreSQL's state."""
    if api is None or not missing:
        return []
    failures: list[str] = []
    async with httpx.AsyncClient(timeout=5) as http:
        for tenant, subject_id in missing[: run.config.refill_sample]:
            response = await http.get(
                f"{api.url}/v1/subjects/{quote(subject_id, safe='')}/preferences",
                params={"tenant": tenant},
                headers={"Authorization": f"Bearer {api.token}"},
            )
            if response.status_code != 200:
                failures.append(f"read path answered HTTP {response.status_code}")
    return failures


async def chaos(
    env: Environment, settings: Settings, config: ChaosConfig, run_dir: Path
) -> dict[str, Any]:
    """Run the scenario and return its report (see README, Reliability)."""
    started_wall = datetime.now(UTC)
    started = time.monotonic()
    settings = settings.model_copy(
        update={
            "topic_partitions": config.partitions,
            "batch_max_records": config.batch_max_records,
            "retry_backoff_max_seconds": config.retry_backoff_max_seconds,
            "log_format": "json",
        }
    )
    run = _Run(config, settings, env, run_dir)
    await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
    spec = StreamSpec(
        seed=config.seed,
        records=config.records,
        subjects=config.subjects,
        hostile_share=config.hostile_share,
        classes=config.classes,
        min_per_class=config.min_per_class,
        run_id=f"s{config.seed}",
    )
    run.plan = generate(spec)
    await ensure_topics(KafkaConnection(settings.kafka_bootstrap), contract_topics(settings))

    outputs = OutputLog(
        settings.kafka_bootstrap,
        settings.topic_outcomes,
        settings.topic_preferences,
        settings.topic_dlq,
        config.partitions,
    )
    monitor = GroupMonitor(
        settings.kafka_bootstrap,
        settings.consumer_group,
        settings.topic_commands,
        config.partitions,
    )
    pool = WorkerPool(settings, run_dir)
    producer = CommandProducer(settings.kafka_bootstrap, settings.topic_commands)
    api = (
        ApiProcess(settings, run_dir, secrets.token_urlsafe(16))
        if "http" in config.readers
        else None
    )
    client: OptoutClient | None = None
    reads: SenderReads | None = None
    faults = Faults(env, settings, pool, monitor, producer, random.Random(config.seed + 1))
    faults.grace_s = config.grace_s
    production_s = 0.0
    production_started = started
    late: list[str] = []
    reads_skipped = 0
    dead: list[str] = []
    try:
        await outputs.start()
        await monitor.start()
        await producer.start()
        if api is not None:
            await api.start()
        if "sdk" in config.readers:
            client = await OptoutClient.connect(settings)
        reads = SenderReads(
            settings,
            _docs_by_command(run.plan),
            readers=config.readers,
            api_url=api.url if api else None,
            token=api.token if api else None,
            client=client,
            seed=config.seed,
        )
        await reads.start()
        outputs.on_outcome.append(reads.on_outcome)
        for _ in range(config.workers):
            pool.start()
        stable = await monitor.stable(started, config.workers, cap_s=90)
        if stable is None:
            run.notes.append("the worker group did not become stable within 90 s of the start")
        # Starting the workers is a fault window too: the first batch opens the connections.
        faults.windows.append(
            Window("start", started, (stable or time.monotonic()) + config.grace_s)
        )

        duration = config.records / config.rate_per_s
        production_started = time.monotonic()
        producing = asyncio.create_task(_produce(producer, run.plan, config.rate_per_s))
        await faults.run(config.faults, duration, production_started)
        await producing
        production_s = time.monotonic() - production_started

        drained = await outputs.wait_for(
            lambda: all(answered(s, outputs) for s in producer.sent),
            within_s=config.drain_max_s,
            idle_s=config.drain_idle_s,
            progress=lambda: sum(answered(s, outputs) for s in producer.sent),
        )
        if not drained:
            run.notes.append("not every record was answered when the drain gave up")
        # Events travel on their own topic: give the last ones a moment to arrive.
        await asyncio.sleep(2.0)
        dead = pool.dead_unexpectedly()
        await reads.stop()
        reads_skipped = reads.skipped
        await close_quietly(client)
        client = None
        postgres, repeats = await snapshot_postgres(settings.database_dsn, settings.database_schema)
        redis = await snapshot_redis(settings.redis_dsn, settings.redis_prefix)
        present = [r for r, s in postgres.items() if s.version > 0 and r not in redis]
        refill_failures = await _refill_check(run, api, present)
        if api is not None and present:
            # After the read path refilled them, these subjects are compared like the rest.
            redis = await snapshot_redis(settings.redis_dsn, settings.redis_prefix)
            refill_failures += [
                "a subject read through the API is still missing from Redis"
                for ref in present[: config.refill_sample]
                if ref not in redis
            ]
        await asyncio.to_thread(pool.stop_all)
        log = await read_log(settings.kafka_bootstrap, settings.topic_commands, config.partitions)
        evidence = Evidence(
            topic=settings.topic_commands,
            log=log,
            sent=producer.sent,
            outputs=outputs,
            postgres=postgres,
            history_repeats=repeats,
            redis=redis,
            now=datetime.now(UTC) + timedelta(seconds=60),
            reads=list(reads.reads),
            samples=monitor.samples,
            windows=faults.windows,
            refill_failures=refill_failures,
            batch_max_records=config.batch_max_records,
        )
        report = verdict(evidence)
    finally:
        await close_quietly(client)
        if reads is not None:
            await bounded("sender reads", reads.stop(), late)
        await asyncio.to_thread(pool.stop_all)
        if api is not None:
            api.stop()
        await bounded("outputs consumer", outputs.stop(), late)
        await bounded("offsets monitor", monitor.stop(), late)
        await bounded("producer", producer.stop(), late)
    windows: dict[str, float] = defaultdict(float)
    for w in faults.windows:
        windows[w.kind] += w.end - w.start
    # Times in the report count from the monitor's first sample, like the stall's.
    origin = monitor.samples[0].at if monitor.samples else started
    report.update(
        {
            "seed": config.seed,
            "started_at": started_wall.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 1),
            "production_s": round(production_s, 1),
            "kills": pool.kills,
            "restarts": pool.kills
            + faults.done["restart_postgres"]
            + faults.done["restart_redis"]
            + faults.done["restart_kafka"],
            "faults": dict(faults.done),
            "rebalances": 2 * (faults.done["leave_rejoin"] + faults.done["extra_member"]),
            "redis_flushes": faults.done["flush_redis"] + faults.done["restart_redis"],
            "fault_windows_s": {k: round(v, 1) for k, v in sorted(windows.items())},
            "unsettled_windows": faults.unsettled,
            "faults_skipped": faults.skipped,
            "production_from_s": round(production_started - origin, 1),
            "windows": [
                f"{w.kind} {w.start - origin:.1f}-{w.end - origin:.1f}s" for w in faults.windows
            ],
            "workers_died_unexpectedly": dead,
            "worker_trouble": await asyncio.to_thread(worker_trouble, run_dir),
            "producer_retries": producer.retries,
            "reads_skipped": reads_skipped,
            "monitor_errors": monitor.errors,
            "read_trigger_errors": outputs.callback_errors,
            "teardown_timeouts": late,
            "notes": run.notes,
            "classes_enabled": list(config.classes),
            "config": {k: v for k, v in asdict(config).items() if k not in ("classes", "faults")}
            | {"faults": asdict(config.faults)},
            "logs": str(run_dir),
        }
    )
    report["checks"] = checks(report)
    report["passed"] = all(report["checks"].values()) and not dead
    return report
