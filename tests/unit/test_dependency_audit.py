"""`make audit`: pip-audit's report judged against the accepted exceptions, never a false pass."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tools.dependency_audit import (
    EXIT_UNAUDITED,
    EXIT_VULNERABLE,
    Accepted,
    exit_status,
    judge,
    load_accepted,
    report_lines,
)

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 12, 7)
VULN = {"id": "PYSEC-2026-1", "aliases": ["GHSA-aaaa-bbbb-cccc"], "fix_versions": ["2.0.1"]}


def report(*dependencies: dict[str, Any]) -> dict[str, Any]:
    return {"dependencies": list(dependencies), "fixes": []}


def clean(name: str) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "vulns": []}


def test_a_known_vulnerability_without_an_exception_fails_naming_it_and_its_fix() -> None:
    verdict = judge(
        report(clean("a"), {"name": "Jinja2", "version": "2.0", "vulns": [VULN]}), [], TODAY
    )
    assert exit_status(verdict, allow_unaudited=True) == EXIT_VULNERABLE
    assert report_lines(verdict)[0] == (
        "VULNERABLE jinja2 2.0: PYSEC-2026-1 (GHSA-aaaa-bbbb-cccc); fixed in 2.0.1"
    )


def test_an_accepted_exception_matches_by_id_or_alias_until_it_expires() -> None:
    vulnerable = report({"name": "jinja2", "version": "2.0", "vulns": [VULN]})
    by_alias = Accepted("GHSA-aaaa-bbbb-cccc", "jinja2", "templates are ours", date(2027, 1, 1))
    verdict = judge(vulnerable, [by_alias], TODAY)
    assert exit_status(verdict, allow_unaudited=False) == 0
    assert any(
        line.startswith("accepted jinja2 2.0: PYSEC-2026-1") for line in report_lines(verdict)
    )
    expired = Accepted("PYSEC-2026-1", "jinja2", "templates are ours", date(2026, 12, 6))
    assert exit_status(judge(vulnerable, [expired], TODAY), allow_unaudited=False) == 1
    # An exception for another package does not cover this one.
    other = Accepted("PYSEC-2026-1", "markupsafe", "n/a", date(2027, 1, 1))
    verdict = judge(vulnerable, [other], TODAY)
    assert exit_status(verdict, allow_unaudited=False) == EXIT_VULNERABLE
    assert "note: the exception for PYSEC-2026-1 (markupsafe) matches nothing now" in (
        report_lines(verdict)
    )


def test_a_report_that_audited_nothing_is_never_a_pass() -> None:
    """pip-audit itself prints "No known vulnerabilities found" for this report."""
    skipped = report(
        *(
            {
                "name": n,
                "skip_reason": f"Dependency not found on PyPI and could not be audited: {n}",
            }
            for n in ("aiokafka", "redis")
        )
    )
    verdict = judge(skipped, [], TODAY)
    assert exit_status(verdict, allow_unaudited=False) == EXIT_UNAUDITED
    assert report_lines(verdict)[-1].startswith(
        "NOT AUDITED: 2 of 2 locked packages (the vulnerability database could not be reached)"
    )
    assert exit_status(verdict, allow_unaudited=True) == 0
    # The positive control: the same packages audited clean pass.
    assert (
        exit_status(
            judge(report(clean("aiokafka"), clean("redis")), [], TODAY), allow_unaudited=False
        )
        == 0
    )
    # A vulnerability still fails when other packages could not be audited.
    mixed = judge(report(skipped["dependencies"][0], {"name": "x", "vulns": [VULN]}), [], TODAY)
    assert exit_status(mixed, allow_unaudited=True) == EXIT_VULNERABLE


def test_the_repository_file_loads_and_a_malformed_entry_is_refused(tmp_path: Path) -> None:
    assert isinstance(load_accepted(ROOT / "deploy" / "pip-audit-accepted.toml"), list)
    bad = tmp_path / "accepted.toml"
    bad.write_text('[[accepted]]\nid = "GHSA-1"\npackage = "x"\nexpires = 2027-01-01\n')
    with pytest.raises(ValueError, match="lacks reason"):
        load_accepted(bad)
