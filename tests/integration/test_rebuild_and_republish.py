"""``optout cache rebuild`` and ``optout events republish`` against the real stack, also while
the worker applies a stream of commands.

PostgreSQL is read here with SQL of the test's own (not the adapters' statements), Redis by
its raw keys and the preferences topic by a plain consumer from its first offset: each check
compares what the command left behind with the truth, independently of how it did it.
Forwards, erased subjects and subjects without a stored event are written with SQL (the
worker's link, merge and erase are not what is tested here).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import SecretStr

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.lag import group_lag
from service.adapters.kafka.snapshot_sink import KafkaSnapshotSink
from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.rows import rule_from_row
from service.adapters.postgres.subject_pages import PostgresSubjectPages
from service.adapters.redis_cache import state_key
from service.adapters.redis_client import create_redis
from service.adapters.redis_cluster_cache import cluster_state_key
from service.adapters.redis_refill import RedisCacheRefill
from service.adapters.state_codec import decode_state
from service.application.rebuild import RebuildCache
from service.application.republish import RepublishSnapshots, SnapshotRecord
from service.application.subject_pages import Scope
from service.bootstrap import cache_rebuilder, contract_topics, snapshot_republisher
from service.contract.v1 import PreferenceChangedV1
from service.domain.events import event_id_for
from service.domain.model import SubjectKey, SubjectState
from service.entrypoints.server import Service
from service.settings import Settings
from tests.integration.test_read_path import random_commands
from tests.support.ports import free_port
from tests.support.throwaway import ThrowawayRedisCluster, throwaway_redis_cluster

pytestmark = pytest.mark.integration

OPTOUT = str(Path(sys.executable).with_name("optout"))
ERASED = "erased:" + "ab" * 32
FORWARD = "email:alias@example.com"
IMPORTED = "imported-1"  # live, rules, no stored event
VANISHING = "imported-2"  # deleted while a republish runs


@asynccontextmanager
async def within(what: str, seconds: float = 90) -> AsyncIterator[None]:
    """A step that must end in time: a hang fails naming the step, not the whole test."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise AssertionError(f"{what} took over {seconds} s") from None


async def connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )


async def stored_states(settings: Settings) -> dict[SubjectKey, SubjectState]:
    """Every subject with a version, as PostgreSQL holds it."""
    conn = await connect(settings)
    try:
        rows = await conn.fetch(
            """
            SELECT s.tenant, s.subject_id, s.version, s.merged_into,
                   s.erased_at IS NOT NULL AS erased, r.topic, r.channel, r.action,
                   r.occurred_at, r.source_channel, r.command_id
            FROM subjects s LEFT JOIN rules r USING (tenant, subject_id)
            WHERE s.version > 0
            """
        )
    finally:
        await conn.close()
    found: dict[SubjectKey, SubjectState] = {}
    for row in rows:
        key = SubjectKey(row["tenant"], row["subject_id"])
        before = found.get(key)
        rules = dict(before.rules) if before else {}
        if row["topic"] is not None:
            rules[(row["topic"], row["channel"])] = rule_from_row(row)
        found[key] = SubjectState(key, row["version"], rules, row["merged_into"], row["erased"])
    return found


async def stored_events(settings: Settings) -> dict[tuple[SubjectKey, int], bytes]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch(
            "SELECT tenant, subject_id, version, payload::text AS payload FROM preference_events"
        )
    finally:
        await conn.close()
    return {
        (SubjectKey(r["tenant"], r["subject_id"]), r["version"]): r["payload"].encode()
        for r in rows
        if r["payload"] is not None
    }


