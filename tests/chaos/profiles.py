"""The run sizes: ``full`` (``make chaos``) and ``short`` (the test suite's variant)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tests.chaos.faults import FaultPlan
from tests.chaos.scenario import ChaosConfig


def full_config(seed: int, classes: tuple[str, ...]) -> ChaosConfig:
    """About six minutes of traffic at 60 records/s, with 22 kills and every other fault."""
    return ChaosConfig(
        seed=seed,
        records=21_600,
        rate_per_s=60.0,
        classes=classes,
        min_per_class=5,
        faults=FaultPlan(
            kills=22,
            leave_rejoin=1,
            extra_member=1,
            restart_postgres=True,
            restart_redis=True,
            flush_redis=True,
            restart_kafka=True,
        ),
    )


def short_config(seed: int, classes: tuple[str, ...]) -> ChaosConfig:
    """Eight hundred records, three kills, a member joining and leaving, one Redis flush.

    Twenty records a second, so the backlog behind each kill is large enough for the
    SDK's follower to trail as it catches up: the moment a stale local answer can show.
    """
    return ChaosConfig(
        seed=seed,
        records=800,
        rate_per_s=20.0,
        classes=classes,
        subjects=40,
        hostile_share=0.1,
        faults=FaultPlan(kills=3, extra_member=1, flush_redis=True),
        drain_idle_s=20.0,
        drain_max_s=90.0,
    )


def with_overrides(config: ChaosConfig, overrides: dict[str, Any]) -> ChaosConfig:
    """The profile's configuration with `records`, `rate_per_s` or `kills` replaced."""
    changes = {k: v for k, v in overrides.items() if v is not None and k != "kills"}
    if overrides.get("kills") is not None:
        changes["faults"] = dataclasses.replace(config.faults, kills=overrides["kills"])
    return dataclasses.replace(config, **changes)
