"""A large suppression list through `optout import`, with a worker applying it.

`python -m benchmarks.import_million --rows 1000000` writes a SendGrid global-unsubscribe
export of that many distinct addresses, starts a worker (its own OS process, on this run's
own topics, schema, Redis prefix and consumer group), and runs `optout import` as an
operator would. It reports:

- the import's own rate (rows read, mapped and acknowledged by Kafka per second, from its
  summary) and its wall time including process start-up;
- the time from starting the import until the file's last row is sender-visible: the read
  path (Redis, as the HTTP check and the SDK read it) answers "no" for its subject;
- the time until the worker has applied every row (the group's lag back to zero on both
  command topics), and so the worker's drain rate, which is what bounds an import end to end.

With ``--live-rate 200`` it measures too what the import costs live traffic: live commands
at that rate on the live commands topic for ``--live-seconds``, each stamped when sent, with
a sender's SDK reporting when it first answers "no" for each opt-out (as ``make bench``'s
latency phase does), once on the idle worker before the import and once while the import is
sent and drained (the import goes to the bulk lane, README "The bulk lane"). The document
then holds both phases and the ratio of their sender-visible p50 and p99. The import's drain
rate alone is the same command without ``--live-rate``.

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

from pydantic import SecretStr

from benchmarks.common import (
    RESULTS_DIR,
    Child,
    Isolation,
    machine_info,
    process_env,
    python_argv,
    write_json,
)
from benchmarks.latency import SenderProcess, service_at
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
    """The group's lag over both command topics: the import is on the bulk lane's."""
    kafka = KafkaConnection(settings.kafka_bootstrap)
    total = 0
    for topic in (settings.topic_commands, settings.commands_bulk_topic):
        rows = await group_lag(kafka, settings.consumer_group, topic)
        total += sum(r.lag_records for r in rows)
    return total


_LIVE_SUBJECTS = 10_000
_LIVE_WARMUP_S = 2.0


async def live_phase(
    settings: Settings,
    worker: Child,
    sender: SenderProcess,
    rate: float,
    seconds: float,
    *,
    seed: int,
) -> dict[str, Any]:
    """Live commands at `rate` (new command ids per `seed`: a phase never repeats one)."""
    figures, _ = await service_at(
        settings,
        [worker],
        sender,
        rate,
        seconds,
        _LIVE_WARMUP_S,
        subjects=_LIVE_SUBJECTS,
        seed=seed,
    )
    return figures


def _ratios(alone: dict[str, Any], during: dict[str, Any]) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        a = alone["produce_to_sender_no"].get(key)
        d = during["produce_to_sender_no"].get(key)
        return round(d / a, 2) if a and d is not None else None

    return {"sender_p50": ratio("p50_ms"), "sender_p99": ratio("p99_ms")}


async def run(
    rows: int, say: Any = print, *, live_rate: float = 0.0, live_seconds: float = 20.0
) -> dict[str, Any]:
    base = Settings()
    isolation = Isolation(uuid.uuid4().hex[:10])
    settings = isolation.service_settings(base)
    if not settings.identifier_key.get_secret_value():
        # `optout import` keys its command ids under the service's key (README): this run's
        # worker and importer share one of their own.
        settings = settings.model_copy(update={"identifier_key": SecretStr(uuid.uuid4().hex * 2)})
    machine = await machine_info(base)
    work = Path(tempfile.mkdtemp(prefix="optout-import-bench-"))
    export = work / "global_unsubscribes.csv"
    last_subject = write_export(export, rows)
    say(f"wrote {rows:,} rows to {export}")
    env = process_env(settings)
    worker: Child | None = None
    sender: SenderProcess | None = None
    live: dict[str, Any] = {}
    lag_samples: list[tuple[float, int]] = []
    try:
        await isolation.prepare_schema(settings)
        worker = await Child.start(
            "import-worker", python_argv("-m", "service.entrypoints.cli", "worker"), env
        )
        await worker.wait_assigned(120)
        if live_rate:
            sender = await SenderProcess.start(env)
            say(f"live commands at {live_rate:g}/s for {live_seconds:g} s, no import")
            live["alone"] = await live_phase(
                settings, worker, sender, live_rate, live_seconds, seed=1
            )
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
        finished: list[float] = []

        async def send_all() -> tuple[bytes, bytes]:
            out, err = await importer.communicate()
            finished.append(time.perf_counter() - started)
            return out, err

        sending = asyncio.create_task(send_all())

        async def watch() -> tuple[float | None, float | None]:
            """From the import's start: when its last row is sender-visible, and when the
            group's lag is back to zero after the importer finished (both polled)."""
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
                        if lag == 0 and sending.done():
                            drained_at = now
                            say(f"worker drained at {drained_at:.1f} s")
                    if visible_at is not None and drained_at is not None:
                        break
                    await asyncio.sleep(_POLL_SECONDS)
            return visible_at, drained_at

        watching = asyncio.create_task(watch())
        if sender is not None:
            say(f"live commands at {live_rate:g}/s for {live_seconds:g} s during the import")
            live["during_import"] = await live_phase(
                settings, worker, sender, live_rate, live_seconds, seed=2
            )
            live["ratio_during_to_alone"] = _ratios(live["alone"], live["during_import"])
            say(f"live during the import / alone: {live['ratio_during_to_alone']}")
        out, err = await sending
        imported_at = finished[0]
        if importer.returncode != 0:
            watching.cancel()
            raise RuntimeError(f"optout import exited {importer.returncode}: {err.decode()[-500:]}")
        summary = json.loads(out)
        say(f"import done in {imported_at:.1f} s: {summary}")
        visible_at, drained_at = await watching
        if visible_at is None or drained_at is None:
            raise RuntimeError("the import did not become visible within the hour")
    finally:
        if sender is not None:
            await sender.stop()
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
        "live": live,
        "settings": {
            "topic_partitions": settings.topic_partitions,
            "batch_max_records": settings.batch_max_records,
            "worker_lanes": settings.worker_lanes,
            "bulk_max_records_per_batch": settings.bulk_max_records_per_batch,
            "live_rate_per_s": live_rate,
            "live_seconds": live_seconds if live_rate else 0,
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
    parser.add_argument(
        "--live-rate",
        type=float,
        default=0.0,
        help="live commands per second, measured alone and during the import (0: none)",
    )
    parser.add_argument(
        "--live-seconds", type=float, default=20.0, help="length of each live phase"
    )
    args = parser.parse_args()
    asyncio.run(run(args.rows, live_rate=args.live_rate, live_seconds=args.live_seconds))


if __name__ == "__main__":
    main()