async def add_identity_rows(settings: Settings) -> None:
    """A forward, an erased suppression, live subjects without a stored event, a tenant more."""
    subjects = [
        ("default", FORWARD, 2, "u0", False),
        ("default", ERASED, 3, None, True),
        ("default", IMPORTED, 4, None, False),
        ("default", VANISHING, 2, None, False),
        ("acme", "u0", 1, None, False),
    ]
    rules = [
        ("default", ERASED, "*", "*", "opt_out", "system", "erase-1"),
        ("default", IMPORTED, "marketing", "email", "opt_out", "import", "imp-1"),
        ("default", IMPORTED, "product", "sms", "opt_in", "import", "imp-2"),
        ("default", VANISHING, "marketing", "*", "opt_out", "import", "imp-3"),
        ("acme", "u0", "reminders", "email", "opt_out", "web", "acme-1"),
    ]
    conn = await connect(settings)
    try:
        await conn.executemany(
            "INSERT INTO subjects (tenant, subject_id, version, merged_into, erased_at)"
            " VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
            subjects,
        )
        await conn.executemany(
            "INSERT INTO rules (tenant, subject_id, topic, channel, action, occurred_at,"
            " source_channel, command_id) VALUES ($1, $2, $3, $4, $5, now(), $6, $7)",
            rules,
        )
    finally:
        await conn.close()


async def flush(settings: Settings) -> None:
    redis = create_redis(settings.redis_dsn)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}:*", count=5000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def cached_states(
    redis: Any, settings: Settings, keys: Sequence[SubjectKey], *, cluster: bool = False
) -> dict[SubjectKey, SubjectState | None]:
    found: dict[SubjectKey, SubjectState | None] = {}
    for key in keys:
        name = (
            cluster_state_key(settings.redis_prefix, key)
            if cluster
            else state_key(settings.redis_prefix, key)
        )
        raw = await redis.hget(name, "d")
        found[key] = None if raw is None else decode_state(key, raw)
    return found


async def assert_cache_equals_database(settings: Settings) -> dict[SubjectKey, SubjectState]:
    stored = await stored_states(settings)
    redis = create_redis(settings.redis_dsn)
    try:
        cached = await cached_states(redis, settings, list(stored))
        count = len(
            [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}:s:*", count=5000)]
        )
    finally:
        await redis.aclose()
    for key, state in stored.items():
        assert cached[key] == state, key
    assert count == len(stored)  # nothing else: no version-0 subject, no deleted row
    return stored


