"""`optout lag` against a real group, figure by figure beside Kafka's own consumer-group tool."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import KafkaTopic, ensure_topics
from service.settings import Settings
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

OPTOUT = str(Path(sys.executable).with_name("optout"))


def kafka_libs() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    found = sorted(cache.glob("optout/kafka-*/libs"))
    assert found, "the local stack fetches Kafka's jars (make stack)"
    return found[-1]


def kafka_consumer_groups(bootstrap: str, group: str) -> dict[int, tuple[str, str, str]]:
    """`kafka-consumer-groups --describe`, run from Kafka's own classes: per partition
    (CURRENT-OFFSET, LOG-END-OFFSET, LAG) as the tool prints them."""
    output = subprocess.run(
        [
            "java",
            "-cp",
            f"{kafka_libs()}/*",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[0] == group:
            rows[int(cells[2])] = (cells[3], cells[4], cells[5])
    return rows


def run_lag(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_environment()}
    return subprocess.run(
        [OPTOUT, "lag", *args], capture_output=True, text=True, timeout=60, env=env
    )


async def prepare(settings: Settings) -> None:
    """Three partitions: 10 records each; the group committed 10, 4 and nothing."""
    topic = settings.topic_commands
    await ensure_topics(KafkaConnection(settings.kafka_bootstrap), [KafkaTopic(topic, 3)])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for partition in range(3):
            for i in range(10):
                await producer.send_and_wait(
                    topic, b"{}", key=f"k{i}".encode(), partition=partition
                )
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await consumer.commit(
            {
                TopicPartition(topic, 0): OffsetAndMetadata(10, ""),
                TopicPartition(topic, 1): OffsetAndMetadata(4, ""),
            }
        )
    finally:
        await consumer.stop()


async def test_lag_agrees_with_kafka_consumer_groups(settings: Settings) -> None:
    await prepare(settings)
    produced_by = time.time()
    answer = run_lag(settings, "--json")
    assert answer.returncode == 0, answer.stderr
    mine = {p["partition"]: p for p in json.loads(answer.stdout)["partitions"]}
    theirs = await asyncio.to_thread(
        kafka_consumer_groups, settings.kafka_bootstrap, settings.consumer_group
    )
    assert set(mine) == {0, 1, 2}
    for partition in (0, 1):
        committed, end, lag = theirs[partition]
        assert (str(mine[partition]["committed"]), str(mine[partition]["end"])) == (committed, end)
        assert str(mine[partition]["lag_records"]) == lag
    # Never committed: the tool shows no offset; `optout lag` counts from the first record.
    assert mine[2]["committed"] is None
    assert theirs.get(2, ("-", "10", "-"))[0] == "-"
    assert mine[2]["lag_records"] == 10
    # Lag in seconds is the age of the first uncommitted record (none on partition 0).
    assert mine[0]["lag_seconds"] == 0.0
    assert 0.0 < mine[1]["lag_seconds"] < time.time() - produced_by + 60


async def test_lag_is_a_probe(settings: Settings) -> None:
    await prepare(settings)
    assert run_lag(settings, "--max-lag", "100").returncode == 0
    over = run_lag(settings, "--max-lag", "5")
    assert over.returncode == 2
    assert "total lag 16 records" in over.stdout
    assert run_lag(settings, "--max-lag-seconds", "0").returncode == 2
    assert run_lag(settings, "--max-lag-seconds", "3600").returncode == 0


def test_lag_names_an_unreachable_kafka_in_one_line(settings: Settings) -> None:
    closed = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    answer = run_lag(closed, "--json")
    assert answer.returncode == 1
    assert answer.stdout == ""
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1, answer.stderr
    assert lines[0].startswith(f"optout lag: Kafka at {closed.kafka_bootstrap} could not be asked")


async def test_lag_watch_refreshes_in_place_until_interrupted(settings: Settings) -> None:
    await prepare(settings)
    env = {**os.environ, **settings.as_environment()}
    watching = await asyncio.create_subprocess_exec(
        OPTOUT,
        "lag",
        "--watch",
        "0.2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert watching.stdout is not None
    seen = ""
    # Two refreshes seen, in order, however long the process takes to start on a busy machine.
    async with asyncio.timeout(120):
        while seen.count("total lag 16 records") < 2:
            chunk = await watching.stdout.read(4096)
            assert chunk, "the watch ended by itself"
            seen += chunk.decode()
    watching.send_signal(2)  # SIGINT, as Ctrl-C
    rest, err_bytes = await watching.communicate()
    out, err = seen + rest.decode(), err_bytes.decode()
    assert watching.returncode == 0, err
    assert "Traceback" not in err
    assert out.count("\x1b[H\x1b[2J") >= 2
    assert out.count("total lag 16 records") >= 2


async def test_lag_shows_the_live_and_the_bulk_lane(settings: Settings) -> None:
    await prepare(settings)
    # Without a bulk topic (positive control for the rows below): the live topic alone.
    alone = json.loads(run_lag(settings, "--json").stdout)
    assert {p["topic"] for p in alone["partitions"]} == {settings.topic_commands}
    bulk = settings.commands_bulk_topic
    await ensure_topics(KafkaConnection(settings.kafka_bootstrap), [KafkaTopic(bulk, 3)])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for i in range(7):
            await producer.send_and_wait(bulk, b"{}", key=f"k{i}".encode(), partition=2)
    finally:
        await producer.stop()
    answer = run_lag(settings, "--json")
    assert answer.returncode == 0, answer.stderr
    rows = {(p["topic"], p["partition"]): p for p in json.loads(answer.stdout)["partitions"]}
    assert {topic for topic, _ in rows} == {settings.topic_commands, bulk}
    assert rows[(bulk, 2)]["lag_records"] == 7
    assert rows[(settings.topic_commands, 1)]["lag_records"] == 6
    table = run_lag(settings).stdout
    assert bulk in table
    assert "total lag 23 records" in table
