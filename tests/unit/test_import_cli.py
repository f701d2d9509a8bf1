"""`optout import` without Kafka: dry runs, usage errors (exit 2), nothing personal printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.entrypoints.cli import app

ROWS = """\
email,topic,occurred_at,reason
secret.alice@example.com,marketing,2026-01-02T03:04:05Z,my own words
secret.bob@example.com,,,
secret-carol-no-at-sign,,,
secret.dave@example.com,security,,
secret.erin@example.com,,last tuesday,
"""


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command configures logging onto the runner's stream, which is closed afterwards:
    later tests would log into a closed file."""
    monkeypatch.setattr("service.logging.configure_logging", lambda *_: None)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["import", *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_dry_run_checks_every_row_and_prints_line_numbers_only(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(ROWS)
    rejects = tmp_path / "rejects.csv"
    code, out, err = invoke(str(path), "--dry-run", "--json", "--rejects", str(rejects))
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["rows"], summary["sent"], summary["rejected"]) == (5, 2, 3)
    assert summary["dry_run"] is True
    assert "line 4 rejected: invalid_email" in err
    assert "line 5 rejected: mandatory_topic" in err
    assert "line 6 rejected: invalid_timestamp" in err
    assert rejects.read_text().splitlines()[0] == "line,reason,detail"
    assert [row.split(",")[:2] for row in rejects.read_text().splitlines()[1:]] == [
        ["4", "invalid_email"],
        ["5", "mandatory_topic"],
        ["6", "invalid_timestamp"],
    ]
    everything = out + err + rejects.read_text()
    assert "secret" not in everything
    assert "my own words" not in everything
    # A dry run leaves no checkpoint behind.
    assert not (tmp_path / "list.csv.checkpoint.json").exists()


@pytest.mark.parametrize(
    ("content", "args", "says"),
    [
        ("name,address\nx,y\n", [], "header not recognised"),
        ("", [], "empty"),
        ('"Email Address",OPTIN_TIME\na@example.com,\n', [], "UNSUB_TIME"),
        ("email,phone\na@example.com,+33612345678\n", [], "several identifier columns"),
        ("email\na@example.com\n", ["--topic", "security"], "mandatory"),
        ("email\na@example.com\n", ["--topic", "nope"], "not in the catalog"),
        ("email\na@example.com\n", ["--format", "xml"], "--format"),
        ("email\na@example.com\n", ["--occurred-at", "yesterday"], "--occurred-at"),
        ("email\na@example.com\n", ["--occurred-at", "2999-01-01T00:00:00Z"], "future"),
        ("email\na@example.com\n", ["--time-zone", "Mars/Olympus"], "--time-zone"),
        ("email\na@example.com\n", ["--tenant", "Not:OK"], "--tenant"),
        ("email\na@example.com\n", ["--phone-region", "france"], "--phone-region"),
        ("email\na@example.com\n", ["--delimiter", ";;"], "--delimiter"),
    ],
)
def test_what_cannot_be_imported_exits_2_with_one_line(
    tmp_path: Path, content: str, args: list[str], says: str
) -> None:
    path = tmp_path / "list.csv"
    path.write_text(content)
    code, out, err = invoke(str(path), *args)
    assert code == 2, (out, err)
    assert err.startswith("optout import: ")
    assert says in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    code, _, err = invoke(str(tmp_path / "nowhere.csv"))
    assert code == 2
    assert "cannot read" in err


def test_a_checkpoint_of_another_file_or_other_options_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email\na@example.com\n")
    checkpoint = tmp_path / "list.csv.checkpoint.json"
    checkpoint.write_text(
        json.dumps(
            {
                "version": 1,
                "fingerprint": "0" * 64,
                "fallback_time": "2026-01-01T00:00:00+00:00",
                "line": 7,
                "rows": 6,
                "sent": 6,
                "rejected": 0,
                "done": False,
            }
        )
    )
    code, _, err = invoke(str(path))
    assert code == 2
    assert "--restart" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = invoke(str(path), "--checkpoint", str(broken))
    assert code == 2
    assert "not a checkpoint" in err


def test_an_import_without_the_identifier_key_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPTOUT_IDENTIFIER_KEY", raising=False)
    path = tmp_path / "list.csv"
    path.write_text(ROWS)
    code, _, err = invoke(str(path))
    assert code == 2
    assert err.strip().splitlines() == [
        "optout import: OPTOUT_IDENTIFIER_KEY is not set: imported rows' command ids are keyed"
        " hashes under it (the service's own key, at least 32 bytes)"
    ]


def test_a_short_identifier_key_stops_the_import_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTOUT_IDENTIFIER_KEY", "too-short")
    path = tmp_path / "list.csv"
    path.write_text(ROWS)
    result = CliRunner().invoke(app, ["import", str(path), "--dry-run"])
    assert result.exit_code == 1
    assert "OPTOUT_IDENTIFIER_KEY must be at least 32 bytes" in str(result.exception)
    assert "too-short" not in str(result.exception)
