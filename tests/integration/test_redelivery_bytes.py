"""A redelivered record republishes, byte for byte, what its first delivery published.

For every kind of command and answer (applied, unchanged, rejected, invalid, duplicate, link,
unlink, merge, erase), against the real PostgreSQL: the stored outcome and events (the
processed log's outcome is kept as text, never parsed on the way in) come back exactly as
first encoded, though the subjects' state has moved on since.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.unit_of_work import PostgresCommandUnitOfWork
from service.application.ports import DeadLetterRecord, EventMessage, OutcomeMessage
from service.application.process_commands import ProcessCommands
from service.application.records import RawRecord
from service.application.waterfall import StepClock
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.model import SubjectState
from service.settings import Settings
from tests.support.contract_client import command

pytestmark = pytest.mark.integration

TOPIC = "commands"
T0 = datetime.now(UTC) - timedelta(hours=1)


@dataclass
class Published:
    events: list[EventMessage] = field(default_factory=list)
    outcomes: list[OutcomeMessage] = field(default_factory=list)

    async def publish(
        self,
        events: Sequence[EventMessage],
        outcomes: Sequence[OutcomeMessage],
        dead_letters: Sequence[DeadLetterRecord],
        *,
        clock: StepClock | None = None,
    ) -> None:
        self.events.extend(events)
        self.outcomes.extend(outcomes)


class NoCache:
    async def write(self, states: Sequence[SubjectState], ttl_seconds: int | None = None) -> int:
        return len(states)


def _per_key(events: Sequence[EventMessage]) -> dict[tuple[str, str], list[bytes | None]]:
    """Each key's messages in publication order: the order Kafka keeps (a key's partition),
    and the one readers of the compacted topic rely on. Across keys a redelivery may send
    them in another order (the stored events are read back by key)."""
    found: dict[tuple[str, str], list[bytes | None]] = {}
    for e in events:
        found.setdefault((e.tenant, e.subject_id), []).append(e.payload)
    return found


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _documents() -> list[dict[str, Any] | bytes]:
    news = [("opt_out", "marketing.newsletter", "email")]
    return [
        command("u1", news, command_id="applied", occurred_at=_at(2)),
        command(
            "u1",
            [("opt_in", "marketing.newsletter", "email")],
            command_id="older",
            occurred_at=_at(1),
        ),
        command(
            "u1", [("opt_out", "no-such-topic", "email")], command_id="unknown", occurred_at=_at(3)
        ),
        {"command_id": "invalid", "subject_id": "u1", "changes": "not a list"},
        command("u1", news, command_id="applied", occurred_at=_at(2)),  # resent: duplicate
        command(
            "u1",
            [],
            command_id="link",
            occurred_at=_at(4),
            kind="link",
            identifier="email:Ann@Example.com",
        ),
        command(
            "email:ann@example.com",
            [("opt_out", "*", "sms")],
            command_id="via-link",
            occurred_at=_at(5),
        ),
        command(
            "u1",
            [],
            command_id="unlink",
            occurred_at=_at(6),
            kind="unlink",
            identifier="email:ann@example.com",
        ),
        command("u2", news, command_id="u2-applied", occurred_at=_at(6)),
        command("u2", [], command_id="merge", occurred_at=_at(7), kind="merge", into="u1"),
        command("u3", news, command_id="u3-applied", occurred_at=_at(7)),
        command("u3", [], command_id="erase", occurred_at=_at(8), kind="erase"),
    ]


def _records() -> list[RawRecord]:
    return [
        RawRecord(TOPIC, 0, offset, b"k", doc if isinstance(doc, bytes) else orjson.dumps(doc), 0)
        for offset, doc in enumerate(_documents())
    ]


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[Any]:
    created = await create_pool(settings.database_dsn, settings.database_schema, 2)
    yield created
    await created.close()


def _process(pool: Any, published: Published) -> ProcessCommands:
    return ProcessCommands(
        lambda: PostgresCommandUnitOfWork(pool),
        NoCache(),
        published,
        DEFAULT_CATALOG,
        max_record_bytes=64 * 1024,
        max_future=timedelta(minutes=5),
        identifier_key=b"k" * 32,
    )


async def test_each_redelivery_publishes_the_first_publication_byte_for_byte(pool: Any) -> None:
    first: list[Published] = []
    for record in _records():  # one record per batch: each is a delivery of its own
        published = Published()
        await _process(pool, published)([record])
        first.append(published)
    statuses = [orjson.loads(p.outcomes[0].payload)["status"] for p in first]
    # Positive control: every kind of answer is in the run, and events were published.
    assert statuses == [
        "applied",
        "unchanged",
        "rejected",
        "rejected",
        "duplicate",
        "applied",
        "applied",
        "applied",
        "applied",
        "applied",
        "applied",
        "applied",
    ]
    assert sum(len(p.events) for p in first) >= 8
    assert any(e.payload is None for p in first for e in p.events)  # merge/erase tombstones

    for record, before in zip(_records(), first, strict=True):
        again = Published()
        await _process(pool, again)([record])  # the same delivery: a crash redelivery
        assert again.outcomes == before.outcomes, record.offset
        assert _per_key(again.events) == _per_key(before.events), record.offset
        assert len(again.events) == len(before.events)

    # All of them redelivered in one batch: the same bytes, in the same order.
    together = Published()
    await _process(pool, together)(_records())
    assert together.outcomes == [o for p in first for o in p.outcomes]
    assert _per_key(together.events) == _per_key([e for p in first for e in p.events])
