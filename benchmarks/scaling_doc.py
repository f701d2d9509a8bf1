"""``docs/scaling.md``: capacity planning from one ``make bench`` run's figures.

Pure: every figure in the page is computed from the run's document (``docs/bench/latest.json``),
none is typed in. ``make bench`` writes it next to ``docs/bench/``; after editing this module,
``python -m benchmarks.scaling_doc [docs/bench/latest.json] [docs/scaling.md]`` redraws it from
the committed run.

The model: each process's CPU per command, measured while a backlog drains, is what a command
costs it; a worker process is one event loop, so it uses at most one core; a server's cores are
used in proportion. Capacity is planned at ``UTILISATION`` of the cores, so twice the planned
rate still fits (a burst, a failed process's partitions moving to the others, a backlog
drained at twice the live rate). CPU is the only resource counted: disk (the WAL with
``synchronous_commit`` on), network and locks are not, so each figure is an upper bound.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UTILISATION = 0.5
PLANNED_RATES = (1_000, 5_000, 20_000, 100_000)
PRIMARY_CORES = (8, 16, 32, 64)
# The largest PostgreSQL primary the plan counts on (cloud instances reach 96-192 vCPUs,
# but a single WAL stream and vacuum do not keep pace with the CPU long before that).
LARGEST_PRIMARY_CORES = 64
PARTITIONS_PER_PROCESS = 2


@dataclass(frozen=True)
class PerCommand:
    """CPU milliseconds per command: the worker processes and each server."""

    source: str  # which measured configuration the figures come from
    worker: float
    postgresql: float
    kafka: float
    redis: float


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def per_command(doc: Mapping[str, Any]) -> PerCommand | None:
    """The costliest measured worker configuration's CPU per command (the conservative one):
    the one whose worker processes and PostgreSQL together cost the most per command."""
    budgets = doc.get("cpu_ms_per_command") or {}
    found: list[PerCommand] = []
    for name, b in budgets.items():
        if not str(name).startswith("service") or not isinstance(b, Mapping):
            continue
        worker, postgresql = _num(b.get("processes_under_test")), _num(b.get("postgresql"))
        if not worker or not postgresql:
            continue
        found.append(
            PerCommand(
                str(name),
                worker,
                postgresql,
                _num(b.get("kafka")) or 0.0,
                _num(b.get("redis")) or 0.0,
            )
        )
    return max(found, key=lambda p: p.worker + p.postgresql, default=None)


def per_core(ms_per_command: float) -> float:
    """Commands per second one fully busy core sustains at this CPU cost per command."""
    return 1000.0 / ms_per_command


@dataclass(frozen=True)
class Plan:
    rate: int
    worker_processes: int
    partitions: int
    postgresql_cores: float
    kafka_cores: float
    redis_cores: float
    one_primary: bool


def plan(
    rate: float,
    cost: PerCommand,
    *,
    utilisation: float = UTILISATION,
    min_partitions: int = 1,
    largest_primary: int = LARGEST_PRIMARY_CORES,
) -> Plan:
    """What ``rate`` commands/s needs at ``utilisation`` of each core: worker processes (one
    core each), partitions (``PARTITIONS_PER_PROCESS`` per process, rounded up to a power of
    two, so the group can double without adding partitions: adding them moves subjects to
    other partitions), and each server's cores."""
    if rate <= 0 or not 0 < utilisation <= 1:
        raise ValueError("rate must be positive and utilisation in (0, 1]")

    def cores(ms: float) -> float:
        return rate * ms / 1000.0 / utilisation

    processes = max(1, math.ceil(round(cores(cost.worker), 9)))
    partitions = max(min_partitions, 2 ** math.ceil(math.log2(PARTITIONS_PER_PROCESS * processes)))
    postgresql = cores(cost.postgresql)
    return Plan(
        rate=int(rate),
        worker_processes=processes,
        partitions=partitions,
        postgresql_cores=round(postgresql, 2),
        kafka_cores=round(cores(cost.kafka), 2),
        redis_cores=round(cores(cost.redis), 2),
        one_primary=postgresql <= largest_primary,
    )


def primary_saturates_at(cores: int, cost: PerCommand) -> int:
    """Commands/s at which a primary with ``cores`` cores is fully busy (CPU only)."""
    return round(cores * per_core(cost.postgresql))


