"""The worker's pipeline keeps batch order for outputs and offset commits.

``InOrder`` runs each batch's second stage (Redis, Kafka, the offset commit) only after the
one before it ended, whatever finishes first, and tells each step whether the step before
it completed, so a batch after an abandoned one is processed again whole instead of
committing past it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from service.adapters.kafka.consumer import InOrder


async def test_steps_run_in_the_order_they_were_queued() -> None:
    order = InOrder()
    ran: list[int] = []
    gates = [asyncio.Event() for _ in range(3)]

    def step(n: int) -> Callable[[bool], Awaitable[bool]]:
        async def run(earlier_done: bool) -> bool:
            await gates[n].wait()
            ran.append(n)
            return True

        return run

    for n in range(3):
        order.then(step(n))
    # The last batch is ready first: it still waits for the two before it.
    gates[2].set()
    gates[1].set()
    await asyncio.sleep(0.01)
    assert ran == []
    gates[0].set()
    await order.settle(pending=0)
    assert ran == [0, 1, 2]


async def test_a_step_learns_whether_the_one_before_completed() -> None:
    order = InOrder()
    seen: list[bool] = []

    async def abandoned(earlier_done: bool) -> bool:
        seen.append(earlier_done)
        return False

    async def next_one(earlier_done: bool) -> bool:
        seen.append(earlier_done)
        return True

    order.then(abandoned)
    order.then(next_one)
    order.then(next_one)
    await order.settle(pending=0)
    assert seen == [True, False, True]


async def test_settle_bounds_the_steps_left_running() -> None:
    order = InOrder()
    release = asyncio.Event()

    async def slow(earlier_done: bool) -> bool:
        await release.wait()
        return True

    order.then(slow)
    order.then(slow)
    waiter = asyncio.create_task(order.settle(pending=1))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    release.set()
    await asyncio.wait_for(waiter, 1)
    await order.settle(pending=0)
