"""The history page reads through its indexes: never a scan of the whole table, never every
row of the subject sorted before `LIMIT`, whatever the history's length and the page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from service.adapters.postgres import history_queries
from service.settings import Settings

pytestmark = pytest.mark.integration

ROWS_OF_THE_SUBJECT = 20_000
ROWS_OF_OTHERS = 20_000
LIMIT = 50


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def fill(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO consent_history (tenant, subject_id, command_id, action, topic, channel,
                                     occurred_at, effective_at, source_channel, addressed_as)
        SELECT 'default', CASE WHEN g <= $1::int THEN 'flooded' ELSE 'other-' || (g % 997) END,
               'c-' || g, CASE WHEN g % 2 = 0 THEN 'opt_in' ELSE 'opt_out' END,
               'marketing', 'email', now(), now() + g * interval '1 millisecond', 'web',
               CASE WHEN g % 10 = 0 THEN 'email:x' || g || '@example.com' END
        FROM generate_series(1, $1::int + $2::int) g
        """,
        ROWS_OF_THE_SUBJECT,
        ROWS_OF_OTHERS,
    )
    await conn.execute(
        "INSERT INTO subjects (tenant, subject_id, version) VALUES ('default', 'flooded', 1)"
    )
    await conn.execute("ANALYZE consent_history")


async def plan_of(conn: asyncpg.Connection, *args: object) -> dict[str, Any]:
    explained = await conn.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + history_queries.HISTORY_PAGE, *args
    )
    found: dict[str, Any] = json.loads(explained)[0]["Plan"]
    return found


async def test_a_page_reads_at_most_its_limit_per_name_and_index(settings: Settings) -> None:
    conn = await asyncpg.connect(
        settings.database_dsn, server_settings={"search_path": settings.database_schema}
    )
    try:
        await fill(conn)
        first = await conn.fetch(
            history_queries.HISTORY_PAGE, "default", "flooded", None, None, LIMIT
        )
        assert len(first) == LIMIT
        middle = first[-1]
        for args in [
            ("default", "flooded", None, None, LIMIT),
            ("default", "flooded", middle["effective_at"], middle["id"], LIMIT),
        ]:
            plan = await plan_of(conn, *args)
            scans = [n for n in nodes(plan) if n.get("Relation Name") == "consent_history"]
            assert scans, "the plan reads no consent_history at all"
            kinds = {n["Node Type"] for n in scans}
            assert "Seq Scan" not in kinds, kinds
            assert kinds <= {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}, kinds
            # Per name and index, at most the page's rows: none of the 20,000 before LIMIT.
            read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
            assert read <= 4 * LIMIT, read
            for sort in (n for n in nodes(plan) if n["Node Type"] == "Sort"):
                assert sort["Actual Rows"] <= 3 * LIMIT, sort
        # The second page continues the first exactly.
        second = await conn.fetch(
            history_queries.HISTORY_PAGE,
            "default",
            "flooded",
            middle["effective_at"],
            middle["id"],
            LIMIT,
        )
        assert [r["command_id"] for r in second] == [
            f"c-{g}" for g in range(LIMIT + 1, 2 * LIMIT + 1)
        ]
    finally:
        await conn.close()