class Commands:
    """Commands sent straight to the commands topic; idle once every one is answered and
    every offset committed (the worker commits only after its outputs are acknowledged)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent = 0
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=0
        )

    async def __aenter__(self) -> Commands:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, docs: Sequence[dict[str, Any]], per_second: float | None = None) -> None:
        """Ten at a time, each ten acknowledged before the next; ``per_second`` paces them."""
        for start in range(0, len(docs), 10):
            chunk = docs[start : start + 10]
            sent = [
                await self._producer.send(
                    self.settings.topic_commands, orjson.dumps(d), key=d["subject_id"].encode()
                )
                for d in chunk
            ]
            await asyncio.gather(*sent)
            self.sent += len(chunk)
            if per_second:
                await asyncio.sleep(len(chunk) / per_second)

    async def answered(self) -> int:
        conn = await connect(self.settings)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM processed_commands"))
        finally:
            await conn.close()

    async def idle(self, within_seconds: float = 120) -> None:
        s = self.settings
        deadline = asyncio.get_running_loop().time() + within_seconds
        while await self.answered() < self.sent:
            assert asyncio.get_running_loop().time() < deadline, "the worker never caught up"
            await asyncio.sleep(0.05)
        while True:
            lag = await group_lag(
                KafkaConnection(s.kafka_bootstrap), s.consumer_group, s.topic_commands
            )
            if sum(p.lag_records for p in lag) == 0:
                return
            assert asyncio.get_running_loop().time() < deadline, "offsets never committed"
            await asyncio.sleep(0.05)


async def last_records(settings: Settings) -> tuple[dict[bytes, bytes | None], list[Any]]:
    """The preferences topic from its first offset to its end: each key's last value, and
    every record."""
    # `earliest` as the default too: on a topic created a moment ago, `seek_to_beginning` can
    # give up waiting for the partitions' metadata, and the default (`latest`) then applies.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_preferences, p) for p in range(3)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        # Until each partition's last offset came back (``position`` counts what the client
        # prefetched, not what it returned).
        seen = {tp: -1 for tp in tps}
        async with within("reading the preferences topic", 60):
            while any(seen[tp] < ends[tp] - 1 for tp in tps):
                batch = await consumer.getmany(timeout_ms=300)
                for tp, part in batch.items():
                    records.extend(part)
                    seen[tp] = part[-1].offset
    finally:
        await consumer.stop()
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    return {r.key: r.value for r in ordered}, ordered


@pytest.fixture
def subjects() -> list[str]:
    return [f"u{i}" for i in range(60)]


async def rebuild(settings: Settings, batch: int, scope: Scope | None = None) -> Any:
    scope = scope or Scope()
    async with AsyncExitStack() as stack:
        return await (await cache_rebuilder(settings, stack)).run(scope, batch)


async def test_rebuild_after_a_flush_gives_redis_what_postgresql_holds(
    settings: Settings, subjects: list[str]
) -> None:
    rng = random.Random(3)
    docs = random_commands(rng, subjects, 150)
    rejected = {**random_commands(rng, ["only-rejected"], 1)[0]}
    rejected["changes"] = [{"action": "opt_out", "topic": "security", "channel": "email"}]
    async with (
        within("the worker applying the commands"),
        Service(settings, with_worker=True),
        Commands(settings) as commands,
    ):
        await commands.send([*docs, rejected])
        await commands.idle()
    async with within("seeding and flushing"):
        await add_identity_rows(settings)
        await flush(settings)

    async with within("the rebuild"):
        tally = await rebuild(settings, batch=7)

    stored = await assert_cache_equals_database(settings)
    assert tally.written == tally.done == len(stored)
    forward = stored[SubjectKey("default", FORWARD)]
    assert forward.merged_into == "u0"
    assert stored[SubjectKey("default", ERASED)].erased
    again = await rebuild(settings, batch=1000)
    assert (again.written, again.newer_cached) == (0, len(stored))

    await flush(settings)
    await rebuild(settings, batch=50, scope=Scope("acme", include_unknown=True))
    redis = create_redis(settings.redis_dsn)
    try:
        names = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}:s:*", count=5000)]
    finally:
        await redis.aclose()
    assert names == [state_key(settings.redis_prefix, SubjectKey("acme", "u0")).encode()]


class SlowCache(RedisCacheRefill):
    """Holds each page a moment between reading it and writing it: the window in which the
    worker can commit and cache a newer state of the same subject."""

    async def write(self, states: Sequence[SubjectState]) -> int:
        await asyncio.sleep(0.02)
        return await super().write(states)


async def test_rebuild_while_the_worker_writes_never_leaves_an_older_state(
    settings: Settings,
) -> None:
    rng = random.Random(5)
    subjects = [f"u{i}" for i in range(40)]  # few subjects: each one changes often
    first = random_commands(rng, subjects, 100)
    stream = random_commands(rng, subjects, 500)
    pool = await create_pool(settings.database_dsn, settings.database_schema, 2)
    redis = create_redis(settings.redis_dsn)
    use_case = RebuildCache(
        PostgresSubjectPages(pool, events=False), SlowCache(redis, settings.redis_prefix)
    )
    try:
        async with Service(settings, with_worker=True), Commands(settings) as commands:
            await commands.send(first)
            await commands.idle()
            sending = asyncio.create_task(commands.send(stream, per_second=400))
            answered_before, passes = await commands.answered(), 0
            # Passes until the worker has answered the whole stream: they overlap its work.
            async with within("the passes during the stream", 180):
                while (answered := await commands.answered()) < len(first) + len(stream):
                    await flush(settings)  # Redis lost again: every pass refills all of it
                    await use_case.run(Scope(), batch=3)
                    passes += 1
            await sending
            await commands.idle()
    finally:
        await pool.close()
        await redis.aclose()
    assert passes >= 1
    assert answered > answered_before  # the worker applied commands while the passes ran
    await assert_cache_equals_database(settings)


class VanishingSink(KafkaSnapshotSink):
    """Deletes one subject's row right after the page holding it is acknowledged, as an
    erasure of that identifier would (the worker then publishes its tombstone too)."""

    def __init__(self, inner: KafkaSnapshotSink, settings: Settings) -> None:
        super().__init__(inner._output, settings.topic_preferences)
        self.settings = settings
        self.deleted = False

    async def send(self, records: Sequence[SnapshotRecord]) -> None:
        await asyncio.sleep(0.01)  # widen the window in which the worker publishes
        await super().send(records)
        if not self.deleted and any(r.subject_id == VANISHING for r in records):
            conn = await connect(self.settings)
            try:
                await conn.execute("DELETE FROM subjects WHERE subject_id = $1", VANISHING)
                await conn.execute("DELETE FROM rules WHERE subject_id = $1", VANISHING)
            finally:
                await conn.close()
            self.deleted = True


async def test_republish_while_the_worker_writes_leaves_each_key_at_its_current_state(
    settings: Settings,
) -> None:
    rng = random.Random(7)
    subjects = [f"u{i}" for i in range(40)]
    first = random_commands(rng, subjects, 150)
    stream = random_commands(rng, subjects, 400)
    pool = await create_pool(settings.database_dsn, settings.database_schema, 2)
    topic = next(t for t in contract_topics(settings) if t.name == settings.topic_preferences)
    sink = await KafkaSnapshotSink.started(KafkaConnection(settings.kafka_bootstrap), topic)
    vanishing = VanishingSink(sink, settings)
    use_case = RepublishSnapshots(PostgresSubjectPages(pool, events=True), vanishing)
    try:
        async with Service(settings, with_worker=True), Commands(settings) as commands:
            await commands.send(first)
            await commands.idle()
            await add_identity_rows(settings)
            sending = asyncio.create_task(commands.send(stream, per_second=300))
            answered_before = await commands.answered()
            tallies = []
            # Passes until the worker has answered the whole stream: they overlap its work.
            async with within("the passes during the stream", 180):
                while (answered := await commands.answered()) < len(first) + len(stream):
                    tallies.append(await use_case.run(Scope(), batch=4))
            await sending
            await commands.idle()
    finally:
        await sink.stop()
        await pool.close()
    assert tallies
    assert answered > answered_before  # the worker applied commands while the passes ran
    assert vanishing.deleted

    stored = await stored_states(settings)
    events = await stored_events(settings)
    last, records = await last_records(settings)
    for key, state in stored.items():
        value = last[f"{key.tenant}:{key.subject_id}".encode()]
        if state.merged_into is not None or key.subject_id.startswith("erased:"):
            assert value is None, key
        elif (key, state.version) in events:
            assert value == events[(key, state.version)], key  # byte for byte
        else:  # written by SQL without an event: a snapshot built from the state
            assert value is not None
            event = PreferenceChangedV1.model_validate_json(value)
            assert event.to_domain().snapshot() == state
            assert event.event_id == event_id_for(key.tenant, key.subject_id, state.version)
            assert (event.command_id, event.changes) == ("", [])
    assert last[f"default:{VANISHING}".encode()] is None
    assert len(last) == len(stored) + 1  # every subject, and the tombstone of the deleted one

    # The worker's record of a version and the republished one are the same bytes.
    by_version: dict[tuple[bytes, int], set[bytes]] = {}
    for r in records:
        if r.value is not None:
            by_version.setdefault((r.key, orjson.loads(r.value)["version"]), set()).add(r.value)
    assert all(len(values) == 1 for values in by_version.values())
    assert sum(t.stored for t in tallies) > 0


class WorkerFirst(RedisCacheRefill):
    """Before writing its first page, has the worker apply a newer command for a subject of
    that page and waits until the worker has cached it: the page's state is then older."""

    def __init__(self, redis: Any, settings: Settings, commands: Commands, doc: dict[str, Any]):
        super().__init__(redis, settings.redis_prefix)
        self.settings, self.commands, self.doc = settings, commands, doc

    async def write(self, states: Sequence[SubjectState]) -> int:
        if self.doc:
            doc, self.doc = self.doc, {}
            await self.commands.send([doc])
            await self.commands.idle()
        return await super().write(states)


