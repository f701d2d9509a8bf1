"""Hostile records against the real stack: nothing vanishes, nothing stalls a partition.

Each test produces what a careless or hostile producer could (binary or null headers, a
record a batch loses before the handler, a value PostgreSQL refuses, a huge compressed
value) followed by a valid command on the same partition, and reads only the output topics
(plus the worker's log lines for the gap check).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service.adapters.kafka import consumer as consumer_module
from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.sizes import KAFKA_DEFAULT_MAX_MESSAGE_BYTES, read_size_limits
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, at, command

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[ContractClient]:
    async with Service(settings, with_worker=True), ContractClient(settings) as c:
        await c.apply(command("warm-up", [("opt_out", "marketing", "sms")]))
        yield c


async def within(seconds: float, wait: Awaitable[None]) -> float:
    started = time.monotonic()
    await asyncio.wait_for(wait, seconds)
    return time.monotonic() - started


async def test_odd_headers_are_never_interpreted(client: ContractClient) -> None:
    """Binary, null and hundreds of headers before a valid command on the same partition."""
    headers: list[list[tuple[str, bytes | None]]] = [
        [("trace-id", b"\xff\xfe\x00\x80binary")],
        [("nothing", None)],
        [(f"h{i}", bytes([i % 256]) * 16) for i in range(500)],
        [],
    ]
    docs = [
        command("odd", [("opt_out", "marketing", "email")], occurred_at=at(i)) for i in range(4)
    ]
    for doc, extra in zip(docs, headers, strict=True):
        await client.send(doc, key="odd", headers=extra)

    def answered() -> bool:
        return all(d["command_id"] in client.outcomes for d in docs)

    await within(1.0, client.wait_for(answered))
    outcomes = [client.outcomes[d["command_id"]][0] for d in docs]
    # Each later statement wins: applied in offset order, versions 1 to 4.
    assert [(o["status"], o["version"]) for o in outcomes] == [("applied", v) for v in range(1, 5)]
    assert client.dead_letters == []


@pytest.fixture
def losing_first_marked_batch(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker's parser raises once for a batch holding a marked record, as faststream's
    own parser did for binary headers: faststream swallows it and fetches on."""
    lost: list[int] = []
    original = consumer_module.raw_batch_parser

    def parser(consumer_of: Callable[[], Any]) -> Any:
        parse = original(consumer_of)

        async def losing(records: tuple[Any, ...]) -> Any:
            marked = [r for r in records if ("x-test-lose", b"1") in r.headers]
            if marked and not lost:
                lost.extend(r.offset for r in marked)
                raise ValueError("batch lost before the handler")
            return await parse(records)

        return losing

    monkeypatch.setattr(consumer_module, "raw_batch_parser", parser)
    return lost


async def test_a_batch_lost_before_the_handler_is_fetched_again(
    settings: Settings, losing_first_marked_batch: list[int]
) -> None:
    async with Service(settings, with_worker=True), ContractClient(settings) as client:
        await client.apply(command("gap", [("opt_out", "marketing", "email")], occurred_at=at(1)))
        lost = command("gap", [("opt_out", "product", "email")], occurred_at=at(2))
        after = command("gap", [("opt_out", "reminders", "email")], occurred_at=at(3))
        with structlog.testing.capture_logs() as logs:
            await client.send(lost, headers=[("x-test-lose", b"1")])
            for _ in range(50):
                if losing_first_marked_batch:
                    break
                await asyncio.sleep(0.02)
            assert losing_first_marked_batch, "the marked batch was not lost"
            await client.send(after)
            await client.outcome(after["command_id"], 10)
            await client.outcome(lost["command_id"], 10)
        assert client.outcomes[lost["command_id"]][0]["version"] == 2
        assert client.outcomes[after["command_id"]][0]["version"] == 3
        gaps = [e for e in logs if e["event"] == "offset_gap"]
        assert [(g["code"], g["expected"], g["first"]) for g in gaps] == [
            ("OFFSET_GAP_SEEK_BACK", losing_first_marked_batch[0], losing_first_marked_batch[0] + 1)
        ]


async def test_a_gap_still_there_after_the_seek_is_accepted(settings: Settings) -> None:
    """Records deleted below the committed offset (retention): the gap is real, accepted."""
    async with ContractClient(settings) as client:
        async with Service(settings, with_worker=True):
            await client.apply(command("kept", [("opt_out", "marketing", "email")]))
        sent = [
            await client.send(command("kept", [("opt_out", t, "email")], occurred_at=at(i)))
            for i, t in enumerate(["product", "reminders", "product.tips", "marketing.promotions"])
        ]
        tp = TopicPartition(settings.topic_commands, sent[0].partition)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_records({tp: RecordsToDelete(sent[2].offset)}, timeout_ms=10_000)
        finally:
            await admin.close()
        with structlog.testing.capture_logs() as logs:
            async with Service(settings, with_worker=True):
                await client.wait_for(lambda: len(client.outcomes) == 3, 30)
        codes = [e.get("code") for e in logs if e["event"].startswith("offset_gap")]
        assert codes == ["OFFSET_GAP_SEEK_BACK", "OFFSET_GAP_ACCEPTED"]


