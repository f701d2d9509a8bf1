"""``make bench``: the write-path benchmark, then the read-path one when it exists.

Each benchmark writes its own file under ``bench-results/``; this entry point adds
``bench-results/summary.json`` with the headline figures of all of them and the machine,
and prints the same summary. The read path is optional: ``benchmarks.read_path`` is run
only if it exists and exposes ``async def run(settings) -> dict``. A failing read-path
benchmark is recorded in the summary (and makes the exit status non-zero) but never
hides the write-path figures already measured.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import time
from typing import Any

from benchmarks import write_path
from benchmarks.common import RESULTS_DIR, write_json
from service.logging import configure_logging
from service.settings import Settings


def _headline(write: dict[str, Any]) -> dict[str, Any]:
    svc, base, cmp_ = write["service"], write["passthrough"], write["comparison"]
    sl = svc["latency"]["produce_to_output"]
    bl = base["latency"]["produce_to_output"]
    return {
        "backlog_commands_per_s": {
            "service": svc["backlog"]["commands_per_s"],
            "passthrough": base["backlog"]["commands_per_s"],
            "ratio": cmp_["backlog_commands_per_s_ratio"],
        },
        f"latency_at_{write['sizes']['rate']:g}_per_s_ms": {
            "service": {"p50": sl.get("p50_ms"), "p99": sl.get("p99_ms")},
            "passthrough": {"p50": bl.get("p50_ms"), "p99": bl.get("p99_ms")},
            "ratio": {"p50": cmp_["latency_p50_ratio"], "p99": cmp_["latency_p99_ratio"]},
        },
        "aims": cmp_["aims"],
    }


def _read_path_runner() -> Any:
    """The read-path ``run`` coroutine function, or None when that benchmark is absent."""
    if importlib.util.find_spec("benchmarks.read_path") is None:
        return None
    module = importlib.import_module("benchmarks.read_path")
    runner = getattr(module, "run", None)
    return runner if inspect.iscoroutinefunction(runner) else None


def _flatten(prefix: str, value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, int | float | str | bool) or value is None:
        out.append(f"  {prefix}: {value}")


async def main() -> int:
    settings = Settings()
    configure_logging("WARNING", "console")  # the benchmark's own output is the report
    # A topic created a moment ago is briefly missing from the producer's metadata and
    # aiokafka logs that at ERROR level before it retries: noise in a report.
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    started = time.perf_counter()
    status = 0
    write = await write_path.run(settings)
    summary: dict[str, Any] = {
        "measured_at": write["measured_at"],
        "machine": write["machine"],
        "settings": write["settings"],
        "write_path": _headline(write),
    }
    try:
        runner = _read_path_runner()
    except Exception as exc:  # another engineer's module: report it, keep our figures
        runner = None
        summary["read_path"] = {"error": f"import failed: {type(exc).__name__}: {exc}"}
        status = 1
    if runner is not None:
        print("\n[read path]")
        try:
            read = await runner(settings)
            summary["read_path"] = read
        except Exception as exc:
            summary["read_path"] = {"error": f"{type(exc).__name__}: {exc}"}
            status = 1
    summary["duration_s"] = round(time.perf_counter() - started, 1)
    write_json(RESULTS_DIR / "summary.json", summary)

    lines: list[str] = []
    _flatten("", {k: v for k, v in summary.items() if k != "machine"}, lines)
    print("\nsummary (bench-results/summary.json):")
    print(json.dumps(summary["machine"]))
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
