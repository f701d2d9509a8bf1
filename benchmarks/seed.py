"""Stored data for the cost-growth benchmark: millions of subjects as the worker leaves them.

Subject ``n`` looks as if the worker had applied one command ``seed-n`` to it a while ago:
a ``subjects`` row at version 1, one opt-out rule, its processed-command log entry with the
outcome document, the stored preference-changed event and one consent-history row. Every
table is filled by one ``INSERT … SELECT`` over ``generate_series`` (set-based, in the
server, no rows through the driver), into the real, logged tables with every index and
constraint in place: the same tables the worker then writes to, so what is measured is the
worker's cost with that much data behind it.

Names sort as they are numbered (``user-00000042``), so each index grows at its right edge
and seeding does not pay for random B-tree inserts the worker never makes in one go.

The column lists are read from the catalog at run time and matched against the expressions
below: a migration adding a nullable column or one with a default needs no change here; one
adding a NOT NULL column without a default makes ``seed`` fail with the column's name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import asyncpg

SUBJECT_DIGITS = 8


def subject_name(n: int) -> str:
    """The id of the n-th benchmark subject (the load generator uses the same names)."""
    return f"user-{n:0{SUBJECT_DIGITS}d}"


# Computed once per row of a table that uses them (a LATERAL subquery, kept apart by
# OFFSET 0 so the planner does not copy the expressions into every place that uses them).
_PER_SUBJECT = {
    "sid": f"'user-' || lpad(n::text, {SUBJECT_DIGITS}, '0')",
    "cid": f"'seed-' || lpad(n::text, {SUBJECT_DIGITS}, '0')",
    "topic": "(ARRAY['marketing', 'marketing.newsletter', 'marketing.promotions', 'product', "
    "'product.updates', 'product.tips', 'reminders'])[1 + n % 7]",
    "channel": "(ARRAY['email', 'sms', 'push', 'in_app', 'voice', 'whatsapp'])[1 + n % 6]",
    "event_id": "gen_random_uuid()",
}
# One opt-out per subject, spread over the catalog topics and channels the load uses, all
# dated a while ago (one moment: formatting a time per row was a third of the seeding):
# every command the benchmark sends later is newer.
SEEDED_AT = "2025-06-01T00:00:00.000Z"
_AT = f"timestamptz '{SEEDED_AT}'"

# The documents as the worker encodes them (service/contract/encode.py), same fields and
# sizes: the outcome of an applied command and the event carrying the whole rule set.
_OUTCOME = f"""format('{{"command_id":"%s","tenant":"default","subject_id":"%s",'
    '"status":"applied","reason":null,"detail":null,"version":1,'
    '"effective_at":"{SEEDED_AT}","applied_to":null}}', v.cid, v.sid)::json"""
_PAYLOAD = f"""format('{{"event_id":"%s","tenant":"default","subject_id":"%s","version":1,'
    '"effective_at":"{SEEDED_AT}","command_id":"%s","source":{{"channel":"web","app":"bench"}},'
    '"changes":[{{"action":"opt_out","topic":"%s","channel":"%s",'
    '"occurred_at":"{SEEDED_AT}"}}],"preferences":[{{"topic":"%s","channel":"%s",'
    '"action":"opt_out","occurred_at":"{SEEDED_AT}","source_channel":"web","command_id":"%s"}}]}}',
    v.event_id, v.sid, v.cid, v.topic, v.channel, v.topic, v.channel, v.cid)::json"""

# Per table: column -> expression over n (the subject's number). Columns not named here
# keep their defaults (or NULL).
COLUMNS: dict[str, dict[str, str]] = {
    "subjects": {
        "tenant": "'default'",
        "subject_id": "v.sid",
        "version": "1",
        "updated_at": _AT,
    },
    "rules": {
        "tenant": "'default'",
        "subject_id": "v.sid",
        "topic": "v.topic",
        "channel": "v.channel",
        "action": "'opt_out'",
        "occurred_at": _AT,
        "source_channel": "'web'",
        "command_id": "v.cid",
        "updated_at": _AT,
    },
    "processed_commands": {
        "command_id": "v.cid",
        "content_hash": "repeat('0', 52) || lpad(n::text, 12, '0')",
        "tenant": "'default'",
        "subject_id": "v.sid",
        "source_topic": "'optout.commands.v1'",
        "source_partition": "(n % 6)::int",
        "source_offset": "n / 6",
        "outcome": _OUTCOME,
        "processed_at": _AT,
    },
    "preference_events": {
        "tenant": "'default'",
        "subject_id": "v.sid",
        "version": "1",
        "command_id": "v.cid",
        "event_id": "v.event_id",
        "effective_at": _AT,
        "payload": _PAYLOAD,
    },
    "consent_history": {
        "tenant": "'default'",
        "subject_id": "v.sid",
        "command_id": "v.cid",
        "action": "'opt_out'",
        "topic": "v.topic",
        "channel": "v.channel",
        "occurred_at": _AT,
        "effective_at": _AT,
        "source_channel": "'web'",
        "source_app": "'bench'",
        "source_ip": "'203.0.113.7'",
        "source_user_agent": "'Mozilla/5.0 (bench)'",
        "recorded_at": _AT,
    },
}

_TABLE_COLUMNS = """
SELECT table_name, column_name, is_nullable = 'YES' AS nullable,
       column_default IS NOT NULL OR is_identity = 'YES' OR is_generated <> 'NEVER' AS defaulted
