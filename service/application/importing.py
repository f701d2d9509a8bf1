"""Suppression lists from other systems, row by row, as contract-v1 commands.

An import is one more channel: every row becomes an ordinary command (source channel
`import`) on the commands topic, judged by the worker like any other, so an imported opt-out
and a clicked one follow one decision rule and leave one kind of consent history.

Three formats, told apart by their header (``sniff``):

- ``csv``: our own generic layout. One identifier column (`email`, `phone`, `identifier`
  already prefixed `email:`/`phone:`/`device:`, or `subject_id`), optional `topic`,
  `channel`, `action` (default `opt_out`), `occurred_at` (RFC 3339) and `reason`.
- ``sendgrid``: SendGrid's suppression exports (global and group unsubscribes: `email,created`;
  bounces and blocks add `status,reason`; spam reports `ip`; invalid emails `reason`).
- ``mailchimp``: Mailchimp's unsubscribed-members export (`Email Address`, ...,
  `UNSUB_TIME`, `UNSUB_REASON`, `UNSUB_REASON_OTHER`, ...). A Mailchimp export without
  `UNSUB_TIME` (subscribed or cleaned members) is refused: imported as opt-outs it would
  unsubscribe people who never asked.

Re-running an import must be harmless, so a row's `command_id` is a hash of everything the
command says (``command_id_for``): the same row gives the same command, which the worker
answers `duplicate`. The hash is keyed (``keyed_hashes.ImportIds``, from the identifier
key): an id that survives an erasure cannot be recomputed from a guessed address. The time a
row states is part of that content, so a row without one takes a fixed fallback time (given,
or recorded at the first run), never "now".

Nothing here logs or prints a row's values: a rejection names its line and a reason code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

import orjson
import phonenumbers

from service.contract.storable import EARLIEST, LATEST, is_storable_text, parse_instant
from service.domain.catalog import Catalog
from service.domain.commands import Change, Command, Source, content_hash
from service.domain.identifiers import (
    DEVICE,
    EMAIL,
    PHONE,
    PREFIXES,
    InvalidIdentifier,
    normalize,
)
from service.domain.keyed_hashes import ImportIds
from service.domain.model import WILDCARD, Action
from service.domain.validation import validate

Format = Literal["csv", "sendgrid", "mailchimp"]
FORMATS: tuple[Format, ...] = ("csv", "sendgrid", "mailchimp")

SOURCE_CHANNEL = "import"
MAX_SUBJECT_CHARS = 256
MAX_REASON_CHARS = 500
MAX_APP_CHARS = 128

# The generic format's identifier columns, and what each holds.
_ID_COLUMNS = ("identifier", "subject_id", "email", "phone")
_GENERIC_ONLY = frozenset(
    {"identifier", "subject_id", "phone", "topic", "channel", "action", "occurred_at"}
)
_ACTIONS: frozenset[str] = frozenset({"opt_out", "opt_in"})
_LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", re.ASCII)
_LOCAL_FORMS = "must be Unix seconds, YYYY-MM-DD HH:MM:SS or RFC 3339 within 1970-9999"
_UNIX_SECONDS = re.compile(r"\d+", re.ASCII)

# Which channel an identifier reaches, when neither the row nor the options name one.
_CHANNEL_OF_PREFIX = {EMAIL: "email", PHONE: "sms", DEVICE: "push"}


class ImportRefused(ValueError):
    """The file or the options cannot be imported at all (exit status 2); the message says
    why and names columns or options, never a value from the file."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row skipped: its physical line in the file (the header is line 1), a stable reason
    code, and a detail that never quotes the row."""

    line: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """What the command line says; `None` leaves the format's default."""

    tenant: str = "default"
    topic: str | None = None
    channel: str | None = None
    source_app: str | None = None
    phone_region: str | None = None
    # For exports whose times carry no offset (SendGrid, Mailchimp write `2024-05-01 10:00:00`).
    time_zone: tzinfo = UTC
    # The actor of every command: `import:<file name>`, recorded in the consent history.
    actor: str = "import"

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption."""
        return {
            "tenant": self.tenant,
            "topic": self.topic,
            "channel": self.channel,
            "source_app": self.source_app,
            "phone_region": self.phone_region,
            "time_zone": str(self.time_zone),
        }


def sniff(header: Sequence[str]) -> Format:
    """The format a header row belongs to; `ImportRefused` when it is none of them."""
    names = {_name(cell) for cell in header}
    if "email address" in names:
        return "mailchimp"
    if "email" in names and "created" in names and not names & _GENERIC_ONLY:
        return "sendgrid"
    if names & set(_ID_COLUMNS):
        return "csv"
    raise ImportRefused(
        "header not recognised: expected an identifier column "
        "(email, phone, identifier or subject_id), a SendGrid export (email,created) "
        "or a Mailchimp unsubscribed export (Email Address, UNSUB_TIME)"
    )


def _name(cell: str) -> str:
    return cell.strip().lower()


def _column(names: Sequence[str], wanted: str) -> int | None:
    try:
        return names.index(wanted)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where a format's fields are in this file's header, and its defaults."""

    format: Format
    id_column: int
    id_kind: Literal["email", "phone", "identifier", "subject_id"]
    time_column: int | None
    strict_time: bool  # RFC 3339 only (our format), or also the providers' local times
    topic_column: int | None = None
    channel_column: int | None = None
    action_column: int | None = None
    reason_columns: tuple[int, ...] = ()
    fixed_reason: str | None = None
    default_topic: str = WILDCARD
    default_channel: str | None = None  # None: the channel the identifier reaches


