"""The proof-of-consent export without a database: resolution, paging, cursors, rendering."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.application.history import (
    ConsentHistory,
    ConsentRecord,
    HistoryCursor,
    HistoryPage,
    InvalidCursor,
    StoredSubject,
    UnknownSubject,
)
from service.domain.identifiers import InvalidIdentifier, pseudonym
from service.entrypoints.history_export import CSV_COLUMNS, HistoryOut, csv_cell, to_csv

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
KEY = b"k" * 32
T_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def record(row_id: int, subject_id: str = "acct-1", **changes: object) -> ConsentRecord:
    base = ConsentRecord(
        id=row_id,
        subject_id=subject_id,
        addressed_as=None,
        command_id=f"c{row_id}",
        action="opt_out",
        topic="marketing",
        channel="email",
        related=None,
        occurred_at=T0,
        effective_at=T0 + timedelta(seconds=row_id),
        source_channel="web",
        source_app="shop",
        source_ip="203.0.113.7",
        source_user_agent="Mozilla/5.0",
        reason="too many mails",
        erased_at=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Store:
    """`StoredHistory` of the `default` tenant over a dict of subjects and a list of rows;
    forwards are followed in `records` as the SQL does (ids forwarding to the subject, up
    to 8 levels)."""

    def __init__(self, subjects: Sequence[StoredSubject], rows: Sequence[ConsentRecord]) -> None:
        self.subjects = {s.subject_id: s for s in subjects}
        self.rows = list(rows)
        self.asked: list[list[str]] = []

    async def find_subjects(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> dict[str, StoredSubject]:
        self.asked.append(list(subject_ids))
        if tenant != "default":
            return {}
        return {s: self.subjects[s] for s in subject_ids if s in self.subjects}

    async def records(
        self, tenant: str, subject_id: str, after: HistoryCursor | None, limit: int
    ) -> list[ConsentRecord]:
        if tenant != "default":
            return []
        names = {subject_id}
        for _ in range(8):
            names |= {s.subject_id for s in self.subjects.values() if s.merged_into in names}
        mine = [
            r
            for r in self.rows
            if r.subject_id in names or r.addressed_as in names or r.related in names
        ]
        mine.sort(key=lambda r: (r.effective_at, r.id))
        return [r for r in mine if after is None or r.cursor > after][:limit]


def subject(subject_id: str, merged_into: str | None = None) -> StoredSubject:
    return StoredSubject(subject_id, merged_into, None)


# --- resolution -----------------------------------------------------------------------------


async def test_a_forward_leads_to_its_target_and_the_export_covers_both() -> None:
    store = Store(
        [subject("acct-b"), subject("acct-a", "acct-b"), subject("email:a@x.io", "acct-b")],
        [
            record(1, "acct-a"),
            record(2, "acct-b", action="opt_in"),
            record(3, "acct-b", action="merge", topic=None, channel=None, related="acct-a"),
            record(4, "acct-b", addressed_as="email:a@x.io"),
            record(5, "acct-other"),
        ],
    )
    history = ConsentHistory(store)
    for named in ("acct-a", "acct-b", "email:A@X.io "):
        page = await history.page("default", named)
        assert page.subject.subject_id == "acct-b"
        assert [r.id for r in page.records] == [1, 2, 3, 4]
        assert page.next is None


async def test_a_stale_second_hop_is_followed_and_a_cycle_ends() -> None:
    chain = Store([subject("a", "b"), subject("b", "c"), subject("c")], [])
    assert (await ConsentHistory(chain).resolve("default", "a")).subject_id == "c"
    loop = Store([subject("a", "b"), subject("b", "a")], [])
    assert (await ConsentHistory(loop).resolve("default", "a")).subject_id in {"a", "b"}
    assert len(loop.asked) == 1 + 8


async def test_an_erased_identifier_is_found_by_its_keyed_hash_only_with_the_key() -> None:
    hashed = pseudonym(KEY, "default", "email:alice@example.com")
    store = Store([StoredSubject(hashed, None, T0)], [record(1, hashed, erased_at=T0)])
    found = await ConsentHistory(store, KEY).page("default", "email:Alice@Example.com")
    assert found.subject.subject_id == hashed
    assert found.subject_is_hash
    assert [r.id for r in found.records] == [1]
    with pytest.raises(UnknownSubject):
        await ConsentHistory(store).page("default", "email:alice@example.com")
    with pytest.raises(UnknownSubject):
        await ConsentHistory(store, KEY).page("other-tenant", "email:alice@example.com")


async def test_opaque_ids_are_never_hashed_and_malformed_identifiers_are_refused() -> None:
    store = Store([], [])
    with pytest.raises(UnknownSubject):
        await ConsentHistory(store, KEY).page("default", "acct-1")
    assert store.asked == [["acct-1"]]
    with pytest.raises(InvalidIdentifier):
        await ConsentHistory(store, KEY).page("default", "email:nobody")
    with pytest.raises(ValueError, match="limit"):
        await ConsentHistory(store).page("default", "acct-1", limit=1_001)


# --- paging ---------------------------------------------------------------------------------


@given(
    count=st.integers(0, 30),
    limit=st.integers(1, 7),
    ties=st.lists(st.integers(0, 3), min_size=30, max_size=30),
)
async def test_pages_hold_every_row_once_in_order(count: int, limit: int, ties: list[int]) -> None:
    # Several rows of one command share an `effective_at`: the id breaks the tie.
    rows = [
        record(i + 1, effective_at=T0 + timedelta(seconds=sum(ties[: i + 1]))) for i in range(count)
    ]
    history = ConsentHistory(Store([subject("acct-1")], list(reversed(rows))))
    seen: list[int] = []
    after = None
    while True:
        page = await history.page("default", "acct-1", after, limit)
        assert len(page.records) <= limit
        seen += [r.id for r in page.records]
        if page.next is None:
            break
        assert page.next == page.records[-1].cursor
        after = HistoryCursor.parse(page.next.token())
    assert seen == [r.id for r in sorted(rows, key=lambda r: (r.effective_at, r.id))]


async def test_the_whole_export_walks_every_page() -> None:
    history = ConsentHistory(Store([subject("acct-1")], [record(i) for i in range(1, 8)]))
    pages = [p async for p in history.pages("default", "acct-1", limit=3)]
    assert [len(p.records) for p in pages] == [3, 3, 1]
    assert [r.id for r in HistoryOut.of(pages).entries] == list(range(1, 8))


@given(
    moment=st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    row_id=st.integers(1, 2**63 - 1),
)
def test_cursors_round_trip(moment: datetime, row_id: int) -> None:
    cursor = HistoryCursor(moment, row_id)
    token = cursor.token()
    assert token.isascii()
    assert "=" not in token
    assert HistoryCursor.parse(token) == cursor


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_a_cursor_is_a_versioned_position() -> None:
    assert HistoryCursor.parse(b64("1.1.2")) == HistoryCursor(
        T_EPOCH + timedelta(microseconds=1), 2
    )


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x",
        "!!!",
        "é",
        b64("1.1"),
        b64("2.1.2"),
        b64("1.a.2"),
        b64("1.1.-2"),
        b64("1.--1.2"),
        b64("1.1.9223372036854775808"),
        b64("1.99999999999999999999.1"),
        b64("1.1.2.3"),
    ],
)
def test_cursors_not_handed_out_are_refused(token: str) -> None:
    with pytest.raises(InvalidCursor):
        HistoryCursor.parse(token)


# --- erased fields --------------------------------------------------------------------------


def test_only_what_erasure_removed_counts_as_erased() -> None:
    hashed = pseudonym(KEY, "default", "email:alice@example.com")
    assert record(1).erased_fields() == ()
    # Never given is not erased: no `erased_at`, nothing removed.
    assert record(1, source_ip=None, reason=None).erased_fields() == ()
    erased = record(
        1,
        hashed,
        addressed_as=None,
        related=hashed,
        source_ip=None,
        source_user_agent=None,
        reason=None,
        erased_at=T0,
    )
    assert erased.erased_fields() == (
        "subject_id",
        "related",
        "source_ip",
        "source_user_agent",
        "reason",
    )


def page_of(*rows: ConsentRecord, subject_id: str = "acct-1") -> HistoryPage:
    return HistoryPage("default", StoredSubject(subject_id, None, None), rows, None)


def test_json_nulls_and_lists_erased_fields() -> None:
    hashed = pseudonym(KEY, "default", "email:alice@example.com")
    kept = record(1)
    erased = record(2, hashed, source_ip=None, source_user_agent=None, reason=None, erased_at=T0)
    out = json.loads(HistoryOut.of([page_of(kept, erased, subject_id=hashed)]).model_dump_json())
    assert out["subject_id"] is None
    assert out["next_cursor"] is None
    first, second = out["entries"]
    assert first["erased_fields"] == []
    assert first["source_ip"] == "203.0.113.7"
    assert first["subject_id"] == "acct-1"
    assert first["effective_at"] == "2026-03-01T09:30:01Z"
    assert second["erased_fields"] == ["subject_id", "source_ip", "source_user_agent", "reason"]
    assert second["subject_id"] is None
    assert second["source_ip"] is None
    assert second["erased_at"] == "2026-03-01T09:30:00Z"
    assert hashed not in json.dumps(out)


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_marks_erased_cells_and_writes_times_in_utc() -> None:
    hashed = pseudonym(KEY, "default", "email:alice@example.com")
    erased = record(
        2,
        "acct-1",
        addressed_as=hashed,
        source_ip=None,
        source_user_agent=None,
        reason=None,
        erased_at=T0,
        source_app=None,
    )
    text = to_csv([record(1), erased])
    assert text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    first, second = parse_csv(text)
    assert first["source_ip"] == "203.0.113.7"
    assert first["addressed_as"] == ""
    assert first["erased_at"] == ""
    assert first["effective_at"] == "2026-03-01T09:30:01Z"
    assert second["subject_id"] == "acct-1"
    assert second["addressed_as"] == "erased"
    assert second["source_app"] == ""  # never given, not erased
    assert [second[c] for c in ("source_ip", "source_user_agent", "reason")] == ["erased"] * 3
    assert second["erased_at"] == "2026-03-01T09:30:00Z"
    assert hashed not in text
    assert to_csv([], header=True) == ",".join(CSV_COLUMNS) + "\r\n"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


@pytest.mark.parametrize(
    "text",
    [
        "=1+1",
        "+1",
        "-2",
        "@SUM(A1)",
        "\tx",
        "\r=1",
        "\n=1+1",
        "=HYPERLINK()",
        '\uff1dHYPERLINK("http://x")',  # full-width equals sign
        "\uff0b1",
        "\uff0d2",
        "\uff20SUM(A1)",
        " =1+1",  # after spaces a spreadsheet may skip
        "\u3000\uff1d1",
        "'=1",  # the mark itself: never ambiguous
        "erased",  # a value that reads like the erased marker
        " Erased ",
        "\uff45rased",  # a full-width e
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_or_misread_are_marked(text: str) -> None:
    assert csv_cell(text) == "'" + text
    (row,) = parse_csv(to_csv([record(1, text, reason=text, source_user_agent=text)]))
    assert row["subject_id"] == row["reason"] == row["source_user_agent"] == "'" + text


def test_a_value_reading_erased_is_told_apart_from_an_erased_field() -> None:
    given = record(1, reason="erased", source_user_agent="ERASED")
    erased = record(2, source_ip=None, source_user_agent=None, reason=None, erased_at=T0)
    kept, gone = parse_csv(to_csv([given, erased]))
    assert (kept["reason"], kept["source_user_agent"]) == ("'erased", "'ERASED")
    assert (gone["reason"], gone["source_user_agent"]) == ("erased", "erased")


def _unmarked(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00")))
def test_csv_cells_survive_any_text_and_never_start_a_formula(text: str) -> None:
    (row,) = parse_csv(to_csv([record(1, reason=text)]))
    cell = row["reason"]
    assert not cell.lstrip(" \u00a0\u3000").startswith(FORMULA_STARTS)
    assert _unmarked(cell) == text  # lossless: one mark removed gives the value back
    assert cell != "erased"  # only an erased field's cell reads so
    assert cell.strip().casefold() != "erased"
    if not text.lstrip(" \u00a0\u3000").startswith((*FORMULA_STARTS, "'")):
        assert text.strip().casefold() == "erased" or cell == text  # nothing else is marked


@given(st.lists(st.sampled_from(["=", "\uff1d", "erased", "'", " ", "a", "\n", "-"]), max_size=6))
def test_csv_cells_of_the_tricky_characters_are_lossless_and_inert(parts: list[str]) -> None:
    text = "".join(parts)
    cell = csv_cell(text)
    assert _unmarked(cell) == text
    assert not cell.lstrip(" \u00a0\u3000").startswith(FORMULA_STARTS)
    assert cell.strip().casefold() != "erased"
