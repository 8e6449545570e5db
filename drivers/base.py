"""The driver base: the ``Reading`` type, driver configs, the registry of drivers, shared buses.

A driver turns an instrument's replies into :class:`Reading` objects. Parsing is pure
(bytes in, readings out); the I/O around it is small and lives in each driver family.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from drivers.errors import DeviceTimeout

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:
    from typing import dataclass_transform  # takes frozen_default as **kwargs on 3.11

T = TypeVar("T")

__all__ = [
    "DRIVERS",
    "Bus",
    "BusLock",
    "Buses",
    "Driver",
    "DriverConfig",
    "Quality",
    "Reading",
    "now",
    "record",
    "unique_channel_names",
    "with_timeout",
]

Quality = Literal["good", "uncertain", "bad"]


def now() -> tuple[datetime, float]:
    """Acquisition time: aware UTC wall clock and the monotonic clock, taken together."""
    return datetime.now(UTC), time.monotonic()


R = TypeVar("R")


@dataclass_transform(frozen_default=True, kw_only_default=True)
def record(cls: type[R]) -> type[R]:
    """A slots, keyword-only dataclass that is immutable by contract: frozen to mypy,
    hashable and comparable by value, but built without ``frozen=True``'s
    ``object.__setattr__`` per field, which would cost a third more per object (the hot
    path builds one Reading and one Measurement per value). Nothing stops an assignment
    at run time: never assign to a field; use :func:`dataclasses.replace`.
    """
    return dataclass(slots=True, kw_only=True, unsafe_hash=True)(cls)


@record
class Reading:
    """One raw value of one channel, in instrument units, stamped at acquisition.

    A :func:`record`: immutable by contract and to mypy, but not frozen at run time (a
    frozen dataclass would cost a third more to build, once per value); never assign to
    a field. ``flags`` holds facts such as ``stable``, ``dynamic``, ``overload``, ``underload``,
    ``nan``, ``inf``; ``quality`` is ``good``, ``uncertain`` or ``bad``. A bad reading
    may carry ``raw = nan``.
    """

    equipment: str
    channel: str
    raw: float
    unit: str
    t_wall: datetime
    t_mono: float
    flags: frozenset[str] = frozenset()
    quality: Quality = "good"

    @staticmethod
    def make(
        equipment: str,
        channel: str,
        raw: float,
        unit: str,
        t_wall: datetime,
        t_mono: float,
        flags: frozenset[str],
        quality: Quality,
    ) -> Reading:
        """The Reading the keyword constructor builds, from positional arguments, for hot
        paths (a keyword call costs twice the object)."""
        r: Any = _new(Reading)
        r.equipment = equipment
        r.channel = channel
        r.raw = raw
        r.unit = unit
        r.t_wall = t_wall
        r.t_mono = t_mono
        r.flags = flags
        r.quality = quality
        return r  # type: ignore[no-any-return]


_new = object.__new__


class DriverConfig(BaseModel):
    """Fields every ``[[equipment]]`` table has; each driver subclasses it.

    Models are frozen and forbid unknown keys, so a typo is an error with its path.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    driver: str
    interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    enabled: bool = True

    def bus_key(self) -> str | None:
        """Equipment whose configs return the same key share one bus (lock and gap)."""
        return None


DRIVERS: dict[str, type[Driver]] = {}

C = TypeVar("C")


def unique_channel_names(channels: tuple[C, ...]) -> tuple[C, ...]:
    """Validator body for a driver's ``channels``: at least one, names unique."""
    if not channels:
        raise ValueError("at least one channel is needed")
    seen: dict[str, int] = {}
    for index, channel in enumerate(channels):
        name = channel.name  # type: ignore[attr-defined]
        if name in seen:
            raise ValueError(
                f"duplicate channel name {name!r} (channels.{seen[name]} and channels.{index})"
            )
        seen[name] = index
    return channels


