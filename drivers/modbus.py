"""Modbus TCP and RTU instruments (pressure transmitters and the like), driver kind "modbus".

The register map comes from config (``[[equipment.channels]]``), so a new device model
is TOML, not code. At init the driver plans its requests (neighbouring registers of
one kind in one request, at most 125 registers, small holes allowed) and precomputes a
decoder per channel; a poll is then one request per group and one ``struct`` call per
value.

Word order is defined by register values (docs/internals/protocols.md): 123456.0 (0x47F12000) is
ABCD ``[0x47F1, 0x2000]``, CDAB ``[0x2000, 0x47F1]``, BADC ``[0xF147, 0x0020]``, DCBA
``[0x0020, 0xF147]``. The letters name bytes most significant first; for float64 the
same rule spans four registers: ABCD big-endian throughout, CDAB the registers in
reverse order, BADC the bytes swapped inside each register, DCBA both (little-endian).
16-bit types take AB (default; ABCD accepted as the same) or BA (bytes swapped).
Each value is decoded on its own (pymodbus's ``word_order="little"`` reverses a whole
multi-value list: the trap docs/internals/protocols.md warns about).

Transports: ``tcp://host[:502]`` uses the lean client of :mod:`drivers.modbus_tcp`;
``rtu:///dev/ttyUSB1?baudrate=19200&parity=E&bytesize=8&stopbits=1`` uses pymodbus's
``AsyncModbusSerialClient``, whose exceptions are translated in :class:`RtuLink` only
(pymodbus is imported when the first RTU link is made: a TCP-only gateway never loads it).
Equipment on one TCP gateway or one RS-485 port shares one connection and one lock
(``Bus``); RTU keeps an inter-frame gap of 3.5 character times by default.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers.base import (
    Bus,
    Buses,
    Driver,
    DriverConfig,
    Quality,
    Reading,
    now,
    unique_channel_names,
)
from drivers.errors import ConnectError, DeviceTimeout, DriverError, FrameError
from drivers.modbus_tcp import ModbusTcpClient, exception_error

__all__ = [
    "ChannelDecoder",
    "ModbusChannel",
    "ModbusConfig",
    "ModbusDriver",
    "RequestGroup",
    "RtuLink",
    "RtuTransport",
    "TcpTransport",
    "decode_registers",
    "parse_url",
    "plan_requests",
]

log = logging.getLogger(__name__)

RegisterKind = Literal["input", "holding"]
ValueType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA", "AB", "BA"]

#: registers per value and the struct code of each type
WIDTH: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}
_CODE = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
FUNCTION_CODE: dict[str, int] = {"holding": 3, "input": 4}
MAX_REGISTERS = 125  # per read request (Modbus spec)
_PYMODBUS_TIMEOUT_S = 60.0

# ---------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class TcpTransport:
    host: str
    port: int = 502

    def key(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RtuTransport:
    port: str
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "N"
    bytesize: int = 8
    stopbits: int = 1

    def key(self) -> str:
        return f"rtu://{self.port}"

    def char_time_s(self) -> float:
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baudrate

    def default_gap_s(self) -> float:
        """3.5 character times; fixed 1.75 ms above 19200 baud (Modbus over serial line, 2.5.1.1)."""
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * self.char_time_s()


def parse_url(url: str) -> TcpTransport | RtuTransport:
    """``tcp://host[:port]`` or ``rtu:///dev/tty...?baudrate=&parity=&bytesize=&stopbits=``."""
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        if not parts.hostname:
            raise ValueError(f"{url!r}: a tcp URL needs a host: tcp://host:502")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{url!r}: a tcp URL is tcp://host[:port], nothing after it")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{url!r}: bad port") from exc
        return TcpTransport(parts.hostname.lower(), 502 if port is None else port)
    if parts.scheme == "rtu":
        if parts.netloc or not parts.path:
            raise ValueError(f"{url!r}: an rtu URL is rtu:///dev/ttyUSB0?baudrate=19200")
        settings: dict[str, object] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if key in settings:
                raise ValueError(f"{url!r}: {key} given twice")
            if key == "parity":
                if value.upper() not in ("N", "E", "O"):
                    raise ValueError(f"{url!r}: parity must be N, E or O, not {value!r}")
                settings[key] = value.upper()
                continue
            limits = {"baudrate": (50, 4_000_000), "bytesize": (7, 8), "stopbits": (1, 2)}
            if key not in limits:
                raise ValueError(
                    f"{url!r}: unknown setting {key!r} (baudrate, parity, bytesize, stopbits)"
                )
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"{url!r}: {key} must be an integer, not {value!r}") from None
            low, high = limits[key]
            if not low <= number <= high:
                raise ValueError(f"{url!r}: {key} must be in {low}..{high}, not {number}")
            settings[key] = number
        return RtuTransport(parts.path, **settings)  # type: ignore[arg-type]
    raise ValueError(f"{url!r}: the scheme must be tcp:// or rtu://")


