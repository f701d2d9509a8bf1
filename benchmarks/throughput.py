"""Backlog throughput: N commands written while nothing consumes them, then drained.

The clock runs from the first output to the last one (for the service its outcomes, the
last thing a batch publishes before committing its offsets; for the passthrough its copied
records): commands/s = (N - 1) / (last - first). Process start-up and the group join are
outside it. With several worker processes in one group, the first to join holds every
partition until the others are in, so the headline figure for them counts only the outputs
seen once every process holds its final share, over the time from then to the last one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.common import (
    Child,
    Command,
    CpuWindow,
    OutputReader,
    command_id_in_value,
    percentiles,
    preload,
)
from service.settings import Settings


@dataclass(frozen=True)
class Process:
    """How to start one process under test."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]


async def drain(
    settings: Settings,
    output_topic: str,
    processes: Sequence[Process],
    backlog: Sequence[Command],
    *,
    phase: str,
    say: Callable[[str], None],
) -> tuple[list[Child], dict[str, Any]]:
    """Preload ``backlog``, start ``processes`` and time the drain; the processes are left
    running (the caller stops them) so that a later phase can reuse them warm."""
    preload_s = await preload(
        settings.kafka_bootstrap, settings.topic_commands, [(c.key, c.value) for c in backlog]
    )
    reader = OutputReader(settings.kafka_bootstrap, output_topic, settings.topic_partitions)
    reader.key_of = command_id_in_value
    await reader.start(from_end=False)
    spawned = time.perf_counter()
    children = [await Child.start(p.name, p.argv, p.env) for p in processes]
    for child in children:
        child.phase = phase
    try:
        for child in children:
            await child.wait_assigned(120)
        assigned = min(c.assigned_at or spawned for c in children)
        before_window = len(reader.arrivals)
        with CpuWindow([c.proc.pid for c in children]) as cpu:
            complete = await reader.wait_until(
                lambda: len(reader.arrivals) >= len(backlog), idle_s=60
            )
    except BaseException:
        for child in children:
            await child.stop()
        await reader.stop()
        raise
    await reader.stop()
    seen = len(reader.arrivals)
    # The batch log lines come a moment after the batches' outputs: wait for them, so that
    # the per-batch figures of this phase are complete before a later phase relabels them.
    for _ in range(300):
        logged = sum(int(b.get("records", 0)) for c in children for b in c.batches)
        if logged >= seen:
            break
        await asyncio.sleep(0.01)
    first = reader.first_at or assigned
    last = reader.last_at or assigned
    span = last - first
    figures: dict[str, Any] = {
        "processes": len(children),
        "commands": len(backlog),
        "outputs_seen": seen,
        "complete": complete,
        "preload_s": round(preload_s, 2),
        "startup_to_assignment_s": round(assigned - spawned, 2),
        "first_output_after_assignment_ms": round((first - assigned) * 1000, 1),
        "first_to_last_output_s": round(span, 3),
        "cmds_per_s_first_to_last": round((seen - 1) / span, 1) if span > 0 else None,
        "cmds_per_s_from_assignment": (
            round(seen / (last - assigned), 1) if last > assigned else None
        ),
        "cpu": cpu.result,
        # Outputs that came while the CPU was counted (the first process may drain some
        # before the last one holds its partitions and the count starts).
        "commands_in_cpu_window": seen - before_window,
        "per_batch": batch_figures(children, phase),
    }
    figures["cmds_per_s"] = figures["cmds_per_s_first_to_last"]
    if len(children) > 1:
        # From the moment the last process got its final share of the partitions.
        steady_from = max(c.assignments[-1][0] for c in children if c.assignments)
        shares = {c.name: c.holds() for c in children}
        after = [t for t in reader.arrivals.values() if t >= steady_from]
        window = last - steady_from
        figures["partitions_per_process"] = shares
        figures["every_process_holds_partitions"] = all(shares.values())
        figures["outputs_after_all_joined"] = len(after)
        figures["cmds_per_s_all_joined"] = (
            round(len(after) / window, 1) if window > 0 and len(after) > 1 else None
        )
        if figures["every_process_holds_partitions"] and len(after) >= 0.5 * seen:
            figures["cmds_per_s"] = figures["cmds_per_s_all_joined"]
            figures["headline"] = "outputs after every process held its partitions"
        else:
            figures["headline"] = "first to last output (the group was not split for most)"
    say(
        f"  {phase}: {figures['cmds_per_s']} commands/s ({seen} outputs, "
        f"{'complete' if complete else 'INCOMPLETE'})"
    )
    return children, figures


def batch_figures(children: Sequence[Child], phase: str) -> dict[str, Any]:
    """What the processes logged per batch in one phase: sizes and where the time went."""
    lines = [b for c in children for b in c.batches if b.get("phase") == phase]
    if not lines:
        return {"batches": 0}
    records = sum(int(b.get("records", 0)) for b in lines)
    out: dict[str, Any] = {
        "batches": len(lines),
        "records": records,
        "mean_records_per_batch": round(records / len(lines), 1),
    }
    stages = sorted(
        {k.removesuffix("_seconds") for b in lines for k in b if k.endswith("_seconds")}
        | {k.removesuffix("_ms") for b in lines for k in b if k.endswith("_ms")}
    )
    for stage in stages:
        values = []
        for b in lines:
            if f"{stage}_seconds" in b:
                values.append(float(b[f"{stage}_seconds"]) * 1000)
            elif f"{stage}_ms" in b:
                values.append(float(b[f"{stage}_ms"]))
        if values:
            pct = percentiles(values)
            out[f"{stage}_ms"] = {
                "total": round(sum(values), 1),
                "p50": pct.get("p50_ms"),
                "p99": pct.get("p99_ms"),
                "per_command": round(sum(values) / records, 4) if records else None,
            }
    return out
