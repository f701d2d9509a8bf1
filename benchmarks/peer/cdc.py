"""Change data capture: the time from a committed row to its Kafka event being consumed.

Single-row updates are committed at a fixed rate (an absolute schedule, as in the service's
latency phase), each writing a fresh ``command_id`` into a preference row; the Debezium
PostgreSQL source (pgoutput) turns each into an event, and a consumer in this process stamps
its arrival. Commit and arrival are read from one monotonic clock, so the figure is exact to
the event loop's wake-ups: from the moment the commit is acknowledged to the client to the
moment the event is in the consumer's hands. The transaction's own commit time, as the
event's ``source.ts_ms`` gives it, is kept as a cross-check (wall clock, milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import CpuWindow
from benchmarks.peer.connect import ConnectError, ConnectWorker
from benchmarks.peer.logical_postgres import LogicalPostgres
from benchmarks.peer.records import TABLE_COLUMNS, latency_summary

ROWS = 1_000
# Connections committing side by side: enough for PostgreSQL to group their WAL flushes when
# one flush takes longer than the interval between two updates.
CONNECTIONS = 16
_UPDATE = (
    "UPDATE preferences SET action = $1, occurred_at = now(), command_id = $2 "
    "WHERE subject_id = $3 AND topic = 'marketing' AND channel = 'email'"
)


@dataclass(frozen=True)
class CdcVariant:
    """Debezium as shipped, or tuned for latency: its change queue polled every 5 ms instead
    of 500 ms and the producer sending at once instead of lingering 5 ms for a batch."""

    name: str
    tuned: bool


@dataclass(frozen=True)
class CdcLoad:
    rate: float
    seconds: float
    warmup_s: float


def source_config(
    variant: CdcVariant, pg: LogicalPostgres, prefix: str, slot: str
) -> dict[str, str]:
    config = {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": "127.0.0.1",
        "database.port": str(pg.port),
        "database.user": "postgres",
        "database.password": "postgres",  # trust authentication: any password is accepted
        "database.dbname": "postgres",
        "topic.prefix": prefix,
        "table.include.list": "public.preferences",
        "slot.name": slot,
        "publication.name": slot,
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": "no_data",
        # Events as a consumer of an outbox would want them: plain JSON, no schema envelope.
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
    }
    if variant.tuned:
        config["poll.interval.ms"] = "5"
        config["producer.override.linger.ms"] = "0"
    return config


class _EventReader:
    """Follows the connector's topic; stamps each event by the command id it carries."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._tp = TopicPartition(topic, 0)
        self._task: asyncio.Task[None] | None = None
        self.arrivals: dict[str, float] = {}
        self.source_lag_ms: dict[str, float] = {}

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign([self._tp])
        await self._consumer.seek_to_beginning(self._tp)
        await self._consumer.position(self._tp)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            now, wall_ms = time.perf_counter(), time.time() * 1000
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    doc = orjson.loads(record.value)
                    after = doc.get("after") or {}
                    command_id = after.get("command_id")
                    if isinstance(command_id, str) and command_id not in self.arrivals:
                        self.arrivals[command_id] = now
                        ts_ms = (doc.get("source") or {}).get("ts_ms")
                        if isinstance(ts_ms, int):
                            self.source_lag_ms[command_id] = wall_ms - ts_ms

    async def wait_for(self, ids: list[str], *, idle_s: float) -> bool:
        """Until every id has arrived; False after ``idle_s`` without a new arrival."""
        last_count, last_change = -1, time.monotonic()
        while True:
            missing = sum(1 for i in ids if i not in self.arrivals)
            if missing == 0:
                return True
            if len(self.arrivals) != last_count:
                last_count, last_change = len(self.arrivals), time.monotonic()
            elif time.monotonic() - last_change > idle_s:
                return False
            if self._task is not None and self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


async def prepare_table(pg: LogicalPostgres) -> None:
    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS preferences ({TABLE_COLUMNS})")
        await conn.execute(
            "INSERT INTO preferences SELECT 'user-' || i, 'marketing', 'email', 'opt_in', now(), "
            "'seed' FROM generate_series(0, $1 - 1) AS i ON CONFLICT DO NOTHING",
            ROWS,
        )
    finally:
        await conn.close()


async def _until_streaming(
    pool: asyncpg.Pool, reader: _EventReader, worker: ConnectWorker, name: str, within_s: float
) -> float:
    """Commit probe updates until one comes out as an event: the connector then streams."""
    started = time.monotonic()
    probe = 0
    while time.monotonic() - started < within_s:
        probe_id = f"probe-{probe}"
        await pool.execute(_UPDATE, "opt_in", probe_id, "user-0")
        for _ in range(10):
            if reader.arrivals:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        if failure := await worker.failed(name):
            raise ConnectError(f"CDC connector {name} failed with {failure}")
        probe += 1
    raise ConnectError(f"CDC connector {name} produced no event within {within_s:g} s")


