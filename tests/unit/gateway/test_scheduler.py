"""The supervisor: deadline scheduling without drift, missed deadlines counted, backoff, isolation."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from typing import Any, ClassVar

import pytest

from drivers.base import Driver, DriverConfig, Reading, now
from drivers.errors import ConnectError, DeviceError, DriverError, FrameError
from gateway.scheduler import Backoff, Supervisor, Ticker, stagger


class ScriptConfig(DriverConfig):
    driver: str = "script"


class ScriptDriver(Driver):
    """A driver whose poll results follow a script: a value, an exception, or a delay."""

    Config: ClassVar[type[DriverConfig]] = ScriptConfig

    def __init__(self, script: list[Any], clock: FakeClock | LoopClock, name: str = "X-1") -> None:
        super().__init__(ScriptConfig(id=name, driver="script", interval_s=1.0))
        self.script = script
        self.clock = clock
        self.poll_times: list[float] = []
        self.target = 0
        self.reached = asyncio.Event()

    async def poll(self) -> list[Reading]:
        self.poll_times.append(self.clock.t)
        if len(self.poll_times) >= self.target:
            self.reached.set()
        step = self.script.pop(0) if self.script else 1.0
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, tuple):  # ("slow", seconds)
            self.clock.t += step[1]
            step = 1.0
        t_wall, t_mono = now()
        return [
            Reading(equipment="X-1", channel="c", raw=step, unit="g", t_wall=t_wall, t_mono=t_mono)
        ]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        assert dt >= 0
        self.t += dt
        await asyncio.sleep(0)


class LoopClock:
    """The running loop's own clock, as ``FakeClock.t`` (for polls on real time)."""

    @property
    def t(self) -> float:
        return asyncio.get_running_loop().time()


class Hooks:
    def __init__(self) -> None:
        self.values: list[float] = []
        self.failures: list[DriverError] = []
        self.missed_counts: list[int] = []

    def readings(self, equipment: str, readings: list[Reading], latency_s: float) -> None:
        self.values.extend(r.raw for r in readings)

    def failure(self, equipment: str, error: DriverError) -> None:
        self.failures.append(error)

    def missed(self, equipment: str, count: int) -> None:
        self.missed_counts.append(count)


def one_per_grid_point(times: list[float], interval: float) -> bool:
    """Each poll in its own slot of the grid k·interval (missed ones skipped)."""
    slots = [math.floor(t / interval + 1e-6) for t in times]
    return all(b > a for a, b in itertools.pairwise(slots))


