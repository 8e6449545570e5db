"""A line-protocol server for the simulated serial instruments: over a pty and over TCP.

The server reads commands (lines ending in LF; a CR before it is dropped), hands each to
the first device that claims it, and writes the device's reply. Before each reply it
asks the device's :class:`~simulators.faults.Faults` what to do instead:

- ``NO_REPLY``: nothing; ``GARBAGE``: non-ASCII noise with the device's terminator;
  ``SLOW``: the reply after ``faults.slow_s``; ``DISCONNECT``: drop the line (TCP: close
  the connection; pty: hang up and open a fresh pty, re-pointing the stable symlink);
  ``DEVICE_ERROR``: the device's protocol error reply.

Over a pty the server holds the master and a slave fd of its own (so the master does not
see EIO while no client is attached), keeps the slave in raw mode, and publishes a
symlink whose target is the current slave device: clients open the symlink, as they
would open ``/dev/serial/by-id/…``. Over TCP it listens on ``port`` (0: any free port).

Several devices on one server model instruments sharing one line, each answering only
the commands it understands (the others stay silent). Commands on one line are handled
in order, one at a time, like a real serial instrument.

Simulators import only the stdlib and ``simulators.*``: they share no code with drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pty
import random
import shutil
import tempfile
import tty
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, Self

from simulators.faults import Fault, Faults

__all__ = ["LineDevice", "LineServer", "SerialSimulator"]

log = logging.getLogger(__name__)

MAX_COMMAND = 1024


class LineDevice(Protocol):
    """What the server needs of a simulated instrument."""

    faults: Faults
    reply_terminator: bytes

    def claims(self, command: bytes) -> bool:
        """True if this device answers ``command`` (a line without its terminator)."""
        ...

    async def handle(self, command: bytes) -> bytes | None:
        """The reply (without terminator), or None for a command that has none."""
        ...

    def device_error(self, command: bytes) -> bytes | None:
        """The reply when a DEVICE_ERROR fault is armed (the protocol's error)."""
        ...


class _Hangup(Exception):
    """A DISCONNECT fault: the session ends."""


class LineServer:
    """Serves ``devices`` over a pty and/or TCP. ``async with LineServer(...)``."""

    def __init__(
        self,
        devices: Sequence[LineDevice],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tcp: bool = True,
        pty: bool = True,
        seed: int | None = None,
    ) -> None:
        if not tcp and not pty:
            raise ValueError("serve over tcp, pty or both")
        self.devices = list(devices)
        self.host = host
        self.port = port
        self.use_tcp = tcp
        self.use_pty = pty
        self.rng = random.Random(seed)
        self.commands = 0  # commands received, all devices
        self.disconnects = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._tmpdir: str | None = None
        self._master = -1
        self._slave = -1
        self.pty_device: str | None = None  # the current /dev/pts/N
        self.pty_link: str | None = None  # stable symlink to it

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.use_tcp:
            self._server = await asyncio.start_server(self._on_tcp, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
        if self.use_pty:
            self._tmpdir = tempfile.mkdtemp(prefix="calgate-sim-")
            self.pty_link = os.path.join(self._tmpdir, "tty")
            self._open_pty()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self._close_pty()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def endpoints(self) -> dict[str, str]:
        """``{"tcp": "socket://127.0.0.1:PORT", "pty": "/tmp/…/tty"}`` for what is served."""
        out: dict[str, str] = {}
        if self._server is not None:
            out["tcp"] = f"socket://{self.host}:{self.port}"
        if self.pty_link is not None and self._master >= 0:
            out["pty"] = self.pty_link
        return out

    # -- transports -------------------------------------------------------------------

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The session runs in a task of our own, which stop() may cancel; the handler task
        # asyncio created only waits for it (asyncio reports a cancelled handler as an error).
        outer = asyncio.current_task()
        assert outer is not None
        self._handlers.add(outer)
        inner = asyncio.get_running_loop().create_task(self._tcp_session(reader, writer))
        self._tasks.add(inner)
        inner.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait([inner])
        finally:
            self._handlers.discard(outer)

    async def _tcp_session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        try:
            await self._session(reader, write)
        except (_Hangup, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    def _open_pty(self) -> None:
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        old_master, old_slave = self._master, self._slave
        self._master, self._slave = master, slave
        self.pty_device = os.ttyname(slave)
        assert self.pty_link is not None
        tmp = self.pty_link + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(self.pty_device, tmp)
        os.replace(tmp, self.pty_link)  # atomic: clients see the old or the new pty
        for fd in (old_master, old_slave):  # hang up the old line only after re-pointing
            if fd >= 0:
                with contextlib.suppress(OSError):
                    asyncio.get_running_loop().remove_reader(fd)
                os.close(fd)
        task = asyncio.get_running_loop().create_task(
            self._pty_session(master), name=f"sim-pty-{self.pty_device}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    asyncio.get_running_loop().remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    async def _pty_session(self, master: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_COMMAND * 4)

        def readable() -> None:
            try:
                data = os.read(master, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                loop.remove_reader(master)
                reader.feed_eof()
                return
            if data:
                reader.feed_data(data)
            else:
                loop.remove_reader(master)
                reader.feed_eof()

        async def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(master, view)
                except BlockingIOError:
                    await asyncio.sleep(0.001)  # the slave's input queue is full
                    continue
                view = view[n:]

        loop.add_reader(master, readable)
        try:
            await self._session(reader, write)
        except _Hangup:
            self._open_pty()  # closes this master: the client sees a hang-up
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(master)

    # -- the protocol-independent part ------------------------------------------------

    async def _session(
        self, reader: asyncio.StreamReader, write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        while True:
            try:
                raw = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return  # EOF
            except asyncio.LimitOverrunError as exc:
                await reader.readexactly(exc.consumed)  # drop an over-long line
                continue
            command = raw.rstrip(b"\r\n")
            if not command:
                continue
            device = next((d for d in self.devices if d.claims(command)), None)
            if device is None:
                continue  # nobody on this line understands it
            self.commands += 1
            try:
                reply = await self._respond(device, command)
            except _Hangup:
                raise
            except Exception:  # a simulator bug: say so, keep serving the line
                log.exception("simulated device failed on %r", command)
                continue
            if reply:
                await write(reply)

    async def _respond(self, device: LineDevice, command: bytes) -> bytes | None:
        fault = device.faults.take()
        if fault is Fault.NO_REPLY:
            return None
        if fault is Fault.DISCONNECT:
            self.disconnects += 1
            raise _Hangup
        if fault is Fault.GARBAGE:
            noise = bytes(
                self.rng.choice(b"\x80\x9f\xfe#?*~") for _ in range(self.rng.randint(3, 12))
            )
            return noise + device.reply_terminator
        if fault is Fault.DEVICE_ERROR:
            body = device.device_error(command)
        else:
            if fault is Fault.SLOW:
                await asyncio.sleep(device.faults.slow_s)
            body = await device.handle(command)
        return None if body is None else body + device.reply_terminator


class SerialSimulator:
    """Base of the simulated serial instruments: one device on its own :class:`LineServer`.

    Subclasses implement the :class:`LineDevice` methods. Life cycle: ``start``/``stop``
    or ``async with``; ``endpoints()`` gives the ``tcp`` URL and ``pty`` path.
    """

    reply_terminator: bytes = b"\r\n"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tcp: bool = True,
        pty: bool = True,
        faults: Faults | None = None,
        seed: int | None = None,
    ) -> None:
        self.faults = faults if faults is not None else Faults()
        self.seed = seed
        self.server = LineServer([self], host=host, port=port, tcp=tcp, pty=pty, seed=seed)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def endpoints(self) -> dict[str, str]:
        return self.server.endpoints()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # LineDevice
    def claims(self, command: bytes) -> bool:
        raise NotImplementedError

    async def handle(self, command: bytes) -> bytes | None:
        raise NotImplementedError

    def device_error(self, command: bytes) -> bytes | None:
        raise NotImplementedError