class BusLock:
    """A FIFO lock like :class:`asyncio.Lock` that can also be taken without awaiting
    (:meth:`try_acquire`): a poll started from a timer callback takes its bus so.

    :meth:`release` hands the lock straight to the first waiter, so a caller of
    :meth:`try_acquire` never overtakes a task that is already waiting.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        """Take the lock if it is free (then nobody waits for it); never blocks."""
        if self._held:
            return False
        self._held = True
        return True

    async def acquire(self) -> bool:
        if not self._held:
            self._held = True
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() hands the lock over: it stays held
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed over, then cancelled before running: pass it on
            else:
                self._waiters.remove(fut)
            raise
        return True

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("BusLock is not acquired")
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Bus:
    """What instruments on one port, RS-485 bus or Modbus gateway share.

    ``lock`` serialises transactions; ``gap_s`` is the quiet time kept between the end
    of one transaction and the start of the next; ``resource`` is the shared connection
    (created by the first driver that needs it, closed when the last one leaves).
    """

    def __init__(self, key: str, *, gap_s: float = 0.0) -> None:
        self.key = key
        self.gap_s = gap_s
        self.lock = BusLock()
        self.resource: Any = None
        self.users = 0
        self._last_end = 0.0

    async def __aenter__(self) -> Self:
        await self.lock.acquire()
        if self.gap_s > 0:
            wait = self._last_end + self.gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._last_end = time.monotonic()
        self.lock.release()


@dataclass
class Buses:
    """The gateway's set of shared buses, keyed by :meth:`DriverConfig.bus_key`."""

    _buses: dict[str, Bus] = field(default_factory=dict)

    def get(self, key: str | None, *, gap_s: float = 0.0) -> Bus:
        if key is None:
            return Bus("<private>", gap_s=gap_s)
        bus = self._buses.get(key)
        if bus is None:
            bus = self._buses[key] = Bus(key, gap_s=gap_s)
        return bus


class Driver(abc.ABC):
    """An instrument connection. Subclasses pass ``kind=`` to register themselves.

    Life cycle: ``async with driver:`` (``open``/``close``), then ``poll()`` as often as
    the scheduler wants. ``poll`` raises only :class:`drivers.errors.DriverError`
    subclasses; anything else is a bug.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[DriverConfig]]

    def __init_subclass__(cls, *, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:  # abstract intermediates pass no kind
            cls.kind = kind
            DRIVERS[kind] = cls

    def __init__(self, config: DriverConfig, *, buses: Buses | None = None) -> None:
        self.config = config
        self.buses = buses if buses is not None else Buses()
        self.recent_frames: deque[bytes] = deque(maxlen=32)

    @property
    def equipment(self) -> str:
        return self.config.id

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (may raise ConnectError). Drivers also reconnect lazily in poll()."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection; never raises."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def poll(self) -> list[Reading]:
        """Read every configured channel once."""

    def poll_soon(self, done: Callable[[list[Reading] | Exception], None]) -> bool:
        """Start the poll :meth:`poll` would run, from a callback, without a task.

        True when started: ``done`` is then called exactly once, from one of the loop's
        callbacks, with what :meth:`poll` would return or raise (a DriverError; anything
        else is a bug), and must not raise. False when the driver cannot poll so right
        now (not connected, its bus busy, or it never can): then await :meth:`poll`.
        The scheduler's hot path: each poll through :meth:`poll` costs two task wake-ups
        and a stack of coroutine frames, which this path does without (bench/README.md).
        """
        return False

    def subscribes(self) -> bool:
        """True when readings arrive by subscription (:meth:`subscribe`) instead of poll."""
        return False

    def subscribe(self) -> AsyncIterator[list[Reading]]:
        """Readings as the instrument pushes them (OPC UA data changes)."""
        raise NotImplementedError


async def with_timeout(coro: Awaitable[T], timeout_s: float, what: Callable[[], str]) -> T:
    """Await ``coro`` at most ``timeout_s``; a timeout becomes DeviceTimeout."""
    try:
        async with asyncio.timeout(timeout_s):
            return await coro
    except TimeoutError as exc:
        raise DeviceTimeout(what()) from exc