async def test_a_value_postgresql_refuses_is_rejected_alone(
    settings: Settings, client: ContractClient
) -> None:
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        await conn.execute(
            """
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.subject_id = 'poison' THEN
                RAISE EXCEPTION 'refused' USING ERRCODE = '22P05';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON rules
              FOR EACH ROW EXECUTE FUNCTION refuse_poison();
            """
        )
    finally:
        await conn.close()
    docs = [
        command("s1", [("opt_out", "marketing", "email")], occurred_at=at(1)),
        command("s2", [("opt_out", "marketing", "email")]),
        command("poison", [("opt_out", "marketing", "email")]),
        command("s1", [("opt_in", "marketing", "email")], occurred_at=at(2)),
        command("s3", [("opt_out", "product", "push")]),
    ]
    assert client._producer is not None
    sends = [
        await client._producer.send(settings.topic_commands, orjson_bytes(d), key=b"one-partition")
        for d in docs
    ]
    await asyncio.gather(*sends)

    def answered() -> bool:
        return all(d["command_id"] in client.outcomes for d in docs)

    await within(1.0, client.wait_for(answered))
    got = [client.outcomes[d["command_id"]][0] for d in docs]
    assert [(o["status"], o["reason"]) for o in got] == [
        ("applied", None),
        ("applied", None),
        ("rejected", "invalid_payload"),
        ("applied", None),
        ("applied", None),
    ]
    assert got[2]["detail"] == "refused by PostgreSQL (SQLSTATE 22P05)"
    assert got[3]["version"] == 2  # s1's two commands, in order
    # The partition goes on.
    after = command("s4", [("opt_out", "marketing", "sms")])
    await client.send(after, key="one-partition")
    assert (await client.outcome(after["command_id"], 1.0))["status"] == "applied"


def orjson_bytes(doc: dict[str, Any]) -> bytes:
    import json

    return json.dumps(doc).encode()


async def set_topic_config(settings: Settings, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (response,) = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs)]
        )
        assert all(r[0] == 0 for r in response.resources)
    finally:
        await admin.close()


@pytest.mark.parametrize("dlq_max_bytes", [None, 8_000_000])
async def test_a_huge_compressed_value_lands_in_the_dlq(
    settings: Settings, dlq_max_bytes: int | None
) -> None:
    value = b'{"command_id": "huge", "padding": "' + b"0123456789" * 300_000 + b'"}'
    async with ContractClient(settings) as client:
        if dlq_max_bytes is not None:
            await set_topic_config(
                settings, settings.topic_dlq, {"max.message.bytes": str(dlq_max_bytes)}
            )
            # The broker applies a config change a moment after acknowledging it.
            for _ in range(100):
                limits = await read_size_limits(
                    KafkaConnection(settings.kafka_bootstrap), settings.topic_dlq
                )
                if limits.dead_letter_bytes == dlq_max_bytes:
                    break
                await asyncio.sleep(0.05)
        async with Service(settings, with_worker=True) as service:
            assert service.container is not None
            assert service.container.output is not None
            expected = dlq_max_bytes or KAFKA_DEFAULT_MAX_MESSAGE_BYTES
            assert service.container.output.limits.dead_letter_bytes == expected
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap,
                compression_type="zstd",
                max_request_size=4_000_000,
            )
            await producer.start()
            try:
                await producer.send_and_wait(settings.topic_commands, value, key=b"huge-key")
            finally:
                await producer.stop()
            after = command("huge-after", [("opt_out", "marketing", "email")])
            await client.send(after, key=b"huge-key")
            assert (await client.outcome(after["command_id"], 10))["status"] == "applied"
            await client.wait_for(lambda: len(client.dead_letters) == 1, 10)
    key, dead, headers = client.dead_letters[0]
    assert key == b"huge-key"
    assert headers["x-error"].startswith(b"value larger than")
    assert headers["x-original-topic"] == settings.topic_commands.encode()
    assert headers["x-original-offset"] == b"0"
    assert dead is not None
    if dlq_max_bytes is None:
        assert headers["x-truncated"] == b"true"
        assert headers["x-original-size"] == str(len(value)).encode()
        assert value.startswith(dead)
        assert 900_000 < len(dead) < 1_048_588
    else:
        assert "x-truncated" not in headers, headers.keys()
        assert dead == value
