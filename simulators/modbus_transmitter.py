"""Simulated Modbus pressure transmitters: a pymodbus server over TCP and RTU-over-pty.

One simulator holds several unit ids (devices), like a TCP gateway or an RS-485 line
with several transmitters. Each transmitter reads the live pressure of a shared
:class:`~simulators.physics.Manifold` (the simulated pressure controller drives the same
one) plus its own offset, so calibration against the controller shows. A new value is
computed on every read (pymodbus ``SimDevice`` action), never on a timer.

Register map, the same in input registers (FC 4) and holding registers (FC 3); multi-
register values in the device's word order (docs/internals/protocols.md); a byte-swapping device
(BADC, DCBA) swaps the bytes of every register, 16-bit values included:

======== ========= ==========================================================
address  type      value
======== ========= ==========================================================
0-1      float32   pressure (manifold unit, default mbar)
2        uint16    status: bit 0 NaN (channel error), bit 1 +inf, bit 2 -inf
3        int16     pressure x 10
4        uint16    pressure x 10
5-6      int32     pressure x 1000
7-8      uint32    pressure x 1000
9-12     float64   pressure
13-99    -         not defined: a read gives exception 2 (illegal data address)
100-111  pattern   constants of every type (:data:`INPUT_PATTERN`, :data:`HOLDING_PATTERN`)
200-...  int16     with ``block_registers=K`` only: K live values, register 200 + j
                   holds round(10 x (pressure + 0.1 x j)) (a multi-channel
                   instrument for block reads; recomputed when a read touches them)
======== ========= ==========================================================

Faults (``sim.faults[unit].arm(Fault.X, count)``), decided per request:

- NO_REPLY: no answer. SLOW: the answer after ``slow_s``.
- GARBAGE: with ``garbage="reply"`` (default), over TCP a reply with the request's
  transaction id whose PDU is inconsistent (byte count 255), over RTU the right reply
  with a broken CRC; with ``garbage="noise"``, 8 to 40 random bytes (over TCP with a
  non-zero protocol id, so the stream is unframeable and the client must reconnect).
- DISCONNECT: over TCP the connection is closed instead of answering; over RTU (there is
  no connection on a serial line) the device falls silent for that request.
- DEVICE_ERROR: exception response 4 (server device failure).

``set_nan(unit)`` / ``set_inf(unit, negative=...)`` make the floating-point registers
carry NaN or ±inf (and the status bits), as transmitters signal a channel error or an
over/underrange. A unit id that is not configured gets exception 11 (gateway target
failed to respond) over TCP and silence over RTU.

Transports: TCP on ``port`` (0 picks a free one; :meth:`endpoints` reports it) and RTU
on a pty: the server speaks on the master side, the driver opens the slave path. This
module shares no code with ``drivers`` on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import struct
import tty
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.faults import Fault, Faults
from simulators.physics import Manifold

__all__ = [
    "BLOCK_ADDRESS",
    "HOLDING_PATTERN",
    "INPUT_PATTERN",
    "PATTERN_ADDRESS",
    "WORD_ORDERS",
    "ModbusTransmitterSim",
]

WORD_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
PATTERN_ADDRESS = 100
BLOCK_ADDRESS = 200  # the optional block of live registers (``block_registers``)
MAX_BLOCK_REGISTERS = 1000
BLOCK_STEP = 0.1  # register 200 + j reads the pressure + j x BLOCK_STEP
STATUS_NAN, STATUS_OVER, STATUS_UNDER = 0x0001, 0x0002, 0x0004
_LIVE_REGISTERS = 13  # addresses 0..12 are recomputed on each read

#: (address, type, value) of the constant pattern in the input registers ...
INPUT_PATTERN: tuple[tuple[int, str, float], ...] = (
    (100, "float32", 123456.0),
    (102, "int16", -12345),
    (103, "uint16", 54321),
    (104, "int32", -123456789),
    (106, "uint32", 3123456789),
    (108, "float64", -9876.54321),
)
#: ... and in the holding registers (different, so FC 3 and FC 4 cannot be confused)
HOLDING_PATTERN: tuple[tuple[int, str, float], ...] = (
    (100, "float32", -98765.5),
    (102, "int16", -32768),
    (103, "uint16", 65535),
    (104, "int32", -2147483648),
    (106, "uint32", 4294967295),
    (108, "float64", 1.0e300),
)
_FORMAT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I"}
_FORMAT.update({"float32": ">f", "float64": ">d"})


def to_registers(big_endian: bytes, word_order: str) -> list[int]:
    """Registers of a value given as big-endian bytes, in a device's word order."""
    words = [big_endian[i : i + 2] for i in range(0, len(big_endian), 2)]
    if word_order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    if word_order in ("CDAB", "DCBA"):
        words.reverse()
    return [int.from_bytes(w, "big") for w in words]