class ModbusChannel(BaseModel):
    """One value of the instrument: where it is and how to decode it.

    In TOML the register kind is ``register``; in Python it is ``register_kind``
    (``register`` would shadow a pydantic attribute).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    register_kind: RegisterKind = Field(default="holding", alias="register")
    type: ValueType
    address: int = Field(ge=0, le=65535)
    word_order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""

    @field_validator("scale", "offset")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, address: int, info: ValidationInfo) -> int:
        kind = info.data.get("type")
        if kind is not None and address + WIDTH[kind] - 1 > 65535:
            raise ValueError(f"{kind} at address {address} runs past register 65535")
        return address

    @field_validator("word_order")
    @classmethod
    def _word_order(cls, word_order: WordOrder, info: ValidationInfo) -> WordOrder:
        kind = info.data.get("type")
        if kind is None:
            return word_order
        width = WIDTH[kind]
        if width == 1 and word_order not in ("AB", "BA", "ABCD"):
            raise ValueError(
                f"{word_order} needs a 32- or 64-bit type; {kind} is one register: "
                "use AB (the default) or BA (bytes swapped)"
            )
        if width > 1 and word_order in ("AB", "BA"):
            raise ValueError(
                f"{word_order} is for 16-bit types; {kind} spans {width} registers: "
                "use ABCD, CDAB, BADC or DCBA"
            )
        return word_order

    @property
    def width(self) -> int:
        return WIDTH[self.type]


class ModbusConfig(DriverConfig):
    """``driver = "modbus"``: one Modbus device (unit id) behind a TCP or RTU URL."""

    driver: Literal["modbus"] = "modbus"
    url: str
    unit: int = Field(default=1, ge=0, le=255)
    gap_s: float | None = Field(default=None, ge=0, le=10)
    max_registers: int = Field(default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    max_hole: int = Field(default=4, ge=0, le=MAX_REGISTERS)
    channels: tuple[ModbusChannel, ...]

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_url(value)
        return value

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, channels: tuple[ModbusChannel, ...]) -> tuple[ModbusChannel, ...]:
        return unique_channel_names(channels)

    @model_validator(mode="after")
    def _check(self) -> ModbusConfig:
        if isinstance(self.transport, RtuTransport) and not 1 <= self.unit <= 247:
            raise ValueError(f"unit {self.unit}: an RTU unit id is 1..247")
        return self

    @property
    def transport(self) -> TcpTransport | RtuTransport:
        return parse_url(self.url)

    @property
    def effective_gap_s(self) -> float:
        if self.gap_s is not None:
            return self.gap_s
        transport = self.transport
        return transport.default_gap_s() if isinstance(transport, RtuTransport) else 0.0

    def bus_key(self) -> str:
        """The normalised URL without serial settings: one TCP gateway or one serial port."""
        return self.transport.key()


# ---------------------------------------------------------------------------- decoding

_NO_FLAGS: frozenset[str] = frozenset()
_NAN_FLAGS = frozenset({"nan"})
_OVERFLOW_FLAGS = frozenset({"overflow"})
_UNDERFLOW_FLAGS = frozenset({"underflow"})


def _byte_permutation(width: int, word_order: str) -> tuple[int, ...] | None:
    """Wire byte index for each big-endian byte, or None when struct can read directly."""
    if word_order in ("ABCD", "AB", "DCBA", "BA"):
        return None  # big-endian or fully little-endian: a struct format reads it
    nbytes = 2 * width
    order: list[int] = []
    words = range(width)
    # big-endian word index w holds value bytes 2w, 2w+1 (most significant first)
    wire_words = list(reversed(words)) if word_order == "CDAB" else list(words)
    for wire_word in wire_words:
        first, second = 2 * wire_word, 2 * wire_word + 1
        order.extend((second, first) if word_order == "BADC" else (first, second))
    # ``order[k]`` is the wire byte position of value byte k
    assert len(order) == nbytes
    return tuple(order)


class ChannelDecoder:
    """Decodes one channel's value from the register bytes of its request group."""

    __slots__ = (
        "_format",
        "_indices",
        "_start",
        "_unpack",
        "group",
        "name",
        "offset",
        "scale",
        "unit",
    )

    def __init__(
        self,
        *,
        name: str,
        type: ValueType,
        word_order: WordOrder,
        scale: float = 1.0,
        offset: float = 0.0,
        unit: str = "",
        group: int = 0,
        byte_offset: int = 0,
    ) -> None:
        self.name = name
        self.unit = unit
        self.scale = scale
        self.offset = offset
        self.group = group
        self._start = byte_offset
        code = _CODE[type]
        perm = _byte_permutation(WIDTH[type], word_order)
        little = word_order in ("DCBA", "BA")
        self._format = ("<" if little else ">") + code
        fmt = struct.Struct(self._format)
        self._unpack: Callable[..., tuple[float | int]]
        if perm is None:
            self._unpack = fmt.unpack_from
            self._indices: tuple[int, ...] | None = None
        else:
            self._unpack = fmt.unpack
            self._indices = tuple(byte_offset + i for i in perm)

    def decode(self, data: bytes) -> float | int:
        """The value as the device sent it (before scale and offset)."""
        indices = self._indices
        if indices is None:
            return self._unpack(data, self._start)[0]
        return self._unpack(bytes([data[i] for i in indices]))[0]

    def value(self, data: bytes) -> tuple[float, frozenset[str], Literal["good", "bad"]]:
        """(scaled value, flags, quality): NaN is bad "nan", ±inf bad "overflow"/"underflow"."""
        raw = self.decode(data)
        if raw != raw:  # NaN
            return float(raw), _NAN_FLAGS, "bad"
        if raw == math.inf:
            return raw, _OVERFLOW_FLAGS, "bad"
        if raw == -math.inf:
            return raw, _UNDERFLOW_FLAGS, "bad"
        return raw * self.scale + self.offset, _NO_FLAGS, "good"


