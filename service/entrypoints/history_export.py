"""The proof-of-consent export as JSON and CSV, the same for the HTTP API and the CLI.

Erased fields are never shown as merely empty: JSON leaves them null and lists them in
`erased_fields`; CSV writes exactly `erased` in their cells, and no stored value is ever
written so (see ``csv_cell``).

CSV is meant to be opened in a spreadsheet, so a cell that a spreadsheet would run as a
formula is defused with a leading `'` (OWASP "CSV injection"): every cell holds text a person
or an app chose. A cell starting with `'` always means "the rest is the value as stored":
one `'` removed gives it back, whatever it was.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from service.application.history import (
    ConsentRecord,
    ErasableField,
    HistoryAction,
    HistoryPage,
)

ERASED = "erased"
"""What a CSV cell holds when erasure removed its value; a stored value never reads so."""

TEXT_MARK = "'"
"""The leading mark of a cell written as text: the value follows, unchanged."""

# Characters a spreadsheet treats as the start of a formula, their full-width forms (some
# spreadsheets fold them to ASCII before parsing), and tab, carriage return and line feed,
# which some strip before looking.
_FORMULA_STARTS = (
    "=",
    "+",
    "-",
    "@",
    "\t",
    "\r",
    "\n",
    "\uff1d",  # FULLWIDTH EQUALS SIGN
    "\uff0b",  # FULLWIDTH PLUS SIGN
    "\uff0d",  # FULLWIDTH HYPHEN-MINUS
    "\uff20",  # FULLWIDTH COMMERCIAL AT
)
# Spaces a spreadsheet may skip before it looks for a formula.
_LEADING_SPACES = " \u00a0\u3000"

CSV_COLUMNS = (
    "id",
    "effective_at",
    "occurred_at",
    "action",
    "topic",
    "channel",
    "related",
    "subject_id",
    "addressed_as",
    "command_id",
    "source_channel",
    "source_app",
    "actor",
    "source_ip",
    "source_user_agent",
    "reason",
    "erased_at",
)


class HistoryEntryOut(BaseModel):
    """One recorded change. A field erasure removed is null and named in `erased_fields`;
    any other null means the value was never given."""

    model_config = ConfigDict(frozen=True)

    id: int = Field(description="Position in the consent history (increasing).")
    action: HistoryAction
    topic: str | None = Field(description="Null for identity changes (link, unlink, merge, erase).")
    channel: str | None
    related: str | None = Field(
        description="link / unlink: the identifier; merge: the subject merged into this one."
    )
    occurred_at: datetime = Field(description="When the person acted, as the command says.")
    effective_at: datetime = Field(description="When the service applied it.")
    source_channel: str
    source_app: str | None
    actor: str | None = Field(
        description="The credential or channel that carried the change (an API token's name,"
        " `optout-pages`, `sms-inbound`, `import:<file>`, `kafka`), set by the service;"
        " null for changes recorded before it was."
    )
    source_ip: str | None
    source_user_agent: str | None
    reason: str | None
    command_id: str
    subject_id: str | None = Field(description="The subject the command applied to.")
    addressed_as: str | None = Field(
        description="The id the command named, when it forwarded to `subject_id`."
    )
    erased_at: datetime | None = Field(description="When erasure removed personal fields.")
    erased_fields: list[ErasableField] = Field(
        description="The fields erasure removed (null here, `erased` in CSV)."
    )

    @classmethod
    def of(cls, record: ConsentRecord) -> HistoryEntryOut:
        erased = record.erased_fields()

        def kept(name: str, value: str | None) -> str | None:
            return None if name in erased else value

        return cls(
            id=record.id,
            action=record.action,
            topic=record.topic,
            channel=record.channel,
            related=kept("related", record.related),
            occurred_at=record.occurred_at,
            effective_at=record.effective_at,
            source_channel=record.source_channel,
            source_app=record.source_app,
            actor=record.actor,
            source_ip=kept("source_ip", record.source_ip),
            source_user_agent=kept("source_user_agent", record.source_user_agent),
            reason=kept("reason", record.reason),
            command_id=record.command_id,
            subject_id=kept("subject_id", record.subject_id),
            addressed_as=kept("addressed_as", record.addressed_as),
            erased_at=record.erased_at,
            erased_fields=list(erased),
        )


class HistoryOut(BaseModel):
    """A subject's consent history, oldest first (by `effective_at`, then `id`): its own
    rows and those of every id forwarding to it (identifiers linked to it, subjects merged
    into it), so history recorded before a link or a merge is included."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    subject_id: str | None = Field(
        description="The subject the export covers (the one a forward leads to); null when "
        "it is an erased identifier, whose id is not kept."
    )
    subject_erased_at: datetime | None = Field(description="When the subject was erased.")
    entries: list[HistoryEntryOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )

    @classmethod
    def of(cls, pages: Iterable[HistoryPage]) -> HistoryOut:
        """One page as the API answers it, or every page of an export (the CLI)."""
        taken = list(pages)
        last = taken[-1]
        return cls(
            tenant=last.tenant,
            subject_id=None if last.subject_is_hash else last.subject.subject_id,
            subject_erased_at=last.subject.erased_at,
            entries=[HistoryEntryOut.of(r) for page in taken for r in page.records],
            next_cursor=None if last.next is None else last.next.token(),
        )


def csv_cell(value: str | int | datetime | None) -> str:
    """The text of one cell: empty for nothing, ISO 8601 in UTC for times, formulas defused.

    A value gets a leading `'` when a spreadsheet could run it (it starts with a formula
    character, after spaces or not), when it starts with `'` itself (so the mark is never
    ambiguous), and when it reads `erased` (any case or width, spaces around): only an erased
    field's cell is exactly `erased`.
    """
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    text = str(value)
    if (
        text.startswith(TEXT_MARK)
        or text.lstrip(_LEADING_SPACES).startswith(_FORMULA_STARTS)
        or unicodedata.normalize("NFKC", text).strip().casefold() == ERASED
    ):
        return TEXT_MARK + text
    return text


def csv_rows(records: Iterable[ConsentRecord]) -> Iterable[list[str]]:
    for record in records:
        erased = record.erased_fields()
        yield [
            ERASED if name in erased else csv_cell(getattr(record, name)) for name in CSV_COLUMNS
        ]


def to_csv(records: Iterable[ConsentRecord], *, header: bool = True) -> str:
    """RFC 4180 text (CRLF line ends, fields quoted where needed), header row first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(records))
    return out.getvalue()
