"""The faults of a run, spread over its production time, one at a time.

- ``kill``: SIGKILL a random worker at a random moment, start a replacement at once;
- ``leave_rejoin``: a member stops cleanly (rebalance), then a new one joins (rebalance);
- ``extra_member``: a member joins (rebalance), then stops cleanly (rebalance);
- ``restart_postgres`` / ``restart_redis`` / ``restart_kafka``: stop the server of the run's
  own, wait, start it again (Redis keeps no data: its restart is a flush too);
- ``flush_redis``: FLUSHALL, with the service running.

Each fault opens a window (``monitor.Window``) that closes once the group is stable again
or the dependency had time to be noticed back; the next fault waits for that.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from service.settings import Settings
from tests.chaos.environment import Environment
from tests.chaos.kafka_io import CommandProducer
from tests.chaos.monitor import GroupMonitor, Window
from tests.chaos.processes import WorkerPool


@dataclass(frozen=True)
class FaultPlan:
    kills: int = 0
    leave_rejoin: int = 0
    extra_member: int = 0
    restart_postgres: bool = False
    restart_redis: bool = False
    flush_redis: bool = False
    restart_kafka: bool = False

    def actions(self, env: Environment) -> list[str]:
        actions = ["kill"] * self.kills
        actions += ["leave_rejoin"] * self.leave_rejoin + ["extra_member"] * self.extra_member
        if self.flush_redis:
            actions.append("flush_redis")
        if self.restart_postgres and env.postgres is not None:
            actions.append("restart_postgres")
        if self.restart_redis and env.redis is not None:
            actions.append("restart_redis")
        if self.restart_kafka and env.kafka is not None:
            actions.append("restart_kafka")
        return actions


@dataclass
class Faults:
    env: Environment
    settings: Settings
    pool: WorkerPool
    monitor: GroupMonitor
    producer: CommandProducer
    rng: random.Random
    grace_s: float = 1.0
    recovery_s: float = 3.0
    cap_s: float = 60.0
    windows: list[Window] = field(default_factory=list)
    done: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    unsettled: int = 0
    skipped: list[str] = field(default_factory=list)
    # A group that failed to settle this many times is stuck (a record it cannot get past):
    # more faults would only lengthen the run, not tell more.
    give_up_after_unsettled: int = 3

    async def run(self, plan: FaultPlan, duration_s: float, started: float) -> None:
        """Spread the plan's faults over `duration_s` from `started`, in a random order."""
        actions = plan.actions(self.env)
        self.rng.shuffle(actions)
        slot = duration_s / (len(actions) + 1) if actions else 0.0
        for i, action in enumerate(actions):
            if self.unsettled >= self.give_up_after_unsettled:
                self.skipped = actions[i:]
                return
            target = started + slot * (i + 1) + self.rng.uniform(-0.4, 0.4) * slot
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.timeline.append((time.monotonic() - started, action))
            await getattr(self, action)()
            self.done[action] += 1

    async def _settle(self, kind: str, start: float, expected: int, before: frozenset[str]) -> None:
        stable = await self.monitor.stable(start, expected, not_all_of=before, cap_s=self.cap_s)
        if stable is None:
            self.unsettled += 1
            end = start + self.cap_s
        else:
            end = stable + self.grace_s
        self.windows.append(Window(kind, start, end))
        await asyncio.sleep(max(end - time.monotonic(), 0))

    async def kill(self) -> None:
        victim = self.rng.choice(self.pool.live())
        before = self.monitor.members()
        start = time.monotonic()
        await asyncio.to_thread(self.pool.kill, victim)
        self.pool.start()
        await self._settle("kill", start, len(self.pool.live()), before)

    async def leave_rejoin(self) -> None:
        start = time.monotonic()
        await asyncio.to_thread(self.pool.stop, self.rng.choice(self.pool.live()))
        await self._settle("leave", start, len(self.pool.live()), frozenset())
        start = time.monotonic()
        self.pool.start()
        await self._settle("join", start, len(self.pool.live()), frozenset())

    async def extra_member(self) -> None:
        start = time.monotonic()
        extra = self.pool.start()
        await self._settle("join", start, len(self.pool.live()), frozenset())
        start = time.monotonic()
        await asyncio.to_thread(self.pool.stop, extra)
        await self._settle("leave", start, len(self.pool.live()), frozenset())

    async def flush_redis(self) -> None:
        await self.env.flush_redis(self.settings)

    async def restart_postgres(self) -> None:
        pg = self.env.postgres
        assert pg is not None
        start = time.monotonic()
        await asyncio.to_thread(pg.stop)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(pg.start)
        self.windows.append(Window("postgres", start, time.monotonic() + self.recovery_s))
        await asyncio.sleep(self.recovery_s)

    async def restart_redis(self) -> None:
        redis = self.env.redis
        assert redis is not None
        start = time.monotonic()
        await asyncio.to_thread(redis.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis.start)
        self.windows.append(Window("redis", start, time.monotonic() + self.recovery_s))
        await asyncio.sleep(self.recovery_s)

    async def restart_kafka(self) -> None:
        kafka = self.env.kafka
        assert kafka is not None
        async with self.producer.paused():
            start = time.monotonic()
            await asyncio.to_thread(kafka.stop)
            await asyncio.sleep(3.0)
            await asyncio.to_thread(kafka.start)
        back = time.monotonic()
        stable = await self.monitor.stable(back, len(self.pool.live()), cap_s=self.cap_s)
        if stable is None:
            self.unsettled += 1
        end = (stable if stable is not None else back + self.cap_s) + self.grace_s
        self.windows.append(Window("kafka", start, end))
        await asyncio.sleep(max(end - time.monotonic(), 0))
