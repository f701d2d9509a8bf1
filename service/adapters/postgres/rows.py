"""Rows of subjects joined with their rules, as domain states, for every query that reads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.domain.model import Rule, SubjectKey, SubjectState


def rule_from_row(row: Any) -> Rule:
    return Rule(
        topic=row["topic"],
        channel=row["channel"],
        action=row["action"],
        occurred_at=row["occurred_at"],
        source_channel=row["source_channel"],
        command_id=row["command_id"],
    )


def states_from_rows(rows: Sequence[Any]) -> dict[SubjectKey, SubjectState]:
    """One state per subject from rows of (subject, version, rule or NULLs) of a LEFT JOIN."""
    versions: dict[SubjectKey, int] = {}
    rules: dict[SubjectKey, dict[tuple[str, str], Rule]] = {}
    identity: dict[SubjectKey, tuple[str | None, bool]] = {}
    for row in rows:
        key = SubjectKey(row["tenant"], row["subject_id"])
        versions[key] = int(row["version"])
        table = rules.setdefault(key, {})
        if row["topic"] is not None:
            table[(row["topic"], row["channel"])] = rule_from_row(row)
        # Queries that predate identities have neither column: a plain subject.
        merged_into = row.get("merged_into")
        erased = row.get("erased_at") is not None
        if merged_into is not None or erased:
            identity[key] = (merged_into, erased)
    states = {}
    for key, version in versions.items():
        merged_into, erased = identity.get(key, (None, False))
        states[key] = SubjectState.adopting(key, version, rules[key], merged_into, erased)
    return states
