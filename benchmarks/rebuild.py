"""``optout cache rebuild`` and ``optout events republish`` on a large table: subjects per second.

Seeds ``BENCH_REBUILD_SUBJECTS`` subjects (100,000 by default) straight into PostgreSQL, as
the worker would have left them: one to three rules each and the stored event of the
current version (the bytes the worker publishes, built by the same encoder). Then, through
the use cases the commands run (without the process start-up):

- a rebuild into an empty Redis (every state written),
- a rebuild again (every state already current: the compare-and-set writes nothing),
- a republish onto an empty compacted topic (every subject's stored event).

Run alone with ``.venv/bin/python -m benchmarks.rebuild`` (needs the stack); it uses its own
schema, Redis prefix and topics and removes them afterwards. Writes
``bench-results/rebuild.json``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from benchmarks.common import RESULTS_DIR, Isolation, env_int, write_json
from service.application.republish import snapshot_payload
from service.application.subject_pages import Scope, StoredSubject
from service.bootstrap import cache_rebuilder, snapshot_republisher
from service.domain.events import event_id_for
from service.domain.model import Action, Rule, SubjectKey, SubjectState
from service.settings import Settings

TOPICS = ("marketing", "marketing.newsletter", "product", "reminders", "data.analytics")
CHANNELS = ("email", "sms", "push")
BATCH = 1000


def seed_rows(count: int, seed: int) -> tuple[list[tuple[Any, ...]], ...]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    subjects: list[tuple[Any, ...]] = []
    rules: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for i in range(count):
        key = SubjectKey("default", f"user-{i}")
        version = rng.randint(1, 5)
        picked: dict[tuple[str, str], Rule] = {}
        for j in range(rng.randint(1, 3)):
            topic = rng.choice(TOPICS)
            channel = "*" if topic.startswith("data.") else rng.choice(CHANNELS)
            moment = now - timedelta(seconds=rng.randint(0, 86_400))
            action: Action = "opt_out" if rng.random() < 0.7 else "opt_in"
            picked[(topic, channel)] = Rule(topic, channel, action, moment, "web", f"c-{i}-{j}")
        state = SubjectState(key, version, picked)
        subjects.append((key.tenant, key.subject_id, version, now))
        rules.extend(
            (key.tenant, key.subject_id, r.topic, r.channel, r.action, r.occurred_at,
             r.source_channel, r.command_id)
            for r in picked.values()
        )  # fmt: skip
        payload = snapshot_payload(StoredSubject(state, now)).decode()
        events.append(
            (key.tenant, key.subject_id, version, f"c-{i}", uuid.UUID(event_id_for(
                key.tenant, key.subject_id, version)), now, payload)
        )  # fmt: skip
    return subjects, rules, events


async def seed(settings: Settings, count: int) -> float:
    subjects, rules, events = seed_rows(count, seed=1)
    started = time.perf_counter()
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        await conn.copy_records_to_table(
            "subjects", records=subjects, columns=["tenant", "subject_id", "version", "updated_at"]
        )
        await conn.copy_records_to_table(
            "rules",
            records=rules,
            columns=["tenant", "subject_id", "topic", "channel", "action", "occurred_at",
                     "source_channel", "command_id"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "preference_events",
            records=events,
            columns=["tenant", "subject_id", "version", "command_id", "event_id",
                     "effective_at", "payload"],
        )  # fmt: skip
        # What autovacuum does on its own soon after a bulk load; the pages' plans need it.
        await conn.execute("ANALYZE subjects; ANALYZE rules; ANALYZE preference_events")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def timed_rebuild(settings: Settings) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        use_case = await cache_rebuilder(settings, stack)
        started = time.perf_counter()
        tally = await use_case.run(Scope(), BATCH)
        seconds = time.perf_counter() - started
    return {
        "subjects": tally.done,
        "written": tally.written,
        "seconds": round(seconds, 2),
        "subjects_per_s": round(tally.done / seconds),
    }


async def timed_republish(settings: Settings) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        use_case = await snapshot_republisher(settings, stack)
        started = time.perf_counter()
        tally = await use_case.run(Scope(), BATCH)
        seconds = time.perf_counter() - started
    return {
        "subjects": tally.done,
        "records": tally.records,
        "seconds": round(seconds, 2),
        "subjects_per_s": round(tally.done / seconds),
    }


async def run(base: Settings) -> dict[str, Any]:
    isolation = Isolation(uuid.uuid4().hex[:10])
    settings = isolation.service_settings(base)
    count = env_int("BENCH_REBUILD_SUBJECTS", 100_000)
    await isolation.prepare_schema(settings)
    try:
        seeding = await seed(settings, count)
        result = {
            "subjects": count,
            "batch": BATCH,
            "seed_seconds": round(seeding, 2),
            "rebuild_empty_redis": await timed_rebuild(settings),
            "rebuild_already_current": await timed_rebuild(settings),
            "republish": await timed_republish(settings),
        }
    finally:
        problems = await isolation.cleanup(settings)
    result["cleanup_problems"] = problems
    write_json(RESULTS_DIR / "rebuild.json", result)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run(Settings())), indent=2))