async def test_rebuild_leaves_alone_a_state_the_worker_cached_after_the_page_was_read(
    settings: Settings,
) -> None:
    rng = random.Random(9)
    pool = await create_pool(settings.database_dsn, settings.database_schema, 2)
    redis = create_redis(settings.redis_dsn)
    try:
        async with Service(settings, with_worker=True), Commands(settings) as commands:
            await commands.send(random_commands(rng, ["a", "b"], 6))
            await commands.idle()
            await flush(settings)
            later = random_commands(rng, ["a"], 1)[0]
            later["occurred_at"] = datetime.now(UTC).isoformat()  # the latest: applied
            later["changes"] = [{"action": "opt_out", "topic": "reminders", "channel": "sms"}]
            refill = WorkerFirst(redis, settings, commands, later)
            use_case = RebuildCache(PostgresSubjectPages(pool, events=False), refill)
            tally = await use_case.run(Scope(), batch=10)
    finally:
        await pool.close()
        await redis.aclose()
    await assert_cache_equals_database(settings)
    assert tally.newer_cached == 1  # the page's `a` was older than the worker's


class WorkerPublishesFirst(KafkaSnapshotSink):
    """Before sending its first page, has the worker apply, commit and publish a newer
    command for a subject of that page: the page's record then lands after the worker's."""

    def __init__(self, inner: KafkaSnapshotSink, settings: Settings, commands: Commands,
                 doc: dict[str, Any]):  # fmt: skip
        super().__init__(inner._output, settings.topic_preferences)
        self.commands, self.doc = commands, doc

    async def send(self, records: Sequence[SnapshotRecord]) -> None:
        if self.doc:
            doc, self.doc = self.doc, {}
            await self.commands.send([doc])
            await self.commands.idle()  # offsets are committed after the event is acknowledged
        await super().send(records)


