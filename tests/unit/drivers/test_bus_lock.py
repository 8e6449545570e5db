"""The bus lock: one transaction at a time, in arrival order, also for polls started from callbacks."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import BusLock


async def test_waiters_get_the_bus_in_arrival_order() -> None:
    lock = BusLock()
    order: list[int] = []

    async def user(i: int) -> None:
        async with lock:
            order.append(i)
            await asyncio.sleep(0.001)

    await asyncio.gather(*(user(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


async def test_a_callback_never_overtakes_a_waiting_task() -> None:
    lock = BusLock()
    assert lock.try_acquire()
    assert not lock.try_acquire()  # held
    waiter = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    lock.release()  # handed straight to the waiting task
    assert lock.locked()
    assert not lock.try_acquire()  # a poll started from a callback now finds it taken
    assert await waiter
    lock.release()
    assert lock.try_acquire()
    lock.release()


async def test_a_waiter_cancelled_after_the_hand_over_passes_the_bus_on() -> None:
    lock = BusLock()
    await lock.acquire()
    first = asyncio.create_task(lock.acquire())
    second = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    lock.release()  # to first, which is cancelled before it runs
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1)  # second got it: nothing stuck
    lock.release()
    assert not lock.locked()


async def test_a_waiter_cancelled_while_waiting_leaves_the_queue() -> None:
    lock = BusLock()
    await lock.acquire()
    gone = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    lock.release()
    assert not lock.locked()  # nobody left to hand it to


def test_releasing_a_free_bus_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        BusLock().release()
