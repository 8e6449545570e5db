"""The line transport of serial instruments: a tty, a pty, or ``socket://host:port``.

One API for every line-oriented instrument (MT-SICS, SBI, SCPI): a *transaction* writes
a command and reads one reply up to a terminator, within a timeout.

- A device path (``/dev/ttyUSB0``, a pty such as ``/dev/pts/5`` or a symlink to one) is
  opened with pyserial (baud rate, data bits, parity, stop bits) and driven from the
  event loop: the port's non-blocking fd is watched with ``loop.add_reader``, so no
  thread is involved (a thread hop per transaction costs more than the rest of a poll
  and leaves executor threads behind: bench/README.md).
- ``socket://host:port`` (a serial device server, or a simulator over TCP) is an asyncio
  connection with the same receive buffer.

Before each command the transport discards stale input (a late reply to an earlier,
timed-out command). Failures are translated once, here: OSError, SerialException, EOF and
hang-up become :class:`ConnectError` (and the link is dropped; the next transaction
reconnects lazily), a missing reply becomes :class:`DeviceTimeout` (the link is kept).

Instruments on one port share a :class:`drivers.base.Bus`; the open :class:`LineTransport`
lives in ``bus.resource``. :class:`SerialInstrument` is the small driver base that does
that bookkeeping for the MT-SICS, SBI and SCPI drivers.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import termios
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import serial
from pydantic import Field, field_validator

from drivers.base import Bus, Buses, Driver, DriverConfig
from drivers.errors import ConnectError, DeviceTimeout, DriverError, FrameError

__all__ = [
    "MAX_LINE",
    "LineTransport",
    "Parity",
    "SerialConfig",
    "SerialInstrument",
    "SerialTransport",
    "TcpTransport",
    "open_transport",
]

log = logging.getLogger(__name__)

MAX_LINE = 4096
"""A reply longer than this without a terminator is a FrameError (a babbling device)."""

Parity = Literal["N", "E", "O"]
_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialConfig(DriverConfig):
    """What every serial-line instrument's ``[[equipment]]`` table has.

    ``port`` is a device, a pty path or ``socket://host:port``; instruments with the same
    port share one connection, one lock and the inter-frame gap ``gap_s``. ``channel``
    names the reading's channel (None: the driver's default, e.g. ``weight``).
    """

    port: str = Field(min_length=1)
    baudrate: int = Field(default=9600, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    gap_s: float = Field(default=0.0, ge=0)
    channel: str | None = None

    @field_validator("port")
    @classmethod
    def _port_form(cls, port: str) -> str:
        if port.startswith("socket://"):
            parts = urlsplit(port)
            try:
                tcp_port = parts.port
            except ValueError:
                tcp_port = None
            if not parts.hostname or tcp_port is None or parts.path not in ("", "/"):
                raise ValueError(f"{port!r}: expected socket://host:port")
        elif "://" in port:
            raise ValueError(f"{port!r}: a device path, a pty path or socket://host:port")
        return port

    def bus_key(self) -> str | None:
        return self.port


class _Receiver:
    """Bytes arriving from the link, and the link's failure, for one reader at a time.

    Input that arrives while nobody reads is stale (the next command discards it); past
    :data:`MAX_LINE` of it the transport's ``pause`` is called and reading stops until
    the next command, so a device that babbles between polls costs neither memory nor
    the event loop's time.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.error: ConnectError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.pause: Callable[[], None] | None = None

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self._waiter is None and len(buf) > MAX_LINE:
            del buf[:-MAX_LINE]
            if self.pause is not None:
                self.pause()
        self._wake()

    def fail(self, exc: ConnectError) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def raise_error(self) -> None:
        """Raise the link's failure as a fresh ConnectError (each caller tags its own)."""
        if self.error is not None:
            raise ConnectError(str(self.error)) from self.error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read_until(self, terminator: bytes) -> bytes:
        while True:
            i = self.buf.find(terminator)
            if i >= 0:
                end = i + len(terminator)
                line = bytes(self.buf[:end])
                del self.buf[:end]
                return line
            self.raise_error()
            if len(self.buf) > MAX_LINE:
                junk = bytes(self.buf[:64])
                self.buf.clear()
                raise FrameError(f"no terminator within {MAX_LINE} bytes", frame=junk)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class LineTransport(abc.ABC):
    """One connection to a port; see :meth:`transact`. Not safe for concurrent use:
    callers serialise through the bus lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._rx = _Receiver()
        self.connects = 0  # successful connections so far (the first, then reconnects)

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (stale input, until the next command)."""
        return len(self._rx.buf)

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Open the link; raise OSError/SerialException on failure."""

    @abc.abstractmethod
    def _discard_input(self) -> None:
        """Drop stale input, and read again if the receiver paused reading."""

    @abc.abstractmethod
    async def _write(self, data: bytes) -> None:
        """Write all of ``data``; raise ConnectError on failure."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the link; never raises. The next transaction reconnects."""

    async def connect(self, *, timeout_s: float, equipment: str | None = None) -> None:
        """Open the link if it is not open; ConnectError on failure (or timeout)."""
        if self.connected:
            return
        self.close()  # a link that died while idle still holds its fd or socket
        self._rx = _Receiver()
        try:
            async with asyncio.timeout(timeout_s):
                await self._connect()
        except TimeoutError as exc:
            self.close()
            raise ConnectError(f"{self.url}: connect timed out", equipment=equipment) from exc
        except (OSError, serial.SerialException, ValueError) as exc:
            self.close()
            raise ConnectError(f"{self.url}: {exc}", equipment=equipment) from exc
        self.connects += 1
        log.info("connected to %s", self.url)

    async def transact(
        self,
        command: bytes,
        *,
        terminator: bytes,
        timeout_s: float,
        reply: bool = True,
        equipment: str | None = None,
    ) -> bytes:
        """Send ``command`` (already terminated) and return one reply line with its
        terminator (``b""`` when ``reply`` is false).

        Raises ConnectError (link down or lost: dropped, reconnects next time),
        DeviceTimeout (no complete reply within ``timeout_s``), FrameError (a reply
        longer than :data:`MAX_LINE` without a terminator).
        """
        await self.connect(timeout_s=timeout_s, equipment=equipment)
        self._discard_input()
        try:
            async with asyncio.timeout(timeout_s):
                await self._write(command)
                if not reply:
                    log.debug("%s -> %r", self.url, command)
                    return b""
                line = await self._rx.read_until(terminator)
                log.debug("%s -> %r <- %r", self.url, command, line)
                return line
        except TimeoutError as exc:
            raise DeviceTimeout(
                f"{self.url}: no reply to {shown(command)} within {timeout_s} s",
                equipment=equipment,
            ) from exc
        except ConnectError as exc:
            self.close()
            if exc.equipment is None:
                exc.equipment = equipment
            raise