def _encode(kind: str, value: float, word_order: str) -> list[int]:
    number: float = value if kind.startswith("float") else int(value)
    return to_registers(struct.pack(_FORMAT[kind], number), word_order)


def _clip(value: float, low: int, high: int) -> int:
    return max(low, min(high, round(value))) if math.isfinite(value) else 0


@dataclass
class Transmitter:
    """One simulated transmitter (unit id) and its state."""

    unit: int
    word_order: str
    offset: float
    faults: Faults
    override: float | None = None  # NaN or ±inf instead of the pressure
    requests: int = 0  # requests addressed to this unit (answered or not)
    last_pressure: float = math.nan
    block_registers: int = 0  # live int16 registers from BLOCK_ADDRESS on

    def block_values(self, pressure: float) -> list[int]:
        """The block's registers: int16 ``round(10 (pressure + j BLOCK_STEP))``, in word order."""
        value = pressure if self.override is None else self.override
        swap = self.word_order in ("BADC", "DCBA")
        out = []
        for j in range(self.block_registers):
            word = _clip((value + j * BLOCK_STEP) * 10, -32768, 32767) & 0xFFFF
            out.append(((word & 0xFF) << 8 | word >> 8) if swap else word)
        return out

    def live_registers(self, pressure: float) -> list[int]:
        order = self.word_order
        value = pressure if self.override is None else self.override
        status = 0
        if value != value:
            status = STATUS_NAN
        elif value == math.inf:
            status = STATUS_OVER
        elif value == -math.inf:
            status = STATUS_UNDER
        return [
            *_encode("float32", value, order),
            *_encode("uint16", status, order),
            *_encode("int16", _clip(value * 10, -32768, 32767), order),
            *_encode("uint16", _clip(value * 10, 0, 65535), order),
            *_encode("int32", _clip(value * 1000, -(2**31), 2**31 - 1), order),
            *_encode("uint32", _clip(value * 1000, 0, 2**32 - 1), order),
            *_encode("float64", value, order),
        ]

    def simdevice(self, action: Any) -> SimDevice:
        def block(pattern: Iterable[tuple[int, str, float]]) -> list[SimData]:
            live = self.live_registers(0.0)
            fixed: list[int] = []
            for _address, kind, value in pattern:
                fixed.extend(_encode(kind, value, self.word_order))
            out = [
                SimData(0, values=live, datatype=DataType.REGISTERS),
                SimData(PATTERN_ADDRESS, values=fixed, datatype=DataType.REGISTERS),
            ]
            if self.block_registers:
                out.append(
                    SimData(
                        BLOCK_ADDRESS, values=self.block_values(0.0), datatype=DataType.REGISTERS
                    )
                )
            return out

        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(
            self.unit,
            simdata=(bits, list(bits), block(HOLDING_PATTERN), block(INPUT_PATTERN)),
            action=action,
        )


