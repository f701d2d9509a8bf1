"""Rows of subjects joined with their rules, as domain states, for every query that reads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.domain.model import Rule, SubjectKey, SubjectState


def rule_from_row(row: Any) -> Rule:
    # Positional, in field order: keyword matching is a measurable share on the hot path.
    return Rule(
        row["topic"],
        row["channel"],
        row["action"],
        row["occurred_at"],
        row["source_channel"],
        row["command_id"],
    )


def states_from_rows(rows: Sequence[Any]) -> dict[SubjectKey, SubjectState]:
    """One state per subject from rows of (subject, version, rule or NULLs) of a LEFT JOIN.

    Rows with `merged_into` and `erased_at` columns carry identities; a query without them
    reads plain subjects. Called on every batch: columns are looked up by name once.
    """
    versions: dict[SubjectKey, int] = {}
    rules: dict[SubjectKey, dict[tuple[str, str], Rule]] = {}
    identity: dict[SubjectKey, tuple[str | None, bool]] = {}
    with_identity = bool(rows) and "merged_into" in rows[0].keys()  # noqa: SIM118 (a Record)
    for row in rows:
        key = SubjectKey(row["tenant"], row["subject_id"])
        if key not in versions:
            versions[key] = row["version"]
            rules[key] = {}
            if with_identity:
                merged_into, erased_at = row["merged_into"], row["erased_at"]
                if merged_into is not None or erased_at is not None:
                    identity[key] = (merged_into, erased_at is not None)
        topic = row["topic"]
        if topic is not None:
            rules[key][(topic, row["channel"])] = rule_from_row(row)
    if not identity:
        return {
            key: SubjectState.adopting(key, version, rules[key])
            for key, version in versions.items()
        }
    states = {}
    for key, version in versions.items():
        merged_into, erased = identity.get(key, (None, False))
        states[key] = SubjectState.adopting(key, version, rules[key], merged_into, erased)
    return states
