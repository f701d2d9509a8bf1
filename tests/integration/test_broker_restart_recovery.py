"""After a broker restart (or PostgreSQL's) every partition resumes: commands produced on each
partition once the dependency answers again get their outcomes, and every command gets
exactly one outcome (a batch retried re-publishes it identically).

Commands are in flight when the dependency dies, so the restart hits batches being retried,
as in a real outage. The times from "the dependency answers" (a metadata request, a query)
to each partition's first outcome, and each partition's slowest probe, are recorded
(``record_property``), never asserted: the machine is shared.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaClient
from aiokafka.partitioner import DefaultPartitioner
from pydantic import SecretStr

from service.adapters.postgres.migrator import migrate
from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.oracle import start_worker
from tests.support.ports import free_port
from tests.support.throwaway import ThrowawayKafka, throwaway_kafka, throwaway_postgres

pytestmark = pytest.mark.integration


PROBE_EVERY_S = 0.1
PROBE_FOR_S = 5.0
# Long enough for a failing batch's backoff to reach its cap (50 ms doubling to 5 s).
OUTAGE_S = 12.0


def subject_on(partition: int, partitions: int, prefix: str) -> str:
    """A subject id whose records the default partitioner puts on `partition`."""
    choose = DefaultPartitioner()
    everyone = list(range(partitions))
    for i in range(10_000):
        subject = f"{prefix}-{i}"
        if choose(subject.encode(), everyone, everyone) == partition:
            return subject
    raise AssertionError(f"no subject found for partition {partition}")


def opt_out(subject: str) -> dict[str, Any]:
    return command(subject, [("opt_out", "marketing", "email")])


async def broker_answers(kafka: ThrowawayKafka, within_s: float = 120.0) -> float:
    """The moment (monotonic) a fresh client's metadata request succeeds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        client = AIOKafkaClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=2_000)
        try:
            await client.bootstrap()
            await client.fetch_all_metadata()
            return time.monotonic()
        except Exception:  # not answering yet: try again
            await asyncio.sleep(0.05)
        finally:
            await client.close()
    raise AssertionError("the restarted broker never answered")


@asynccontextmanager
async def workers(settings: Settings, log_dir: Path, count: int) -> AsyncIterator[list[Path]]:
    """`count` worker processes in one group, as deployed; stopped with SIGTERM after."""
    logs = [log_dir / f"worker-{i}.log" for i in range(count)]
    started: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            started.append(start_worker(settings, log, free_port()))
        yield logs
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


