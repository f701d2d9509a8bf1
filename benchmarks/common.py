"""Shared plumbing of the benchmarks: isolation, load, child processes, statistics.

Every benchmark run gets its own topics, PostgreSQL schema, Redis prefix and consumer group
(as the integration tests do), so it can run beside the tests and other engineers' work on
one shared stack, and it removes all of them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from benchmarks.seed import subject_name
from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import KafkaTopic, ensure_topics
from service.adapters.postgres.migrator import migrate
from service.settings import Settings

RESULTS_DIR = Path("bench-results")

# The shipped catalog without the mandatory topics (an opt-out of those is rejected, which
# is not the write path being measured). Data-use topics take channel "*" only.
_MESSAGE_TOPICS = (
    "marketing",
    "marketing.newsletter",
    "marketing.promotions",
    "product",
    "product.updates",
    "product.tips",
    "reminders",
)
_DATA_TOPICS = ("data.analytics", "data.personalization", "data.sale")
_CHANNELS = ("email", "sms", "push", "in_app", "voice", "whatsapp")
_SOURCES = ("web", "mobile", "api", "email", "sms")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- load ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One generated command: its id, key and value as produced, and whether it opts out of
    something (those are the commands a sender must stop for)."""

    command_id: bytes
    key: bytes
    value: bytes
    opts_out: bool


class CommandGenerator:
    """Contract-v1 commands with a realistic mix, reproducible from a seed.

    Subjects are drawn uniformly from the first ``subjects`` benchmark subjects
    (``seed.subject_name``), one to three changes each, mostly opt-outs on catalog topics
    and channels, a few universal ``*`` statements and data-use opt-outs, every command
    dated "now" so that it is applied (not ``unchanged``) and produces an event.
    """

    def __init__(self, subjects: int, seed: int) -> None:
        self._subjects = subjects
        self._rng = random.Random(seed)

    def _change(self) -> dict[str, str]:
        rng = self._rng
        action = "opt_out" if rng.random() < 0.7 else "opt_in"
        roll = rng.random()
        if roll < 0.1:
            return {"action": action, "topic": rng.choice(_DATA_TOPICS), "channel": "*"}
        if roll < 0.15:
            return {"action": action, "topic": "*", "channel": rng.choice(_CHANNELS)}
        channel = "*" if roll < 0.2 else rng.choice(_CHANNELS)
        return {"action": action, "topic": rng.choice(_MESSAGE_TOPICS), "channel": channel}

    def command(self) -> Command:
        rng = self._rng
        command_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        subject = subject_name(rng.randrange(self._subjects))
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        changes = [self._change() for _ in range(rng.choice((1, 1, 2, 3)))]
        doc: dict[str, Any] = {
            "command_id": command_id,
            "subject_id": subject,
            "occurred_at": now,
            "source": {
                "channel": rng.choice(_SOURCES),
                "app": "bench",
                "ip": "203.0.113.7",
                "user_agent": "Mozilla/5.0 (bench)",
            },
            "changes": changes,
        }
        if rng.random() < 0.2:
            doc["reason"] = "too many messages"
        return Command(
            command_id.encode(),
            subject.encode(),
            orjson.dumps(doc),
            any(c["action"] == "opt_out" for c in changes),
        )

    def next(self) -> tuple[str, bytes, bytes]:
        """One command as (command_id, key, value bytes)."""
        c = self.command()
        return c.command_id.decode(), c.key, c.value