async def run_until(sup: Supervisor, driver: ScriptDriver, polls: int) -> None:
    driver.target = polls
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(driver.reached.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_polls_follow_deadlines_without_drift() -> None:
    clock = FakeClock()
    # Each poll takes 0.3 s of (fake) time: deadlines stay on the 1 s grid anyway.
    driver = ScriptDriver([("slow", 0.3)] * 5, clock)
    hooks = Hooks()
    sup = Supervisor(driver, hooks, interval_s=1.0, clock=clock, sleep=clock.sleep)
    await run_until(sup, driver, 6)
    assert [round(t - 100.0, 9) for t in driver.poll_times[:6]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert hooks.missed_counts == []


async def test_a_slow_poll_counts_missed_deadlines_instead_of_queueing_them() -> None:
    clock = FakeClock()
    driver = ScriptDriver([("slow", 3.5), 1.0, 1.0], clock)
    hooks = Hooks()
    sup = Supervisor(driver, hooks, interval_s=1.0, clock=clock, sleep=clock.sleep)
    await run_until(sup, driver, 3)
    # Poll at 0 ran until 3.5: deadlines 1, 2, 3 were missed; the next poll is at 4.
    assert hooks.missed_counts[:1] == [3]
    assert sum(hooks.missed_counts) == 3
    assert [t - 100.0 for t in driver.poll_times[:3]] == [0.0, 4.0, 5.0]


async def test_connection_failures_back_off_and_recover() -> None:
    clock = FakeClock()
    gone = ConnectError("refused", equipment="X-1")
    driver = ScriptDriver([gone, gone, gone, 2.0, 3.0], clock)
    hooks = Hooks()
    backoff = Backoff(min_s=1.0, max_s=8.0, rng=random.Random(7))
    sup = Supervisor(driver, hooks, interval_s=1.0, clock=clock, sleep=clock.sleep, backoff=backoff)
    await run_until(sup, driver, 5)
    assert hooks.failures == [gone, gone, gone]
    assert hooks.values[:2] == [2.0, 3.0]
    gaps = [b - a for a, b in zip(driver.poll_times, driver.poll_times[1:], strict=False)]
    # Full jitter: each wait is within [0, min(8, 1·2^n)].
    assert all(0 <= g <= cap for g, cap in zip(gaps[:3], [1.0, 2.0, 4.0], strict=False))
    assert backoff.attempt == 0  # reset by the successful poll
    # back on the 1 s grid after recovering: the first grid point half an interval on
    recovered, back = driver.poll_times[3], driver.poll_times[4]
    assert 0.5 <= back - recovered < 1.5
    assert math.isclose(back % 1.0, 0.0, abs_tol=1e-9)


async def test_frame_and_device_errors_keep_the_schedule() -> None:
    clock = FakeClock()
    frame = FrameError("garbage", equipment="X-1")
    dev = DeviceError("EL", code="EL", equipment="X-1")
    driver = ScriptDriver([frame, dev, 5.0], clock)
    hooks = Hooks()
    sup = Supervisor(driver, hooks, interval_s=1.0, clock=clock, sleep=clock.sleep)
    await run_until(sup, driver, 3)
    assert hooks.failures == [frame, dev]
    assert [t - 100.0 for t in driver.poll_times[:3]] == [0.0, 1.0, 2.0]


def test_backoff_caps_at_max() -> None:
    b = Backoff(min_s=0.5, max_s=4.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(50)]
    assert max(delays) <= 4.0
    assert all(d >= 0 for d in delays)


async def test_a_hung_poll_is_reported_as_stalled() -> None:
    """A driver that ignores its own timeout shows as stalled (the gateway restarts it)."""

    class Hang(ScriptDriver):
        async def poll(self) -> list[Reading]:
            self.poll_times.append(self.clock.t)
            self.reached.set()
            await asyncio.Event().wait()  # never answers, never times out
            raise AssertionError

    clock = FakeClock()
    driver = Hang([], clock)
    sup = Supervisor(driver, Hooks(), interval_s=1.0, clock=clock, sleep=clock.sleep)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(driver.reached.wait(), 5)
    import time

    assert not sup.stalled()
    limit = driver.config.timeout_s * 3 + 1.0
    assert sup.stalled(time.monotonic() + limit + 0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sup.poll_started is None


# -- phase_s: the first poll at once, then on the equipment's phase --------------------------


@pytest.mark.parametrize(
    ("phase", "expected"),
    [(0.0, [0.0, 1.0, 2.0, 3.0]), (0.75, [0.0, 0.75, 1.75, 2.75]), (0.25, [0.0, 1.25, 2.25, 3.25])],
)
async def test_phase_moves_the_deadlines_after_the_first_poll(
    phase: float, expected: list[float]
) -> None:
    clock = FakeClock()
    driver = ScriptDriver([], clock)
    hooks = Hooks()
    sup = Supervisor(driver, hooks, interval_s=1.0, clock=clock, sleep=clock.sleep, phase_s=phase)
    await run_until(sup, driver, 4)
    assert [round(t - 100.0, 9) for t in driver.poll_times[:4]] == expected
    assert hooks.failures == []
    assert hooks.missed_counts == []


def test_stagger_is_a_stable_phase_inside_the_interval() -> None:
    phases = [stagger(f"BT-{i:04d}", 0.1) for i in range(1000)]
    assert all(0.0 <= p < 0.1 for p in phases)
    assert stagger("BT-0001", 0.1) == phases[1]
    # spread over the interval: every tenth of it holds some equipment
    assert {int(p / 0.01) for p in phases} == set(range(10))


# -- the shared ticker: one timer for the polls due in the same millisecond --------------------


async def test_ticker_waiters_never_wake_before_their_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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


async def test_cancelling_one_ticker_waiter_leaves_the_others_alone() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker()
    deadline = loop.time() + 0.02
    first = asyncio.ensure_future(ticker.until(deadline))
    second = asyncio.create_task(asyncio.wait_for(ticker.until(deadline), 5))
    first.cancel()
    await second  # still fires
    assert first.cancelled()


async def test_supervisors_on_a_shared_ticker_poll_on_their_deadlines() -> None:
    ticker, clock, hooks = Ticker(), LoopClock(), Hooks()
    drivers = [ScriptDriver([], clock, f"PT-{i}") for i in range(20)]
    sups = [Supervisor(d, hooks, interval_s=0.01, ticker=ticker) for d in drivers]
    tasks = [asyncio.create_task(s.run()) for s in sups]
    for d in drivers:
        d.target = 10
    try:
        async with asyncio.timeout(30):
            for d in drivers:
                await d.reached.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert hooks.failures == []
    for d in drivers:
        start, *rest = d.poll_times[:10]
        assert rest[0] >= start + 0.005  # the first grid point half an interval on
        assert one_per_grid_point(rest, 0.01)


# -- polls started from the ticker's callbacks (Driver.poll_soon) -----------------------------


class CallbackDriver(ScriptDriver):
    """Answers from a loop callback, as a Modbus TCP reply does; ``poll()`` (awaited) is
    what runs while it is not ``connected`` (it connects) or when it declines."""

    def __init__(self, script: list[Any], name: str = "CB-1") -> None:
        super().__init__(script, LoopClock(), name)
        self.connected = False
        self.awaited = 0
        self.hold = False  # keep the answer (a poll in flight)
        self.held: list[Any] = []

    async def poll(self) -> list[Reading]:
        self.awaited += 1
        self.connected = True
        return await super().poll()

    def poll_soon(self, done: Any) -> bool:
        if not self.connected:
            return False
        loop = asyncio.get_running_loop()
        self.poll_times.append(loop.time())
        if len(self.poll_times) >= self.target:
            self.reached.set()
        step = self.script.pop(0) if self.script else 1.0
        if isinstance(step, ConnectError):
            self.connected = False
        if self.hold:
            self.held.append(done)
            return True
        if isinstance(step, BaseException):
            loop.call_soon(done, step)
        else:
            t_wall, t_mono = now()
            reading = Reading(
                equipment=self.equipment, channel="c", raw=step, unit="g", t_wall=t_wall,
                t_mono=t_mono,
            )  # fmt: skip
            loop.call_soon(done, [reading])
        return True


async def run_chain(driver: CallbackDriver, hooks: Any, polls: int, **kw: Any) -> Supervisor:
    sup = Supervisor(driver, hooks, interval_s=0.02, ticker=Ticker(), **kw)
    await run_until(sup, driver, polls)
    return sup


async def test_polls_from_callbacks_report_like_awaited_ones_on_the_grid() -> None:
    frame = FrameError("garbage", equipment="CB-1")
    dev = DeviceError("exception 4", code=4, equipment="CB-1")
    driver = CallbackDriver([1.0, 2.0, frame, 3.0, dev, 4.0, 5.0])
    hooks = Hooks()
    sup = await run_chain(driver, hooks, 8)
    assert driver.awaited == 1  # the first poll connects; the rest come from callbacks
    assert hooks.values[:6] == [1.0, 2.0, 3.0, 4.0, 5.0, 1.0]
    assert hooks.failures == [frame, dev]  # and the schedule went on
    assert sup.polls >= 6
    assert sup.poll_started is None
    assert one_per_grid_point(driver.poll_times[1:8], 0.02)  # after the first


async def test_a_lost_connection_backs_off_and_the_awaited_poll_reconnects() -> None:
    gone = ConnectError("connection lost", equipment="CB-1")
    driver = CallbackDriver([1.0, 2.0, gone, 3.0, 4.0, 5.0])
    hooks = Hooks()
    backoff = Backoff(min_s=0.01, max_s=0.02, rng=random.Random(3))
    await run_chain(driver, hooks, 7, backoff=backoff)
    assert hooks.failures == [gone]
    assert hooks.values[:4] == [1.0, 2.0, 3.0, 4.0]
    assert driver.awaited == 2  # connect, reconnect after the loss
    assert backoff.attempt == 0


async def test_a_driver_that_declines_is_polled_by_the_task() -> None:
    class Declines(CallbackDriver):
        def poll_soon(self, done: Any) -> bool:
            return False

    driver = Declines([1.0, 2.0, 3.0])
    hooks = Hooks()
    await run_chain(driver, hooks, 3)
    assert driver.awaited >= 3
    assert hooks.values[:3] == [1.0, 2.0, 3.0]


async def test_cancelling_drops_the_answer_of_a_poll_in_flight() -> None:
    driver = CallbackDriver([1.0, 2.0])
    hooks = Hooks()
    sup = Supervisor(driver, hooks, interval_s=0.02, ticker=Ticker())
    driver.target = 2
    driver.hold = True
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(driver.reached.wait(), 5)
    assert sup.poll_started is not None  # in flight: the watchdog can see it
    assert sup.stalled(sup.poll_started + driver.config.timeout_s * 3 + 1.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = list(hooks.values)
    driver.held[-1]([])  # the reply arrives after the cancel
    assert hooks.values == seen
    assert sup.poll_started is None


async def test_a_bug_in_a_hook_stops_the_supervisor_with_it() -> None:
    class Broken(Hooks):
        def readings(self, equipment: str, readings: list[Reading], latency_s: float) -> None:
            if readings[0].raw == 2.0:
                raise RuntimeError("bug in the pipeline")
            super().readings(equipment, readings, latency_s)

    driver = CallbackDriver([1.0, 2.0, 3.0])
    sup = Supervisor(driver, Broken(), interval_s=0.02, ticker=Ticker())
    with pytest.raises(RuntimeError, match="bug in the pipeline"):
        await asyncio.wait_for(sup.run(), 5)
