"""Hostile instruments over real sockets and a real pty: Modbus servers that answer other
transactions, announce more bytes than they send, flood and trickle; a balance that
babbles megabytes without a newline. Each costs its own instrument a poll or two, never
memory, and never a neighbour's readings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import struct
import threading
import tty
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from helpers import LoopbackServer, wait_for_async

from drivers.errors import DeviceTimeout, DriverError, FrameError
from drivers.modbus import ModbusConfig, ModbusDriver
from drivers.mt_sics import MtSics, MtSicsConfig
from drivers.serial_io import MAX_LINE, SerialInstrument
from simulators.mt_sics import MtSicsSim

pytestmark = pytest.mark.integration

VALUE = 1013.25  # the float32 in input registers 0-1 of every server here


def reply(tid: int, unit: int, fc: int, count: int) -> bytes:
    """The honest Modbus TCP reply to a read of ``count`` registers."""
    data = struct.pack(">f", VALUE).ljust(2 * count, b"\0")
    pdu = bytes([fc, 2 * count]) + data
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


class ModbusPeer(asyncio.Protocol):
    """One connection of :class:`HostileModbus`: answers as its server's ``behave`` says."""

    def __init__(self, server: HostileModbus) -> None:
        self.server = server
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 12:
            request, self.buf = self.buf[:12], self.buf[12:]
            tid, _proto, _length, unit, fc, _address, count = struct.unpack(">HHHBBHH", request)
            honest = reply(tid, unit, fc, count)
            self.server.behave(self.transport, tid, honest)


class HostileModbus(LoopbackServer):
    """A Modbus TCP server on a free loopback port; ``behave(transport, tid, honest)``
    sends whatever it likes for each request (by default the honest reply)."""

    def __init__(self) -> None:
        self.behave: Callable[[asyncio.Transport, int, bytes], None] = honest
        self.connections = 0
        super().__init__()

    async def _serve_on(self, host: str) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: ModbusPeer(self), host, 0)


def honest(transport: asyncio.Transport, tid: int, frame: bytes) -> None:
    transport.write(frame)


def modbus(url: str, *, timeout_s: float = 0.3, eq: str = "PT-1") -> ModbusDriver:
    return ModbusDriver(
        ModbusConfig.model_validate(
            {
                "id": eq,
                "driver": "modbus",
                "url": url,
                "unit": 1,
                "timeout_s": timeout_s,
                "channels": [{"name": "p", "register": "input", "address": 0, "type": "float32"}],
            }
        )
    )


async def good(driver: ModbusDriver | SerialInstrument) -> float:
    (reading,) = await driver.poll()
    assert reading.quality == "good"
    return float(reading.raw)


@contextlib.asynccontextmanager
async def neighbour(make: Callable[[], Any]) -> AsyncIterator[list[float | str]]:
    """A well-behaved instrument polled every 20 ms meanwhile; yields its results."""
    driver = make()
    results: list[float | str] = []

    async def loop() -> None:
        while True:
            try:
                results.append(await good(driver))
            except DriverError as exc:
                results.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.02)

    task = asyncio.create_task(loop())
    try:
        yield results
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await driver.close()


# -- Modbus TCP -----------------------------------------------------------------------------


@pytest.mark.parametrize("after_s", [0.0, 0.1], ids=["at-once", "late-in-the-timeout"])
async def test_a_reply_announcing_more_bytes_than_it_sends_costs_one_poll(after_s: float) -> None:
    """A header saying 200 bytes follow, then only the 7 of a normal reply: every later
    reply would be taken as the rest of it. After a timeout the client drops the
    connection and reads in step again (before: every later poll timed out). Sent a
    third of the 0.3 s timeout after the request, it still costs one poll (before: the
    poll timed out with the bytes left in the buffer, the next one failed too -- and
    sent at once, the same happened whenever the bytes took longer to arrive than the
    timer fired late, on a loaded machine)."""
    async with HostileModbus() as server, HostileModbus() as other:
        n = await _overlong(server, other, after_s)
    assert n
    assert all(v == VALUE for v in n), n


async def _overlong(
    server: HostileModbus, other: HostileModbus, after_s: float
) -> list[float | str]:
    async with neighbour(lambda: modbus(other.url, eq="PT-2")) as n:
        driver = modbus(server.url)
        try:
            assert await good(driver) == VALUE

            def overlong(transport: asyncio.Transport, tid: int, frame: bytes) -> None:
                lie = frame[:4] + struct.pack(">H", 200) + frame[6:]
                asyncio.get_running_loop().call_later(after_s, transport.write, lie)
                server.behave = honest

            server.behave = overlong
            with pytest.raises(FrameError, match="out of step"):
                await driver.poll()
            assert [await good(driver) for _ in range(3)] == [VALUE] * 3
            await wait_for_async(lambda: bool(n), what="a neighbour's reading")
        finally:
            await driver.close()
    return n


async def test_a_stream_of_split_replies_holds_a_timed_out_poll_one_timeout_at_most() -> None:
    """Past its deadline a poll waits for the rest of an incomplete reply, but replies to
    other transactions split across writes, one every 20 ms, keep an incomplete one in
    the buffer for ever: the poll ends a timeout past its deadline, out of step, and the
    next one reads on a new connection."""
    async with HostileModbus() as server:

        def chatter(transport: asyncio.Transport, tid: int, frame: bytes) -> None:
            def other(k: int) -> bytes:
                return struct.pack(">H", (tid + k) & 0xFFFF) + frame[2:]

            async def send() -> None:
                k = 1
                transport.write(other(k)[:3])
                while not transport.is_closing():
                    transport.write(other(k)[3:] + other(k + 1)[:3])
                    k += 1
                    await asyncio.sleep(0.02)

            server.later(send())

        server.behave = chatter
        driver = modbus(server.url, timeout_s=0.3)
        try:
            async with asyncio.timeout(10):  # for ever, were the wait not bounded
                with pytest.raises(FrameError, match="out of step"):
                    await driver.poll()
            server.behave = honest
            assert await good(driver) == VALUE
        finally:
            await driver.close()
    assert server.connections == 2