class _Handler(ServerRequestHandler):
    """pymodbus's per-connection handler, with faults and counters.

    Each request is answered by its own task holding its own PDU (pymodbus keeps only
    ``last_pdu``, which a SLOW reply would otherwise see overwritten).
    """

    def __init__(self, owner: Any, sim: ModbusTransmitterSim, *, serial: bool) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect
        )
        self.sim = sim
        self.serial = serial

    def callback_connected(self) -> None:
        super().callback_connected()
        if not self.serial:
            self.sim.connections += 1
            self.sim._handlers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim._handlers.discard(self)
        super().connection_lost(exc)

    def handle_later(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is not None:
            self.sim._spawn(self._respond(pdu, addr))

    async def _respond(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        sim = self.sim
        sim.requests_total += 1
        device = sim.devices.get(pdu.dev_id)
        if device is None:
            if not self.serial:
                self._send(ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE), pdu)
            return
        device.requests += 1
        fault = device.faults.take()
        if fault is Fault.NO_REPLY or (fault is Fault.DISCONNECT and self.serial):
            return
        if fault is Fault.DISCONNECT:
            self.close()
            self.sim._handlers.discard(self)
            return
        if fault is Fault.SLOW:
            await asyncio.sleep(device.faults.slow_s)
        if fault is Fault.DEVICE_ERROR:
            response: ModbusPDU = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        else:
            try:
                response = await pdu.datastore_update(self.server.context, pdu.dev_id)
            except Exception:
                response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        if fault is Fault.GARBAGE:
            self._send_garbage(response, pdu)
        else:
            self._send(response, pdu, addr)

    def _send(
        self, response: ModbusPDU, request: ModbusPDU, addr: tuple[Any, ...] | None = None
    ) -> None:
        if self.transport is None:
            return  # the client left meanwhile
        response.transaction_id = request.transaction_id
        response.dev_id = request.dev_id
        self.pdu_send(response, addr)

    def _send_garbage(self, response: ModbusPDU, request: ModbusPDU) -> None:
        if self.transport is None:
            return
        response.transaction_id = request.transaction_id
        response.dev_id = request.dev_id
        frame = bytearray(self.framer.buildFrame(response))
        if self.sim.garbage == "noise":
            frame = bytearray(self.sim.rng.randbytes(self.sim.rng.randint(8, 40)))
            if not self.serial:
                frame[2] |= 0x01  # protocol id high byte: never a Modbus TCP frame
        elif self.serial:
            frame[-1] ^= 0x5A  # a broken CRC
        else:
            junk = bytes([request.function_code, 0xFF]) + self.sim.rng.randbytes(3)
            header = (request.transaction_id, 0, 1 + len(junk), request.dev_id)
            frame = bytearray(struct.pack(">HHHB", *header) + junk)
        self.send(bytes(frame))


class _TcpServer(ModbusTcpServer):
    def __init__(self, sim: ModbusTransmitterSim, devices: list[SimDevice], port: int) -> None:
        super().__init__(devices, framer=FramerType.SOCKET, address=(sim.host, port))
        self.sim = sim

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.sim, serial=False)