def decode_registers(registers: Sequence[int], type: ValueType, word_order: WordOrder) -> float:
    """Decode one value from its register values (as a Modbus reply lists them)."""
    if len(registers) != WIDTH[type]:
        raise ValueError(f"{type} needs {WIDTH[type]} registers, got {len(registers)}")
    data = struct.pack(f">{len(registers)}H", *registers)
    return ChannelDecoder(name="", type=type, word_order=word_order).decode(data)


@dataclass(frozen=True, slots=True)
class RequestGroup:
    """One read request: ``count`` registers from ``address`` with ``function_code``."""

    function_code: int
    address: int
    count: int


def plan_requests(
    channels: Sequence[ModbusChannel],
    *,
    max_registers: int = MAX_REGISTERS,
    max_hole: int = 4,
) -> tuple[list[RequestGroup], list[tuple[int, int]]]:
    """Group channels into requests; returns the groups and, per channel (in the given
    order), ``(group index, byte offset in the group's data)``.

    Neighbouring registers of one kind share a request while the request stays within
    ``max_registers`` and the gap between channels is at most ``max_hole`` registers.
    """
    groups: list[RequestGroup] = []
    places: list[tuple[int, int]] = [(0, 0)] * len(channels)
    for kind in ("input", "holding"):
        items = sorted(
            (c.address, c.width, i) for i, c in enumerate(channels) if c.register_kind == kind
        )
        # spans: [start, end, [(channel index, address), ...]]
        spans: list[tuple[int, int, list[tuple[int, int]]]] = []
        for address, width, i in items:
            if spans:
                start, end, members = spans[-1]
                stop = max(end, address + width)
                if address - end <= max_hole and stop - start <= max_registers:
                    spans[-1] = (start, stop, members)
                    members.append((i, address))
                    continue
            spans.append((address, address + width, [(i, address)]))
        for start, end, members in spans:
            for channel_index, address in members:
                places[channel_index] = (len(groups), 2 * (address - start))
            groups.append(RequestGroup(FUNCTION_CODE[kind], start, end - start))
    return groups, places


# ---------------------------------------------------------------------------- links