FROM information_schema.columns
WHERE table_schema = $1 AND table_name = ANY($2::text[])
"""


class SeedError(RuntimeError):
    """The schema has a table or a required column this seeder does not know how to fill."""


def insert_statement(table: str, columns: Mapping[str, tuple[bool, bool]]) -> str:
    """The ``INSERT … SELECT`` for one table, given its columns as (nullable, defaulted).

    ``$1`` and ``$2`` are the first and last subject numbers (inclusive).
    """
    known = COLUMNS[table]
    if not columns:
        raise SeedError(f"table {table} not found")
    missing = [
        name
        for name, (nullable, defaulted) in columns.items()
        if name not in known and not nullable and not defaulted
    ]
    if missing:
        raise SeedError(f"{table}: no seed value for required column(s) {', '.join(missing)}")
    names = [name for name in known if name in columns]
    values = [known[name] for name in names]
    used = [k for k in _PER_SUBJECT if any(f"v.{k}" in v for v in values)]
    lateral = ", ".join(f"{_PER_SUBJECT[k]} AS {k}" for k in used)
    return (
        f"INSERT INTO {table} ({', '.join(names)}) "
        f"SELECT {', '.join(values)} "
        "FROM generate_series($1::bigint, $2::bigint) AS g(n) "
        f"CROSS JOIN LATERAL (SELECT {lateral} OFFSET 0) AS v"
    )


async def statements(conn: Any, schema: str) -> dict[str, str]:
    rows = await conn.fetch(_TABLE_COLUMNS, schema, list(COLUMNS))
    by_table: dict[str, dict[str, tuple[bool, bool]]] = {t: {} for t in COLUMNS}
    for row in rows:
        by_table[row["table_name"]][row["column_name"]] = (row["nullable"], row["defaulted"])
    return {table: insert_statement(table, cols) for table, cols in by_table.items()}


async def seed(dsn: str, schema: str, first: int, last: int) -> dict[str, Any]:
    """Store subjects ``first`` to ``last - 1`` (and their rows in every table).

    The tables are filled concurrently, one statement and one connection each (the machine
    has few cores; the server does the work); then each is vacuumed and analysed, as
    autovacuum would after a while: the worker's plans see the new sizes, and the drain that
    follows measures a store of that size rather than autovacuum's first pass over a bulk
    load running beside it. Returns the seconds each step took.
    """
    if last <= first:
        return {"subjects_added": 0}
    pool = await asyncpg.create_pool(
        dsn, min_size=0, max_size=len(COLUMNS), server_settings={"search_path": schema}
    )
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            sql = await statements(conn, schema)

        async def fill(table: str) -> tuple[str, float]:
            started = time.perf_counter()
            async with pool.acquire() as conn:
                await conn.execute(sql[table], first, last - 1, timeout=3_600)
            return table, round(time.perf_counter() - started, 1)

        started = time.perf_counter()
        timings = dict(await asyncio.gather(*(fill(table) for table in sql)))
        inserted = time.perf_counter()

        async def vacuum(table: str) -> None:
            async with pool.acquire() as conn:
                await conn.execute(f"VACUUM (ANALYZE) {table}", timeout=3_600)

        await asyncio.gather(*(vacuum(table) for table in sql))
        return {
            "subjects_added": last - first,
            "insert_s": round(inserted - started, 1),
            "vacuum_analyze_s": round(time.perf_counter() - inserted, 1),
            "per_table_s": timings,
        }
    finally:
        await pool.close()


async def table_sizes(dsn: str, schema: str) -> dict[str, Any]:
    """Rows (estimated, from the statistics) and bytes with indexes, per seeded table."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname, c.reltuples::bigint AS rows,
                   pg_total_relation_size(c.oid) AS bytes
            FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
            WHERE ns.nspname = $1 AND c.relname = ANY($2::text[])
            """,
            schema,
            list(COLUMNS),
        )
    finally:
        await conn.close()
    return {r["relname"]: {"rows": r["rows"], "mib": round(r["bytes"] / 2**20, 1)} for r in rows}
