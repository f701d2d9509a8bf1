"""Each hostile class on its own, through a real worker of its own: which classes hold.

A probe sends two ordinary commands, then four instances of one class, then two ordinary
commands again, all on one partition, and checks the same things as a chaos run: every
record answered as the contract says, the DLQ holding the original bytes, PostgreSQL equal
to the oracle and Redis to PostgreSQL for the probe's subjects, nothing applied twice. The
commands after the hostile ones prove the partition moved on. Probes isolate a class that
stalls or loses records, which in a shared stream would take every other class down with it.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.bootstrap import contract_topics
from service.settings import Settings
from tests.chaos import hostile
from tests.chaos.commands import CommandFactory, Planned
from tests.chaos.generator import base_time
from tests.chaos.kafka_io import CommandProducer, OutputLog, answered, bounded, read_log
from tests.chaos.probe_host import ports_dir
from tests.chaos.verdict import Evidence, label_failures, snapshot_postgres, snapshot_redis, verdict

INSTANCES = 4


@dataclass(frozen=True)
class ProbeConfig:
    seed: int = 1
    timeout_s: float = 20.0
    # A partition that stays silent this long after its last answer is stuck for good.
    idle_s: float = 6.0
    concurrency: int = 12


def probe_settings(base: Settings, name: str) -> Settings:
    stem = base.topic_commands.rsplit(".", 1)[0]
    return base.model_copy(
        update={
            "topic_commands": f"{stem}.{name}.commands",
            "topic_preferences": f"{stem}.{name}.preferences",
            "topic_outcomes": f"{stem}.{name}.outcomes",
            "topic_dlq": f"{stem}.{name}.dlq",
            "consumer_group": f"{base.consumer_group}.{name}",
            "topic_partitions": 1,
            "database_pool_size": 1,
            "worker_lanes": 1,
            "batch_max_records": 50,
            "retry_backoff_max_seconds": 0.5,
            "log_format": "json",
        }
    )


async def _readiness(settings: Settings, ports: Path, within_s: float) -> str | None:
    """None once the worker is ready; otherwise what its last ``/readyz`` said."""
    deadline = time.monotonic() + within_s
    last = "no admin port yet"
    port_file = ports / settings.consumer_group
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            if not port_file.exists():
                await asyncio.sleep(0.2)
                continue
            try:
                answer = await http.get(f"http://127.0.0.1:{port_file.read_text()}/readyz")
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            else:
                if answer.status_code == 200:
                    return None
                last = answer.text[:300]
            await asyncio.sleep(0.2)
    return last


async def _probe(name: str, settings: Settings, config: ProbeConfig, ports: Path) -> dict[str, Any]:
    rng = random.Random(config.seed * 1_000_003 + zlib.crc32(name.encode()))
    f = CommandFactory(rng, base_time(), f"p{config.seed}{name}")
    before = [CommandFactory.planned("base.before", f.fresh()) for _ in range(2)]
    records = [r for v in range(INSTANCES) for r in hostile.build(name, f, v)]
    after = [CommandFactory.planned("base.after", f.fresh()) for _ in range(2)]
    outputs = OutputLog(
        settings.kafka_bootstrap,
        settings.topic_outcomes,
        settings.topic_preferences,
        settings.topic_dlq,
        1,
    )
    producer = CommandProducer(settings.kafka_bootstrap, settings.topic_commands)
    await outputs.start()
    await producer.start()
    started = time.monotonic()
    try:
        if (not_ready := await _readiness(settings, ports, 90)) is not None:
            return {"passed": False, "failures": {"worker_not_ready": 1}, "examples": [not_ready]}
        for group in (before, records, after):
            for planned in group:
                await producer.send(planned)
            await producer.flush()
            if group is before:
                await outputs.wait_for(
                    lambda: all(answered(s, outputs) for s in producer.sent),
                    within_s=config.timeout_s,
                )
        sent_at = time.monotonic()
        complete = await outputs.wait_for(
            lambda: all(answered(s, outputs) for s in producer.sent),
            within_s=config.timeout_s,
            idle_s=config.idle_s,
            progress=lambda: sum(answered(s, outputs) for s in producer.sent),
        )
        answered_in = time.monotonic() - sent_at
        # What the worker says about itself when it did not answer everything, for the report.
        stuck_because = None if complete else await _readiness(settings, ports, 0.5)
        await asyncio.sleep(0.5)  # the last events
        log = await read_log(settings.kafka_bootstrap, settings.topic_commands, 1)
    finally:
        late: list[str] = []
        await bounded("producer", producer.stop(), late)
        await bounded("outputs consumer", outputs.stop(), late)
    subjects = {p.subject for p in [*before, *records, *after] if p.subject is not None}
    postgres, _ = await snapshot_postgres(settings.database_dsn, settings.database_schema)
    redis = await snapshot_redis(settings.redis_dsn, settings.redis_prefix)
    report = verdict(
        Evidence(
            topic=settings.topic_commands,
            log=log,
            sent=producer.sent,
            outputs=outputs,
            postgres=postgres,
            history_repeats=0,  # a store-wide count: the event and outcome checks cover a probe
            redis=redis,
            now=datetime.now(UTC) + timedelta(seconds=60),
            subjects=subjects,
        )
    )
    failures: dict[str, int] = {}
    for label in (name, "base.before", "base.after"):
        failures |= {f"{label}.{k}": v for k, v in label_failures(report, label).items()}
    for key in ("applied_twice", "event_gaps", "dlq_mismatches", "redis_mismatches"):
        if report[key]:
            failures[key] = report[key]
    examples = [e for label in (name, "base.after") for e in report["labels"][label]["examples"]]
    if stuck_because is not None:
        examples.insert(0, f"worker readiness: {stuck_because}")
    return {
        "passed": not failures and complete,
        "records": len(log),
        "answered_all": complete,
        "answered_in_s": round(answered_in, 3) if complete else None,
        "seconds": round(time.monotonic() - started, 1),
        "failures": failures,
        "examples": examples[:5],
    }


def _start_host(configs: list[Settings], run_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """One process running a worker per probe (``tests.chaos.probe_host``), and the directory
    where it writes each worker's admin port."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "probe-workers.json"
    config_file.write_text(json.dumps([s.as_environment() for s in configs]))
    with open(run_dir / "probe-workers.log", "ab") as log:
        host = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.probe_host", str(config_file)],
            stdout=log,
            stderr=log,
        )
    return host, ports_dir(config_file)


