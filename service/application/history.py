"""Proof of consent: every recorded change of a subject, across its links, merges and erasure.

A regulator or the person asks "what did I agree to, when, and how?". The answer has to
survive identity changes: history recorded before a link or a merge stays under the old id,
so the export covers the subject and every id forwarding to it, and an erased identifier is
found through its suppression (the keyed hash erasure leaves) when the identifier key is set.
What erasure removed is shown as removed, never silently as "not kept".
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from service.domain.identifiers import is_erased, is_identifier, normalize, pseudonym

HistoryAction = Literal["opt_out", "opt_in", "restore", "link", "unlink", "merge", "erase"]

MAX_HOPS = 8
"""Forwards are one hop deep in storage; a re-point racing a read may leave a second one."""

DEFAULT_PAGE = 100
MAX_PAGE = 1_000

ErasableField = Literal[
    "subject_id", "addressed_as", "related", "source_ip", "source_user_agent", "reason"
]
ERASABLE_IDS: tuple[ErasableField, ...] = ("subject_id", "addressed_as", "related")
"""Ids erasure replaces by their keyed hash when they are identifiers."""
ERASABLE_PERSONAL: tuple[ErasableField, ...] = ("source_ip", "source_user_agent", "reason")
"""Personal fields erasure nulls (and marks the row with `erased_at`)."""
ERASABLE = (*ERASABLE_IDS, *ERASABLE_PERSONAL)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_VERSION = "1"


class UnknownSubject(LookupError):
    """No subject has this id in the tenant, nor an erased identifier's suppression."""


class InvalidCursor(ValueError):
    """A cursor this service did not hand out (or an older, incompatible one)."""


@dataclass(frozen=True, slots=True)
class StoredSubject:
    subject_id: str
    merged_into: str | None
    erased_at: datetime | None


@dataclass(frozen=True, slots=True, order=True)
class HistoryCursor:
    """The position after a page's last row: the export's order is (effective_at, id)."""

    effective_at: datetime
    id: int

    def token(self) -> str:
        """Opaque to clients (url-safe, no padding), so its layout may change with a version."""
        micros = (self.effective_at - _EPOCH) // timedelta(microseconds=1)
        text = f"{_CURSOR_VERSION}.{micros}.{self.id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> HistoryCursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
            version, micros, row_id = text.split(".")
            if version != _CURSOR_VERSION or not micros.lstrip("-").isdigit():
                raise ValueError(token)
            if not row_id.isdigit() or int(row_id) >= 2**63:  # a bigint identity
                raise ValueError(token)
            moment = _EPOCH + timedelta(microseconds=int(micros))
            return cls(moment, int(row_id))
        except (ValueError, binascii.Error, UnicodeError, OverflowError):
            raise InvalidCursor("the cursor is not one this service handed out") from None


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One row of the consent history as stored, erasure's removals included (as NULLs or
    keyed hashes)."""

    id: int
    subject_id: str
    addressed_as: str | None
    command_id: str
    action: HistoryAction
    topic: str | None
    channel: str | None
    related: str | None
    occurred_at: datetime
    effective_at: datetime
    source_channel: str
    source_app: str | None
    source_ip: str | None
    source_user_agent: str | None
    reason: str | None
    erased_at: datetime | None
    actor: str | None = None

    @property
    def cursor(self) -> HistoryCursor:
        return HistoryCursor(self.effective_at, self.id)

    def erased_fields(self) -> tuple[ErasableField, ...]:
        """The fields erasure removed, in `ERASABLE` order.

        An id is erased when it holds a keyed hash; a personal field when the row was erased
        and the field is empty (erasure nulls it, and only a NULL can prove nothing was kept).
        """
        erased = [name for name in ERASABLE_IDS if _is_hash(getattr(self, name))]
        if self.erased_at is not None:
            erased += [name for name in ERASABLE_PERSONAL if getattr(self, name) is None]
        return tuple(erased)


def _is_hash(value: str | None) -> bool:
    return value is not None and is_erased(value)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Part of a subject's export, oldest first; `next` is None on the last page."""

    tenant: str
    subject: StoredSubject
    records: tuple[ConsentRecord, ...]
    next: HistoryCursor | None

    @property
    def subject_is_hash(self) -> bool:
        """The subject is an erased identifier's suppression: its id shows as erased."""
        return is_erased(self.subject.subject_id)


class StoredHistory(Protocol):
    async def find_subjects(
        self, tenant: str, subject_ids: Sequence[str]
    ) -> dict[str, StoredSubject]:
        """The stored rows of these ids (absent ones are simply missing)."""
        ...

    async def records(
        self, tenant: str, subject_id: str, after: HistoryCursor | None, limit: int
    ) -> list[ConsentRecord]:
        """Up to `limit` rows after `after`, in (effective_at, id) order, of `subject_id` and
        every id forwarding to it: the rows recorded under one of those ids, addressed as one
        of them, or naming one of them as `related` (the link or merge that joined it)."""
        ...


class ConsentHistory:
    """Resolves what the caller named to the subject it stands for, then pages its history."""

    def __init__(self, store: StoredHistory, identifier_key: bytes = b"") -> None:
        self._store = store
        self._key = identifier_key

    async def resolve(self, tenant: str, named: str) -> StoredSubject:
        """The subject `named` stands for. Raises `InvalidIdentifier` for a malformed
        identifier and `UnknownSubject` when nothing is stored under it.

        A forward leads to its target; an identifier without a row of its own may have been
        erased, and is then found under its keyed hash (only with the identifier key).
        """
        subject_id = normalize(named)
        asked = [subject_id]
        if self._key and is_identifier(subject_id):
            asked.append(pseudonym(self._key, tenant, subject_id))
        found = await self._store.find_subjects(tenant, asked)
        subject = found.get(subject_id) or (found.get(asked[-1]) if len(asked) > 1 else None)
        if subject is None:
            raise UnknownSubject  # no id in the message: it may be an address
        for _ in range(MAX_HOPS):
            if subject.merged_into is None:
                break
            target = subject.merged_into
            following = (await self._store.find_subjects(tenant, [target])).get(target)
            if following is None:
                # A forward to a row that is gone (an erasure raced the read): the forward's
                # own history is still the best answer.
                break
            subject = following
        return subject

    async def page(
        self,
        tenant: str,
        named: str,
        after: HistoryCursor | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> HistoryPage:
        """One page of the export. Each page resolves the subject afresh, so a page asked
        after a merge continues with the merged subject's history."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        subject = await self.resolve(tenant, named)
        rows = await self._store.records(tenant, subject.subject_id, after, limit + 1)
        more = len(rows) > limit
        records = tuple(rows[:limit])
        return HistoryPage(tenant, subject, records, records[-1].cursor if more else None)

    async def pages(
        self, tenant: str, named: str, limit: int = MAX_PAGE
    ) -> AsyncIterator[HistoryPage]:
        """Every page in turn, for a whole export (the CLI)."""
        after: HistoryCursor | None = None
        while True:
            page = await self.page(tenant, named, after, limit)
            yield page
            if page.next is None:
                return
            after = page.next