def shown(command: bytes) -> str:
    """A command as a person reads it in a message: ``SI``, ``ESC P``, ``:SENS:PRES?`` (it
    said ``b'SI\\r\\n'``, Python's repr of the bytes, on the console and MQTT)."""
    text = command.decode("ascii", "backslashreplace").strip()
    return text.replace("\x1b", "ESC ")


class SerialTransport(LineTransport):
    """A tty or pty through pyserial, its non-blocking fd watched by the event loop."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: Parity = "N",
        stopbits: int = 1,
    ) -> None:
        super().__init__(url)
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits
        self._port: serial.Serial | None = None
        self._fd = -1
        self._reading = False  # the loop watches the fd

    @property
    def connected(self) -> bool:
        return self._port is not None and self._rx.error is None

    async def _connect(self) -> None:
        port = serial.Serial()
        port.port = self.url
        port.baudrate = self.baudrate
        port.bytesize = self.bytesize
        port.parity = _PARITY[self.parity]
        port.stopbits = self.stopbits
        port.timeout = 0
        port.open()  # O_NONBLOCK open: does not block the loop
        self._port = port
        self._fd = port.fileno()
        os.set_blocking(self._fd, False)
        self._rx.pause = self._pause
        self._resume()

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)

    def _resume(self) -> None:
        if not self._reading and self._fd >= 0:
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: the other side of a pty hung up; an unplugged USB port
            self._hang_up(f"{self.url}: {exc}")
            return
        if not data:
            self._hang_up(f"{self.url}: end of file")
            return
        self._rx.feed(data)

    def _hang_up(self, why: str) -> None:
        self._pause()
        self._rx.fail(ConnectError(why))

    def _discard_input(self) -> None:
        self._rx.buf.clear()
        with contextlib.suppress(termios.error, OSError):
            termios.tcflush(self._fd, termios.TCIFLUSH)
        if self._rx.error is None:
            self._resume()

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view:
            self._rx.raise_error()
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self._fd)
                continue
            except OSError as exc:
                raise ConnectError(f"{self.url}: write failed: {exc}") from exc
            view = view[n:]

    def close(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        self._pause()
        with contextlib.suppress(Exception):
            port.close()
        self._fd = -1


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, rx: _Receiver, url: str) -> None:
        self.rx = rx
        self.url = url

    def data_received(self, data: bytes) -> None:
        self.rx.feed(data)

    def eof_received(self) -> bool:
        self.rx.fail(ConnectError(f"{self.url}: connection closed by peer"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.rx.fail(ConnectError(f"{self.url}: connection lost" + (f": {exc}" if exc else "")))


class TcpTransport(LineTransport):
    """``socket://host:port``: a serial device server or a simulator over TCP."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        if parts.scheme != "socket" or not parts.hostname or parts.port is None:
            raise ValueError(f"{url!r} is not socket://host:port")
        self.host = parts.hostname
        self.port = parts.port
        self._transport: asyncio.Transport | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._rx.error is None

    async def _connect(self) -> None:
        rx = self._rx
        transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: _StreamProtocol(rx, self.url), self.host, self.port
        )
        self._transport = transport
        rx.pause = transport.pause_reading

    def _discard_input(self) -> None:
        self._rx.buf.clear()
        transport = self._transport
        if transport is not None and not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()

    async def _write(self, data: bytes) -> None:
        self._rx.raise_error()
        if self._transport is None or self._transport.is_closing():
            raise ConnectError(f"{self.url}: not connected")
        self._transport.write(data)

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()


