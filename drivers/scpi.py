"""SCPI pressure controllers, Druck PACE style (docs/internals/protocols.md). Terminator LF.

A poll sends ``:SENS:PRES?`` — the reply echoes the header, ``:SENS:PRES 1014.25``, so
the number after the header is parsed, never the line — and, when ``in_limits`` is on
(the default), ``:SENS:PRES:INL?``, whose answer becomes a flag on the pressure reading:
``in_limits`` or ``not_in_limits`` (the controller has or has not settled at its
setpoint) as of that second query, a moment after the pressure was read. The reply's
last field is the 0/1 state; a pressure before it (``:SENS:PRES:INL 1014.25, 1``) is
accepted and ignored.

The unit is the configured ``unit``, or else asked once per connection with
``:UNIT:PRES?`` (``MBAR`` -> ``mbar``). SCPI's 9.91E37 (not a number) and ±9.9E37
(overrange) become bad readings flagged ``nan`` / ``overload`` / ``underload``.

When a reply is not what the command calls for, the driver asks ``:SYST:ERR?``: a
non-zero error becomes DeviceError with the SCPI error number as ``code``; no error
leaves the FrameError. Settings (``set_setpoint``, ``set_output``) have no reply and are
always followed by ``:SYST:ERR?``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Literal, TypeVar

from drivers.base import Reading, now
from drivers.errors import DeviceError, DeviceTimeout, FrameError
from drivers.serial_io import SerialConfig, SerialInstrument

__all__ = [
    "Identity",
    "ScpiPressure",
    "ScpiPressureConfig",
    "normalise_unit",
    "parse_error",
    "parse_idn",
    "parse_in_limits",
    "parse_pressure",
    "parse_unit",
]

T = TypeVar("T")

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_UNITS = {
    "MBAR": "mbar",
    "BAR": "bar",
    "PA": "Pa",
    "HPA": "hPa",
    "KPA": "kPa",
    "MPA": "MPa",
    "PSI": "psi",
    "INHG": "inHg",
    "MMHG": "mmHg",
    "TORR": "Torr",
    "INH2O": "inH2O",
}
SCPI_NAN = 9.91e37
SCPI_OVERRANGE = 9.9e37


def normalise_unit(text: str) -> str:
    """``MBAR`` -> ``mbar``; unknown units pass through unchanged."""
    return _UNITS.get(text.upper(), text)


def _text(line: bytes) -> str:
    if not line.endswith(b"\n"):
        raise FrameError("partial reply (no LF)", frame=line)
    body = line.rstrip(b"\r\n")
    if any(b < 0x20 or b > 0x7E for b in body):
        raise FrameError("not a printable ASCII reply", frame=line)
    return body.decode("ascii").strip()


def _after_header(line: bytes, header: str) -> str:
    """What follows ``header`` (matched case-insensitively, then whitespace)."""
    text = _text(line)
    head, _, rest = text.partition(" ")
    if head.upper() != header.upper() or not rest.strip():
        raise FrameError(f"expected a {header} reply", frame=line)
    return rest.strip()


def _number(text: str, line: bytes) -> float:
    if not _NUMBER.match(text):
        raise FrameError(f"not a number: {text!r}", frame=line)
    return float(text)


def parse_pressure(
    line: bytes,
    *,
    unit: str,
    equipment: str = "",
    channel: str = "pressure",
    header: str = ":SENS:PRES",
    at: tuple[datetime, float] | None = None,
) -> Reading:
    """A ``:SENS:PRES 1014.25`` reply as a Reading in ``unit``."""
    value = _number(_after_header(line, header), line)
    t_wall, t_mono = at if at is not None else now()
    flags: frozenset[str] = frozenset()
    quality: Literal["good", "bad"] = "good"
    if math.isclose(value, SCPI_NAN, rel_tol=1e-6):
        value, flags, quality = math.nan, frozenset({"nan"}), "bad"
    elif abs(value) >= SCPI_OVERRANGE:
        flags = frozenset({"overload" if value > 0 else "underload"})
        value, quality = math.nan, "bad"
    return Reading(
        equipment=equipment,
        channel=channel,
        raw=value,
        unit=unit,
        t_wall=t_wall,
        t_mono=t_mono,
        flags=flags,
        quality=quality,
    )


def parse_in_limits(line: bytes, *, header: str = ":SENS:PRES:INL") -> bool:
    """``:SENS:PRES:INL 1`` or ``:SENS:PRES:INL 1014.25, 1`` -> True."""
    fields = [f.strip() for f in _after_header(line, header).split(",")]
    if len(fields) == 2:
        _number(fields[0], line)
    elif len(fields) != 1:
        raise FrameError("in-limits reply needs '[<pressure>,] 0|1'", frame=line)
    if fields[-1] not in ("0", "1"):
        raise FrameError(f"in-limits state {fields[-1]!r} is not 0 or 1", frame=line)
    return fields[-1] == "1"


def parse_unit(line: bytes, *, header: str = ":UNIT:PRES") -> str:
    """``:UNIT:PRES MBAR`` -> ``mbar``."""
    text = _after_header(line, header)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,7}", text):
        raise FrameError(f"not a unit: {text!r}", frame=line)
    return normalise_unit(text)


_ERROR = re.compile(r'(?::SYST(?:em)?:ERR(?:or)?\s+)?([+-]?\d+)\s*,\s*"?([^"]*)"?\Z', re.IGNORECASE)


def parse_error(line: bytes) -> tuple[int, str]:
    """``0,"No error"`` or ``-113,"Undefined header"`` (an echoed header is allowed)."""
    match = _ERROR.match(_text(line))
    if match is None:
        raise FrameError("not a :SYST:ERR? reply", frame=line)
    return int(match.group(1)), match.group(2).strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """``*IDN?``: ``<maker>,<model>,<serial>,<firmware>``."""

    maker: str
    model: str
    serial: str
    firmware: str


def parse_idn(line: bytes) -> Identity:
    text = _text(line)
    if text.upper().startswith("*IDN "):
        text = text[5:]
    fields = [f.strip() for f in text.split(",")]
    if len(fields) != 4 or not fields[0] or not fields[1]:
        raise FrameError("*IDN? reply needs 4 comma-separated fields", frame=line)
    return Identity(maker=fields[0], model=fields[1], serial=fields[2], firmware=fields[3])


class ScpiPressureConfig(SerialConfig):
    """A SCPI pressure controller. ``unit`` None: ask ``:UNIT:PRES?``; ``in_limits``:
    add the in-limits flag to each reading (one more transaction per poll)."""

    driver: Literal["scpi-pressure"] = "scpi-pressure"
    unit: str | None = None
    in_limits: bool = True


class ScpiPressure(SerialInstrument, kind="scpi-pressure"):
    """A pressure controller over SCPI (serial, pty or ``socket://``)."""

    Config: ClassVar[type[ScpiPressureConfig]] = ScpiPressureConfig
    config: ScpiPressureConfig
    terminator: ClassVar[bytes] = b"\n"
    default_channel: ClassVar[str] = "pressure"

    _unit: str | None = None
    _unit_connection = -1

    async def poll(self) -> list[Reading]:
        async with self.bus:
            unit = await self._unit_locked()
            line = await self.transact(b":SENS:PRES?\n")
            reading = await self._parsed(
                line,
                lambda ln: parse_pressure(
                    ln, unit=unit, equipment=self.equipment, channel=self.channel
                ),
            )
            if self.config.in_limits:
                ok = await self._parsed(await self.transact(b":SENS:PRES:INL?\n"), parse_in_limits)
                flag = "in_limits" if ok else "not_in_limits"
                reading = dataclasses.replace(reading, flags=reading.flags | {flag})
        return [reading]

    async def identify(self) -> Identity:
        async with self.bus:
            return await self._parsed(await self.transact(b"*IDN?\n"), parse_idn)

    async def unit(self) -> str:
        """The pressure unit (configured, or asked once per connection)."""
        async with self.bus:
            return await self._unit_locked()

    async def setpoint(self) -> float:
        async with self.bus:
            line = await self.transact(b":SOUR:PRES?\n")
            return await self._parsed(line, lambda ln: _number(_after_header(ln, ":SOUR:PRES"), ln))

    async def set_setpoint(self, value: float) -> None:
        """``:SOUR:PRES <value>`` (in the controller's unit), then ``:SYST:ERR?``."""
        if not math.isfinite(value):
            raise ValueError(f"setpoint must be finite, not {value}")
        async with self.bus:
            await self.transact(f":SOUR:PRES {value:.10g}\n".encode(), reply=False)
            await self._check_error()

    async def set_output(self, on: bool) -> None:
        """``:OUTP:STAT 1|0``: control on or off (vent), then ``:SYST:ERR?``."""
        async with self.bus:
            await self.transact(b":OUTP:STAT 1\n" if on else b":OUTP:STAT 0\n", reply=False)
            await self._check_error()

    async def _unit_locked(self) -> str:
        if self.config.unit is not None:
            return self.config.unit
        connects = self.transport.connects
        if self._unit is None or self._unit_connection != connects:
            self._unit = await self._parsed(await self.transact(b":UNIT:PRES?\n"), parse_unit)
            self._unit_connection = self.transport.connects
        return self._unit

    async def _check_error(self) -> None:
        with self.tagged():
            code, message = parse_error(await self.transact(b":SYST:ERR?\n"))
        if code != 0:
            raise DeviceError(f"SCPI error {code}: {message}", code=code, equipment=self.equipment)

    async def _parsed(self, line: bytes, parse: Callable[[bytes], T]) -> T:
        """``parse(line)``; if the reply is unexpected, ask the error queue why."""
        try:
            with self.tagged():
                return parse(line)
        except FrameError as exc:
            try:
                with self.tagged():
                    code, message = parse_error(await self.transact(b":SYST:ERR?\n"))
            except (FrameError, DeviceTimeout):
                raise exc from None
            if code != 0:
                raise DeviceError(
                    f"SCPI error {code}: {message}", code=code, equipment=self.equipment
                ) from exc
            raise
