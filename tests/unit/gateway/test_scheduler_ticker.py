"""The shared ticker: one timer for the polls due in the same millisecond."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import pytest

from drivers.base import Driver, DriverConfig, Reading
from gateway.scheduler import Supervisor, Ticker


async def test_waiters_never_wake_before_their_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker()
    timers: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, *args: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, *args)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    ms = math.ceil(loop.time() * 1000) + 10  # a millisecond boundary ahead
    base = ms / 1000 + 0.0002
    deadlines = [base, base + 0.0001, base + 0.0004, base + 0.010, base - 0.008]
    woke: dict[float, float] = {}

    async def wait(d: float) -> None:
        await ticker.until(d)
        woke[d] = loop.time()

    await asyncio.gather(*(wait(d) for d in deadlines))
    assert all(woke[d] >= d for d in deadlines)
    # the three due in the same millisecond share one timer
    assert len(timers) == 3
    assert woke[deadlines[4]] < woke[deadlines[0]] < woke[deadlines[3]]


async def test_cancelling_one_waiter_leaves_the_others_alone() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker()
    deadline = loop.time() + 0.02
    first = asyncio.ensure_future(ticker.until(deadline))
    second = asyncio.create_task(asyncio.wait_for(ticker.until(deadline), 5))
    first.cancel()
    await second  # still fires
    assert first.cancelled()


class _Cfg(DriverConfig):
    driver: str = "count"


class CountingDriver(Driver):
    def __init__(self, name: str) -> None:
        super().__init__(_Cfg(id=name, driver="count", interval_s=0.01))
        self.times: list[float] = []
        self.ten = asyncio.Event()

    async def poll(self) -> list[Reading]:
        self.times.append(asyncio.get_running_loop().time())
        if len(self.times) >= 10:
            self.ten.set()
        return []


class Hooks:
    def readings(self, equipment: str, readings: list[Reading], latency_s: float) -> None:
        pass

    def failure(self, equipment: str, error: object) -> None:
        raise AssertionError(error)

    def missed(self, equipment: str, count: int) -> None:
        pass


async def test_supervisors_on_a_shared_ticker_poll_on_their_deadlines() -> None:
    ticker = Ticker()
    drivers = [CountingDriver(f"PT-{i}") for i in range(20)]
    sups = [Supervisor(d, Hooks(), interval_s=0.01, ticker=ticker) for d in drivers]
    tasks = [asyncio.create_task(s.run()) for s in sups]
    try:
        async with asyncio.timeout(30):
            for d in drivers:
                await d.ten.wait()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    for d in drivers:
        start = d.times[0]
        # poll n is never early: no drift, deadlines start + n·interval (missed ones skipped)
        for n, t in enumerate(d.times[1:10], start=1):
            assert t >= start + n * 0.01 - 1e-9 or t >= d.times[n - 1] + 0.01 - 1e-9