async def every_worker_assigned(logs: list[Path], within_s: float = 120.0) -> None:
    """Wait until each worker logged an assignment with partitions: the group formed."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        texts = [log.read_text() if log.exists() else "" for log in logs]
        if all(
            any(
                '"partitions_assigned"' in line and '"partitions": []' not in line
                for line in text.splitlines()
            )
            for text in texts
        ):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the workers never shared the partitions")


@dataclass
class Probes:
    """Per partition: when its first probe's outcome came (seconds after the dependency
    answered again) and the longest any of its probes waited for its outcome."""

    docs: list[dict[str, Any]] = field(default_factory=list)
    first: dict[int, float] = field(default_factory=dict)
    slowest: dict[int, float] = field(default_factory=dict)


async def probe_every_partition(
    client: ContractClient, subjects: list[str], answered: float
) -> Probes:
    """One command per partition every PROBE_EVERY_S for PROBE_FOR_S, each awaited."""
    probes = Probes()

    async def probe(partition: int, doc: dict[str, Any]) -> None:
        meta = await client.send(doc)
        assert meta.partition == partition
        sent = time.monotonic()
        await client.wait_for(lambda: doc["command_id"] in client.outcomes, 120)
        now = time.monotonic()
        probes.first[partition] = min(probes.first.get(partition, 1e9), now - answered)
        probes.slowest[partition] = max(probes.slowest.get(partition, 0.0), now - sent)

    tasks = []
    for _ in range(round(PROBE_FOR_S / PROBE_EVERY_S)):
        for partition, subject in enumerate(subjects):
            doc = opt_out(subject)
            probes.docs.append(doc)
            tasks.append(asyncio.create_task(probe(partition, doc)))
        await asyncio.sleep(PROBE_EVERY_S)
    await asyncio.gather(*tasks)
    return probes


def report(probes: Probes, record_property: Callable[[str, object], None], what: str) -> None:
    for partition in sorted(probes.first):
        first, slowest = probes.first[partition], probes.slowest[partition]
        record_property(f"partition_{partition}_first_outcome_after_s", round(first, 3))
        record_property(f"partition_{partition}_slowest_probe_s", round(slowest, 3))
    record_property("slowest_partition_resumed_after_s", round(max(probes.first.values()), 3))
    firsts = {p: round(t, 3) for p, t in sorted(probes.first.items())}
    print(f"first outcome after {what} answered:", firsts)
    print("slowest probe:", {p: round(t, 3) for p, t in sorted(probes.slowest.items())})


def assert_answered_once(client: ContractClient, docs: list[dict[str, Any]]) -> None:
    """Nothing lost, nothing answered two ways: a batch retried after a failed publication
    re-publishes the identical outcome, which the contract allows."""
    for doc in docs:
        answers = client.outcomes[doc["command_id"]]
        assert answers, doc["command_id"]
        assert all(a == answers[0] for a in answers), answers
        assert answers[0]["status"] in ("applied", "unchanged")


async def test_every_partition_resumes_after_a_broker_restart(
    settings: Settings, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    partitions = settings.topic_partitions
    assert partitions == 3
    subjects = [subject_on(p, partitions, "rs") for p in range(partitions)]
    with throwaway_kafka(free_port(), free_port()) as kafka:
        own = settings.model_copy(update={"kafka_bootstrap": kafka.bootstrap})
        async with workers(own, tmp_path, partitions) as logs, ContractClient(own) as client:
            await every_worker_assigned(logs)
            # Positive control: every partition answers before the restart.
            before = [opt_out(s) for s in subjects]
            for doc in before:
                await client.send(doc)
            await client.wait_for(
                lambda: all(d["command_id"] in client.outcomes for d in before), 120
            )
            # Commands in flight when the broker dies: their outputs cannot be published.
            in_flight = [opt_out(s) for s in subjects for _ in range(3)]
            await asyncio.gather(*(client.send(d) for d in in_flight))
            await asyncio.sleep(0.03)  # the workers have read them: their outputs are going out
            kafka.stop()
            await asyncio.sleep(3.0)
            kafka.start()
            answered = await broker_answers(kafka)
            probes = await probe_every_partition(client, subjects, answered)
            everything = before + in_flight + probes.docs
            await client.wait_for(
                lambda: all(d["command_id"] in client.outcomes for d in everything), 120
            )
            await asyncio.sleep(1.0)  # a second, different outcome would arrive by now
    report(probes, record_property, "the broker")
    assert_answered_once(client, everything)


async def postgres_answers(url: str, within_s: float = 60.0) -> float:
    """The moment (monotonic) a new connection's query succeeds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(url, timeout=2)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.05)
            continue
        try:
            await conn.fetchval("SELECT 1")
            return time.monotonic()
        finally:
            await conn.close()
    raise AssertionError("the restarted PostgreSQL never answered")


async def test_every_partition_resumes_after_a_postgres_restart(
    settings: Settings, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The same with PostgreSQL: batches fail fast while it is down, so their backoff grows
    to its cap; a partition must not sit out the rest of it once PostgreSQL answers."""
    partitions = settings.topic_partitions
    subjects = [subject_on(p, partitions, "rp") for p in range(partitions)]
    with throwaway_postgres(free_port()) as pg:
        conn = await asyncpg.connect(pg.url)
        try:
            await migrate(conn, settings.database_schema)
        finally:
            await conn.close()
        own = settings.model_copy(update={"database_url": SecretStr(pg.url)})
        async with workers(own, tmp_path, partitions) as logs, ContractClient(own) as client:
            await every_worker_assigned(logs)
            before = [opt_out(s) for s in subjects]
            for doc in before:
                await client.send(doc)
            await client.wait_for(
                lambda: all(d["command_id"] in client.outcomes for d in before), 120
            )
            pg.stop()
            during = [opt_out(s) for s in subjects]
            for doc in during:
                await client.send(doc)
            await asyncio.sleep(OUTAGE_S)
            assert not any(d["command_id"] in client.outcomes for d in during)
            pg.start()
            answered = await postgres_answers(pg.url)
            probes = await probe_every_partition(client, subjects, answered)
            everything = before + during + probes.docs
            await client.wait_for(
                lambda: all(d["command_id"] in client.outcomes for d in everything), 120
            )
            await asyncio.sleep(1.0)
    report(probes, record_property, "PostgreSQL")
    assert_answered_once(client, everything)
