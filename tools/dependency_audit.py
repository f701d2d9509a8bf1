"""`make audit`: known vulnerabilities in the locked dependencies, judged against the accepted.

Runs pip-audit over exactly what uv.lock pins (every extra included: the tools run on the
developers' machines and in CI too) and reads its JSON report, because pip-audit alone says
"No known vulnerabilities found" even when it could audit nothing (its database unreachable,
each package then "skipped"). Exit status:

- 0: every locked package was audited, and each known vulnerability has an accepted,
  unexpired exception in ``deploy/pip-audit-accepted.toml`` (id, package, reason, expires);
- 1: a known vulnerability without one (listed, with the versions that fix it);
- 3: not every package could be audited (the vulnerability database did not answer, or a
  package is unknown to it): said in one line with the count, never taken for a pass.
  ``--allow-unaudited`` (``make lint AUDIT=allow-unaudited``) turns that into a warning, for
  machines that cannot reach the database; the report still says what was not audited.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

EXIT_VULNERABLE = 1
EXIT_UNAUDITED = 3


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    package: str
    reason: str
    expires: date


@dataclass(frozen=True, slots=True)
class Finding:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]

    @property
    def names(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass(frozen=True, slots=True)
class Verdict:
    audited: int
    unaudited: list[str]  # "name: pip-audit's reason"
    open: list[Finding]
    accepted: list[tuple[Finding, Accepted]]
    expired: list[tuple[Finding, Accepted]]
    unused: list[Accepted]


def load_accepted(path: Path) -> list[Accepted]:
    """The accepted exceptions; a malformed entry is an error, never silently ignored."""
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    entries = document.get("accepted", [])
    if not isinstance(entries, list):
        raise ValueError(f"{path}: `accepted` must be an array of tables")
    found = []
    for number, entry in enumerate(entries, start=1):
        missing = {"id", "package", "reason", "expires"} - set(entry)
        if missing:
            raise ValueError(f"{path}: accepted entry {number} lacks {', '.join(sorted(missing))}")
        if not isinstance(entry["expires"], date) or not str(entry["reason"]).strip():
            raise ValueError(f"{path}: accepted entry {number} needs a reason and a date")
        found.append(
            Accepted(
                str(entry["id"]),
                _normalized(str(entry["package"])),
                str(entry["reason"]),
                entry["expires"],
            )
        )
    return found


def judge(report: dict[str, Any], accepted: Sequence[Accepted], today: date) -> Verdict:
    """pip-audit's JSON report (``--format json``) against the accepted exceptions."""
    unaudited: list[str] = []
    findings: list[Finding] = []
    audited = 0
    for dependency in report.get("dependencies", []):
        name = _normalized(dependency["name"])
        if "skip_reason" in dependency:
            unaudited.append(f"{name}: {dependency['skip_reason']}")
            continue
        audited += 1
        findings.extend(
            Finding(
                name,
                dependency.get("version", "?"),
                vuln["id"],
                tuple(vuln.get("aliases", ())),
                tuple(vuln.get("fix_versions", ())),
            )
            for vuln in dependency.get("vulns", [])
        )
    open_: list[Finding] = []
    kept: list[tuple[Finding, Accepted]] = []
    expired: list[tuple[Finding, Accepted]] = []
    used: set[Accepted] = set()
    for finding in findings:
        match = next(
            (a for a in accepted if a.package == finding.package and a.id in finding.names), None
        )
        if match is None:
            open_.append(finding)
        elif match.expires < today:
            expired.append((finding, match))
            used.add(match)
        else:
            kept.append((finding, match))
            used.add(match)
    unused = [a for a in accepted if a not in used]
    return Verdict(audited, unaudited, open_, kept, expired, unused)


def report_lines(verdict: Verdict) -> list[str]:
    lines = []
    for finding in verdict.open:
        fix = ", ".join(finding.fixed_in) or "no fixed version yet"
        lines.append(
            f"VULNERABLE {finding.package} {finding.version}: {finding.id}"
            f" ({', '.join(finding.aliases) or 'no alias'}); fixed in {fix}"
        )
    for finding, entry in verdict.expired:
        lines.append(
            f"VULNERABLE {finding.package} {finding.version}: {finding.id}: its exception"
            f" expired on {entry.expires.isoformat()}"
        )
    for finding, entry in verdict.accepted:
        lines.append(
            f"accepted {finding.package} {finding.version}: {finding.id} until"
            f" {entry.expires.isoformat()}: {entry.reason}"
        )
    for entry in verdict.unused:
        lines.append(f"note: the exception for {entry.id} ({entry.package}) matches nothing now")
    total = verdict.audited + len(verdict.unaudited)
    if verdict.unaudited:
        reached = "could not be reached" if not verdict.audited else "does not know some"
        lines.append(
            f"NOT AUDITED: {len(verdict.unaudited)} of {total} locked packages (the"
            f" vulnerability database {reached}); first: {verdict.unaudited[0]}"
        )
    else:
        lines.append(
            f"audited {total} locked packages: {len(verdict.open) + len(verdict.expired)}"
            f" open, {len(verdict.accepted)} accepted"
        )
    return lines


def exit_status(verdict: Verdict, *, allow_unaudited: bool) -> int:
    if verdict.open or verdict.expired:
        return EXIT_VULNERABLE
    if verdict.unaudited and not allow_unaudited:
        return EXIT_UNAUDITED
    return 0


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _run_pip_audit(uv: str, pip_audit: str, service: str) -> dict[str, Any] | str:
    """pip-audit's JSON report over the lock, or why there is none (one line)."""
    with tempfile.TemporaryDirectory() as work:
        requirements = Path(work) / "locked.txt"
        output = Path(work) / "report.json"
        subprocess.run(  # noqa: S603 - fixed arguments
            [
                uv,
                "export",
                "--frozen",
                "--format",
                "requirements-txt",
                "--all-extras",
                "--no-emit-project",
                "--quiet",
                "--output-file",
                str(requirements),
            ],
            check=True,
        )
        done = subprocess.run(  # noqa: S603 - fixed arguments
            [
                pip_audit,
                "--requirement",
                str(requirements),
                "--disable-pip",
                "--vulnerability-service",
                service,
                "--progress-spinner",
                "off",
                "--format",
                "json",
                "--output",
                str(output),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if not output.exists() or not output.read_text():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"pip-audit gave no report (exit {done.returncode}): {last[:300]}"
        report: dict[str, Any] = json.loads(output.read_text())
        return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", required=True)
    parser.add_argument("--pip-audit", default=str(Path(sys.executable).with_name("pip-audit")))
    parser.add_argument("--accepted", type=Path, required=True)
    parser.add_argument("--service", default="pypi", choices=("pypi", "osv"))
    parser.add_argument("--allow-unaudited", action="store_true")
    options = parser.parse_args(argv)
    accepted = load_accepted(options.accepted)
    report = _run_pip_audit(options.uv, options.pip_audit, options.service)
    if isinstance(report, str):
        print(f"audit: NOT AUDITED: {report}", file=sys.stderr)
        return 0 if options.allow_unaudited else EXIT_UNAUDITED
    verdict = judge(report, accepted, date.today())
    for line in report_lines(verdict):
        print(f"audit: {line}", file=sys.stderr)
    status = exit_status(verdict, allow_unaudited=options.allow_unaudited)
    if status == 0 and verdict.unaudited:
        print("audit: WARNING: passed only because AUDIT=allow-unaudited", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