async def test_republish_sends_again_what_the_worker_published_before_the_page_landed(
    settings: Settings,
) -> None:
    rng = random.Random(11)
    pool = await create_pool(settings.database_dsn, settings.database_schema, 2)
    topic = next(t for t in contract_topics(settings) if t.name == settings.topic_preferences)
    sink = await KafkaSnapshotSink.started(KafkaConnection(settings.kafka_bootstrap), topic)
    try:
        async with Service(settings, with_worker=True), Commands(settings) as commands:
            await commands.send(random_commands(rng, ["a", "b"], 6))
            await commands.idle()
            later = random_commands(rng, ["a"], 1)[0]
            later["occurred_at"] = datetime.now(UTC).isoformat()
            later["changes"] = [{"action": "opt_out", "topic": "reminders", "channel": "sms"}]
            racing = WorkerPublishesFirst(sink, settings, commands, later)
            use_case = RepublishSnapshots(PostgresSubjectPages(pool, events=True), racing)
            tally = await use_case.run(Scope(), batch=10)
    finally:
        await sink.stop()
        await pool.close()
    stored = await stored_states(settings)
    events = await stored_events(settings)
    last, records = await last_records(settings)
    key = SubjectKey("default", "a")
    versions = [orjson.loads(r.value)["version"] for r in records if r.key == b"default:a"]
    current = stored[key].version
    assert versions[-3:] == [current, current - 1, current]  # worker's, the stale one, again
    for k, state in stored.items():
        assert last[f"{k.tenant}:{k.subject_id}".encode()] == events[(k, state.version)]
    assert tally.resent == 1


