"""`optout import`: every format's rows, their line numbers, and the deterministic ids."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.adapters.import_files import CheckpointFile, CsvRows, RejectsFile, count_lines
from service.application.import_run import Checkpoint
from service.application.importing import (
    ImportOptions,
    ImportRefused,
    Rejected,
    RowMapper,
    command_id_for,
    command_value,
    local_instant,
    sniff,
)
from service.contract.decode import decode_command
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import Command, Delivery, Received, content_hash
from service.domain.identifiers import InvalidIdentifier, normalize
from service.domain.keyed_hashes import ImportIds

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
IDS = ImportIds.from_root(b"import-id-key-for-tests-0123456789")
FALLBACK = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
_DELIVERY = Delivery("t", 0, 0)


def write(tmp_path: Path, text: str | bytes, name: str = "list.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def mapped(
    path: Path, options: ImportOptions | None = None, fmt: str | None = None
) -> list[tuple[int, Command | Rejected]]:
    with CsvRows(path) as rows:
        chosen = fmt or sniff(rows.header)
        mapper = RowMapper(
            chosen,  # type: ignore[arg-type]
            rows.header,
            options or ImportOptions(),
            DEFAULT_CATALOG,
            fallback_time=FALLBACK,
            max_future=timedelta(minutes=5),
            ids=IDS,
        )
        return [(line, mapper.map(line, row, NOW)) for line, row in rows]


def commands(results: Sequence[tuple[int, Command | Rejected]]) -> dict[int, Command]:
    return {line: r for line, r in results if isinstance(r, Command)}


def rejections(results: Sequence[tuple[int, Command | Rejected]]) -> dict[int, str]:
    return {line: r.reason for line, r in results if isinstance(r, Rejected)}


def decoded(command: Command) -> Command:
    """What the worker reads from the record value the import produces."""
    received = decode_command(command_value(command), _DELIVERY, max_bytes=65_536)
    assert isinstance(received, Received), received
    return received.command


# --- sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (["email"], "csv"),
        (["Email", "topic", "occurred_at"], "csv"),
        (["identifier", "reason"], "csv"),
        (["subject_id"], "csv"),
        (["phone", "channel"], "csv"),
        (["email", "created"], "sendgrid"),
        (["email", "created", "status", "reason"], "sendgrid"),
        (["email", "created", "ip"], "sendgrid"),
        (["Email Address", "First Name", "UNSUB_TIME"], "mailchimp"),
        # `occurred_at` is ours: a file with it is the generic format even with `created`.
        (["email", "created", "occurred_at"], "csv"),
    ],
)
def test_the_header_names_the_format(header: list[str], expected: str) -> None:
    assert sniff(header) == expected


def test_an_unknown_header_is_refused_naming_the_expected_columns() -> None:
    with pytest.raises(ImportRefused, match="email, phone, identifier or subject_id"):
        sniff(["name", "address"])


def test_a_mailchimp_export_of_subscribed_members_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '"Email Address","First Name",OPTIN_TIME\na@example.com,A,\n')
    with pytest.raises(ImportRefused, match="UNSUB_TIME"):
        mapped(path)


def test_several_identifier_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportRefused, match="several identifier columns"):
        mapped(write(tmp_path, "email,phone\na@example.com,+33612345678\n"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ImportOptions(topic="nope"), "not in the catalog"),
        (ImportOptions(topic="security"), "mandatory"),
        (ImportOptions(channel="fax"), "not in the catalog"),
        (ImportOptions(source_app="x" * 129), "--source-app"),
    ],
)
def test_options_every_row_would_be_rejected_for_are_refused_once(
    tmp_path: Path, options: ImportOptions, message: str
) -> None:
    with pytest.raises(ImportRefused, match=message):
        mapped(write(tmp_path, "email\na@example.com\n"), options)


# --- the generic format ----------------------------------------------------------------


GENERIC = """\
email,topic,channel,action,occurred_at,reason
 Alice@Example.COM ,marketing.newsletter,email,opt_out,2026-01-02T03:04:05+01:00,too many
bob@example.com,,,,,
not-an-address,,,,,
carol@example.com,security,email,,,
dave@example.com,marketing,fax,,,
eve@example.com,,,opt_maybe,,
frank@example.com,,,,yesterday,
"two
lines@example.com",,,,,

