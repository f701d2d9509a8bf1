"""Where a worker's time goes while it drains a backlog: py-spy, stage by stage.

    python -m benchmarks.profile_worker [--commands 30000] [--py-spy PATH]

Loads a backlog of generated commands into topics and a schema of the run's own, starts
`optout worker` under py-spy (a sampling profiler: the worker runs unmodified; install it
with `pip install py-spy`, it is not a dependency of the service), waits until every command
is in the processed log, and prints the steady-state share of each stage of the pipeline
(start-up imports and idle threads left out) and the functions with the most own time.
The raw stacks stay in bench-results/profile-worker.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg

from benchmarks.common import RESULTS_DIR, CommandGenerator, Isolation, preload, process_env
from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.bootstrap import contract_topics
from service.settings import Settings

STAGES = (
    ("decode (bytes -> pydantic -> domain)", "ProcessCommands._decode"),
    ("core: apply_batch (pure domain)", "apply_batch"),
    ("encode outputs (orjson)", "encode_outputs"),
    ("PostgreSQL: load (client side)", "PostgresCommandUnitOfWork.load"),
    ("PostgreSQL: save (client side)", "PostgresCommandUnitOfWork.save"),
    ("Redis write-through", "RedisStateCache.write"),
    ("Kafka publish (aiokafka producer)", "ContractPublisher.publish"),
    ("consumer loop, offsets, gap check", "register_worker.<locals>.on_batch"),
)
_IDLE = ("_find_and_load", "Condition.wait", "WorkerThread")
OPTOUT = str(Path(sys.executable).with_name("optout"))


def summarise(raw: str) -> str:
    total = 0
    stages: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or any(marker in stack for marker in _IDLE):
            continue
        samples = int(count)
        total += samples
        # A sample counts for the first stage it shows, the consumer loop last: the
        # pipeline's second stage runs inside the consumer's callback.
        for name, marker in STAGES:
            if marker in stack:
                stages[name] += samples
                break
        frame = stack.split(";")[-1]
        where = frame.split("(")[-1].split(":")[0].rsplit("/", 1)[-1]
        own[f"{frame.split(' (')[0]} ({where})"] += samples
    lines = [f"samples of the worker's thread after start-up: {total}"]
    lines += [f"{100 * stages[name] / total:5.1f}%  {name}" for name, _ in STAGES]
    lines += ["", "functions with the most own time:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(20)]
    return "\n".join(lines)


async def profile(commands: int, py_spy: str) -> str:
    isolation = Isolation(uuid.uuid4().hex[:8])
    settings = isolation.service_settings(Settings())
    await isolation.prepare_schema(settings)
    await ensure_topics(KafkaConnection(settings.kafka_bootstrap), contract_topics(settings))
    generator = CommandGenerator(100_000, 1)
    await preload(
        settings.kafka_bootstrap,
        settings.topic_commands,
        [generator.next()[1:] for _ in range(commands)],
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "profile-worker.txt"
    worker = subprocess.Popen(  # noqa: ASYNC220 (the process under test, watched below)
        [py_spy, "record", "-r", "250", "-f", "raw", "-o", str(out), "--", OPTOUT, "worker"],
        env={**os.environ, **process_env(settings)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = await asyncpg.connect(settings.database_dsn)
    started = time.perf_counter()
    try:
        done = 0
        while done < commands:
            await asyncio.sleep(0.5)
            try:
                done = await conn.fetchval(
                    f'SELECT count(*) FROM "{settings.database_schema}".processed_commands'
                )
            except asyncpg.UndefinedTableError:
                continue
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
        worker.send_signal(signal.SIGINT)  # py-spy writes its file, then the worker stops
        await asyncio.to_thread(worker.wait, 60)
        await isolation.cleanup(settings)
    summary = summarise(out.read_text())
    return f"{commands} commands in {seconds:.1f} s under the profiler\n{summary}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=30_000)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    args = parser.parse_args()
    print(asyncio.run(profile(args.commands, args.py_spy)))


if __name__ == "__main__":
    main()
