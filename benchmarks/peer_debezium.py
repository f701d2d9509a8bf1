"""The peer a team would deploy instead of the service, measured on the same machine.

Kafka Connect standalone (4.1.1) with Debezium 3.6.0 connectors, on the shared broker with
topics of this run's own:

- **sink**: the Debezium JDBC sink upserts the command stream the service's benchmark uses
  (same generator and seed; one record per change, in Kafka Connect's JSON schema envelope)
  into a table of the shared PostgreSQL, keyed by (subject, topic, channel). Several trials
  (tasks x batch size) drain the same backlog; the best is the headline.
- **CDC**: the Debezium PostgreSQL source (pgoutput) on a PostgreSQL of the benchmark's own
  with ``wal_level=logical``, turning single-row updates committed at a fixed rate into
  Kafka events: commit-to-event latency, with Debezium's defaults and tuned for latency.

Everything it starts (the Connect JVM, the PostgreSQL server) is stopped, and everything it
creates (topics, the sink's schema) removed, even when a phase fails. Needs Java 17 and
Maven; the jars are fetched once into ``.stack/peer/libs`` (benchmarks/peer/pom.xml).

    python -m benchmarks.peer_debezium [--quick]     # prints the figures as JSON

Sizes: BENCH_PEER_BACKLOG (commands; 200000, quick 20000), BENCH_SUBJECTS (100000),
BENCH_SEED (1), BENCH_PEER_TRIALS (``TASKSxBATCH[u]``, comma-separated, ``u`` for the
UNNEST bulk path), BENCH_PEER_CDC_RATE (1000), BENCH_PEER_CDC_SECONDS (10, quick 3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from benchmarks.common import (
    RESULTS_DIR,
    CommandGenerator,
    create_topics,
    delete_topics,
    drop_schema,
    env_float,
    env_int,
    free_port,
    preload,
    write_json,
)
from benchmarks.peer import cdc, sink
from benchmarks.peer.connect import ConnectWorker
from benchmarks.peer.jars import ensure_jars
from benchmarks.peer.logical_postgres import logical_postgres
from benchmarks.peer.records import last_writes, sink_records
from service.logging import configure_logging
from service.settings import Settings

VERSIONS = {"kafka_connect": "4.1.1", "debezium": "3.6.0.Final"}
# Tasks x batch size, as a team would try them; "u": Debezium's UNNEST bulk upsert.
FULL_TRIALS = "1x500,1x2000,2x500,2x2000,1x2000u,2x2000u"
QUICK_TRIALS = "2x2000"


def parse_trials(spec: str) -> list[sink.SinkTrial]:
    """``"1x500,2x2000u"`` -> trials; a trailing ``u`` turns the UNNEST bulk path on."""
    trials = []
    for item in spec.split(","):
        item = item.strip().lower()
        if not item:
            continue
        unnest = item.endswith("u")
        tasks, batch = item.removesuffix("u").split("x")
        trials.append(sink.SinkTrial(tasks=int(tasks), batch_size=int(batch), unnest=unnest))
    if not trials:
        raise ValueError("no sink trial given")
    return trials


@dataclass(frozen=True)
class PeerSizes:
    commands: int
    subjects: int
    seed: int
    trials: list[sink.SinkTrial]
    cdc_load: cdc.CdcLoad
    cdc_variants: list[cdc.CdcVariant]

    @classmethod
    def for_run(cls, quick: bool) -> PeerSizes:
        tuned = cdc.CdcVariant("tuned", tuned=True)
        return cls(
            commands=env_int("BENCH_PEER_BACKLOG", 20_000 if quick else 200_000),
            subjects=env_int("BENCH_SUBJECTS", 100_000),
            seed=env_int("BENCH_SEED", 1),
            trials=parse_trials(
                os.environ.get("BENCH_PEER_TRIALS") or (QUICK_TRIALS if quick else FULL_TRIALS)
            ),
            cdc_load=cdc.CdcLoad(
                rate=env_float("BENCH_PEER_CDC_RATE", 1_000.0),
                seconds=env_float("BENCH_PEER_CDC_SECONDS", 3.0 if quick else 10.0),
                warmup_s=1.0,
            ),
            cdc_variants=[tuned] if quick else [cdc.CdcVariant("defaults", tuned=False), tuned],
        )


def notes(result: dict[str, Any]) -> str:
    s, c = result["sink"], result["cdc"]
    best, plain = s["best"], s["best_jdbc_batch"]
    text = (
        "The peer does less per record than the service: the JDBC sink is an unconditional "
        "last-write-wins upsert in Kafka order (no occurred_at guard, so a late older statement "
        "overwrites a newer one), with no idempotency (no processed-command log), no consent "
        "history, no per-command outcomes, no Redis write-through and no preference-changed "
        "events, and one bad record (say a value without its schema) fails its task and stops "
        "its partitions until someone intervenes (errors.tolerance=none, the default). "
        f"Sink: {s['commands']:,} commands over {s['subjects']:,} subjects, one record per "
        f"change ({s['records']:,} records), drained from the first task's assignment to the "
        f"last committed offset; best of {len(s['trials'])} trial(s): {best['label']} at "
        f"{best['records_per_s']:,.0f} records/s = {best['commands_per_s']:,.0f} commands/s"
    )
    if plain is not None and plain is not best:
        text += (
            f" (plain JDBC batches, without Debezium's UNNEST bulk upsert: {plain['label']} at "
            f"{plain['records_per_s']:,.0f} records/s = {plain['commands_per_s']:,.0f} commands/s)"
        )
    names = [v["variant"] for v in c["variants"]]
    return text + (
        ". CDC: single-row updates committed at up to "
        f"{c['rate_per_s']:g}/s on a PostgreSQL of the benchmark's own (wal_level=logical, "
        "pgoutput), from the commit's acknowledgement to the event consumed; best variant "
        f"{c['best']!r} of {names} (tuned: poll.interval.ms=5 and linger.ms=0 instead of 500 "
        "and 5 ms). The machine is shared: see the load averages and per-phase CPU figures."
    )


async def _sink_phase(
    worker: ConnectWorker,
    settings: Settings,
    sizes: PeerSizes,
    unique: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    generator = CommandGenerator(sizes.subjects, sizes.seed)
    commands = [generator.next()[1:] for _ in range(sizes.commands)]
    records = sink_records(commands)
    del commands
    topic = f"peer.{unique}.commands"
    partitions = settings.topic_partitions
    backlog = sink.Backlog(
        topic=topic,
        partitions=partitions,
        commands=sizes.commands,
        records=len(records),
        expected=last_writes(records),
    )
    await create_topics(settings.kafka_bootstrap, [topic], partitions)
    say(f"[peer] preloading {len(records):,} records ({sizes.commands:,} commands)")
    preload_s = await preload(settings.kafka_bootstrap, topic, records)
    del records
    schema = f"peer_{unique}"
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    trials = []
    for index, trial in enumerate(sizes.trials):
        trials.append(
            await sink.run_trial(
                worker,
                name=f"peer-{unique}-sink-{index}",
                trial=trial,
                backlog=backlog,
                table=f"{schema}.sink_{index}",
                bootstrap=settings.kafka_bootstrap,
                database_dsn=settings.database_dsn,
                say=say,
            )
        )
    # Only a trial that left every row as the last write says counts as a drain.
    correct = [
        t for t in trials if t["rows_not_last_write"] == 0 and t["rows"] == t["rows_expected"]
    ]
    if not correct:
        raise RuntimeError("no sink trial left the table as the stream says it should be")
    plain = [t for t in correct if not t["unnest"]]
    best = max(correct, key=lambda t: float(t["commands_per_s"]))
    return {
        "commands": sizes.commands,
        "subjects": sizes.subjects,
        "seed": sizes.seed,
        "records": backlog.records,
        "records_per_command": round(backlog.records / sizes.commands, 3),
        "partitions": partitions,
        "distinct_keys": len(backlog.expected),
        "preload_s": round(preload_s, 2),
        "trials": trials,
        "best": best,
        "best_jdbc_batch": max(plain, key=lambda t: float(t["commands_per_s"])) if plain else None,
    }


async def _cdc_phase(
    worker: ConnectWorker,
    settings: Settings,
    sizes: PeerSizes,
    unique: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    variants = []
    with logical_postgres(free_port()) as pg:
        await cdc.prepare_table(pg)
        for index, variant in enumerate(sizes.cdc_variants):
            prefix = f"peer.{unique}.cdc{index}"
            await create_topics(settings.kafka_bootstrap, [f"{prefix}.public.preferences"], 1)
            variants.append(
                await cdc.measure(
                    worker,
                    pg,
                    variant=variant,
                    name=f"peer-{unique}-cdc-{index}",
                    prefix=prefix,
                    bootstrap=settings.kafka_bootstrap,
                    load=sizes.cdc_load,
                    say=say,
                )
            )
    best = min(variants, key=lambda v: float(v["commit_to_event_ms"].get("p99", float("inf"))))
    return {
        "rate_per_s": sizes.cdc_load.rate,
        "seconds": sizes.cdc_load.seconds,
        "rows": cdc.ROWS,
        "variants": variants,
        "best": best["variant"],
        "commit_to_event_ms": best["commit_to_event_ms"],
    }


async def _cleanup(settings: Settings, unique: str) -> list[str]:
    """Drop the sink's schema and delete this run's topics; return what failed."""
    problems: list[str] = []
    try:
        await drop_schema(settings.database_dsn, f"peer_{unique}")
    except Exception as exc:
        problems.append(f"postgresql: {type(exc).__name__}")
    try:
        await delete_topics(settings.kafka_bootstrap, f"peer.{unique}.")
    except Exception as exc:
        problems.append(f"kafka: {type(exc).__name__}")
    return problems


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run(
    settings: Settings, quick: bool, *, say: Callable[[str], None] = _stderr
) -> dict[str, Any]:
    """Measure the peer; the keys the benchmark report reads are at the top level."""
    sizes = PeerSizes.for_run(quick)
    unique = uuid.uuid4().hex[:10]
    libs = await asyncio.to_thread(ensure_jars, RESULTS_DIR / "peer-mvn.log")
    worker = ConnectWorker(libs, RESULTS_DIR / "peer-connect.log")
    result: dict[str, Any] = {
        "quick": quick,
        "versions": VERSIONS,
        # The machine is shared: how busy it was tells how far the figures can be trusted.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        started = time.perf_counter()
        await worker.start(settings.kafka_bootstrap)
        result["connect_startup_s"] = round(time.perf_counter() - started, 2)
        say(f"[peer] Kafka Connect up in {result['connect_startup_s']} s")
        result["sink"] = await _sink_phase(worker, settings, sizes, unique, say)
        result["cdc"] = await _cdc_phase(worker, settings, sizes, unique, say)
    finally:
        await worker.stop()
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["cleanup_problems"] = await _cleanup(settings, unique)
    best = result["sink"]["best"]
    plain = result["sink"]["best_jdbc_batch"]
    return {
        "peer_sink_cmds_per_s": best["commands_per_s"],
        "peer_sink_records_per_s": best["records_per_s"],
        # The best without the UNNEST bulk path: Debezium's plain JDBC batches.
        "peer_sink_cmds_per_s_jdbc_batch": (plain or {}).get("commands_per_s"),
        "peer_sink_settings": {"tasks": best["tasks"], "batch_size": best["batch_size"]}
        | ({"unnest": True} if best["unnest"] else {}),
        "peer_cdc_latency_ms": {
            k: v for k, v in result["cdc"]["commit_to_event_ms"].items() if k != "count"
        },
        "notes": notes(result),
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a small backlog and a short CDC run")
    args = parser.parse_args()
    configure_logging("WARNING", "console")  # stdout carries the JSON document alone
    result = asyncio.run(run(Settings(), args.quick))
    with contextlib.suppress(OSError):
        write_json(RESULTS_DIR / "peer_debezium.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