def _plan(fmt: Format, header: Sequence[str]) -> _Plan:
    names = [_name(cell) for cell in header]
    if fmt == "mailchimp":
        return _mailchimp_plan(names)
    if fmt == "sendgrid":
        return _sendgrid_plan(names)
    return _generic_plan(names)


def _generic_plan(names: list[str]) -> _Plan:
    present = [c for c in _ID_COLUMNS if c in names]
    if not present:
        raise ImportRefused(
            "no identifier column: the header needs one of email, phone, identifier, subject_id"
        )
    if len(present) > 1:
        raise ImportRefused(
            f"several identifier columns ({', '.join(present)}): keep exactly one per file"
        )
    kind = present[0]
    reason = _column(names, "reason")
    return _Plan(
        format="csv",
        id_column=names.index(kind),
        id_kind=kind,  # type: ignore[arg-type]
        time_column=_column(names, "occurred_at"),
        strict_time=True,
        topic_column=_column(names, "topic"),
        channel_column=_column(names, "channel"),
        action_column=_column(names, "action"),
        reason_columns=() if reason is None else (reason,),
    )


def _sendgrid_plan(names: list[str]) -> _Plan:
    if "email" not in names:
        raise ImportRefused("not a SendGrid suppression export: no email column")
    # The export's columns say which list it is; the SMTP text of bounces is not copied (it
    # often quotes the address), only what kind of suppression it was.
    if "status" in names:
        kind = "bounce or block"
    elif "ip" in names:
        kind = "spam report"
    elif "reason" in names:
        kind = "invalid email"
    else:
        kind = "unsubscribe"
    return _Plan(
        format="sendgrid",
        id_column=names.index("email"),
        id_kind="email",
        time_column=_column(names, "created"),
        strict_time=False,
        fixed_reason=f"SendGrid {kind}",
        default_channel="email",
    )


def _mailchimp_plan(names: list[str]) -> _Plan:
    if "email address" not in names:
        raise ImportRefused("not a Mailchimp export: no 'Email Address' column")
    if "unsub_time" not in names:
        raise ImportRefused(
            "a Mailchimp export without UNSUB_TIME lists subscribed or cleaned members, "
            "not unsubscribes: refused (it would opt out people who never asked)"
        )
    reasons = tuple(
        i
        for i in (_column(names, "unsub_reason"), _column(names, "unsub_reason_other"))
        if i is not None
    )
    return _Plan(
        format="mailchimp",
        id_column=names.index("email address"),
        id_kind="email",
        time_column=names.index("unsub_time"),
        strict_time=False,
        reason_columns=reasons,
        default_topic="marketing",
        default_channel="email",
    )