async def probe_classes(
    base: Settings, names: list[str], config: ProbeConfig, run_dir: Path
) -> dict[str, dict[str, Any]]:
    """Probe every named class, each through a worker of its own; results by class name."""
    per_class = {name: probe_settings(base, name) for name in names}
    await asyncio.gather(
        *(
            ensure_topics(KafkaConnection(s.kafka_bootstrap), contract_topics(s))
            for s in per_class.values()
        )
    )
    host, ports = _start_host(list(per_class.values()), run_dir)
    limit = asyncio.Semaphore(config.concurrency)

    async def one(name: str) -> tuple[str, dict[str, Any]]:
        async with limit:
            try:
                return name, await _probe(name, per_class[name], config, ports)
            except Exception as exc:
                where = traceback.extract_tb(exc.__traceback__)[-1]
                return name, {
                    "passed": False,
                    "failures": {f"probe_error.{type(exc).__name__}": 1},
                    "examples": [f"{Path(where.filename).name}:{where.lineno} {where.name}"],
                }

    try:
        results = dict(await asyncio.gather(*(one(n) for n in names)))
    finally:
        host.kill()
        await asyncio.to_thread(host.wait, 10)
    return {name: results[name] for name in names}


__all__ = ["Planned", "ProbeConfig", "probe_classes"]