class Link(Protocol):
    """A shared connection (``Bus.resource``) that reads registers of any unit id."""

    @property
    def connected(self) -> bool: ...

    async def connect(self, timeout_s: float) -> None: ...

    def close(self) -> None: ...

    def read(
        self, unit: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> Awaitable[bytes]: ...


class TcpLink:
    """The lean Modbus TCP client behind the :class:`Link` interface.

    Each connection gets a fresh protocol object, so a late ``connection_lost`` of an
    old connection cannot fail the requests of the new one.
    """

    def __init__(self, transport: TcpTransport) -> None:
        self.transport = transport
        self.connects = 0
        self.client = ModbusTcpClient(transport.host, transport.port)

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def connect(self, timeout_s: float) -> None:
        self.client.close()
        client = ModbusTcpClient(self.transport.host, self.transport.port)
        await client.connect(timeout_s)
        self.client = client
        self.connects += 1

    def close(self) -> None:
        self.client.close()

    def read(
        self, unit: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> Awaitable[bytes]:
        # the client's future itself: no coroutine frame per request on the hot path
        return self.client.read_registers(unit, function_code, address, count, timeout_s)


class RtuLink:
    """pymodbus's AsyncModbusSerialClient; its exceptions are translated here and only here.

    pymodbus drops a reply with a bad CRC or an undecodable body silently and then
    times out; the bytes seen in the meantime (through ``trace_packet``) turn such a
    timeout into a FrameError carrying them.
    """

    def __init__(self, transport: RtuTransport) -> None:
        from pymodbus.client import AsyncModbusSerialClient
        from pymodbus.framer import FramerType

        self.transport = transport
        self.connects = 0
        self._rx = b""
        self._client = AsyncModbusSerialClient(
            transport.port,
            framer=FramerType.RTU,
            baudrate=transport.baudrate,
            bytesize=transport.bytesize,
            parity=transport.parity,
            stopbits=transport.stopbits,
            # each request is bounded by its driver's timeout_s (asyncio.timeout in read),
            # so pymodbus's own timer, shared by every unit on the port, stays out of the way
            timeout=_PYMODBUS_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,  # reconnect lazily on the next poll, never in the background
            trace_packet=self._trace,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx = data
        return data

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def connect(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                ok = await self._client.connect()
        except (TimeoutError, OSError, ValueError):  # ValueError: settings the port refuses
            ok = False
        if not ok:
            self._client.close()
            raise ConnectError(f"cannot open serial port {self.transport.port}")
        self.connects += 1

    def close(self) -> None:
        self._client.close()

    async def read(
        self, unit: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> bytes:
        from pymodbus.exceptions import ConnectionException, ModbusException

        self._rx = b""
        client = self._client
        try:
            async with asyncio.timeout(timeout_s):
                if function_code == 3:
                    response = await client.read_holding_registers(
                        address, count=count, device_id=unit
                    )
                else:
                    response = await client.read_input_registers(
                        address, count=count, device_id=unit
                    )
        except ConnectionException as exc:
            raise ConnectError(f"{self.transport.port}: {exc}") from exc
        except (TimeoutError, ModbusException) as exc:
            if not client.connected:
                raise ConnectError(f"{self.transport.port}: port closed") from exc
            if self._rx:
                raise FrameError(
                    f"unusable reply from unit {unit} on {self.transport.port}", frame=self._rx
                ) from exc
            raise DeviceTimeout(
                f"no reply from unit {unit} on {self.transport.port} within {timeout_s} s"
            ) from exc
        except OSError as exc:
            raise ConnectError(f"{self.transport.port}: {exc}") from exc
        if response.function_code & 0x7F != function_code:
            raise FrameError(
                f"function code {response.function_code} in reply to {function_code}",
                frame=self._rx,
            )
        if response.isError():
            raise exception_error(function_code, int(response.exception_code))
        registers = response.registers
        if len(registers) != count:
            raise FrameError(
                f"expected {count} registers from unit {unit}, got {len(registers)}",
                frame=self._rx,
            )
        try:
            return struct.pack(f">{count}H", *registers)
        except struct.error as exc:
            raise FrameError(f"bad register values from unit {unit}", frame=self._rx) from exc


# ---------------------------------------------------------------------------- driver


class ModbusDriver(Driver, kind="modbus"):
    """Polls the configured channels of one unit id: one request per register group."""

    Config = ModbusConfig

    def __init__(self, config: DriverConfig, *, buses: Buses | None = None) -> None:
        if not isinstance(config, ModbusConfig):
            raise TypeError(f"ModbusDriver needs a ModbusConfig, not {type(config).__name__}")
        super().__init__(config, buses=buses)
        self.modbus: ModbusConfig = config
        self._transport = config.transport
        self.bus: Bus = self.buses.get(config.bus_key(), gap_s=config.effective_gap_s)
        self.groups, places = plan_requests(
            config.channels, max_registers=config.max_registers, max_hole=config.max_hole
        )
        self.decoders = [
            ChannelDecoder(
                name=c.name,
                type=c.type,
                word_order=c.word_order,
                scale=c.scale,
                offset=c.offset,
                unit=c.unit,
                group=group,
                byte_offset=byte_offset,
            )
            for c, (group, byte_offset) in zip(config.channels, places, strict=True)
        ]
        self._requests = [(g.function_code, g.address, g.count) for g in self.groups]
        self._unpackers = _group_unpackers(self.decoders, len(self.groups))
        # one group whose struct gives every channel in config order: one call decodes all
        self._whole: Callable[[bytes], tuple[Any, ...]] | None = None
        if self._unpackers is not None and len(self._unpackers) == 1:
            unpack_from, order = self._unpackers[0]
            if order == list(range(len(self.decoders))):
                self._whole = unpack_from
        # per decoder: (name, unit, scale, offset), for the hot loop
        self._fields = [(d.name, d.unit, d.scale, d.offset) for d in self.decoders]
        self._joined = False
        self._ready: Link | None = None  # the bus's link, once checked and connected
        # poll_soon's state: the poll's callback, replies so far, client; fixed settings
        self._done: Callable[[list[Reading] | Exception], None] | None = None
        self._datas: list[bytes] = []
        self._client: ModbusTcpClient | None = None
        self._on_reply = self._reply
        self._unit, self._timeout_s = config.unit, config.timeout_s

    # life cycle: users of a bus share its link; the last one out closes it

    def _join(self) -> None:
        if not self._joined:
            self._joined = True
            self.bus.users += 1

    async def open(self) -> None:
        self._join()
        try:
            async with self.bus:
                await self._link()
        except DriverError as exc:
            exc.equipment = self.equipment
            raise

    async def close(self) -> None:
        if not self._joined:
            return
        self._joined = False
        self._ready = None
        bus = self.bus
        bus.users -= 1
        if bus.users <= 0 and bus.resource is not None:
            link: Link = bus.resource
            bus.resource = None
            link.close()

    async def _link(self) -> Link:
        """The bus's link, created on first use and reconnected lazily (bus lock held)."""
        link: Link | None = self.bus.resource
        if link is None:
            transport = self._transport
            link = TcpLink(transport) if isinstance(transport, TcpTransport) else RtuLink(transport)
            self.bus.resource = link
        elif (
            isinstance(link, RtuLink)
            and isinstance(self._transport, RtuTransport)
            and link.transport != self._transport
        ):
            raise ConnectError(
                f"{self._transport.port} is shared with different serial settings "
                f"({link.transport} vs {self._transport})"
            )
        if not link.connected:
            await link.connect(self.config.timeout_s)
            log.info("%s: connected to %s", self.equipment, self.bus.key)
        self._ready = link
        return link

    async def poll(self) -> list[Reading]:
        self._join()
        bus = self.bus
        try:
            if bus.gap_s > 0:
                async with bus:
                    datas = await self._read_all()
            else:  # no quiet time to keep: the bus's lock alone, the reads inline (hot path)
                lock = bus.lock
                await lock.acquire()
                try:
                    link = self._ready
                    if link is None or link is not bus.resource or not link.connected:
                        link = await self._link()
                    unit, timeout_s, requests = (
                        self.modbus.unit,
                        self.config.timeout_s,
                        self._requests,
                    )
                    if len(requests) == 1:
                        datas = [await link.read(unit, *requests[0], timeout_s)]
                    else:
                        datas = []
                        for fc, address, count in requests:
                            datas.append(await link.read(unit, fc, address, count, timeout_s))
                finally:
                    lock.release()
        except DriverError as exc:
            exc.equipment = self.equipment
            raise
        return self._readings(datas)

    def poll_soon(self, done: Callable[[list[Reading] | Exception], None]) -> bool:
        """:meth:`poll` from a callback (see :meth:`Driver.poll_soon`): on a connected
        Modbus TCP link with no gap to keep and the bus free; the groups one at a time.
        The poll's state lives on the driver (one poll at a time: its bus lock is held)."""
        link = self._ready
        bus = self.bus
        if (
            type(link) is not TcpLink
            or link is not bus.resource
            or bus.gap_s > 0
            or not link.connected
            or not bus.lock.try_acquire()
        ):
            return False
        client = self._client = link.client
        self._done = done
        self._datas = []
        try:
            self._request(client, 0)
        except DriverError:
            self._done = None
            bus.lock.release()
            return False  # the connection went since it was checked: poll() reconnects
        return True

    def _reply(self, result: bytes | DriverError) -> None:
        """A reply of :meth:`poll_soon`'s: the next group's request, or the poll's end."""
        done, client = self._done, self._client
        if done is None or client is None:
            return  # no poll waits for it (cannot happen: one reply per request)
        if type(result) is bytes:
            datas = self._datas
            datas.append(result)
            requests = self._requests
            if len(datas) < len(requests):
                try:
                    self._request(client, len(datas))
                except DriverError as exc:
                    self._reply(exc)
                return
            self._done = None
            self.bus.lock.release()
            try:
                readings = self._readings(datas)
            except Exception as exc:  # a bug: poll() would raise it too
                done(exc)
            else:
                done(readings)
        else:
            self._done = None
            self.bus.lock.release()
            assert isinstance(result, DriverError)
            result.equipment = self.equipment
            done(result)

    def _request(self, client: ModbusTcpClient, group: int) -> None:
        """Send request group ``group`` of a callback poll; its reply goes to _reply."""
        fc, address, count = self._requests[group]
        client.request(self._unit, fc, address, count, self._timeout_s, self._on_reply)

    def _readings(self, datas: list[bytes]) -> list[Reading]:
        """The Readings of one poll's replies (one per request group), stamped now."""
        t_wall, t_mono = now()
        self.recent_frames.extend(datas)
        whole = self._whole
        raws = whole(datas[0]) if whole is not None else self._decode(datas)
        equipment = self.config.id
        readings: list[Reading] = []
        make = Reading.make
        quality: Quality
        for raw, (name, unit_name, scale, offset) in zip(raws, self._fields):  # noqa: B905 - same length by construction
            if raw != raw:  # NaN
                value, flags, quality = float(raw), _NAN_FLAGS, "bad"
            elif raw == math.inf:
                value, flags, quality = raw, _OVERFLOW_FLAGS, "bad"
            elif raw == -math.inf:
                value, flags, quality = raw, _UNDERFLOW_FLAGS, "bad"
            else:
                value, flags, quality = raw * scale + offset, _NO_FLAGS, "good"
            readings.append(make(equipment, name, value, unit_name, t_wall, t_mono, flags, quality))
        return readings

    async def _read_all(self) -> list[bytes]:
        """One read per request group (bus lock held)."""
        link = self._ready
        if link is None or link is not self.bus.resource or not link.connected:
            link = await self._link()
        unit, timeout_s = self.modbus.unit, self.config.timeout_s
        datas = []
        for fc, address, count in self._requests:
            datas.append(await link.read(unit, fc, address, count, timeout_s))
        return datas

    def _decode(self, datas: list[bytes]) -> list[float | int]:
        """Every channel's value as sent (before scale and offset), in channel order."""
        unpackers = self._unpackers
        if unpackers is None:
            return [d.decode(datas[d.group]) for d in self.decoders]
        raws: list[float | int] = [0] * len(self.decoders)
        for group, (unpack_from, order) in enumerate(unpackers):
            for i, raw in zip(order, unpack_from(datas[group]), strict=True):
                raws[i] = raw
        return raws


def _group_unpackers(
    decoders: Sequence[ChannelDecoder], ngroups: int
) -> list[tuple[Callable[..., tuple[Any, ...]], list[int]]] | None:
    """Per request group, one ``struct`` that decodes all its channels at once (pad bytes
    over holes) and the channel index of each value; None when a group cannot be read
    so (words or bytes permuted, mixed byte orders, overlapping channels): each channel
    is then decoded on its own."""
    out = []
    for group in range(ngroups):
        members = sorted((d._start, i, d) for i, d in enumerate(decoders) if d.group == group)
        fmt, order, pos, endian = "", [], 0, ""
        for start, i, d in members:
            if d._indices is not None or start < pos:
                return None
            code = d._format
            if endian and code[0] != endian:
                return None
            endian = code[0]
            fmt += "x" * (start - pos) + code[1:]
            order.append(i)
            pos = start + struct.calcsize(code)
        if not members:
            return None
        unpack_from = struct.Struct(endian + fmt).unpack_from
        out.append((unpack_from, order))
    return out
