"""A killed worker's partitions move after the group's session timeout, which is a setting.

Two worker processes share the commands topic with a 2.5 s session (the local stack's broker
allows sessions down to 1 s); one is SIGKILLed, so it never says goodbye, and the other ends
up holding every partition. The time from the kill to that assignment is recorded (junit
property `partitions_moved_after_seconds`), not asserted: what is asserted is the order of
events, and that the survivor held only part of the partitions before the kill.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.settings import Settings
from tests.support.oracle import start_worker
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def assignments(log: Path) -> list[list[int]]:
    """Every assignment a worker's log reports, in order."""
    if not log.exists():
        return []
    return [
        list(json.loads(line)["partitions"])
        for line in log.read_text().splitlines()
        if '"partitions_assigned"' in line
    ]


async def until(condition: Callable[[], bool], what: str, limit_seconds: float = 60.0) -> None:
    # A generous limit so a broken rebalance fails the test instead of hanging it; the time
    # that matters is recorded by the test, not bounded here.
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit_seconds, what
        await asyncio.sleep(0.05)


async def test_a_killed_workers_partitions_move_after_the_session_timeout(
    settings: Settings, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    own = settings.model_copy(
        update={
            "consumer_session_timeout_seconds": 2.5,
            "consumer_heartbeat_interval_seconds": 0.5,
        }
    )
    everything = list(range(own.topic_partitions))
    survivor_log, victim_log = tmp_path / "survivor.log", tmp_path / "victim.log"
    survivor = start_worker(own, survivor_log, free_port())
    victim: subprocess.Popen[bytes] | None = None
    try:
        await until(lambda: bool(assignments(survivor_log)), "the first worker never joined")
        victim = start_worker(own, victim_log, free_port())
        await until(
            lambda: bool(assignments(victim_log) and assignments(victim_log)[-1]),
            "the second worker never got a partition",
        )
        await until(
            lambda: (
                sorted(assignments(survivor_log)[-1] + assignments(victim_log)[-1]) == everything
            ),
            "the two workers never shared the partitions",
        )
        assert assignments(survivor_log)[-1] != everything  # positive control: shared
        seen_before_kill = len(assignments(survivor_log))
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        await until(
            lambda: (
                len(assignments(survivor_log)) > seen_before_kill
                and assignments(survivor_log)[-1] == everything
            ),
            "the survivor never took the killed worker's partitions",
        )
        moved_after = time.monotonic() - killed_at
        record_property("partitions_moved_after_seconds", round(moved_after, 2))
        record_property("session_timeout_seconds", own.consumer_session_timeout_seconds)
    finally:
        for worker in (victim, survivor):
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