def stored_growth(doc: Mapping[str, Any]) -> tuple[int, int, float] | None:
    """(smallest, largest stored subjects measured, throughput ratio largest/smallest)."""
    tiers = {
        int(k): rate
        for k, value in (doc.get("subjects_scaling") or {}).items()
        if (rate := _num(value)) is not None and rate > 0
    }
    if len(tiers) < 2:
        return None
    small, large = min(tiers), max(tiers)
    return small, large, tiers[large] / tiers[small]


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(doc: Mapping[str, Any], rates: Sequence[int] = PLANNED_RATES) -> str:
    """The page, from one run's document."""
    machine = doc.get("machine") or {}
    settings = doc.get("settings") or {}
    cost = per_command(doc)
    growth = stored_growth(doc)
    quick = " (a quick run: `BENCH_QUICK=1`, indicative only)" if doc.get("quick") else ""
    lines = [
        "# Scaling",
        "",
        "<!-- Written by `make bench` (benchmarks/scaling_doc.py) from docs/bench/latest.json;"
        " do not edit by hand. -->",
        "",
        f"Every figure below comes from the `make bench` run of {doc.get('measured_at')}"
        f"{quick}, commit `{machine.get('service_commit')}`, on {machine.get('cores')} cores "
        f"({machine.get('cpu_model')}), where the worker, PostgreSQL, Kafka and Redis shared "
        "those cores. Absolute CPU figures move with the host; re-run `make bench` on the "
        "hardware you plan for and this page is rewritten from that run.",
    ]
    if cost is None:
        return "\n".join(
            [*lines, "", "The run has no CPU per command for the service: nothing to plan from."]
        )
    throughput = doc.get("throughput_by_worker_processes") or {}
    measured = ", ".join(
        f"{n} worker process{'es' if n != '1' else ''}: {_n(_num(v))} commands/s"
        for n, v in throughput.items()
    )
    pg_us = ((doc.get("postgresql_cpu_us_per_command") or {}).get("us_per_command") or {}).get(
        "total"
    )
    lines += [
        "",
        "## Per core, as measured",
        "",
        f"CPU per command while a backlog drains (`cpu_ms_per_command`, configuration "
        f'"{cost.source}": the costliest measured), read from `/proc` for the worker '
        "processes and for each server:",
        "",
        "| process | CPU ms per command | commands/s per core |",
        "| --- | ---: | ---: |",
        f"| worker (`optout worker`) | {_n(cost.worker, 3)} | {_n(per_core(cost.worker))} |",
        f"| PostgreSQL (all backends) | {_n(cost.postgresql, 3)} | "
        f"{_n(per_core(cost.postgresql))} |",
    ]
    if cost.kafka > 0:
        lines.append(f"| Kafka broker | {_n(cost.kafka, 3)} | {_n(per_core(cost.kafka))} |")
    if cost.redis > 0:
        lines.append(f"| Redis | {_n(cost.redis, 3)} | {_n(per_core(cost.redis))} |")
    lines += [
        "",
        f"Drained on this machine, all of it sharing {machine.get('cores')} cores: {measured}. "
        f"PostgreSQL's own time per command on its backend (`benchmarks/store_parts.py`, "
        f"statement by statement): {_n(_num(pg_us), 1)} µs.",
        "",
        "## What a rate needs",
        "",
        f"Planned at {UTILISATION:.0%} of each core, so that twice the rate still fits. A "
        "worker process is one event loop and uses at most one core; partitions are "
        f"{PARTITIONS_PER_PROCESS} per process rounded up to a power of two (at least the "
        f"configured {settings.get('topic_partitions', '-')}), so the group can double "
        "without adding partitions: adding partitions to a topic moves subjects to other "
        "partitions, so choose the count when the topic is created.",
        "",
        "| commands/s | worker processes | partitions | PostgreSQL cores | PostgreSQL cores, "
        f"{_n(growth[1]) if growth else '-'} subjects stored | Kafka cores | Redis cores | one "
        "PostgreSQL primary? |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    min_partitions = int(_num(settings.get("topic_partitions")) or 1)
    for rate in rates:
        p = plan(rate, cost, min_partitions=min_partitions)
        stored = p.postgresql_cores / growth[2] if growth else None
        fits = (stored or p.postgresql_cores) <= LARGEST_PRIMARY_CORES
        lines.append(
            f"| {_n(p.rate)} | {p.worker_processes} | {p.partitions} | "
            f"{_n(p.postgresql_cores, 1)} | {_n(stored, 1)} | {_n(p.kafka_cores, 1)} | "
            f"{_n(p.redis_cores, 1)} | "
            f"{'yes' if fits else f'no: more than {LARGEST_PRIMARY_CORES} cores'} |"
        )
    lines += [
        "",
        "## Where one PostgreSQL primary saturates",
        "",
        "Every command is written on the primary (one transaction per lane and batch), so "
        "the primary's CPU per command bounds the whole service. Fully busy "
        "(CPU only; the WAL's fsync with `synchronous_commit` on, and vacuum, come on top, so "
        "these are upper bounds):",
        "",
        f"| primary cores | commands/s at 100 % CPU | planned at {UTILISATION:.0%} |",
        "| ---: | ---: | ---: |",
    ]
    for cores in PRIMARY_CORES:
        full = primary_saturates_at(cores, cost)
        lines.append(f"| {cores} | {_n(full)} | {_n(full * UTILISATION)} |")
    if growth is not None:
        small, large, ratio = growth
        lines += [
            "",
            f"These costs were measured with {_n(_num(doc.get('plan', {}).get('subjects')))} "
            f"subjects addressed. With {_n(large)} subjects stored one worker drained "
            f"{_n(ratio, 2)} x its rate with {_n(small)} (`subjects_scaling`): for a store "
            "that large, divide the rates above by that ratio (the plan's PostgreSQL column "
            "for it does).",
        ]
    largest = primary_saturates_at(LARGEST_PRIMARY_CORES, cost) * UTILISATION
    lines += [
        "",
        "## Beyond one primary",
        "",
        f"Up to about {_n(largest)} commands/s ({LARGEST_PRIMARY_CORES} cores at "
        f"{UTILISATION:.0%}), one primary and more worker processes suffice. Past it:",
        "",
        "- **More partitions and workers.** Worker processes scale out in one consumer group, "
        "one process per core, up to one per partition (KEDA's `maxReplicaCount` in "
        "`deploy/kubernetes/worker-scaledobject.yaml` equals the partition count); the "
        "partition count is fixed when the topics are created (`OPTOUT_TOPIC_PARTITIONS`), "
        "from the table above.",
        "- **Redis Cluster for reads.** Senders' reads scale with Redis, not with the write "
        "path; `OPTOUT_REDIS_CLUSTER=true` runs the cache on a Redis Cluster (hash-tagged "
        "buckets, one script call per slot), measured against the standalone server by "
        '`benchmarks/redis_cluster.py` (README, "Redis Cluster"). The SDK\'s local cache '
        "answers most checks from memory and is fed by the events, not by Redis.",
        "- **PostgreSQL partitioned by subject.** Not built yet: the subject tables split by "
        "a hash of the subject key into as many primaries as the rate needs, each Kafka "
        "partition's subjects on one of them, so that a worker's batch still commits in one "
        "transaction per primary and a subject's versions stay on one primary. The table "
        "above gives the number of primaries: PostgreSQL cores over the cores of one.",
        "",
        "## Reproduce",
        "",
        "| figure | command |",
        "| --- | --- |",
        "| CPU per command, drained throughput, one and two worker processes | `make bench` "
        "(`cpu_ms_per_command`, `throughput_by_worker_processes` in docs/bench/latest.json) |",
        "| PostgreSQL's time per command by statement | `make bench` "
        "(`postgresql_cpu_us_per_command`; `benchmarks/store_parts.py`) |",
        "| more worker processes in one group | `BENCH_WORKERS=2,4 make bench` |",
        "| throughput as stored subjects grow | `make bench` (`subjects_scaling`; `BENCH_TIERS`) |",
        "| Redis Cluster against one Redis | `.venv/bin/python -m benchmarks.redis_cluster` |",
        "| this page, from the committed run | `.venv/bin/python -m benchmarks.scaling_doc` |",
    ]
    return "\n".join(lines) + "\n"


def write(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(doc), encoding="utf-8")


def main(argv: Sequence[str]) -> None:
    """``python -m benchmarks.scaling_doc [latest.json] [scaling.md]``."""
    import json

    source = Path(argv[0] if argv else "docs/bench/latest.json")
    target = Path(argv[1] if len(argv) > 1 else "docs/scaling.md")
    write(target, json.loads(source.read_text(encoding="utf-8")))


if __name__ == "__main__":
    main(sys.argv[1:])