class _PtyTransport(asyncio.Transport):
    """The master side of a pty as an asyncio transport (pyserial cannot open a master)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._fd = fd
        self._protocol = protocol
        self._closed = False
        loop.add_reader(fd, self._read_ready)
        loop.call_soon(protocol.connection_made, self)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if data:
            self._protocol.data_received(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                written = os.write(self._fd, view)
            except OSError:
                return  # nobody reads the line: the bytes are lost, as on a wire
            view = view[written:]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)

    def is_closing(self) -> bool:
        return self._closed

    def abort(self) -> None:
        self.close()


class _PtyServer(ModbusSerialServer):
    def __init__(
        self, sim: ModbusTransmitterSim, devices: list[SimDevice], master: int, path: str
    ) -> None:
        super().__init__(
            devices,
            framer=FramerType.RTU,
            port=path,
            baudrate=sim.baudrate,
            ignore_missing_devices=True,
        )
        self.sim = sim
        self._master = master
        self.call_create = self._create_pty

    async def _create_pty(self) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        protocol = self.handle_new_connection()
        return _PtyTransport(self.loop, self._master, protocol), protocol  # type: ignore[arg-type]

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.sim, serial=True)


class ModbusTransmitterSim:
    """Several Modbus pressure transmitters behind one TCP port and/or one pty.

    ``units``: the unit ids; ``word_order``: one for all or a mapping unit -> order;
    ``offsets``: each transmitter's error in the manifold's unit (default: a few tenths,
    drawn from ``seed``); ``manifold``: shared with the pressure controller simulator
    (a quiet one is made when None). ``tcp``/``rtu`` choose the transports.
    ``block_registers``: K > 0 adds K live int16 registers from :data:`BLOCK_ADDRESS`
    (a multi-channel instrument, for block reads).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tcp: bool = True,
        rtu: bool = False,
        units: Iterable[int] = (1, 2, 3),
        word_order: str | Mapping[int, str] = "ABCD",
        offsets: Mapping[int, float] | None = None,
        manifold: Manifold | None = None,
        baudrate: int = 19200,
        slow_s: float = 3.0,
        garbage: Literal["reply", "noise"] = "reply",
        seed: int | None = None,
        block_registers: int = 0,
    ) -> None:
        if not tcp and not rtu:
            raise ValueError("enable tcp, rtu or both")
        if not 0 <= block_registers <= MAX_BLOCK_REGISTERS:
            raise ValueError(f"block_registers must be in 0..{MAX_BLOCK_REGISTERS}")
        self.host = host
        self.port = port
        self.tcp = tcp
        self.rtu = rtu
        self.baudrate = baudrate
        self.garbage = garbage
        self.rng = random.Random(seed)
        self.manifold = manifold if manifold is not None else Manifold(seed=seed)
        self.devices: dict[int, Transmitter] = {}
        for unit in units:
            if not 1 <= unit <= 247:
                raise ValueError(f"unit id {unit} is not in 1..247")
            order = word_order if isinstance(word_order, str) else word_order.get(unit, "ABCD")
            if order not in WORD_ORDERS:
                raise ValueError(f"word order {order!r} is not one of {WORD_ORDERS}")
            offset = (
                offsets[unit]
                if offsets is not None and unit in offsets
                else round(self.rng.uniform(-0.5, 0.5), 3)
            )
            self.devices[unit] = Transmitter(
                unit, order, offset, Faults(slow_s=slow_s), block_registers=block_registers
            )
        self.connections = 0  # TCP connections accepted since construction
        self.requests_total = 0
        self._handlers: set[_Handler] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_server: _TcpServer | None = None
        self._pty_server: _PtyServer | None = None
        self._pty: tuple[int, int, str] | None = None

    @property
    def faults(self) -> dict[int, Faults]:
        return {unit: device.faults for unit, device in self.devices.items()}

    @property
    def active_connections(self) -> int:
        """Open TCP connections."""
        return len(self._handlers)

    def set_nan(self, unit: int) -> None:
        self.devices[unit].override = math.nan

    def set_inf(self, unit: int, *, negative: bool = False) -> None:
        self.devices[unit].override = -math.inf if negative else math.inf

    def clear_value(self, unit: int) -> None:
        self.devices[unit].override = None

    def endpoints(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self._tcp_server is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            out["tcp"] = f"tcp://{host}:{self.port}"
        if self._pty is not None:
            out["rtu"] = f"rtu://{self._pty[2]}?baudrate={self.baudrate}"
        return out

    async def _action(
        self,
        device: Transmitter,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code in (3, 4) and address < _LIVE_REGISTERS and start_address == 0:
            pressure = self.manifold.pressure() + device.offset
            device.last_pressure = pressure
            registers[0:_LIVE_REGISTERS] = device.live_registers(pressure)
        k = device.block_registers
        if (
            k
            and function_code in (3, 4)
            and address < BLOCK_ADDRESS + k
            and address + count > BLOCK_ADDRESS
        ):
            pressure = self.manifold.pressure() + device.offset
            device.last_pressure = pressure
            first = BLOCK_ADDRESS - start_address
            registers[first : first + k] = device.block_values(pressure)
        return None

    def _simdevices(self) -> list[SimDevice]:
        return [device.simdevice(partial(self._action, device)) for device in self.devices.values()]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="modbus-sim reply")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Serve; OSError when the TCP port cannot be bound."""
        if self.tcp and self._tcp_server is None:
            server = _TcpServer(self, self._simdevices(), self.port)
            try:
                await server.serve_forever(background=True)
            except RuntimeError as exc:  # pymodbus: "Could not start listen"
                raise OSError(f"cannot listen on {self.host}:{self.port}") from exc
            listener: Any = server.transport
            self.port = int(listener.sockets[0].getsockname()[1])
            self._tcp_server = server
        if self.rtu and self._pty_server is None:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
            self._pty = (master, slave, path)
            pty_server = _PtyServer(self, self._simdevices(), master, path)
            await pty_server.serve_forever(background=True)
            self._pty_server = pty_server

    async def stop(self) -> None:
        """Stop serving (the TCP port is kept for a later :meth:`start`; the pty is freed)."""
        if self._tcp_server is not None:
            await self._tcp_server.shutdown()  # type: ignore[no-untyped-call]
            self._tcp_server = None
        if self._pty_server is not None:
            await self._pty_server.shutdown()  # type: ignore[no-untyped-call]
            self._pty_server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for handler in list(self._handlers):
            handler.close()
        self._handlers.clear()
        if self._pty is not None:
            master, slave, _path = self._pty
            self._pty = None
            for fd in (master, slave):
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
