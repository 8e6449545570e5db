"""Random bytes into the Modbus reply parser and the client protocol: readings or
FrameError/DeviceError, never anything else."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import tty

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DeviceError, DeviceTimeout, DriverError, FrameError
from drivers.modbus import WIDTH, ChannelDecoder, RtuLink, RtuTransport
from drivers.modbus_tcp import ModbusTcpClient, parse_read_pdu, split_adus

ORDERS = {1: ["AB", "BA", "ABCD"], 2: ["ABCD", "CDAB", "BADC", "DCBA"]}
ORDERS[4] = ORDERS[2]


def parse_stream(data: bytes, function_code: int, count: int) -> list[bytes | DriverError]:
    """What the client does with a byte stream: frame it, then parse each reply."""
    out: list[bytes | DriverError] = []
    try:
        adus, used = split_adus(data)
    except FrameError as exc:
        return [exc]
    assert 0 <= used <= len(data)
    for _tid, _unit, pdu in adus:
        try:
            out.append(parse_read_pdu(pdu, function_code, count))
        except (FrameError, DeviceError) as exc:
            out.append(exc)
    return out


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([3, 4]), st.integers(1, 125))
def test_random_bytes(data: bytes, function_code: int, count: int) -> None:
    for result in parse_stream(data, function_code, count):
        if isinstance(result, bytes):
            assert len(result) == 2 * count
        else:
            assert isinstance(result, (FrameError, DeviceError))


@st.composite
def plausible_stream(draw: st.DrawFn) -> bytes:
    """Frames with a valid-looking MBAP header and a random (often almost right) PDU."""
    frames = b""
    for _ in range(draw(st.integers(1, 4))):
        fc = draw(st.sampled_from([3, 4, 0x83, 0x84, draw(st.integers(0, 255))]))
        body = draw(st.binary(max_size=20))
        if draw(st.booleans()):
            body = bytes([len(body)]) + body
        pdu = bytes([fc]) + body
        length = draw(st.sampled_from([len(pdu) + 1, draw(st.integers(0, 300))]))
        protocol = draw(st.sampled_from([0, 0, 0, draw(st.integers(0, 0xFFFF))]))
        frames += struct.pack(">HHHB", draw(st.integers(0, 0xFFFF)), protocol, length, 1) + pdu
    cut = draw(st.integers(0, len(frames)))
    return frames[:cut] if draw(st.booleans()) else frames


@settings(max_examples=500, deadline=None)
@given(plausible_stream(), st.sampled_from([3, 4]), st.integers(1, 10))
def test_plausible_frames(data: bytes, function_code: int, count: int) -> None:
    for result in parse_stream(data, function_code, count):
        if isinstance(result, bytes):
            assert len(result) == 2 * count
        else:
            assert isinstance(result, (FrameError, DeviceError))
            if isinstance(result, DeviceError):
                assert isinstance(result.code, int)
                assert 0 <= result.code <= 255


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(WIDTH)),
    st.data(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
)
def test_decoder_never_raises_on_any_register_values(
    kind: str, data: st.DataObject, scale: float
) -> None:
    width = WIDTH[kind]
    order = data.draw(st.sampled_from(ORDERS[width]))
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=width, max_size=width))
    payload = struct.pack(f">{width}H", *registers)
    decoder = ChannelDecoder(name="x", type=kind, word_order=order, scale=scale)  # type: ignore[arg-type]
    value, flags, quality = decoder.value(payload)
    assert isinstance(value, float | int)
    if quality == "good":
        assert flags == frozenset()
        assert not math.isnan(value)
    else:
        assert flags in ({"nan"}, {"overflow"}, {"underflow"})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=6))
def test_client_protocol_survives_random_chunks(chunks: list[bytes]) -> None:
    """Random replies, in random chunks, fed to the client's data_received with requests
    pending: each request ends in registers or a DriverError, and nothing else escapes."""

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.closed = False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            pass

        def close(self) -> None:
            self.closed = True

        def is_closing(self) -> bool:
            return self.closed

    async def run() -> None:
        client = ModbusTcpClient("127.0.0.1", 502)
        client._loop = asyncio.get_running_loop()
        client.connection_made(Transport())
        futures = [client.read_registers(1, 3, 0, 2, 60.0) for _ in range(3)]
        for chunk in chunks:
            client.data_received(chunk)
        client.close()
        for future in futures:
            assert future.done()
            exc = future.exception()
            if exc is None:
                assert len(future.result()) == 4
            else:
                assert isinstance(exc, DriverError)

    asyncio.run(run())


def crc16(frame: bytes) -> bytes:
    """Modbus RTU CRC (poly 0xA001, init 0xFFFF), low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


@st.composite
def rtu_replies(draw: st.DrawFn) -> bytes:
    """Line noise, or a frame with a valid CRC around a random (often almost right) PDU."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=1, max_size=60))
    unit = draw(st.sampled_from([1, 1, 2, draw(st.integers(0, 255))]))
    fc = draw(st.sampled_from([3, 3, 0x83, draw(st.integers(0, 255))]))
    body = draw(st.binary(max_size=12))
    if draw(st.booleans()):
        body = bytes([draw(st.sampled_from([4, len(body), draw(st.integers(0, 255))]))]) + body
    frame = bytes([unit, fc]) + body
    return frame + crc16(frame)


@pytest.mark.integration
@settings(max_examples=40, deadline=None)
@given(rtu_replies())
def test_rtu_link_with_random_replies_over_a_pty(reply: bytes) -> None:
    """The RTU path (pymodbus framer behind RtuLink) over a real pty: a random reply gives
    registers, FrameError, DeviceError or DeviceTimeout, and nothing else."""

    async def run() -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        link = RtuLink(RtuTransport(os.ttyname(slave)))
        try:
            await link.connect(1.0)
            loop = asyncio.get_running_loop()
            request = asyncio.create_task(link.read(1, 3, 0, 2, 0.15))
            readable = asyncio.Event()
            loop.add_reader(master, readable.set)
            try:
                await asyncio.wait_for(readable.wait(), 1.0)
                assert os.read(master, 256)[:2] == bytes([1, 3])
                os.write(master, reply)
            finally:
                loop.remove_reader(master)
            try:
                data = await request
            except (FrameError, DeviceError, DeviceTimeout):
                return
            assert len(data) == 4
        finally:
            link.close()
            os.close(master)
            os.close(slave)

    asyncio.run(run())