# --- the command line ----------------------------------------------------------------------


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_environment()}
    return subprocess.run(
        [OPTOUT, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


async def test_the_commands_end_with_one_summary_line(settings: Settings) -> None:
    await add_identity_rows(settings)
    rebuilt = await asyncio.to_thread(run_cli, settings, "cache", "rebuild", "--batch", "2")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith("optout cache rebuild: 5 subjects in ")
    assert "5 written" in rebuilt.stdout
    assert len(rebuilt.stdout.splitlines()) == 1
    assert "optout cache rebuild: 0/5 subjects" in rebuilt.stderr  # progress, not a terminal
    await assert_cache_equals_database(settings)

    republished = await asyncio.to_thread(run_cli, settings, "events", "republish")
    assert republished.returncode == 0, republished.stderr
    assert republished.stdout.startswith("optout events republish: 5 subjects in ")
    assert "5 records (0 stored events, 3 built from state, 2 tombstones" in republished.stdout
    last, _ = await last_records(settings)
    assert last[f"default:{FORWARD}".encode()] is None
    assert last[b"acme:u0"] is not None


@pytest.mark.parametrize(
    ("args", "setting", "url", "named"),
    [
        (
            ["cache", "rebuild"],
            "database_url",
            "postgresql://u:p@127.0.0.1:{port}/db",
            "PostgreSQL",
        ),
        (["cache", "rebuild"], "redis_url", "redis://127.0.0.1:{port}/0", "Redis"),
        (["events", "republish"], "kafka_bootstrap", "127.0.0.1:{port}", "Kafka"),
    ],
)
async def test_an_unreachable_dependency_is_one_line_naming_it(
    settings: Settings, args: list[str], setting: str, url: str, named: str
) -> None:
    port = free_port()
    value = url.format(port=port)
    broken = settings.model_copy(
        update={setting: value if setting == "kafka_bootstrap" else SecretStr(value)}
    )
    answer = await asyncio.to_thread(run_cli, broken, *args)
    assert answer.returncode == 1, answer.stderr
    lines = [line for line in answer.stderr.splitlines() if "subjects, " not in line]
    assert len(lines) == 1, answer.stderr
    command = " ".join(args)
    assert lines[0].startswith(f"optout {command}: {named} at 127.0.0.1:{port} did not answer (")
    assert "u:p" not in answer.stderr


async def test_ctrl_c_stops_after_the_page_with_a_summary(settings: Settings) -> None:
    conn = await connect(settings)
    try:
        await conn.execute(
            "INSERT INTO subjects (tenant, subject_id, version)"
            " SELECT 'default', 'bulk-' || g, 1 FROM generate_series(1, 30000) g"
        )
        await conn.execute("ANALYZE subjects")
    finally:
        await conn.close()
    env = {**os.environ, **settings.as_environment()}
    process = await asyncio.create_subprocess_exec(
        OPTOUT, "cache", "rebuild", "--batch", "5",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    first = await asyncio.wait_for(process.stderr.readline(), 30)
    assert b"0/30,000 subjects" in first  # the walk has started
    await asyncio.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, err
    assert out == b""
    last = err.decode().splitlines()[-1]
    assert last.startswith("optout cache rebuild: stopped after ")
    assert last.endswith("; run it again to finish (safe)")
    assert "of 30,000 subjects" in last
    assert "Traceback" not in err.decode()


# --- Redis Cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[ThrowawayRedisCluster]:
    ports = [free_port() for _ in range(3)]
    bus_ports = [free_port() for _ in range(3)]
    with throwaway_redis_cluster(ports, bus_ports) as cluster:
        yield cluster


@pytest.fixture
def on_cluster(settings: Settings, redis_cluster: ThrowawayRedisCluster) -> Settings:
    return settings.model_copy(
        update={"redis_url": SecretStr(redis_cluster.url), "redis_cluster": True}
    )


async def test_rebuild_onto_a_redis_cluster(on_cluster: Settings) -> None:
    conn = await connect(on_cluster)
    try:
        await conn.execute(
            "INSERT INTO subjects (tenant, subject_id, version)"
            " SELECT 'default', 'c' || g, g % 4 + 1 FROM generate_series(1, 600) g"
        )
        await conn.execute(
            "INSERT INTO rules SELECT 'default', 'c' || g, 'marketing', 'email', 'opt_out',"
            " now(), 'web', 'cmd-' || g FROM generate_series(1, 600, 3) g"
        )
    finally:
        await conn.close()
    await add_identity_rows(on_cluster)

    tally = await rebuild(on_cluster, batch=250)

    stored = await stored_states(on_cluster)
    redis = create_redis(on_cluster.redis_dsn, cluster=True)
    try:
        cached = await cached_states(redis, on_cluster, list(stored), cluster=True)
        assert cached == stored
        assert tally.written == len(stored)
        refill = RedisCacheRefill(redis, on_cluster.redis_prefix)
        assert await refill.forget(list(stored)) == len(stored)  # one DEL per slot
        assert set(
            (await cached_states(redis, on_cluster, list(stored), cluster=True)).values()
        ) == {None}
    finally:
        await redis.aclose()


async def test_republish_command_wiring_creates_a_compacted_topic(settings: Settings) -> None:
    await add_identity_rows(settings)
    async with AsyncExitStack() as stack:
        tally = await (await snapshot_republisher(settings, stack)).run(Scope(), 10)
    assert tally.records == 5
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic_preferences)]
        )
    finally:
        await admin.close()
    entries = {
        entry["config_names"]: entry["config_value"]
        for resource in described.to_object()["resources"]
        for entry in resource["config_entries"]
    }
    assert entries["cleanup.policy"] == "compact"