gina@example.com,*,*,opt_in,2026-01-01T00:00:00Z,"quoted, with a comma"
hank@example.com,nope,,,,
ivan@example.com,,,,2099-01-01T00:00:00Z,
"""


def test_generic_rows_map_to_commands_and_rejections_name_their_lines(tmp_path: Path) -> None:
    results = mapped(write(tmp_path, GENERIC))
    assert rejections(results) == {
        4: "invalid_email",
        5: "mandatory_topic",
        6: "unknown_channel",
        7: "invalid_action",
        8: "invalid_timestamp",
        9: "invalid_email",  # a quoted cell across lines 9-10: named by its first line
        13: "unknown_topic",  # after the blank line 11, which is no row at all
        14: "future_timestamp",
    }
    found = commands(results)
    assert sorted(found) == [2, 3, 12]
    alice = found[2]
    assert alice.subject_id == "email:alice@example.com"
    assert alice.occurred_at == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert [(c.action, c.topic, c.channel) for c in alice.changes] == [
        ("opt_out", "marketing.newsletter", "email")
    ]
    assert alice.reason == "too many"
    assert (alice.source.channel, alice.source.app) == ("import", "import:csv")
    assert (alice.source.ip, alice.source.user_agent) == (None, None)
    bob = found[3]
    # Empty cells: the defaults (everything, on the channel the identifier reaches, at the
    # fixed fallback time).
    assert [(c.action, c.topic, c.channel) for c in bob.changes] == [("opt_out", "*", "email")]
    assert bob.occurred_at == FALLBACK
    assert bob.reason is None
    gina = found[12]
    assert [(c.action, c.topic, c.channel) for c in gina.changes] == [("opt_in", "*", "*")]
    assert gina.reason == "quoted, with a comma"
    for command in found.values():
        assert decoded(command) == command


def test_identifier_kinds_and_their_default_channels(tmp_path: Path) -> None:
    text = (
        "identifier\nemail:A@B.example\nphone:+33 6 12 34 56 78\ndevice: abc-123 \n"
        "user-7\nphone:0612345678\nemail:\n"
    )
    results = mapped(write(tmp_path, text))
    found = commands(results)
    assert {line: (c.subject_id, c.changes[0].channel) for line, c in found.items()} == {
        2: ("email:a@b.example", "email"),
        3: ("phone:+33612345678", "sms"),
        4: ("device:abc-123", "push"),
    }
    assert rejections(results) == {5: "invalid_identifier", 6: "invalid_phone", 7: "invalid_email"}


def test_opaque_subject_ids_are_kept_and_take_every_channel(tmp_path: Path) -> None:
    found = commands(mapped(write(tmp_path, "subject_id\nUser-42\nemail:X@Y.example\n")))
    assert found[2].subject_id == "User-42"
    assert found[2].changes[0].channel == "*"
    assert found[3].subject_id == "email:x@y.example"


def test_phone_numbers_need_a_country_code_unless_a_region_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, "phone\n06 12 34 56 78\n+1 415 555 2671\nphone:+33612345678\nabc\n")
    plain = mapped(path)
    assert rejections(plain) == {2: "invalid_phone", 5: "invalid_phone"}
    regional = mapped(path, ImportOptions(phone_region="FR"))
    assert {line: c.subject_id for line, c in commands(regional).items()} == {
        2: "phone:+33612345678",
        3: "phone:+14155552671",
        4: "phone:+33612345678",
    }
    assert rejections(regional) == {5: "invalid_phone"}


def test_options_fill_what_rows_leave_empty_and_rows_win(tmp_path: Path) -> None:
    text = "email,topic,channel\na@example.com,,\nb@example.com,reminders,push\n"
    found = commands(mapped(write(tmp_path, text), ImportOptions(topic="product", channel="sms")))
    assert (found[2].changes[0].topic, found[2].changes[0].channel) == ("product", "sms")
    assert (found[3].changes[0].topic, found[3].changes[0].channel) == ("reminders", "push")


def test_too_long_ids_missing_cells_and_bad_bytes_are_rejected(tmp_path: Path) -> None:
    long_address = "a" * 250 + "@example.com"
    raw = (
        b"email,reason\n"
        + long_address.encode()
        + b",x\n"
        + b",empty\n"
        + b"caf\xe9@example.com,latin-1\n"
        + b"ok@example.com,nul\x00inside\n"
    )
    results = mapped(write(tmp_path, raw))
    assert rejections(results) == {
        2: "too_long",
        3: "missing_identifier",
        4: "invalid_text",
        5: "invalid_text",
    }
    short_row = mapped(write(tmp_path, "topic,email\nmarketing\n", "short.csv"))
    assert rejections(short_row) == {2: "missing_column"}


def test_long_reasons_are_cut_to_what_the_contract_holds(tmp_path: Path) -> None:
    found = commands(mapped(write(tmp_path, f"email,reason\na@example.com,{'r' * 900}\n")))
    assert found[2].reason == "r" * 500
    assert decoded(found[2]).reason == "r" * 500


def test_a_byte_order_mark_and_another_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffemail;topic\na@example.com;reminders\n")
    with CsvRows(path, ";") as rows:
        assert rows.header == ["email", "topic"]
        assert list(rows) == [(2, ["a@example.com", "reminders"])]


def test_lines_are_counted_for_the_progress_bar(tmp_path: Path) -> None:
    assert count_lines(write(tmp_path, "email\na@example.com\nb@example.com\n")) == 3
    assert count_lines(write(tmp_path, "email\na@example.com", "no-newline.csv")) == 2


# --- SendGrid ----------------------------------------------------------------------------


def test_sendgrid_global_unsubscribes_opt_out_of_everything_by_email(tmp_path: Path) -> None:
    text = (
        "email,created\nA@Example.com,1700000000\nb@example.com,2024-05-01 10:00:00\n"
        "c@example.com,2024-05-01T10:00:00+02:00\nd@example.com,1700000000000\n"
        "e@example.com,\nnot-an-address,1700000000\n"
    )
    results = mapped(write(tmp_path, text))
    found = commands(results)
    assert found[2].subject_id == "email:a@example.com"
    assert found[2].occurred_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert found[3].occurred_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert found[4].occurred_at == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert found[6].occurred_at == FALLBACK
    # Milliseconds read as seconds would lie past year 9999: refused, never misread.
    assert rejections(results) == {5: "invalid_timestamp", 7: "invalid_email"}
    for command in found.values():
        assert [(c.action, c.topic, c.channel) for c in command.changes] == [
            ("opt_out", "*", "email")
        ]
        assert (command.source.channel, command.source.app) == ("import", "import:sendgrid")
        assert command.reason == "SendGrid unsubscribe"


def test_sendgrid_local_times_are_read_in_the_given_zone(tmp_path: Path) -> None:
    path = write(tmp_path, "email,created\na@example.com,2024-05-01 10:00:00\n")
    found = commands(mapped(path, ImportOptions(time_zone=ZoneInfo("America/Los_Angeles"))))
    assert found[2].occurred_at == datetime(2024, 5, 1, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "row", "reason"),
    [
        (
            "email,created,status,reason",
            "a@example.com,1700000000,5.1.1,550 <a@example.com>",
            "bounce or block",
        ),
        (
            "email,created,reason,status",
            "a@example.com,1700000000,blocked,4.0.0",
            "bounce or block",
        ),
        ("email,created,ip", "a@example.com,1700000000,203.0.113.7", "spam report"),
        ("email,created,reason", "a@example.com,1700000000,invalid domain", "invalid email"),
    ],
)
def test_sendgrid_bounces_blocks_spam_reports_and_invalid_emails(
    tmp_path: Path, header: str, row: str, reason: str
) -> None:
    found = commands(mapped(write(tmp_path, f"{header}\n{row}\n")))
    command = found[2]
    assert command.reason == f"SendGrid {reason}"
    value = command_value(command)
    # Neither the SMTP text (it quotes the address) nor the reporter's IP leaves the file.
    assert b"203.0.113.7" not in value
    assert b"550" not in value
    assert b'"ip"' not in value


def test_sendgrid_group_unsubscribes_take_the_topic_given(tmp_path: Path) -> None:
    path = write(tmp_path, "email,created\na@example.com,1700000000\n")
    found = commands(mapped(path, ImportOptions(topic="marketing.newsletter")))
    assert [(c.topic, c.channel) for c in found[2].changes] == [("marketing.newsletter", "email")]


# --- Mailchimp -------------------------------------------------------------------------


MAILCHIMP = (
    '"Email Address","First Name","Last Name",MEMBER_RATING,OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,'
    "CONFIRM_IP,LATITUDE,LONGITUDE,GMTOFF,DSTOFF,TIMEZONE,CC,REGION,UNSUB_TIME,"
    "UNSUB_CAMPAIGN_TITLE,UNSUB_CAMPAIGN_ID,UNSUB_REASON,UNSUB_REASON_OTHER,LEID,EUID,NOTES\n"
    'X@Example.com,Xavier,,2,"2020-01-01 00:00:00",198.51.100.1,,,,,,,,FR,,'
    '"2021-02-03 04:05:06","Spring sale",abc123,"I no longer want to receive these emails",,1,e1,\n'
    'z@example.com,Zoe,,2,,,,,,,,,,,,"2021-02-03 04:05:06",Spring,abc,Other,"Too often",2,e2,\n'
    "nobody,N,,2,,,,,,,,,,,,2021-02-03 04:05:06,Spring,abc,,,3,e3,\n"
    'y@example.com,Y,,2,,,,,,,,,,,,"",Spring,abc,,,4,e4,\n'
)


def test_mailchimp_unsubscribes_opt_out_of_marketing_by_email(tmp_path: Path) -> None:
    results = mapped(write(tmp_path, MAILCHIMP))
    assert rejections(results) == {4: "invalid_email"}
    found = commands(results)
    x, z, y = found[2], found[3], found[5]
    assert x.subject_id == "email:x@example.com"
    assert x.occurred_at == datetime(2021, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert [(c.action, c.topic, c.channel) for c in x.changes] == [
        ("opt_out", "marketing", "email")
    ]
    assert x.reason == "I no longer want to receive these emails"
    assert z.reason == "Other: Too often"
    assert y.occurred_at == FALLBACK
    assert y.reason is None
    assert (x.source.channel, x.source.app) == ("import", "import:mailchimp")
    # The opt-in IP of the export is never sent.
    assert b"198.51.100.1" not in command_value(x)
    everything = commands(mapped(write(tmp_path, MAILCHIMP, "b.csv"), ImportOptions(topic="*")))
    assert everything[2].changes[0].topic == "*"


# --- deterministic ids -------------------------------------------------------------------


def test_the_same_row_gives_the_same_command_id_in_another_run(tmp_path: Path) -> None:
    first = commands(mapped(write(tmp_path, GENERIC)))
    again = commands(mapped(write(tmp_path, GENERIC, "copy.csv")))
    assert {line: c.command_id for line, c in first.items()} == {
        line: c.command_id for line, c in again.items()
    }
    assert all(c.command_id.startswith("import-k1-") for c in first.values())
    assert len({c.command_id for c in first.values()}) == len(first)


def test_a_different_fallback_time_or_tenant_gives_other_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "email\na@example.com\n")
    base = commands(mapped(path))[2].command_id
    other_tenant = commands(mapped(path, ImportOptions(tenant="acme")))[2].command_id
    with CsvRows(path) as rows:
        later = RowMapper(
            "csv",
            rows.header,
            ImportOptions(),
            DEFAULT_CATALOG,
            fallback_time=FALLBACK + timedelta(seconds=1),
            max_future=timedelta(minutes=5),
            ids=IDS,
        ).map(2, ["a@example.com"], NOW)
    assert isinstance(later, Command)
    assert len({base, other_tenant, later.command_id}) == 3


_ADDRESS = st.from_regex(
    r"[A-Za-z0-9._%+-]{1,20}@[A-Za-z0-9-]{1,15}\.[A-Za-z]{2,6}", fullmatch=True
)
_TOPIC = st.sampled_from(["", "*", "marketing", "marketing.newsletter", "reminders", "product"])
_CHANNEL = st.sampled_from(["", "*", "email", "sms", "push"])
_SECONDS = st.integers(min_value=0, max_value=int(NOW.timestamp()))


@settings(max_examples=200, deadline=None)
@given(
    address=_ADDRESS,
    padding=st.sampled_from(["", " ", "  "]),
    upper=st.booleans(),
    topic=_TOPIC,
    channel=_CHANNEL,
    seconds=_SECONDS,
    reason=st.text(max_size=600),
)
def test_generated_rows_give_stable_ids_of_their_content_and_values_the_worker_reads(
    address: str,
    padding: str,
    upper: bool,
    topic: str,
    channel: str,
    seconds: int,
    reason: str,
) -> None:
    header = ["email", "topic", "channel", "occurred_at", "reason"]
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat()
    spelled = address.upper() if upper else address
    row = [padding + spelled + padding, topic, channel, stamp, reason]
    mapper = RowMapper(
        "csv",
        header,
        ImportOptions(),
        DEFAULT_CATALOG,
        fallback_time=FALLBACK,
        max_future=timedelta(minutes=5),
        ids=IDS,
    )
    first = mapper.map(2, row, NOW)
    if isinstance(first, Rejected):
        # Only the reason cell can make a generated row unusable (a NUL character).
        assert first.reason == "invalid_text"
        assert "\x00" in reason
        return
    canonical = [address.lower(), topic, channel, stamp, reason]
    second = mapper.map(99, canonical, NOW)
    assert isinstance(second, Command)
    # Case and spaces around an address do not make another command.
    assert first == second
    assert first.subject_id == normalize("email:" + address)
    assert first.command_id == command_id_for(first, IDS)
    worker_sees = decoded(first)
    assert worker_sees == first
    assert content_hash(worker_sees) == content_hash(first)
    document = orjson.loads(command_value(first))
    assert set(document["source"]) == {"channel", "app"}


@settings(max_examples=200, deadline=None)
@given(cell=st.text(max_size=40))
def test_any_email_cell_is_a_command_or_a_named_rejection(cell: str) -> None:
    mapper = RowMapper(
        "csv",
        ["email"],
        ImportOptions(),
        DEFAULT_CATALOG,
        fallback_time=FALLBACK,
        max_future=timedelta(minutes=5),
        ids=IDS,
    )
    result = mapper.map(7, [cell], NOW)
    if isinstance(result, Rejected):
        assert result.line == 7
        assert result.reason in {"missing_identifier", "invalid_email", "invalid_text"}
        # A rejection never quotes the cell: its detail is one of the fixed texts (checking
        # that the cell is not in it failed for cells that are words of those texts).
        assert result.detail in {
            "the identifier cell is empty",
            "the identifier is not valid UTF-8 text",
            "an email identifier must be email:local@domain",
        }
        return
    try:
        expected = normalize("email:" + cell.strip())
    except InvalidIdentifier:  # pragma: no cover - the mapper rejected it above
        pytest.fail("a cell normalize refuses was accepted")
    assert result.subject_id == expected
    assert decoded(result) == result


@settings(max_examples=100, deadline=None)
@given(seconds=_SECONDS)
def test_provider_times_in_every_form_agree(seconds: int) -> None:
    moment = datetime.fromtimestamp(seconds, UTC)
    assert local_instant(str(seconds), UTC) == moment
    assert local_instant(moment.strftime("%Y-%m-%d %H:%M:%S"), UTC) == moment
    assert local_instant(moment.isoformat(), UTC) == moment


# --- checkpoint and rejects files ----------------------------------------------------------


def test_the_checkpoint_file_round_trips_and_leaves_nothing_aside(tmp_path: Path) -> None:
    store = CheckpointFile(tmp_path / "list.csv.checkpoint.json")
    assert store.load() is None
    checkpoint = Checkpoint("f" * 64, FALLBACK, line=1234, rows=1233, sent=1200, rejected=33)
    store.save(checkpoint)
    assert store.load() == checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.csv.checkpoint.json"]
    document = json.loads(store.path.read_text())
    assert document["line"] == 1234
    assert document["fallback_time"] == "2026-11-01T09:30:00+00:00"


def test_a_foreign_checkpoint_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint.json"
    path.write_text('{"something": "else"}')
    with pytest.raises(ImportRefused, match="--restart"):
        CheckpointFile(path).load()


def test_the_rejects_file_is_appended_to_on_resumption(tmp_path: Path) -> None:
    path = tmp_path / "rejects.csv"
    first = RejectsFile(path, append=False)
    first.write([Rejected(4, "invalid_email", "an email identifier must be email:local@domain")])
    first.close()
    again = RejectsFile(path, append=True)
    again.write([Rejected(9, "unknown_topic", "changes[0]: unknown topic 'nope'")])
    again.close()
    assert path.read_text().splitlines() == [
        "line,reason,detail",
        "4,invalid_email,an email identifier must be email:local@domain",
        "9,unknown_topic,changes[0]: unknown topic 'nope'",
    ]
