"""One supervised poll loop per equipment: deadlines, timeouts, backoff, isolation.

A loop catches every driver error, tells its :class:`PollHooks`, backs off after
connection failures (capped exponential, full jitter) and never stalls another
equipment. Polls are scheduled on ``loop.time()`` deadlines: no drift, and a missed
deadline is counted, not queued. Only bugs escape.

Deadlines lie on a grid of the loop's clock, ``k·interval + phase_s``, so equipment on
one interval polls together however it started (at start-up, after a reload, a
reconnect or a backoff): one timer, a burst of requests, then of readings, one outbox
commit and one MQTT batch per interval. The first poll is at once; after it, and after
a backoff, the next is on the first grid point at least half an interval later.
``phase_s`` (see :func:`stagger`) moves an equipment's grid by a phase in the interval.
Off by default: staggering shortens the latency but costs CPU per value, since the outbox
and the sinks then batch less (bench/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from drivers.base import Driver, Reading
from drivers.errors import ConnectError, DeviceError, DeviceTimeout, DriverError, FrameError
from gateway.backoff import Backoff

__all__ = ["Backoff", "PollHooks", "Supervisor", "Ticker"]

log = logging.getLogger(__name__)


class PollHooks(Protocol):
    def readings(self, equipment: str, readings: list[Reading], latency_s: float) -> None: ...
    def failure(self, equipment: str, error: DriverError) -> None: ...
    def missed(self, equipment: str, count: int) -> None: ...


class Ticker:
    """One timer for every poll due in the same millisecond.

    A hundred equipment on one interval wake together; with ``asyncio.sleep`` each would
    push its own timer onto the loop's heap (Python-level comparisons) every poll. Here
    callbacks and waiters due in the same millisecond (``resolution_s``) share one
    ``call_at``; cancelling one touches no other. Nothing runs before its deadline.
    """

    def __init__(self, resolution_s: float = 0.001) -> None:
        self.resolution_s = resolution_s
        self._due: dict[int, list[Callable[[], object]]] = {}
        # the loop, kept: asyncio.get_running_loop() is a getpid() system call in 3.11
        self._loop: asyncio.AbstractEventLoop | None = None

    def call_at(self, deadline: float, callback: Callable[[], object]) -> int:
        """Call ``callback()`` at loop time ``deadline`` (up to ``resolution_s`` later);
        the key returned cancels it (:meth:`cancel`)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        key = math.ceil(deadline / self.resolution_s)
        due = self._due.get(key)
        if due is None:
            self._due[key] = [callback]
            loop.call_at(key * self.resolution_s, self._fire, key)
        else:
            due.append(callback)
        return key

    def cancel(self, key: int, callback: Callable[[], object]) -> None:
        due = self._due.get(key)
        if due is not None and callback in due:
            due.remove(callback)

    def until(self, deadline: float) -> asyncio.Future[None]:
        """A future done at loop time ``deadline`` (up to ``resolution_s`` later)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.call_at(deadline, partial(_wake, fut))
        return fut

    def _fire(self, key: int) -> None:
        for callback in self._due.pop(key):
            try:
                callback()
            except Exception:  # a bug in one: the others still run
                log.exception("ticker callback %r failed", callback)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Supervisor:
    """Polls one equipment on its interval, or consumes its subscription, until cancelled."""

    def __init__(
        self,
        driver: Driver,
        hooks: PollHooks,
        *,
        interval_s: float,
        backoff: Backoff | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        phase_s: float = 0.0,
        ticker: Ticker | None = None,
    ) -> None:
        self.driver = driver
        self.hooks = hooks
        self.interval_s = interval_s
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self.phase_s = phase_s % interval_s
        self._ticker = ticker  # shared with the other supervisors (on the loop's clock)
        self.polls = 0
        self.missed_total = 0
        self.poll_started: float | None = None  # time.monotonic() while a poll runs
        # the callback chain (_chain): its end, next deadline and its grid index, ticker entry
        self._end: asyncio.Future[DriverError | None] | None = None
        self._due = 0.0
        self._k: int | None = None
        self._key: int | None = None
        self._time: Callable[[], float] = time.monotonic  # the loop's clock, set by _chain
        self._on_tick, self._on_polled = self._tick, self._polled  # bound once, not per poll

    @property
    def equipment(self) -> str:
        return self.driver.equipment

    def stalled(self, now: float | None = None) -> bool:
        """A poll has run longer than ``3·timeout_s + 1 s``: the driver broke its own
        timeout (a bug). Checked by the gateway's watchdog, not by a timer per poll."""
        started = self.poll_started
        if started is None:
            return False
        now = time.monotonic() if now is None else now
        return now - started > self.driver.config.timeout_s * 3 + 1.0

    async def run(self) -> None:
        """The poll loop (and the subscription loop, when the driver subscribes)."""
        try:
            if self.driver.subscribes():
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._subscription(), name=f"subscribe:{self.equipment}")
                    tg.create_task(self._poll_loop(), name=f"poll:{self.equipment}")
            else:
                await self._poll_loop()
        finally:
            await self.driver.close()

    async def _poll_loop(self) -> None:
        # Drivers enforce ``timeout_s`` on every transaction themselves; a poll that
        # still hangs is caught by :meth:`stalled` (no timer per poll on the hot path).
        clock = self._clock or asyncio.get_running_loop().time
        deadline = clock()  # the first poll at once, off the grid (k None)
        k: int | None = None
        monotonic = time.monotonic
        ticker = self._ticker if self._clock is None else None
        chain = ticker is not None and type(self.driver).poll_soon is not Driver.poll_soon
        while True:
            now = clock()
            if now < deadline:
                if ticker is not None:
                    await ticker.until(deadline)
                else:
                    await self._sleep(deadline - now)
            if chain:
                assert ticker is not None
                # polls started by the ticker's callbacks, no task, while the driver can
                end, deadline, k = await self._chain(ticker, deadline, k)
                if end is not None:  # a lost connection or a timeout: back off
                    deadline, k = clock() + self.backoff.next_delay(), None
                    continue
                # the driver cannot poll from a callback now: this poll is awaited
            self.poll_started = started = monotonic()
            result: list[Reading] | DriverError
            try:
                result = await self.driver.poll()
            except DriverError as exc:
                result = exc
            finally:
                self.poll_started = None
            if self._report(result, started):
                deadline, k = clock() + self.backoff.next_delay(), None
                continue
            deadline, k = self._after(deadline, k, clock())

    def _report(self, result: list[Reading] | DriverError, started: float) -> bool:
        """Tell the hooks one poll's result; True when it calls for a backoff (the
        instrument is gone or silent: a ConnectError or a DeviceTimeout)."""
        if type(result) is list:
            self.polls += 1
            if self.backoff.attempt:
                self.backoff.reset()
            self.hooks.readings(self.equipment, result, time.monotonic() - started)
            return False
        assert isinstance(result, DriverError)
        self.hooks.failure(self.equipment, result)
        return isinstance(result, ConnectError | DeviceTimeout)

    def _after(self, deadline: float, k: int | None, now: float) -> tuple[float, int]:
        """The deadline after the poll due at ``deadline``, and its index on the grid
        (``k·interval + phase``). ``k`` is the poll's own index: the next is one on; a
        poll off the grid (``k`` None: the first, or one after a backoff) goes on at the
        first grid point at least half an interval later. Grid points already past are
        missed: counted, reported, skipped."""
        interval, phase = self.interval_s, self.phase_s
        k = math.ceil((deadline + interval / 2 - phase) / interval) if k is None else k + 1
        due = k * interval + phase
        if now > due:
            missed = int((now - due) // interval) + 1
            self.missed_total += missed
            self.hooks.missed(self.equipment, missed)
            k += missed
            due = k * interval + phase
        return due, k

    # -- polls from the ticker's callbacks (Driver.poll_soon) ------------------------------
    # The task waits on one future while every poll is started by a timer callback and
    # finished by the driver's reply callback: the same hooks, deadlines and counts as
    # the awaited loop above, without a task wake-up and a coroutine stack per poll.

    async def _chain(
        self, ticker: Ticker, deadline: float, k: int | None
    ) -> tuple[DriverError | None, float, int | None]:
        """Poll from callbacks, the first at once, until one cannot be started (None)
        or ends in a ConnectError or DeviceTimeout (returned, reported): that, and the
        deadline (and its grid index) to go on with. A bug in a hook is raised here."""
        loop = asyncio.get_running_loop()
        self._time = loop.time
        self._due, self._k = deadline, k
        self._end = end = loop.create_future()
        self._tick()
        try:
            error = await end
        finally:
            self._end = None
            self.poll_started = None
            if self._key is not None:
                ticker.cancel(self._key, self._on_tick)
                self._key = None
        return error, self._due, self._k

    def _tick(self) -> None:
        """At the deadline: start the poll, or hand back to the task."""
        self._key = None
        end = self._end
        if end is None or end.done():
            return
        self.poll_started = time.monotonic()
        try:
            started = self.driver.poll_soon(self._on_polled)
        except Exception as exc:  # a bug in the driver: the task raises it
            self.poll_started = None
            end.set_exception(exc)
            return
        if not started:
            self.poll_started = None
            end.set_result(None)

    def _polled(self, result: list[Reading] | Exception) -> None:
        """The driver's answer: report it and set the next tick (or end the chain)."""
        end = self._end
        if end is None or end.done():
            return  # cancelled meanwhile: the poll's result goes nowhere
        started, self.poll_started = self.poll_started, None
        try:
            if not isinstance(result, list | DriverError):
                raise result  # a bug in the driver
            if self._report(result, started or 0.0):
                assert isinstance(result, DriverError)
                end.set_result(result)  # ConnectError or DeviceTimeout: the task backs off
                return
            self._due, self._k = self._after(self._due, self._k, self._time())
            assert self._ticker is not None  # a chain runs on the ticker
            self._key = self._ticker.call_at(self._due, self._on_tick)
        except Exception as exc:  # a bug in a hook: the task raises it
            end.set_exception(exc)

    async def _subscription(self) -> None:
        backoff = Backoff(self.backoff.min_s, self.backoff.max_s, self.backoff.rng)
        while True:
            try:
                async for readings in self.driver.subscribe():
                    backoff.reset()
                    self.hooks.readings(self.equipment, readings, 0.0)
            except DriverError as exc:
                self.hooks.failure(self.equipment, exc)
            await self._sleep(backoff.next_delay())


def stagger(equipment: str, interval_s: float) -> float:
    """A phase in ``[0, interval_s)`` from the equipment id (stable across restarts)."""
    return interval_s * (zlib.crc32(equipment.encode()) / 2**32)


def classify(error: DriverError) -> str:
    """A short kind for metrics labels."""
    if isinstance(error, ConnectError):
        return "connect"
    if isinstance(error, DeviceTimeout):
        return "timeout"
    if isinstance(error, FrameError):
        return "frame"
    if isinstance(error, DeviceError):
        return "device"
    return "other"