def local_instant(text: str, zone: tzinfo) -> datetime:
    """A providers' export time: RFC 3339, `YYYY-MM-DD HH:MM[:SS]` read in `zone`, or Unix
    seconds (SendGrid's API form). Milliseconds are refused rather than misread: as seconds
    they lie past year 9999."""
    if _UNIX_SECONDS.fullmatch(text):
        try:
            moment = datetime.fromtimestamp(int(text[:20]), UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(_LOCAL_FORMS) from None
    elif _LOCAL_TIME.fullmatch(text):
        try:
            moment = datetime.fromisoformat(text.replace(" ", "T")).replace(tzinfo=zone)
            moment = moment.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("is not a representable instant") from None
    else:
        try:
            return parse_instant(text)
        except ValueError:
            raise ValueError(_LOCAL_FORMS) from None
    if not EARLIEST <= moment <= LATEST:
        raise ValueError("must lie between 1970-01-01T00:00:00Z and 9999-12-31T00:00:00Z")
    return moment


def command_id_for(command: Command, ids: ImportIds) -> str:
    """`import-k1-` and the keyed hash of everything the command says (its id left out).

    Equal rows give equal ids, so a re-run is answered `duplicate`; a row whose content
    differs in anything (time, topic, reason, ...) gets another id, never a
    `command_id_conflict`.
    """
    return ids(content_hash(dataclasses.replace(command, command_id="")))


def command_value(command: Command) -> bytes:
    """The command's contract-v1 record value; no ip or user agent, ever."""
    document: dict[str, Any] = {
        "command_id": command.command_id,
        "subject_id": command.subject_id,
        "tenant": command.tenant,
        "occurred_at": command.occurred_at,
        "source": {"channel": command.source.channel, "app": command.source.app},
        "changes": [
            {"action": c.action, "topic": c.topic, "channel": c.channel} for c in command.changes
        ],
    }
    if command.reason is not None:
        document["reason"] = command.reason
    if command.source.actor is not None:
        document["actor"] = command.source.actor
    return orjson.dumps(document, option=orjson.OPT_UTC_Z)


def import_actor(file_name: str) -> str:
    """``import:<file name>``, cut to what the contract's `actor` holds; ``import`` alone
    when the name holds characters the stores refuse."""
    actor = f"import:{file_name}"[:MAX_APP_CHARS]
    return actor if is_storable_text(actor) else "import"


class RowMapper:
    """Turns one row of one file into a command, or says why it cannot."""

    def __init__(
        self,
        fmt: Format,
        header: Sequence[str],
        options: ImportOptions,
        catalog: Catalog,
        *,
        fallback_time: datetime,
        max_future: timedelta,
        ids: ImportIds,
    ) -> None:
        self.format = fmt
        self._ids = ids
        self._plan = _plan(fmt, header)
        self._options = options
        self._catalog = catalog
        self._fallback = fallback_time.astimezone(UTC)
        self._max_future = max_future
        app = options.source_app or f"import:{fmt}"
        if not 1 <= len(app) <= MAX_APP_CHARS or not is_storable_text(app):
            raise ImportRefused(f"--source-app must be 1-{MAX_APP_CHARS} characters")
        self._source = Source(SOURCE_CHANNEL, app, actor=options.actor)
        self._check_options()

    @property
    def default_topic(self) -> str:
        return self._options.topic or self._plan.default_topic

    def _check_options(self) -> None:
        """A topic or channel every row would be rejected for is a usage error, said once."""
        topic, channel = self._options.topic, self._options.channel
        if topic is not None and topic != WILDCARD and topic not in self._catalog.topics:
            raise ImportRefused(f"--topic {topic!r} is not in the catalog")
        if topic is not None and topic in self._catalog.mandatory_topics:
            raise ImportRefused(f"--topic {topic!r} is mandatory: it cannot be opted out of")
        if channel is not None and channel != WILDCARD and channel not in self._catalog.channels:
            raise ImportRefused(f"--channel {channel!r} is not in the catalog")
        if self._fallback > datetime.now(UTC) + self._max_future:
            raise ImportRefused("--occurred-at lies in the future")

    def map(self, line: int, row: Sequence[str], now: datetime) -> Command | Rejected:
        plan = self._plan
        if plan.id_column >= len(row):
            return Rejected(line, "missing_column", "the row has no identifier column")
        subject = self._subject(row[plan.id_column])
        if isinstance(subject, tuple):
            return Rejected(line, *subject)
        occurred_at = self._fallback
        raw_time = _cell(row, plan.time_column)
        if raw_time:
            try:
                occurred_at = (
                    parse_instant(raw_time)
                    if plan.strict_time
                    else local_instant(raw_time, self._options.time_zone)
                )
            except ValueError as exc:
                return Rejected(line, "invalid_timestamp", f"timestamp {exc}")
        action = _cell(row, plan.action_column) or "opt_out"
        if action not in _ACTIONS:
            return Rejected(line, "invalid_action", "action must be opt_out or opt_in")
        topic = _cell(row, plan.topic_column) or self.default_topic
        channel = (
            _cell(row, plan.channel_column)
            or self._options.channel
            or plan.default_channel
            or _channel_for(subject)
        )
        reason = self._reason(row)
        if reason is not None and not is_storable_text(reason):
            return Rejected(line, "invalid_text", "the reason holds a NUL character")
        action_name: Action = "opt_out" if action == "opt_out" else "opt_in"
        changes = (Change(action_name, topic, channel),)
        tenant, source = self._options.tenant, self._source
        unnamed = Command("", subject, tenant, occurred_at, source, changes, reason)
        problem = validate(self._catalog, unnamed, now=now, max_future=self._max_future)
        if problem is not None:
            return Rejected(line, problem[0], problem[1])
        # As `command_id_for`, without copying the command (a row's largest cost).
        command_id = self._ids(content_hash(unnamed))
        return Command(command_id, subject, tenant, occurred_at, source, changes, reason)

    def _subject(self, raw: str) -> str | tuple[str, str]:
        """The normalised subject id, or (reason, detail)."""
        value = raw.strip()
        if not value:
            return "missing_identifier", "the identifier cell is empty"
        if "\ufffd" in value or not is_storable_text(value):
            return "invalid_text", "the identifier is not valid UTF-8 text"
        kind = self._plan.id_kind
        if kind in ("email", "phone"):
            prefix = EMAIL if kind == "email" else PHONE
            bare = value[len(prefix) :] if value[: len(prefix)].lower() == prefix else value
            subject = prefix + bare
        elif kind == "identifier" and not value.startswith(PREFIXES):
            return "invalid_identifier", "an identifier must start with email:, phone: or device:"
        else:
            subject = value
        if subject.startswith(PHONE) and self._options.phone_region:
            subject = self._regional_phone(subject)
        try:
            subject = normalize(subject)
        except InvalidIdentifier as exc:
            reason = {EMAIL: "invalid_email", PHONE: "invalid_phone"}.get(
                subject[: subject.index(":") + 1], "invalid_identifier"
            )
            return reason, str(exc)
        if len(subject) > MAX_SUBJECT_CHARS:
            return "too_long", f"the subject id is longer than {MAX_SUBJECT_CHARS} characters"
        return subject

    def _regional_phone(self, subject: str) -> str:
        """A national number read in the `--phone-region`, as E.164; left as it was when it
        cannot be parsed (normalisation then says why)."""
        number = subject[len(PHONE) :].strip()
        try:
            parsed = phonenumbers.parse(number, self._options.phone_region)
        except phonenumbers.NumberParseException:
            return subject
        return PHONE + phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)

    def _reason(self, row: Sequence[str]) -> str | None:
        plan = self._plan
        if plan.fixed_reason is not None:
            return plan.fixed_reason
        parts = [text for i in plan.reason_columns if (text := _cell(row, i))]
        if not parts:
            return None
        # Free text kept in the consent history (never logged); cut, not refused: losing an
        # opt-out over a long comment is the costlier error.
        return ": ".join(parts)[:MAX_REASON_CHARS]


def _cell(row: Sequence[str], index: int | None) -> str:
    if index is None or index >= len(row):
        return ""
    return row[index].strip()


def _channel_for(subject_id: str) -> str:
    for prefix, channel in _CHANNEL_OF_PREFIX.items():
        if subject_id.startswith(prefix):
            return channel
    return WILDCARD