async def test_replies_to_other_transactions_are_never_taken_for_a_reading() -> None:
    async with HostileModbus() as server:

        def wrong_tid(transport: asyncio.Transport, tid: int, frame: bytes) -> None:
            transport.write(struct.pack(">H", tid ^ 0x5A5A) + frame[2:])

        driver = modbus(server.url, timeout_s=0.2)
        try:
            server.behave = wrong_tid
            for _ in range(2):
                with pytest.raises(DeviceTimeout):
                    await driver.poll()
            server.behave = honest
            assert await good(driver) == VALUE
        finally:
            await driver.close()
    assert server.connections == 1  # framed replies keep the stream in step


async def test_a_flood_of_unasked_replies_leaves_every_reading_right() -> None:
    """Each request is answered with 3,000 replies to transactions nobody sent (and one
    from another unit with the right id, which fails only its own request), then the
    right one; a neighbour on its own server keeps reading meanwhile."""
    async with HostileModbus() as server, HostileModbus() as other:
        lies = 0

        def flood(transport: asyncio.Transport, tid: int, frame: bytes) -> None:
            nonlocal lies
            junk = b"".join(
                struct.pack(">H", (tid + k) & 0xFFFF) + frame[2:] for k in range(1, 3001)
            )
            transport.write(junk + frame)
            lies += 3000

        server.behave = flood
        driver = modbus(server.url)
        async with neighbour(lambda: modbus(other.url, eq="PT-2")) as n:
            try:
                polls = 0
                while polls < 20 or len(n) < 5:
                    assert await good(driver) == VALUE
                    polls += 1
            finally:
                await driver.close()
        assert lies == 3000 * polls
        assert all(v == VALUE for v in n), n


async def test_a_trickled_reply_is_read_and_one_slower_than_the_timeout_resyncs() -> None:
    async with HostileModbus() as server:
        gap_s = 0.01

        def trickle(transport: asyncio.Transport, tid: int, frame: bytes) -> None:
            async def send() -> None:
                for i in range(len(frame)):
                    if transport.is_closing():
                        return
                    transport.write(frame[i : i + 1])
                    await asyncio.sleep(gap_s)

            server.later(send())

        server.behave = trickle
        driver = modbus(server.url, timeout_s=1.0)
        try:
            assert await good(driver) == VALUE  # 13 bytes over ~0.13 s, within 1 s
        finally:
            await driver.close()
        gap_s = 0.1  # 13 bytes over 1.3 s, against a 0.3 s timeout
        driver = modbus(server.url, timeout_s=0.3)
        try:
            with pytest.raises(DriverError):
                await driver.poll()
            server.behave = honest
            # a fresh connection, so the rest of the trickle cannot be taken for a reply
            assert await good(driver) == VALUE
            assert await good(driver) == VALUE
        finally:
            await driver.close()


# -- a babbling balance ---------------------------------------------------------------------


def mt(port: str, eq: str = "BAL-01") -> MtSics:
    return MtSics(MtSicsConfig(id=eq, driver="mt-sics", port=port, timeout_s=0.5))


BABBLE = b"\xff\xfeS S  \xc3" * 40_000  # ~300 kB, no CR LF, not UTF-8


async def test_a_balance_babbling_megabytes_over_tcp_costs_no_memory() -> None:
    sent = 0

    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        try:
            while True:
                writer.write(BABBLE)
                await writer.drain()
                sent += len(BABBLE)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sim = MtSicsSim(tau_s=0.01, seed=7)
    async with sim, neighbour(lambda: mt(sim.endpoints()["tcp"], "BAL-02")) as n:
        driver = mt(f"socket://127.0.0.1:{port}")
        try:
            await driver.open()
            polls = 0
            while polls < 3 or len(n) < 5:
                await asyncio.sleep(0.3)  # between polls: nobody reads
                assert driver.transport.buffered <= MAX_LINE  # before: hundreds of MB
                with pytest.raises(FrameError, match="no terminator"):
                    await driver.poll()
                polls += 1
        finally:
            await driver.close()
            server.close()
            await server.wait_closed()
    # reading paused between polls: the peer was held back by TCP flow control
    assert sent < 10 * polls * len(BABBLE)
    assert all(isinstance(v, float) for v in n), n


async def test_a_balance_babbling_on_a_pty_costs_no_memory() -> None:
    master, slave = pty.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    os.set_blocking(master, False)  # a full pty (the driver paused reading) must not block

    def babble() -> None:
        while not stop.is_set():
            try:
                os.write(master, BABBLE[:4096])
            except BlockingIOError:
                stop.wait(0.01)
            except OSError:
                return

    writer = threading.Thread(target=babble, daemon=True)
    writer.start()
    sim = MtSicsSim(tau_s=0.01, seed=8)
    try:
        async with sim, neighbour(lambda: mt(sim.endpoints()["tcp"], "BAL-02")) as n:
            driver = mt(os.ttyname(slave))
            try:
                await driver.open()
                polls = 0
                while polls < 3 or len(n) < 5:
                    await asyncio.sleep(0.3)
                    assert driver.transport.buffered <= MAX_LINE
                    with pytest.raises(FrameError):
                        await driver.poll()
                    polls += 1
            finally:
                await driver.close()
        assert all(isinstance(v, float) for v in n), n
    finally:
        stop.set()
        os.close(slave)
        os.close(master)
        writer.join(5)
