"""`optout lag --senders`: each sender's position, how far behind, its last report's age and
its recent effect times (effect receipts, README "Effect receipts")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.lag import topic_ends
from service.adapters.redis_client import create_redis
from service.adapters.redis_effect_receipts import RedisEffectReceipts
from service.application.receipts import CommandReceipts, SenderSummary
from service.settings import Settings


async def sender_summaries(settings: Settings) -> list[SenderSummary]:
    ends = await topic_ends(KafkaConnection.from_settings(settings), settings.topic_preferences)
    redis = create_redis(settings.redis_dsn, cluster=settings.redis_cluster)
    try:
        store = RedisEffectReceipts(
            redis, settings.redis_prefix, ttl_seconds=settings.receipt_ttl_seconds
        )
        receipts = CommandReceipts(store, live_seconds=settings.sender_live_seconds)
        return await receipts.senders(ends)
    finally:
        await redis.aclose()


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def as_dict(s: SenderSummary) -> dict[str, Any]:
    return {
        "sender": s.sender,
        "instances": s.instances,
        "positions": {str(p): o for p, o in sorted(s.positions.items())},
        "behind_records": s.behind_records,
        "last_report_age_seconds": round(s.last_report_age_seconds, 3),
        "effect_p50_ms": None if s.effect_p50_seconds is None else s.effect_p50_seconds * 1000,
        "effect_p99_ms": None if s.effect_p99_seconds is None else s.effect_p99_seconds * 1000,
        "recent_effects": s.recent_effects,
    }


def render_senders(rows: Sequence[SenderSummary]) -> str:
    header = ("SENDER", "INSTANCES", "POSITION", "BEHIND", "LAST_REPORT_S", "P50_MS", "P99_MS", "N")
    lines = [
        (
            s.sender,
            str(s.instances),
            " ".join(f"{p}:{o}" for p, o in sorted(s.positions.items())) or "-",
            "-" if s.behind_records is None else str(s.behind_records),
            f"{s.last_report_age_seconds:.1f}",
            _ms(s.effect_p50_seconds),
            _ms(s.effect_p99_seconds),
            str(s.recent_effects),
        )
        for s in rows
    ]
    if not lines:
        return "no sender has reported (OPTOUT_CLIENT_SENDER, OPTOUT_TOPIC_SENDER_RECEIPTS)"
    widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *lines)
    )
