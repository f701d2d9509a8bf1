"""``make chaos`` for several seeds back to back, and the table of their verdicts.

    python -m tests.chaos.seeds run 1 2 3 4 5    # each seed's report in docs/reliability/seeds/
    python -m tests.chaos.seeds table            # docs/reliability/seeds.md from those reports

A seed draws a different stream, different hostile records, and faults at different moments
(kills, restarts of Kafka, PostgreSQL and Redis, a Redis flush, members joining and leaving);
the same checks hold for each (README, Reliability). The table is generated from the
reports, never written by hand; a report names the commit it ran.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.chaos import run

SEEDS_DIR = Path("docs/reliability/seeds")
TABLE = Path("docs/reliability/seeds.md")


def _row(report: dict[str, Any]) -> str:
    chaos = report.get("chaos", {})
    fuzz = report.get("fuzz", {})
    failing = [name for name, ok in chaos.get("checks", {}).items() if not ok]
    if chaos.get("workers_died_unexpectedly"):
        failing.append("workers_died_unexpectedly")
    probes = report.get("classes", {})
    held = sum(1 for c in probes.values() if c.get("probe", {}).get("passed"))
    cells = [
        str(report["seed"]),
        "passed" if report["passed"] else "FAILED",
        f"`{report.get('commit') or 'unknown'}`",
        f"{report.get('commands', 0):,}",
        f"{report.get('hostile_records', 0):,}",
        str(report.get("kills", 0)),
        str(report.get("restarts", 0)),
        str(len(chaos.get("faults_skipped", []))),
        str(report.get("lost", 0)),
        str(report.get("applied_twice", 0)),
        str(report.get("stale_allow_reads", 0)),
        f"{chaos.get('max_partition_stall_s', 0):.3f}",
        f"{fuzz.get('max_partition_stall_s', 0):.3f}",
        f"{held} of {len(probes)}",
        ", ".join(failing) or "none",
        f"{report.get('duration_s', 0):.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def table(reports: Sequence[dict[str, Any]]) -> str:
    head = [
        "# Chaos runs by seed",
        "",
        "<!-- Written by `python -m tests.chaos.seeds table` from docs/reliability/seeds/"
        "seed-N.json; do not edit by hand. -->",
        "",
        "Each row is one full `make chaos` (`python -m tests.chaos.run --seed N`) on servers of "
        "its own; the stall columns are the longest a partition went without progress while "
        "it had records waiting, against the limit of 1 s. Once the group has failed three "
        "times to settle after a fault, the remaining faults are skipped (counted here). "
        "Reproduce: "
        "`make chaos-seeds` (seeds 1 to 5, one after the other).",
        "",
        "| seed | verdict | commit | commands | hostile | kills | restarts | faults skipped | lost "
        "| applied twice | stale allows | max stall, chaos (s) | max stall, fuzz (s) "
        "| probes held | failing checks | duration (s) |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- | --- | ---: |",
    ]
    return "\n".join([*head, *(_row(r) for r in reports)]) + "\n"


def reports_in(directory: Path) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in directory.glob("seed-*.json")]
    return sorted(found, key=lambda r: int(r["seed"]))


def write_table(directory: Path = SEEDS_DIR, out: Path = TABLE) -> None:
    out.write_text(table(reports_in(directory)))


async def run_seeds(seeds: Sequence[int]) -> int:
    status = 0
    for seed in seeds:
        out = SEEDS_DIR / f"seed-{seed}.json"
        status |= await run.main(["--seed", str(seed), "--out", str(out)])
        write_table()
    return status


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["table"]:
        write_table()
        return 0
    if argv[:1] == ["run"] and len(argv) > 1:
        return asyncio.run(run_seeds([int(a) for a in argv[1:]]))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
