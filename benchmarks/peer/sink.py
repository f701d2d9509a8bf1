"""The JDBC sink draining a backlog: records and commands per second, and what it left.

Each trial adds a fresh connector (so a fresh consumer group, reading from the start) that
upserts into a table of its own. The drain runs from the moment the first task got its
partitions (as the service's drain runs from its assignment) until the group's committed
offsets reach the end of every partition. Connect commits sink offsets every 100 ms here
(``offset.flush.interval.ms``), and the offsets are read every 100 ms, so the end is seen
at most about 0.2 s late. Afterwards every row is checked against the last write per key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks.common import CpuWindow
from benchmarks.peer.connect import ConnectError, ConnectWorker
from benchmarks.peer.records import KEY_FIELDS, TABLE_COLUMNS, Key

POLL_S = 0.1
# Give up when the committed offsets have not moved for this long (a stuck or dead task).
STALL_S = 60.0


@dataclass(frozen=True)
class SinkTrial:
    tasks: int
    batch_size: int
    # Debezium's PostgreSQL-only bulk path: one INSERT ... SELECT FROM unnest(arrays) per
    # batch instead of a JDBC batch of single-row statements. It needs the reduction buffer
    # (one record per key per batch), or PostgreSQL refuses to upsert a row twice in one
    # statement.
    unnest: bool = False

    @property
    def label(self) -> str:
        suffix = ", unnest" if self.unnest else ""
        return f"{self.tasks} task(s), batch {self.batch_size}{suffix}"


@dataclass(frozen=True)
class Backlog:
    topic: str
    partitions: int
    commands: int
    records: int
    expected: dict[Key, str]


def jdbc_target(database_dsn: str) -> tuple[str, str, str]:
    """(JDBC URL, user, password) for a ``postgresql://user:password@host:port/db`` DSN."""
    parts = urlsplit(database_dsn)
    url = f"jdbc:postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"
    return url, parts.username or "", parts.password or ""


def sink_config(trial: SinkTrial, topic: str, table: str, database_dsn: str) -> dict[str, str]:
    url, user, password = jdbc_target(database_dsn)
    config = {
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": str(trial.tasks),
        "topics": topic,
        "connection.url": url,
        "connection.username": user,
        "connection.password": password,
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": ",".join(KEY_FIELDS),
        "schema.evolution": "none",
        "collection.name.format": table,
        "batch.size": str(trial.batch_size),
        # Connect's consumer hands the task at most this many records per put().
        "consumer.override.max.poll.records": str(trial.batch_size),
    }
    if trial.unnest:
        config["dialect.postgres.unnest.insert.enabled"] = "true"
        config["use.reduction.buffer"] = "true"
    return config


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp: int(offset) for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def _committed(admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition]) -> int:
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    return sum(max(0, int(meta.offset)) for meta in offsets.values())


async def _verify(database_dsn: str, table: str, expected: dict[Key, str]) -> dict[str, int]:
    conn = await asyncpg.connect(database_dsn)
    try:
        rows = await conn.fetch(f"SELECT subject_id, topic, channel, command_id FROM {table}")
    finally:
        await conn.close()
    wrong = sum(
        1
        for r in rows
        if expected.get((r["subject_id"], r["topic"], r["channel"])) != r["command_id"]
    )
    return {"rows": len(rows), "rows_expected": len(expected), "rows_not_last_write": wrong}


async def run_trial(
    worker: ConnectWorker,
    *,
    name: str,
    trial: SinkTrial,
    backlog: Backlog,
    table: str,
    bootstrap: str,
    database_dsn: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute(f"CREATE TABLE {table} ({TABLE_COLUMNS})")
    finally:
        await conn.close()
    ends = await end_offsets(bootstrap, backlog.topic, backlog.partitions)
    total = sum(ends.values())
    tps = list(ends)
    group = f"connect-{name}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    assert worker.proc is not None
    seen_before = len(worker.assignments)
    try:
        created = time.perf_counter()
        with CpuWindow(worker.proc.pid) as cpu:
            await worker.create(name, sink_config(trial, backlog.topic, table, database_dsn))
            committed, moved_at = 0, created
            first_progress: float | None = None
            first_committed = 0
            while committed < total:
                await asyncio.sleep(POLL_S)
                now = time.perf_counter()
                progress = await _committed(admin, group, tps)
                if progress > committed:
                    if first_progress is None:
                        first_progress, first_committed = now, progress
                    committed, moved_at = progress, now
                elif now - moved_at > STALL_S:
                    failure = await worker.failed(name)
                    raise ConnectError(
                        f"sink {name} stalled at {committed}/{total} records"
                        + (f": task failed with {failure}" if failure else "")
                        + f" (see {worker.log_path})"
                    )
            done = time.perf_counter()
    finally:
        await admin.close()
        await worker.delete(name)
    assigned = [
        stamp for stamp, line in worker.assignments[seen_before:] if f"consumer-{name}-" in line
    ]
    start = assigned[0] if assigned else created
    drain_s = done - start
    figures: dict[str, Any] = {
        **asdict(trial),
        "label": trial.label,
        "commands": backlog.commands,
        "records": total,
        "drain_s": round(drain_s, 3),
        "records_per_s": round(total / drain_s, 1),
        "commands_per_s": round(backlog.commands / drain_s, 1),
        "creation_to_assignment_s": round(start - created, 3) if assigned else None,
        "first_commit_after_assignment_s": (
            round(first_progress - start, 3) if first_progress is not None else None
        ),
        # Past the first put() (JIT, prepared statements, table metadata): the steady rate.
        "records_per_s_after_first_commit": (
            round((total - first_committed) / (done - first_progress), 1)
            if first_progress is not None and done > first_progress
            else None
        ),
        "cpu": cpu.result,
        "connect_cpu_us_per_record": round(
            cpu.result["process_under_test_cpu_s"] * 1e6 / max(1, total), 1
        ),
        **await _verify(database_dsn, table, backlog.expected),
    }
    say(
        f"[peer] sink {trial.label}: {figures['records_per_s']:,.0f} records/s, "
        f"{figures['commands_per_s']:,.0f} commands/s ({figures['drain_s']} s); "
        f"{figures['rows_not_last_write']} of {figures['rows']} rows not the last write"
    )
    return figures