def open_transport(config: SerialConfig) -> LineTransport:
    """The transport for ``config.port`` (not yet connected)."""
    if config.port.startswith("socket://"):
        return TcpTransport(config.port)
    return SerialTransport(
        config.port,
        baudrate=config.baudrate,
        bytesize=config.bytesize,
        parity=config.parity,
        stopbits=config.stopbits,
    )


class SerialInstrument(Driver):
    """Base of the line-protocol drivers: the shared bus, its transport, transactions.

    Subclasses set ``terminator`` (the reply terminator) and ``default_channel``, and
    call :meth:`transact` while holding ``self.bus`` (``async with self.bus:``), so a
    multi-command exchange is not interleaved with a neighbour's.
    """

    config: SerialConfig
    terminator: ClassVar[bytes] = b"\r\n"
    default_channel: ClassVar[str] = "value"

    def __init__(self, config: DriverConfig, *, buses: Buses | None = None) -> None:
        if not isinstance(config, SerialConfig):
            raise TypeError(f"{type(self).__name__} needs a SerialConfig, got {type(config)}")
        super().__init__(config, buses=buses)
        self.config = config
        self.bus: Bus = self.buses.get(config.bus_key(), gap_s=config.gap_s)
        self._joined = False

    @property
    def channel(self) -> str:
        return self.config.channel or self.default_channel

    @property
    def transport(self) -> LineTransport:
        """The bus's shared transport, created on first use."""
        if self.bus.resource is None:
            self.bus.resource = open_transport(self.config)
        transport: LineTransport = self.bus.resource
        return transport

    def _join(self) -> None:
        if not self._joined:
            self._joined = True
            self.bus.users += 1

    async def open(self) -> None:
        """Join the bus and connect; ConnectError if the port cannot be opened (poll
        retries later)."""
        self._join()
        async with self.bus:
            await self.transport.connect(timeout_s=self.config.timeout_s, equipment=self.equipment)

    async def close(self) -> None:
        if not self._joined:
            return
        self._joined = False
        self.bus.users -= 1
        if self.bus.users <= 0 and self.bus.resource is not None:
            transport: LineTransport = self.bus.resource
            self.bus.resource = None
            transport.close()

    @contextlib.contextmanager
    def tagged(self) -> Iterator[None]:
        """Name this instrument in any DriverError raised inside (parsers raise untagged)."""
        try:
            yield
        except DriverError as exc:
            if exc.equipment is None:
                exc.equipment = self.equipment
            raise

    async def transact(self, command: bytes, *, reply: bool = True) -> bytes:
        """One command/reply exchange; the caller holds ``self.bus``. The reply is kept
        in ``recent_frames``."""
        self._join()
        with self.tagged():
            line = await self.transport.transact(
                command,
                terminator=self.terminator,
                timeout_s=self.config.timeout_s,
                reply=reply,
                equipment=self.equipment,
            )
        if reply:
            self.recent_frames.append(line)
        return line

    async def query(self, command: bytes) -> bytes:
        """:meth:`transact` under the bus lock."""
        async with self.bus:
            return await self.transact(command)
