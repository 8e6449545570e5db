"""A lean Modbus TCP client: one asyncio Protocol, function codes 3 and 4 only.

Why not pymodbus's ``AsyncModbusTcpClient``: it costs about twice the CPU per request of
a bare asyncio Protocol (bench/README.md), in a budget of about 100 µs per value. Reading registers needs very little of Modbus: MBAP framing
(transaction id, protocol id 0, length, unit id), two request PDUs, one response shape
and the exception response. That is this module, about a hundred lines:

- every request gets the next transaction id, a deadline and a future (:meth:`read_registers`)
  or a callback (:meth:`request`, for polls started from a timer callback); one timer per
  connection (armed for the earliest deadline, re-armed when it fires) fails the
  requests past theirs: no timer created and cancelled per request (``call_later`` and
  ``cancel`` cost more than the rest of a request's bookkeeping). A reply resolves the
  future of its transaction id; a reply for an unknown id (one that arrived after its
  timeout) is dropped;
- a reply that cannot be framed (protocol id not 0, impossible length) desynchronises
  the byte stream: every pending request fails with FrameError and the connection is
  closed, so the next poll reconnects; so does an incomplete reply that stays incomplete
  for a whole request timeout (a header announcing more bytes than the device sent:
  every later reply would be read as the rest of it): a request whose deadline passes
  while such a reply is in the buffer waits for the rest until the reply is a whole
  timeout old (at most one more timeout), then fails with that FrameError; a framed
  reply with a bad PDU fails only its own request;
- the parsing (:func:`split_adus`, :func:`parse_read_pdu`) is pure, so it is tested and
  fuzzed without a socket.

Errors are the driver tree's: ConnectError (refused, closed), DeviceTimeout, FrameError,
DeviceError (a Modbus exception response; ``.code`` is the exception code).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from functools import partial
from typing import cast

from drivers.errors import ConnectError, DeviceError, DeviceTimeout, DriverError, FrameError

__all__ = [
    "EXCEPTION_MESSAGES",
    "ModbusTcpClient",
    "exception_message",
    "parse_read_pdu",
    "split_adus",
]

#: Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
EXCEPTION_MESSAGES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_REQUEST = struct.Struct(">HHHBBHH")  # MBAP + function code, address, count
_MAX_LENGTH = 254  # unit id + PDU (at most 253 bytes)

#: A request's callback: the register bytes, or the DriverError that ended the request.
Reply = Callable[[bytes | DriverError], None]


def exception_message(code: int) -> str:
    return EXCEPTION_MESSAGES.get(code, f"exception code {code}")


def exception_error(function_code: int, code: int) -> DeviceError:
    """The DeviceError for a Modbus exception response."""
    return DeviceError(
        f"modbus exception {code} ({exception_message(code)}) to function {function_code}",
        code=code,
    )


def split_adus(buffer: bytes | bytearray) -> tuple[list[tuple[int, int, bytes]], int]:
    """Complete ADUs at the front of ``buffer``: ``([(tid, unit, pdu), ...], bytes used)``.

    Raises FrameError when the stream cannot be framed (the connection must be dropped).
    """
    adus: list[tuple[int, int, bytes]] = []
    pos = 0
    size = len(buffer)
    while size - pos >= 7:
        tid, protocol, length, unit = _MBAP.unpack_from(buffer, pos)
        if protocol != 0 or not 2 <= length <= _MAX_LENGTH:
            raise FrameError(
                f"not a Modbus TCP frame (protocol id {protocol}, length {length})",
                frame=bytes(buffer[pos : pos + 12]),
            )
        end = pos + 6 + length
        if end > size:
            break
        adus.append((tid, unit, bytes(buffer[pos + 7 : end])))
        pos = end
    return adus, pos


def parse_read_pdu(pdu: bytes, function_code: int, count: int) -> bytes:
    """The register bytes (``2 * count``, big-endian words) of a read response PDU.

    DeviceError for an exception response, FrameError for anything else unexpected.
    """
    if not pdu:
        raise FrameError("empty PDU", frame=pdu)
    got = pdu[0]
    if got == function_code | 0x80:
        if len(pdu) != 2:
            raise FrameError("malformed exception response", frame=pdu)
        raise exception_error(function_code, pdu[1])
    if got != function_code:
        raise FrameError(f"function code {got} in reply to {function_code}", frame=pdu)
    nbytes = 2 * count
    if len(pdu) != nbytes + 2 or pdu[1] != nbytes:
        raise FrameError(
            f"expected {nbytes} register bytes, got byte count {pdu[1] if len(pdu) > 1 else None} "
            f"and {len(pdu) - 2} bytes",
            frame=pdu,
        )
    return pdu[2:]


class ModbusTcpClient(asyncio.Protocol):
    """One TCP connection to a Modbus server or gateway; requests may be pipelined.

    Connect once: after the connection is lost, make a new client.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._tid = 0
        # tid -> (reply callback, function code, count, unit, deadline (loop time), timeout_s)
        self._pending: dict[int, tuple[Reply, int, int, int, float, float]] = {}
        self._timer: asyncio.TimerHandle | None = None  # fires at ``_timer_at``
        self._timer_at = 0.0
        self._partial_at = 0.0  # loop time the bytes now in ``_buffer`` began to wait

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self, timeout_s: float) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._buffer.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: self, self.host, self.port)
        except TimeoutError as exc:
            raise ConnectError(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._fail_all(lambda: ConnectError("connection closed"))

    def read_registers(
        self, unit: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> asyncio.Future[bytes]:
        """Send one read request; the future gives the register bytes or a DriverError."""
        loop = self._loop
        if loop is None:
            raise ConnectError(f"not connected to {self.host}:{self.port}")
        future: asyncio.Future[bytes] = loop.create_future()
        self.request(unit, function_code, address, count, timeout_s, partial(_settle, future))
        return future

    def request(
        self,
        unit: int,
        function_code: int,
        address: int,
        count: int,
        timeout_s: float,
        reply: Reply,
    ) -> None:
        """Send one read request; ``reply`` is called once, from the loop, with the
        register bytes or a DriverError (and must not raise). ConnectError at once when
        not connected."""
        transport = self._transport
        loop = self._loop
        if transport is None or loop is None or transport.is_closing():
            raise ConnectError(f"not connected to {self.host}:{self.port}")
        tid = self._tid = self._tid + 1 if self._tid < 0xFFFF else 1
        transport.write(_REQUEST.pack(tid, 0, 6, unit, function_code, address, count))
        deadline = loop.time() + timeout_s
        old = self._pending.pop(tid, None)
        if old is not None:  # 65535 outstanding: the oldest is long dead
            old[0](DeviceTimeout("transaction id reused"))
        self._pending[tid] = (reply, function_code, count, unit, deadline, timeout_s)
        if self._timer is None or deadline < self._timer_at:
            self._arm(loop, deadline)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance)
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._disarm()
        self._fail_all(lambda: ConnectError(f"connection to {self.host}:{self.port} lost"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer and len(data) >= 9:
            # the usual: the chunk is exactly one whole reply (no buffering, no splitting)
            tid, protocol, length, unit = _MBAP.unpack_from(data)
            if protocol == 0 and length == len(data) - 6 and length <= _MAX_LENGTH:
                self._answer(tid, unit, data[7:])
                return
        waiting = bool(buffer)
        buffer += data
        try:
            adus, used = split_adus(buffer)
        except FrameError as exc:
            self._out_of_step(exc.args[0], exc.frame)
            return
        del buffer[:used]
        if buffer and (used or not waiting) and self._loop is not None:
            self._partial_at = self._loop.time()  # a new incomplete reply begins to wait
        for tid, unit, pdu in adus:
            self._answer(tid, unit, pdu)

    def _out_of_step(self, message: str, frame: bytes) -> None:
        """The byte stream cannot be framed any more: fail every request, drop the link."""
        self._fail_all(lambda: FrameError(message, frame=frame))
        if self._transport is not None:
            self._transport.close()

    def _answer(self, tid: int, unit: int, pdu: bytes) -> None:
        """One framed reply to its request (a reply after its timeout is dropped)."""
        entry = self._pending.pop(tid, None)
        if entry is None:
            return
        reply, function_code, count, want_unit = entry[:4]
        try:
            if unit != want_unit:
                raise FrameError(f"reply from unit {unit} to unit {want_unit}", frame=pdu)
            data = parse_read_pdu(pdu, function_code, count)
        except DriverError as exc:
            reply(exc)
        else:
            reply(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    # internals

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        """The timer: fail the requests past their deadline, re-arm for the next one."""
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        pending = self._pending
        late = [tid for tid, entry in pending.items() if entry[4] <= now]
        buffer = self._buffer
        if late and buffer:
            # An incomplete reply is waiting. It began during the late requests' wait (or
            # before): they wait for its rest until it is a whole timeout old, and no
            # longer than a timeout past their deadline (a stream of split replies cannot
            # hold them for ever). Judged at the deadline alone, a header announcing more
            # bytes than follow costs one poll or two depending on the microseconds its
            # bytes took to arrive after the request.
            grace = min(pending[t][5] for t in late)
            due = min(self._partial_at, min(pending[t][4] for t in late)) + grace
            if now < due:
                self._arm(loop, min([due, *(e[4] for e in pending.values() if e[4] > now)]))
                return
            self._out_of_step(
                f"an incomplete reply ({len(buffer)} bytes) waited a whole timeout for the "
                "rest: the byte stream is out of step; reconnecting",
                bytes(buffer[:12]),
            )
            return
        for tid in late:
            reply, _fc, _count, unit, _deadline, timeout_s = pending.pop(tid)
            reply(DeviceTimeout(f"no reply from unit {unit} within {timeout_s} s"))
        if pending:
            self._arm(loop, min(entry[4] for entry in pending.values()))

    def _fail_all(self, error: Callable[[], DriverError]) -> None:
        pending, self._pending = self._pending, {}
        self._disarm()
        for entry in pending.values():
            entry[0](error())


def _settle(future: asyncio.Future[bytes], result: bytes | DriverError) -> None:
    """A request's reply into its future (unless the future was cancelled)."""
    if future.done():
        return
    if isinstance(result, DriverError):
        future.set_exception(result)
    else:
        future.set_result(result)