async def measure(
    worker: ConnectWorker,
    pg: LogicalPostgres,
    *,
    variant: CdcVariant,
    name: str,
    prefix: str,
    bootstrap: str,
    load: CdcLoad,
    say: Callable[[str], None],
) -> dict[str, Any]:
    topic = f"{prefix}.public.preferences"
    reader = _EventReader(bootstrap, topic)
    await reader.start()
    pool = await asyncpg.create_pool(pg.dsn, min_size=CONNECTIONS, max_size=CONNECTIONS)
    assert pool is not None
    assert worker.proc is not None
    committed: dict[str, float] = {}
    sent: dict[str, float] = {}
    try:
        await worker.create(name, source_config(variant, pg, prefix, name.replace("-", "_")))
        ready_s = await _until_streaming(pool, reader, worker, name, within_s=120)
        total = int(load.rate * (load.warmup_s + load.seconds))
        warmup = int(load.rate * load.warmup_s)
        ids = [f"{name}-{i}" for i in range(total)]

        async def commit(i: int) -> None:
            command_id = ids[i]
            sent[command_id] = time.perf_counter()
            await pool.execute(
                _UPDATE, "opt_out" if i % 2 else "opt_in", command_id, f"user-{i % ROWS}"
            )
            committed[command_id] = time.perf_counter()

        with CpuWindow(worker.proc.pid) as cpu:
            pending: set[asyncio.Task[None]] = set()
            start = time.perf_counter() + 0.05
            i = 0
            while i < total:
                due = min(total, int((time.perf_counter() - start) * load.rate) + 1)
                while i < due:
                    task = asyncio.create_task(commit(i))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    i += 1
                await asyncio.sleep(max(0.0, start + i / load.rate - time.perf_counter()))
            last_due = time.perf_counter()
            await asyncio.gather(*pending)
            measured = ids[warmup:]
            complete = await reader.wait_for(measured, idle_s=15)
    finally:
        await worker.delete(name)
        await pool.close()
        await reader.stop()
    samples = [(reader.arrivals[c] - committed[c]) * 1000 for c in measured if c in reader.arrivals]
    from_update = [(reader.arrivals[c] - sent[c]) * 1000 for c in measured if c in reader.arrivals]
    source_lag = [reader.source_lag_ms[c] for c in measured if c in reader.source_lag_ms]
    commit_ms = [(committed[c] - sent[c]) * 1000 for c in measured]
    duration = last_due - start
    acks = sorted(committed[c] for c in measured)
    commit_span = acks[-1] - acks[0] if len(acks) > 1 else 0.0
    figures: dict[str, Any] = {
        "variant": variant.name,
        "settings": {
            "plugin.name": "pgoutput",
            "snapshot.mode": "no_data",
            "poll.interval.ms": 5 if variant.tuned else "default (500)",
            "producer.linger.ms": 0 if variant.tuned else "default (5)",
        },
        "target_rate_per_s": load.rate,
        "scheduled_rate_per_s": round(total / duration, 1) if duration > 0 else None,
        # Below the target when PostgreSQL cannot commit that fast (the disk is shared):
        # updates then queue for a connection, which commit_ms shows.
        "committed_rate_per_s": (
            round((len(acks) - 1) / commit_span, 1) if commit_span > 0 else None
        ),
        "warmup_updates_excluded": warmup,
        "updates_measured": len(measured),
        "events_matched": len(samples),
        "missing": len(measured) - len(samples),
        "complete": complete,
        "connector_start_to_first_event_s": round(ready_s, 2),
        "commit_to_event_ms": latency_summary(samples),
        "update_sent_to_event_ms": latency_summary(from_update),
        "update_sent_to_commit_ms": latency_summary(commit_ms),
        "source_ts_to_event_ms_wall_clock": latency_summary(source_lag),
        "cpu": cpu.result,
        # Connect's CPU per event (all updates of the phase, warm-up included).
        "connect_cpu_ms_per_event": round(
            cpu.result["process_under_test_cpu_s"] * 1000 / max(1, len(reader.arrivals)), 3
        ),
    }
    c2e = figures["commit_to_event_ms"]
    say(
        f"[peer] CDC {variant.name} at {load.rate:g}/s: commit->event p50 {c2e.get('p50')} / "
        f"p99 {c2e.get('p99')} / max {c2e.get('max')} ms; {figures['missing']} missing; "
        f"{figures['committed_rate_per_s']} commits/s"
    )
    return figures