async def preload(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Write a backlog as fast as possible (batched, lingering); returns seconds taken.

    Only the backlog is written this way; the latency phase uses an upstream-like producer.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# --- reading outputs -------------------------------------------------------------------


class OutputReader:
    """Follows one output topic from a given point and stamps each record on arrival.

    It runs in the load generator's process so that produce and arrival times come from one
    monotonic clock. ``match`` turns a record into the command id it answers (or None).
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._bootstrap = bootstrap
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.arrivals: dict[bytes, float] = {}
        self.records = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.changed = asyncio.Event()
        self.key_of: Callable[[Any], bytes | None] | None = None  # record -> its command id

    async def start(self, *, from_end: bool) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False
        )
        await self._consumer.start()
        self._consumer.assign(self._tps)
        if from_end:
            await self._consumer.seek_to_end(*self._tps)
        else:
            await self._consumer.seek_to_beginning(*self._tps)
        for tp in self._tps:  # resolve the positions now, before anything is produced
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self._consumer is not None
        key_of = self.key_of
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    self.records += 1
                    ident = key_of(r) if key_of is not None else None
                    if ident is not None and ident not in self.arrivals:
                        self.arrivals[ident] = now
            if batch:
                if self.first_at is None:
                    self.first_at = now
                self.last_at = now
                self.changed.set()

    async def wait_until(self, predicate: Callable[[], bool], *, idle_s: float) -> bool:
        """Wait for ``predicate()``; give up after ``idle_s`` without any new record."""
        while not predicate():
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), idle_s)
            except TimeoutError:
                return predicate()
            if self._task is not None and self._task.done():
                self._task.result()
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def command_id_in_value(record: Any) -> bytes | None:
    """The command id carried by an event or by a passed-through command document."""
    try:
        doc = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    cid = doc.get("command_id") if isinstance(doc, dict) else None
    return cid.encode() if isinstance(cid, str) else None


def outcome_reader_key(statuses: dict[bytes, str]) -> Callable[[Any], bytes | None]:
    """``command_id_in_value`` for outcomes, also noting each command's status."""

    def key_of(record: Any) -> bytes | None:
        try:
            doc = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("command_id"), str):
            return None
        cid: bytes = doc["command_id"].encode()
        statuses.setdefault(cid, str(doc.get("status")))
        return cid

    return key_of


# --- child processes -------------------------------------------------------------------


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process use exactly these isolated settings."""
    env = {**os.environ, **settings.as_environment(), "OPTOUT_LOG_FORMAT": "json"}
    env.update(extra)
    return env


def worker_argv() -> list[str]:
    """``optout worker`` from this virtualenv (its console script, else the module)."""
    script = Path(sys.executable).with_name("optout")
    if script.exists() and os.environ.get("BENCH_PROFILE") != "1":
        return [str(script), "worker"]
    return [sys.executable, "-m", "service.entrypoints.cli", "worker"]


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


@dataclass
class Child:
    """A worker or passthrough process, with its JSON log lines read as they come.

    The process under test runs apart from the load generator so the two do not share one
    Python thread (and one GIL): that would charge the generator's work to the service.
    """

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    assigned_at: float | None = None
    assigned: asyncio.Event = field(default_factory=asyncio.Event)
    # Every assignment the process logged: (arrival time here, partitions).
    assignments: list[tuple[float, list[int]]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "start"
    peak_rss_bytes: int | None = None
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        log_path = _log_path(name)
        if os.environ.get("BENCH_PROFILE") == "1" and argv[0] == sys.executable:
            # Opt-in: cProfile slows the process down, the figures are not comparable.
            argv = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(log_path.with_suffix(".prof")),
                *argv[1:],
            ]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        child = cls(name, proc, log_path)
        child._reader = asyncio.create_task(child._read_log())
        return child

    async def _read_log(self) -> None:
        assert self.proc.stderr is not None
        with self.log_path.open("wb") as out:
            while line := await self.proc.stderr.readline():
                out.write(line)
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(doc, dict):
                    continue
                event = doc.get("event")
                if event == "partitions_assigned":
                    now = time.perf_counter()
                    partitions = doc.get("partitions")
                    self.assignments.append(
                        (now, list(partitions) if isinstance(partitions, list) else [])
                    )
                    if self.assigned_at is None:
                        self.assigned_at = now
                        self.assigned.set()
                elif event == "batch":
                    doc["phase"] = self.phase
                    self.batches.append(doc)

    def holds(self) -> list[int]:
        """The partitions of the latest assignment logged (empty before any)."""
        return self.assignments[-1][1] if self.assignments else []

    async def wait_assigned(self, within_s: float) -> float:
        waiter = asyncio.create_task(self.assigned.wait())
        exited = asyncio.create_task(self.proc.wait())
        await asyncio.wait({waiter, exited}, timeout=within_s, return_when="FIRST_COMPLETED")
        waiter.cancel()
        exited.cancel()
        if self.assigned_at is None:
            raise RuntimeError(f"{self.name} got no partitions (see {self.log_path})")
        return self.assigned_at

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def rss_bytes(self) -> int | None:
        return process_memory(self.proc.pid).get("VmRSS")

    async def stop(self) -> None:
        """SIGTERM (a clean stop: finish the batch, commit), SIGKILL if that takes too long.

        The peak resident size (``VmHWM``) is read just before, while the process exists.
        """
        if self.proc.returncode is None:
            self.peak_rss_bytes = process_memory(self.proc.pid).get("VmHWM")
        await end_process(self.proc, self._reader, grace_seconds=30)


def process_memory(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) of a process, in bytes."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(rest.split()[0]) * 1024
    return found


def _log_path(name: str) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    return RESULTS_DIR / f"{name}.log"


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / ticks, sum(values) / ticks


def _server_of(pid: str) -> str | None:
    """Which of the stack's servers a process is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    program = argv[0].rsplit(b"/", 1)[-1]
    if program.startswith(b"postgres"):
        return "postgresql"
    if program.startswith(b"redis-server"):
        return "redis"
    if program == b"java" and b"kafka.Kafka" in argv:
        return "kafka"
    return None


