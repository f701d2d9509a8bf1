"""Cost growth: backlog throughput with more and more subjects already stored.

One schema for all tiers, seeded up to each tier's size in turn (``seed``: subjects, rules,
processed commands, events and consent history, as the worker leaves them); at each tier a
backlog of commands over the stored subjects (uniformly drawn, so most touch a subject that
exists) is drained by one worker on topics of its own, timed from the first outcome to
the last. A tier of N subjects also holds N processed commands and N stored events, so the
largest tier is also the throughput "with that many commands already processed".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import seed
from benchmarks.common import CommandGenerator, Isolation, process_env, worker_argv
from benchmarks.throughput import Process, drain
from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.bootstrap import contract_topics
from service.settings import Settings


async def run(
    base: Settings,
    tiers: Sequence[int],
    backlog_size: int,
    *,
    seed_number: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    shared = Isolation(uuid.uuid4().hex[:10])
    store = shared.service_settings(base)
    results: dict[str, Any] = {"backlog": backlog_size, "tiers": {}}
    cleanups: list[tuple[Isolation, Settings]] = [(shared, store)]
    stored = 0
    try:
        await shared.prepare_schema(store)
        for index, subjects in enumerate(sorted(tiers)):
            try:
                results["tiers"][str(subjects)] = await _tier(
                    base, store, index, stored, subjects, backlog_size, seed_number, cleanups, say
                )
            except Exception as exc:  # the tiers measured so far stay in the report
                results["error"] = f"at {subjects:,} subjects: {type(exc).__name__}: {exc}"
                say(f"[scaling] {results['error']}")
                break
            stored = subjects
    finally:
        for isolation, settings in reversed(cleanups):
            problems = await isolation.cleanup(settings)
            if problems:
                say(f"[scaling] cleanup incomplete: {problems}")
    return results


async def _tier(
    base: Settings,
    store: Settings,
    index: int,
    stored: int,
    subjects: int,
    backlog_size: int,
    seed_number: int,
    cleanups: list[tuple[Isolation, Settings]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    say(f"[scaling] seeding subjects {stored:,} to {subjects:,}")
    started = time.perf_counter()
    seeding = await seed.seed(store.database_dsn, store.database_schema, stored, subjects)
    seeding["total_s"] = round(time.perf_counter() - started, 1)
    say(f"[scaling] seeded in {seeding['total_s']} s")
    tier = Isolation(f"{store.database_schema.removeprefix('bench_')}t{index}")
    settings = tier.service_settings(base).model_copy(
        update={
            "database_schema": store.database_schema,
            "redis_prefix": store.redis_prefix,
            "http_port": 0,
            "admin_port": 0,
        }
    )
    cleanups.append((tier, settings))
    await ensure_topics(KafkaConnection(base.kafka_bootstrap), contract_topics(settings))
    generator = CommandGenerator(subjects, seed_number + index)
    backlog = [generator.command() for _ in range(backlog_size)]
    say(f"[scaling] {subjects:,} subjects stored: draining {backlog_size:,} commands")
    children, figures = await drain(
        settings,
        settings.topic_outcomes,
        [Process(f"worker-scaling-{subjects}", worker_argv(), process_env(settings))],
        backlog,
        phase=f"scaling@{subjects}",
        say=say,
    )
    for child in children:
        await child.stop()
    figures["seeding"] = seeding
    figures["tables"] = await seed.table_sizes(store.database_dsn, store.database_schema)
    return figures
