"""The bulk lane against the real stack: live opt-outs overtake a bulk backlog, and a subject
with commands on both lanes keeps its events in version order.

Judged by the order in which answers arrive on the outcomes topic, never by a wall clock: a
live opt-out sent while the worker drains a 20,000-record bulk backlog is answered while
most of that backlog is still waiting; the same backlog on the live topic (the control) is
answered, on the live command's partition, before the live command is.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from service.entrypoints.server import Service
from service.settings import Settings
from tests.integration.test_pipeline_e2e import assert_consistent
from tests.support.contract_client import ContractClient, at, command

pytestmark = pytest.mark.integration

BACKLOG = 20_000
LIVE_PROBES = 3


async def produce_backlog(settings: Settings, topic: str, n: int) -> tuple[set[str], Counter[int]]:
    """`n` opt-outs of distinct subjects on `topic`, sent as fast as the producer batches
    them; returns their command ids and how many went to each partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=20
    )
    await producer.start()
    try:
        ids: set[str] = set()
        sends = []
        for i in range(n):
            doc = command(f"bulk-{i}", [("opt_out", "marketing", "email")], channel="import")
            ids.add(doc["command_id"])
            value = json.dumps(doc).encode()
            sends.append(await producer.send(topic, value, key=doc["subject_id"].encode()))
        sent = await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return ids, Counter(meta.partition for meta in sent)


async def live_probes(
    client: ContractClient, backlog: set[str], partitions: Counter[int]
) -> list[tuple[int, int]]:
    """Once the worker answered its first backlog command, one live opt-out at a time: per
    probe, how many backlog commands were answered when its outcome arrived, and how many
    of those were on the probe's partition (against that partition's backlog size)."""

    def answered() -> int:
        return sum(1 for c in backlog if c in client.outcomes)

    await client.wait_for(lambda: answered() > 0, within_s=120)
    seen: list[tuple[int, int]] = []
    for i in range(LIVE_PROBES):
        doc = command(f"live-{i}", [("opt_out", "marketing", "email")])
        meta = await client.send(doc)
        at_answer: list[int] = []

        def arrived(command_id: str = doc["command_id"], box: list[int] = at_answer) -> bool:
            if command_id in client.outcomes and not box:
                box.append(answered())
            return bool(box)

        await client.wait_for(arrived, within_s=180)
        assert client.outcomes[doc["command_id"]][0]["status"] == "applied"
        seen.append((at_answer[0], partitions[meta.partition]))
    return seen


async def test_live_opt_outs_overtake_a_bulk_backlog(settings: Settings) -> None:
    async with ContractClient(settings) as client:
        backlog, partitions = await produce_backlog(settings, settings.commands_bulk_topic, BACKLOG)
        async with Service(settings, with_worker=True):
            seen = await live_probes(client, backlog, partitions)
            # Every probe was answered while most of the bulk backlog still waited.
            for answered_before, _ in seen:
                assert answered_before < BACKLOG // 4, seen
            # And the backlog is applied in full afterwards: nothing was skipped.
            await client.wait_for(lambda: all(c in client.outcomes for c in backlog), 300)
    assert {client.outcomes[c][0]["status"] for c in backlog} == {"applied"}


async def test_control_the_same_backlog_on_the_live_topic_comes_first(
    settings: Settings,
) -> None:
    """Without the lane, a live opt-out waits for the whole backlog of its partition: the
    measurement above does see a backlog ahead of a live command when there is one."""
    async with ContractClient(settings) as client:
        backlog, partitions = await produce_backlog(settings, settings.topic_commands, BACKLOG)
        async with Service(settings, with_worker=True):
            seen = await live_probes(client, backlog, partitions)
    (first_answered, its_partition), *_ = seen
    assert first_answered >= its_partition * 9 // 10, seen
    assert first_answered >= BACKLOG // 4, seen


async def test_a_subject_on_both_lanes_keeps_its_events_in_version_order(
    settings: Settings,
) -> None:
    subject = "both-lanes-1"
    async with ContractClient(settings) as client:
        # A bulk backlog, so that the subject's bulk commands share batches with others.
        await produce_backlog(settings, settings.commands_bulk_topic, 2_000)
        async with Service(settings, with_worker=True):
            docs: list[dict[str, Any]] = []
            for i in range(40):
                action = "opt_out" if i % 2 == 0 else "opt_in"
                topic = ("marketing", "product", "marketing.newsletter")[i % 3]
                doc = command(subject, [(action, topic, "email")], occurred_at=at(i))
                docs.append(doc)
                lane = settings.commands_bulk_topic if i % 4 < 2 else settings.topic_commands
                await client.send(doc, topic=lane)
            await client.wait_for(
                lambda: all(d["command_id"] in client.outcomes for d in docs), 180
            )
            answers = [client.outcomes[d["command_id"]][0] for d in docs]
            top = max(int(a.get("version") or 0) for a in answers)
            assert top > 0, answers
            await client.event(subject, top, within_s=60)
            # Both lanes are on partition p of their topics: one member, one pipeline, so
            # the compacted topic has every version once, in order.
            versions = [e["version"] for e in client.events[subject]]
            assert versions == list(range(1, top + 1)), versions
            await assert_consistent(settings, client, subject)
            # The decision rule, not the lanes' interleaving, decides the final state.
            latest = {}
            for d in docs:
                change = d["changes"][0]
                latest[(change["topic"], change["channel"])] = change["action"]
            last = client.last_event(subject)
            stated = {
                (p["topic"], p["channel"]): p["action"]
                for p in last["preferences"]
                if not p["topic"].startswith("#")
            }
            assert stated == latest
