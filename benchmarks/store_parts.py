"""PostgreSQL's CPU per command for each part of a batch's transaction, read on its backend.

    python -m benchmarks.store_parts [--batches 14] [--size 500]

`make bench` gives PostgreSQL's CPU per command in all; this splits it by statement and by
kind of row, so what to write less of is chosen from figures. It drives the worker's own
unit of work (load, the pure core, the store statement, commit) over generated commands, in
a schema of its own, and reads the backend's on-CPU time from ``/proc/<pid>/schedstat``
around each call (PostgreSQL must run on this machine). Each batch is loaded and decided
once; then the store statement runs on the same rows in full and with each part left out in
turn (its CTE reduced to a SELECT of its parameters), each in a savepoint rolled back, before
the full statement is run for good and committed. A part's cost is the full statement's
less the statement without it, medians over the batches. The writes are those of the
backlog benchmark's command mix; the figures vary with the machine's moment, the
differences less than the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from benchmarks.common import RESULTS_DIR, CommandGenerator, Isolation, write_json
from service.adapters.postgres import queries
from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.unit_of_work import PostgresCommandUnitOfWork
from service.application.process_commands import encode_outputs
from service.contract.decode import DeadLetter, decode_command
from service.domain.apply import apply_batch
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import Delivery, Malformed, Received
from service.settings import Settings

PARTS = ("upsert_rules", "bump_versions", "history", "events", "processed")
STEPS = ("load", "store", "commit")


def without(part: str) -> str:
    """The store statement with one part's CTE reduced to a SELECT of its parameters (a
    SELECT nobody reads is not run; the parameters keep their types)."""
    sql = queries.STORE_BATCH
    found = re.search(rf"\n{part} AS \(.*?\n\)(,?)", sql, re.S)
    assert found is not None, part
    params = sorted(set(re.findall(r"\$\d::[a-z\[\]]+", found.group(0))))
    return (
        f"{sql[: found.start()]}\n{part} AS (SELECT {', '.join(params)}){found.group(1)}"
        + (sql[found.end() :])
    )


def on_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0])


class _Measured:
    """The unit of work's connection, with the backend's CPU of each call added to `spent`
    and the store statement swapped for the variant under test."""

    def __init__(self, conn: Any, pid: int, store_sql: str, spent: dict[str, int]) -> None:
        self._conn, self._pid = conn, pid
        self.use(store_sql, spent)

    def use(self, store_sql: str, spent: dict[str, int]) -> None:
        self._store_sql, self._spent = store_sql, spent

    async def _timed(self, method: str, sql: str, *args: Any) -> Any:
        step = "load"
        if sql is queries.STORE_BATCH:
            step, sql = "store", self._store_sql
        before = on_cpu_ns(self._pid)
        result = await getattr(self._conn, method)(sql, *args)
        self._spent[step] += on_cpu_ns(self._pid) - before
        return result

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self._timed("fetch", sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._timed("fetchval", sql, *args)

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._timed("execute", sql, *args)


def _batch(generator: CommandGenerator, size: int, first: int) -> list[Received | Malformed]:
    records: list[Received | Malformed] = []
    for offset in range(first, first + size):
        decoded = decode_command(
            generator.next()[2], Delivery("commands", 0, offset), max_bytes=64 * 1024
        )
        assert not isinstance(decoded, DeadLetter)
        records.append(decoded)
    return records


async def _run_batch(
    pool: Any, pid: int, variants: dict[str, str], records: Sequence[Received | Malformed]
) -> dict[str, dict[str, int]]:
    """One batch: load and decide once, then every variant of the store statement on the
    same rows in a savepoint rolled back, then the full statement for good, and commit."""
    spent = {name: dict.fromkeys(STEPS, 0) for name in variants}
    keys = sorted({r.command.key for r in records if isinstance(r, Received)})
    command_keys = list(
        {(r.command.tenant, r.command.command_id) for r in records if isinstance(r, Received)}
    )
    uow = PostgresCommandUnitOfWork(pool)
    await uow.__aenter__()
    conn = uow._conn
    measured = _Measured(conn, pid, queries.STORE_BATCH, spent["all"])
    uow._conn = measured
    try:
        loaded = await uow.load(keys, command_keys, {r.delivery for r in records})
        result = apply_batch(
            DEFAULT_CATALOG,
            loaded.states,
            loaded.processed,
            records,
            now=loaded.now,
            effective_at=loaded.now,
            max_future=timedelta(days=1),
        )
        to_save = encode_outputs(result, loaded).to_save
        # A different order per batch: what a rolled-back variant leaves behind (dead index
        # entries) weighs on each variant alike.
        names = list(variants)
        turn = records[0].delivery.offset // len(records) % len(names)
        for name in names[turn:] + names[:turn]:
            savepoint = conn.transaction()
            await savepoint.start()
            measured.use(variants[name], spent[name])
            await uow.save(to_save)
            await savepoint.rollback()
        measured.use(queries.STORE_BATCH, {"load": 0, "store": 0})
        await uow.save(to_save)
    finally:
        uow._conn = conn
    before = on_cpu_ns(pid)
    await uow.__aexit__(None, None, None)
    spent["all"]["commit"] = on_cpu_ns(pid) - before
    return spent


async def measure(batches_per_variant: int, size: int) -> dict[str, Any]:
    isolation = Isolation(uuid.uuid4().hex[:10])
    settings = isolation.service_settings(Settings())
    await isolation.prepare_schema(settings)
    pool = await create_pool(settings.database_dsn, settings.database_schema, 1)
    variants = {"all": queries.STORE_BATCH} | {f"without {p}": without(p) for p in PARTS}
    spent: dict[str, list[dict[str, int]]] = {name: [] for name in variants}
    generator = CommandGenerator(100_000, 1)
    try:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        # Two warm-up batches (plans, caches), then the measured ones.
        for round_ in range(batches_per_variant + 2):
            found = await _run_batch(pool, pid, variants, _batch(generator, size, round_ * size))
            if round_ >= 2:
                for name, one in found.items():
                    spent[name].append(one)
    finally:
        await pool.close()
        await isolation.cleanup(settings)

    def per_command_us(name: str, step: str) -> float:
        return round(statistics.median(s[step] for s in spent[name]) / size / 1000, 1)

    steps = {name: {step: per_command_us(name, step) for step in STEPS} for name in variants}
    full = steps["all"]["store"]
    return {
        "batch_size": size,
        "batches_per_variant": batches_per_variant,
        "us_per_command": steps["all"] | {"total": round(sum(steps["all"].values()), 1)},
        "store_parts_us_per_command": {
            p: round(full - steps[f"without {p}"]["store"], 1) for p in PARTS
        },
        "variants": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=14, help="measured batches per variant")
    parser.add_argument("--size", type=int, default=500, help="commands per batch")
    args = parser.parse_args()
    found = asyncio.run(measure(args.batches, args.size))
    write_json(RESULTS_DIR / "store-parts.json", found)
    print(f"PostgreSQL CPU per command (us, medians of {args.batches} batches of {args.size}):")
    for step, value in found["us_per_command"].items():
        print(f"  {step:<8} {value:>7}")
    print("the store statement's parts:")
    for part, value in found["store_parts_us_per_command"].items():
        print(f"  {part:<14} {value:>7}")


if __name__ == "__main__":
    main()
