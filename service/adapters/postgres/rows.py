"""Rows of the ``rules`` table as domain rules, for every query that reads them."""

from __future__ import annotations

from typing import Any

from service.domain.model import Rule


def rule_from_row(row: Any) -> Rule:
    return Rule(
        topic=row["topic"],
        channel=row["channel"],
        action=row["action"],
        occurred_at=row["occurred_at"],
        source_channel=row["source_channel"],
        command_id=row["command_id"],
    )
