"""How `optout lag` shows its figures and judges them against the probe's limits."""

from __future__ import annotations

from collections.abc import Sequence

from service.adapters.kafka.lag import PartitionLag


def render_table(group: str, rows: Sequence[PartitionLag]) -> str:
    header = ("TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG_SECONDS")
    lines = [
        (
            r.topic,
            str(r.partition),
            "-" if r.committed is None else str(r.committed),
            str(r.end),
            str(r.lag_records),
            f"{r.lag_seconds:.3f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]
    text = [f"group {group}"]
    text += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in (header, *lines)
    ]
    total = sum(r.lag_records for r in rows)
    oldest = max((r.lag_seconds for r in rows), default=0.0)
    text.append(f"total lag {total} records; oldest unconsumed record {oldest:.3f} s old")
    return "\n".join(text)


def over_limits(
    rows: Sequence[PartitionLag], max_lag: int | None, max_lag_seconds: float | None
) -> bool:
    """True when any partition lags beyond a limit that was given."""
    return any(
        (max_lag is not None and r.lag_records > max_lag)
        or (max_lag_seconds is not None and r.lag_seconds > max_lag_seconds)
        for r in rows
    )
