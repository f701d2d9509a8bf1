"""The seeds table is written from the reports: verdicts, stalls and failing checks as run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.chaos.seeds import reports_in, table


def report(seed: int, *, passed: bool, dead: list[str] | None = None) -> dict[str, Any]:
    return {
        "seed": seed,
        "passed": passed,
        "commit": "abc1234",
        "commands": 21600,
        "hostile_records": 1115,
        "kills": 22,
        "restarts": 25,
        "lost": 0,
        "applied_twice": 0,
        "stale_allow_reads": 0,
        "duration_s": 600.4,
        "classes": {"a": {"probe": {"passed": True}}, "b": {"probe": {"passed": passed}}},
        "chaos": {
            "checks": {"nothing_lost": True, "no_partition_stall": passed},
            "max_partition_stall_s": 0.25 if passed else 1.7,
            "workers_died_unexpectedly": dead or [],
            "faults_skipped": ["kill"] * 3 if passed else [],
        },
        "fuzz": {"max_partition_stall_s": 0.5},
    }


def test_rows_in_seed_order_with_what_failed(tmp_path: Path) -> None:
    for r in (report(10, passed=True), report(2, passed=False, dead=["w3"])):
        (tmp_path / f"seed-{r['seed']}.json").write_text(json.dumps(r))
    text = table(reports_in(tmp_path))
    rows = [
        line for line in text.splitlines() if line.startswith("| 2 ") or line.startswith("| 10 ")
    ]
    assert [row.split(" | ")[0] for row in rows] == ["| 2", "| 10"]
    failed, passed = rows
    for cell in ("FAILED", "1.700", "1 of 2"):
        assert cell in failed
    assert "no_partition_stall, workers_died_unexpectedly" in failed
    for cell in ("passed", "0.250", "2 of 2"):
        assert cell in passed
    assert passed.split(" | ")[7] == "3"  # faults skipped
    assert passed.split(" | ")[-2] == "none"
    assert "`abc1234`" in passed
