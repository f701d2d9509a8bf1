"""A large suppression list through `optout import`, with a worker applying it.

`python -m benchmarks.import_million --rows 1000000` writes a SendGrid global-unsubscribe
export of that many distinct addresses, starts a worker (its own OS process, on this run's
own topics, schema, Redis prefix and consumer group), and runs `optout import` as an
operator would. It reports:

- the import's own rate (rows read, mapped and acknowledged by Kafka per second, from its
  summary) and its wall time including process start-up;
- the time from starting the import until the file's last row is sender-visible: the read
  path (Redis, as the HTTP check and the SDK read it) answers "no" for its subject;
- the time until the worker has applied every row (the group's lag back to zero), and so the
  worker's drain rate, which is what bounds an import end to end.

Figures go to `bench-results/import_million.json`. Everything the run created is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    Child,
    Isolation,
    machine_info,
    process_env,
    write_json,
)
from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.lag import group_lag
from service.client import OptoutClient
from service.settings import Settings

_FIRST_CREATED = 1_700_000_000  # 2023-11-14: SendGrid exports Unix seconds
_POLL_SECONDS = 0.2
_GIVE_UP_SECONDS = 3_600.0


def write_export(path: Path, rows: int) -> str:
    """A SendGrid global unsubscribes export; returns the last row's subject id."""
    with path.open("w", encoding="utf-8") as out:
        out.write("email,created\n")
        for i in range(rows):
            out.write(f"User.{i}@Example.com,{_FIRST_CREATED + i % 86_400}\n")
    return f"email:user.{rows - 1}@example.com"


async def total_lag(settings: Settings) -> int:
    rows = await group_lag(
        KafkaConnection(settings.kafka_bootstrap), settings.consumer_group, settings.topic_commands
    )
    return sum(r.lag_records for r in rows)


async def run(rows: int, say: Any = print) -> dict[str, Any]:
    base = Settings()
    isolation = Isolation(uuid.uuid4().hex[:10])
    settings = isolation.service_settings(base)
    machine = await machine_info(base)
    work = Path(tempfile.mkdtemp(prefix="optout-import-bench-"))
    export = work / "global_unsubscribes.csv"
    last_subject = write_export(export, rows)
    say(f"wrote {rows:,} rows to {export}")
    env = process_env(settings)
    worker: Child | None = None
    lag_samples: list[tuple[float, int]] = []
    try:
        await isolation.prepare_schema(settings)
        worker = await Child.start(
            "import-worker", ("-m", "service.entrypoints.cli", "worker"), env
        )
        await worker.wait_assigned(120)
        say("worker assigned; importing")
        started = time.perf_counter()
        importer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.entrypoints.cli",
            "import",
            str(export),
            "--json",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await importer.communicate()
        imported_at = time.perf_counter() - started
        if importer.returncode != 0:
            raise RuntimeError(f"optout import exited {importer.returncode}: {err.decode()[-500:]}")
        summary = json.loads(out)
        say(f"import done in {imported_at:.1f} s: {summary}")

        visible_at: float | None = None
        drained_at: float | None = None
        async with await OptoutClient.connect(settings, local_cache=False) as sdk:
            next_lag = 0.0
            while time.perf_counter() - started < _GIVE_UP_SECONDS:
                now = time.perf_counter() - started
                if visible_at is None:
                    answer = await sdk.is_allowed(last_subject, "marketing.newsletter", "email")
                    if not answer.allowed:
                        visible_at = now
                        say(f"last row sender-visible at {visible_at:.1f} s")
                if now >= next_lag:
                    lag = await total_lag(settings)
                    lag_samples.append((round(now, 1), lag))
                    next_lag = now + 1.0
                    if lag == 0:
                        drained_at = now
                        say(f"worker drained at {drained_at:.1f} s")
                if visible_at is not None and drained_at is not None:
                    break
                await asyncio.sleep(_POLL_SECONDS)
        if visible_at is None or drained_at is None:
            raise RuntimeError("the import did not become visible within the hour")
    finally:
        if worker is not None:
            await worker.stop()
        problems = await isolation.cleanup(settings)
        if problems:
            say(f"cleanup incomplete: {problems}")
        shutil.rmtree(work, ignore_errors=True)  # the export and its checkpoint
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    document: dict[str, Any] = {
        "benchmark": "import_million",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "rows": rows,
        "format": "sendgrid (email,created)",
        "import": {
            "rows_per_s": summary["rows_per_second"],
            "seconds": summary["seconds"],
            "wall_s_with_start_up": round(imported_at, 1),
            "sent": summary["sent"],
            "rejected": summary["rejected"],
        },
        "last_row_sender_visible_s": round(visible_at, 1),
        "worker_drained_s": round(drained_at, 1),
        "worker_rows_per_s": round(rows / drained_at, 0),
        "lag_samples": lag_samples,
        "settings": {
            "topic_partitions": settings.topic_partitions,
            "batch_max_records": settings.batch_max_records,
            "worker_lanes": settings.worker_lanes,
        },
    }
    write_json(RESULTS_DIR / "import_million.json", document)
    say(
        f"{rows:,} rows: import {summary['rows_per_second']:,.0f} rows/s "
        f"({summary['seconds']:.1f} s; {imported_at:.1f} s with start-up); last row "
        f"sender-visible after {visible_at:.1f} s; worker drained after {drained_at:.1f} s "
        f"({rows / drained_at:,.0f} rows/s)"
    )
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the export")
    args = parser.parse_args()
    asyncio.run(run(args.rows))


if __name__ == "__main__":
    main()