def server_cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every PostgreSQL, Redis and Kafka process on the machine."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (server := _server_of(entry.name)) is not None:
            found[int(entry.name)] = (server, process_cpu_seconds(int(entry.name)))
    return found


@dataclass
class CpuWindow:
    """CPU used during one measured phase: by the processes under test, by this load
    generator, and by the whole machine (the rest is Kafka, PostgreSQL, Redis and
    whatever else runs on the machine)."""

    child_pids: int | Sequence[int]  # one process under test, or several
    started: float = 0.0
    child0: float = 0.0
    self0: float = 0.0
    busy0: float = 0.0
    servers0: dict[int, tuple[str, float]] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    def _children(self) -> float:
        pids = [self.child_pids] if isinstance(self.child_pids, int) else self.child_pids
        return sum(process_cpu_seconds(pid) for pid in pids)

    def __enter__(self) -> CpuWindow:
        self.started = time.perf_counter()
        self.child0 = self._children()
        self.self0 = time.process_time()
        self.busy0 = machine_busy()[0]
        self.servers0 = server_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = self.figures()

    def _servers(self) -> dict[str, float]:
        """CPU used meanwhile by each server (a process that ended meanwhile is not counted,
        so these are lower bounds)."""
        used: dict[str, float] = {"postgresql": 0.0, "kafka": 0.0, "redis": 0.0}
        for pid, (server, seconds) in server_cpu_seconds().items():
            before = self.servers0.get(pid)
            used[server] += seconds - (before[1] if before and before[0] == server else 0.0)
        return {server: round(seconds, 2) for server, seconds in used.items()}

    def figures(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        cores = len(os.sched_getaffinity(0))
        child = self._children() - self.child0
        own = time.process_time() - self.self0
        busy = machine_busy()[0] - self.busy0
        return {
            "wall_s": round(wall, 3),
            "process_under_test_cpu_s": round(child, 2),
            "load_generator_cpu_s": round(own, 2),
            "machine_cpu_s": round(busy, 2),
            # Kafka, PostgreSQL, Redis, and anything else running on the machine meanwhile.
            "rest_of_machine_cpu_s": round(busy - child - own, 2),
            "servers_cpu_s": self._servers(),
            "machine_utilisation": round(busy / (wall * cores), 3) if wall > 0 else 0.0,
        }


# --- isolation -------------------------------------------------------------------------


async def end_process(
    proc: asyncio.subprocess.Process,
    reader: asyncio.Task[None] | None,
    *,
    grace_seconds: float,
) -> None:
    """SIGTERM, SIGKILL if the process is still there after `grace_seconds`; then let the
    task reading its output take the last lines."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_seconds)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    if reader is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, 5)


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name starts with `prefix`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


@dataclass(frozen=True)
class Isolation:
    """Names of one benchmark run's private resources (all removed by ``cleanup``)."""

    unique: str

    @property
    def topic_prefix(self) -> str:
        return f"bench.{self.unique}."

    def service_settings(self, base: Settings) -> Settings:
        u = self.unique
        return base.model_copy(
            update={
                "database_schema": f"bench_{u}",
                "redis_prefix": f"bench:{u}",
                "topic_commands": f"bench.{u}.commands",
                "topic_preferences": f"bench.{u}.preferences",
                "topic_outcomes": f"bench.{u}.outcomes",
                "topic_dlq": f"bench.{u}.dlq",
                "consumer_group": f"bench.{u}.worker",
                "http_port": free_port(),
                "admin_port": free_port(),
                "log_format": "json",
            }
        )

    def passthrough_settings(self, base: Settings) -> tuple[Settings, str]:
        u = self.unique
        settings = base.model_copy(
            update={
                "topic_commands": f"bench.{u}.pt.commands",
                "consumer_group": f"bench.{u}.passthrough",
                "log_format": "json",
            }
        )
        return settings, f"bench.{u}.pt.out"

    async def prepare_schema(self, settings: Settings) -> None:
        conn = await asyncpg.connect(settings.database_dsn)
        try:
            await migrate(conn, settings.database_schema)
        finally:
            await conn.close()

    async def cleanup(self, settings: Settings) -> list[str]:
        """Drop the schema, delete the Redis keys and the topics; return what failed."""
        problems: list[str] = []
        try:
            await drop_schema(settings.database_dsn, settings.database_schema)
        except Exception as exc:
            problems.append(f"postgresql: {type(exc).__name__}")
        try:
            redis = Redis.from_url(settings.redis_dsn)
            try:
                batch: list[bytes] = []
                async for key in redis.scan_iter(match=f"{settings.redis_prefix}:*", count=5000):
                    batch.append(key)
                    if len(batch) >= 5000:
                        await redis.delete(*batch)
                        batch.clear()
                if batch:
                    await redis.delete(*batch)
            finally:
                await redis.aclose()
        except Exception as exc:
            problems.append(f"redis: {type(exc).__name__}")
        try:
            await delete_topics(settings.kafka_bootstrap, self.topic_prefix)
        except Exception as exc:
            problems.append(f"kafka: {type(exc).__name__}")
        return problems


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    await ensure_topics(
        KafkaConnection(bootstrap), [KafkaTopic(name, partitions) for name in names]
    )


# --- statistics and machine ------------------------------------------------------------


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """Nearest-rank percentiles (no interpolation: every figure is a measured sample)."""
    if not samples_ms:
        return {}
    ordered = sorted(samples_ms)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
        return round(ordered[index], 2)

    return {
        "count": len(ordered),
        "min_ms": round(ordered[0], 2),
        "p50_ms": rank(50),
        "p90_ms": rank(90),
        "p95_ms": rank(95),
        "p99_ms": rank(99),
        "p99_9_ms": rank(99.9),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(sum(ordered) / len(ordered), 2),
    }


def ratio(service: float | None, baseline: float | None) -> float | None:
    if not service or not baseline:
        return None
    return round(service / baseline, 3)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 2)
    return None


