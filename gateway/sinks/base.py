"""The loop every sink shares: connect, read rows after the cursor, deliver, ack; back off.

A sink is one task. It connects, rewinds its outbox cursor (everything not acked is sent
again: at-least-once), then pumps rows: fetch a batch of committed rows, deliver it, and
let the acks move the cursor. Any failure — broker or database unreachable, connection
lost, timeout — closes the connection and retries after a capped exponential backoff
with full jitter; a slow or dead sink holds only its own cursor, never the other sink or
the polling.

:meth:`Sink.stop` flushes: the pump keeps delivering until the sink has acked everything
committed (or ``flush_timeout_s`` passes), then the sink closes cleanly.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from gateway.backoff import backoff_delay
from gateway.errors import SinkError
from gateway.outbox import Outbox, Row

__all__ = ["Sink", "backoff_delay"]

log = logging.getLogger(__name__)

#: Failures a sink retries; anything else is a bug and escapes.
RETRYABLE: tuple[type[BaseException], ...] = (SinkError, OSError, TimeoutError)


class Sink(abc.ABC):
    """A consumer of one outbox cursor. Subclasses implement the connection and delivery."""

    def __init__(
        self,
        outbox: Outbox,
        name: str,
        *,
        batch_size: int,
        backoff_min_s: float,
        backoff_max_s: float,
        flush_timeout_s: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if name not in outbox.sinks:
            raise ValueError(f"the outbox has no cursor for sink {name!r} (has {outbox.sinks})")
        self.outbox = outbox
        self.name = name
        self.batch_size = batch_size
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.flush_timeout_s = flush_timeout_s
        self._rand = rand
        self._connected = False
        #: time.monotonic() since when it is not connected (None while connected)
        self.down_since: float | None = time.monotonic()
        self.attempt = 0  # consecutive failures
        self.failures = 0  # total failures (a metric)
        self.connects = 0
        self.delivered = 0  # rows acked
        self.last_error: str | None = None
        #: set by a sink before it raises, when the peer said how long to wait
        self.retry_after_s: float | None = None
        self._stopping = False
        self._stop_deadline = 0.0
        self._stop_event: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._running = False

    # ------------------------------------------------------------ what a sink implements

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise SinkError/OSError/TimeoutError on failure."""

    @abc.abstractmethod
    async def deliver(self, rows: list[Row]) -> None:
        """Send rows; ack them (now or when the peer confirms). Raise to reconnect."""

    @abc.abstractmethod
    async def close(self, *, clean: bool) -> None:
        """Close the connection (``clean``: after a flush, on stop). Never raises."""

    def window(self) -> int:
        """How many rows may be fetched now (a bounded in-flight window)."""
        return self.batch_size

    def check(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise SinkError when the connection was lost in the background."""

    def drained(self) -> bool:
        """Everything committed is acked (the stop flush is done)."""
        return self.outbox.depth(self.name) == 0

    def summary(self) -> dict[str, Any] | None:
        """What ``GET /status`` shows of this sink under its name (None: nothing)."""
        return None

    async def collect(self, rows: list[Row]) -> list[Row]:
        """Add to a fetched batch before delivery (InfluxDB waits to fill its batch)."""
        return rows

    @property
    def connected(self) -> bool:
        return self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        if value:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = time.monotonic()
        self._connected = value

    def down_for_s(self) -> float:
        """How long it has not been connected (0 while connected)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Deliver until :meth:`stop`; reconnect with backoff on failure."""
        self._stop_event = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = True
        try:
            await self._run()
        except asyncio.CancelledError:
            self.connected = False
            await self.close(clean=False)  # cancelled, not stopped: no flush, no goodbye
            raise
        finally:
            self._running = False
            self._stopped.set()

    async def _run(self) -> None:
        assert self._stop_event is not None
        while not self._stopping:
            try:
                await self.connect()
            except RETRYABLE as exc:
                self._failed("connect", exc)
                await self.close(clean=False)
            else:
                self.connects += 1
                self.connected = True
                self.outbox.rewind(self.name)
                try:
                    await self._pump()
                except RETRYABLE as exc:
                    self.connected = False
                    self._failed("deliver", exc)
                    await self.close(clean=False)
                else:
                    self.connected = False
                    await self.close(clean=True)
                    return
                finally:
                    self.connected = False
            if self._stopping:
                return
            delay = backoff_delay(
                self.attempt - 1, self.backoff_min_s, self.backoff_max_s, self._rand
            )
            if self.retry_after_s is not None:
                delay = max(delay, self.retry_after_s)
                self.retry_after_s = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_event.wait()

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        outbox, name = self.outbox, self.name
        while True:
            self.check()
            if self._stopping and (self.drained() or loop.time() >= self._stop_deadline):
                return
            room = self.window()
            wait_s = 0.05 if self._stopping else 1.0
            if room <= 0:
                # the in-flight window is full: acks (or a lost connection) wake us
                await outbox.fetch(name, 0, timeout_s=wait_s)
                continue
            rows = await outbox.fetch(name, min(room, self.batch_size), timeout_s=wait_s)
            if not rows:
                continue
            rows = await self.collect(rows)
            await self.deliver(rows)
            if self.attempt:
                log.info("%s sink: delivering again after %d failures", self.name, self.attempt)
                self.attempt = 0
                self.last_error = None
            await asyncio.sleep(0)  # let polls and acks in between batches

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        self.attempt += 1
        msg = str(exc) or type(exc).__name__
        if self.attempt == 1 or msg != self.last_error:
            log.warning("%s sink: %s failed: %s (retrying)", self.name, what, msg)
        self.last_error = msg

    async def stop(self, timeout_s: float | None = None) -> None:
        """Flush what is committed (bounded by ``timeout_s``, default ``flush_timeout_s``),
        close cleanly, and return once :meth:`run` has ended."""
        timeout_s = self.flush_timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        self.outbox.commit()
        self._stop_deadline = loop.time() + timeout_s
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        self.outbox.wake(self.name)
        if self._running and self._stopped is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s + 5.0):
                    await self._stopped.wait()