def _kafka_broker_version() -> str | None:
    """The version of the local Kafka broker, from its process's class path (jar names such
    as ``kafka-server-4.1.1.jar`` or the stack's ``kafka-4.1.1/libs``); None if not found."""
    pattern = re.compile(r"kafka(?:[-_][a-z0-9.]+)*?[-_](\d+\.\d+\.\d+)(?:\.jar|/libs)")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            if "kafka.Kafka " in cmdline or cmdline.endswith("kafka.Kafka"):
                found = pattern.search(cmdline)
                if found:
                    return found.group(1)
    return None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "service"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if head.returncode == 0:
            return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    return None


async def machine_info(settings: Settings) -> dict[str, Any]:
    """What the figures were measured on, including the versions of the local stack."""
    info: dict[str, Any] = {
        "cores": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "kafka": _kafka_broker_version(),
        "postgresql": None,
        "redis": None,
        "service_commit": _git_commit(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(settings.database_dsn)
        try:
            info["postgresql"] = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
    with contextlib.suppress(Exception):
        redis = Redis.from_url(settings.redis_dsn)
        try:
            info["redis"] = (await redis.info("server")).get("redis_version")
        finally:
            await redis.aclose()
    libraries = {}
    for name in ("aiokafka", "asyncpg", "redis", "faststream", "orjson", "uvloop", "msgspec"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libraries[name] = importlib.metadata.version(name)
    info["libraries"] = libraries
    return info


def write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
