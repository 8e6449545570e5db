"""Mettler Toledo MT-SICS balances (docs/internals/protocols.md): ``S``/``SI`` weights, ``Z``, ``T``, ``I2``/``I4``.

ASCII, CR LF both ways, fields separated by spaces, the weight right-aligned in a
10-character field: replies are parsed on whitespace. The parse functions are pure
(bytes in, a Reading or a value out) and raise only FrameError (unparsable) or
DeviceError (the balance answered with an error; ``code`` is the MT-SICS status, e.g.
``"I"``, ``"+"``, ``"ES"``, ``"EL"``).

Weight replies: ``S S <value> <unit>`` stable (quality good), ``S D <value> <unit>``
dynamic (flag ``dynamic``, quality uncertain), ``S +`` / ``S -`` overload / underload
(raw = nan, quality bad), ``S I`` not executable (DeviceError code ``I``), ``ES`` /
``ET`` / ``EL`` syntax / transmission / logical error (DeviceError with that code).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Literal

from drivers.base import Reading, now
from drivers.errors import DeviceError, FrameError
from drivers.serial_io import SerialConfig, SerialInstrument

__all__ = [
    "BalanceIdentity",
    "MtSics",
    "MtSicsConfig",
    "parse_identity",
    "parse_tare",
    "parse_weight",
    "parse_zero",
    "split_i2",
]

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)\Z")
_UNIT = re.compile(r"[A-Za-z%/°µ][A-Za-z0-9%/°µ]{0,5}\Z")
_GENERAL_ERRORS = {"ES": "syntax error", "ET": "transmission error", "EL": "logical error"}


def _text(line: bytes) -> str:
    """The reply without its terminator; FrameError unless it is complete printable ASCII."""
    if not line.endswith(b"\r\n"):
        raise FrameError("partial reply (no CR LF)", frame=line)
    body = line[:-2]
    if not body or any(b < 0x20 or b > 0x7E for b in body):
        raise FrameError("not a printable ASCII reply", frame=line)
    return body.decode("ascii")


def _general_error(tokens: list[str], line: bytes) -> None:
    if len(tokens) == 1 and tokens[0] in _GENERAL_ERRORS:
        code = tokens[0]
        raise DeviceError(f"balance replied {code} ({_GENERAL_ERRORS[code]})", code=code)


def _number(text: str, line: bytes) -> float:
    if not _NUMBER.match(text):
        raise FrameError(f"not a number: {text!r}", frame=line)
    value = float(text)
    if not math.isfinite(value):
        raise FrameError(f"number out of range: {text[:20]!r}", frame=line)
    return value


def _unit(text: str, line: bytes) -> str:
    if not _UNIT.match(text):
        raise FrameError(f"not a unit: {text!r}", frame=line)
    return text


def parse_weight(
    line: bytes,
    *,
    equipment: str = "",
    channel: str = "weight",
    unit: str = "g",
    at: tuple[datetime, float] | None = None,
) -> Reading:
    """A reply to ``S`` or ``SI``. ``unit`` is used where the reply has none (overload)."""
    tokens = _text(line).split()
    _general_error(tokens, line)
    if not tokens or tokens[0] != "S":
        raise FrameError("not a weight reply", frame=line)
    t_wall, t_mono = at if at is not None else now()
    if len(tokens) == 2:
        status = tokens[1]
        if status in ("+", "-"):
            flag = "overload" if status == "+" else "underload"
            return Reading(
                equipment=equipment,
                channel=channel,
                raw=math.nan,
                unit=unit,
                t_wall=t_wall,
                t_mono=t_mono,
                flags=frozenset({flag}),
                quality="bad",
            )
        if status == "I":
            raise DeviceError("balance cannot execute the command now (S I)", code="I")
        raise FrameError(f"unknown weight status {status!r}", frame=line)
    if len(tokens) != 4 or tokens[1] not in ("S", "D"):
        raise FrameError("weight reply needs 'S S|D <value> <unit>'", frame=line)
    stable = tokens[1] == "S"
    return Reading(
        equipment=equipment,
        channel=channel,
        raw=_number(tokens[2], line),
        unit=_unit(tokens[3], line),
        t_wall=t_wall,
        t_mono=t_mono,
        flags=frozenset({"stable" if stable else "dynamic"}),
        quality="good" if stable else "uncertain",
    )


def _status_error(command: str, status: str, line: bytes) -> DeviceError:
    meaning = {
        "I": "not executable now",
        "+": "upper limit exceeded",
        "-": "lower limit exceeded",
    }.get(status)
    if meaning is None:
        raise FrameError(f"unknown {command} status {status!r}", frame=line)
    return DeviceError(f"{command} {status}: {meaning}", code=status)


def parse_zero(line: bytes) -> None:
    """A reply to ``Z``: ``Z A`` is success; ``Z I``/``Z +``/``Z -`` raise DeviceError."""
    tokens = _text(line).split()
    _general_error(tokens, line)
    if len(tokens) != 2 or tokens[0] != "Z":
        raise FrameError("not a zero reply", frame=line)
    if tokens[1] == "A":
        return
    raise _status_error("Z", tokens[1], line)


def parse_tare(line: bytes) -> tuple[float, str]:
    """A reply to ``T``: ``T S <tare> <unit>`` gives (tare, unit)."""
    tokens = _text(line).split()
    _general_error(tokens, line)
    if not tokens or tokens[0] != "T":
        raise FrameError("not a tare reply", frame=line)
    if len(tokens) == 2:
        raise _status_error("T", tokens[1], line)
    if len(tokens) != 4 or tokens[1] != "S":
        raise FrameError("tare reply needs 'T S <value> <unit>'", frame=line)
    return _number(tokens[2], line), _unit(tokens[3], line)


_QUOTED = re.compile(r'(I2|I4) A "([^"]*)"\Z')


def parse_identity(line: bytes, command: Literal["I2", "I4"]) -> str:
    """The quoted text of an ``I2 A "…"`` or ``I4 A "…"`` reply."""
    text = _text(line)
    tokens = text.split()
    _general_error(tokens, line)
    if tokens == [command, "I"]:
        raise DeviceError(f"{command} not executable now", code="I")
    match = _QUOTED.match(text)
    if match is None or match.group(1) != command:
        raise FrameError(f"not an {command} reply", frame=line)
    return match.group(2)


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceIdentity:
    """From ``I2`` (``"<model> <capacity> <unit>"``) and ``I4`` (``"<serial>"``)."""

    model: str
    capacity: float | None
    unit: str | None
    serial: str


def split_i2(text: str) -> tuple[str, float | None, str | None]:
    """``"XS205 220.0000 g"`` -> (model, capacity, unit); a model name may have spaces."""
    parts = text.rsplit(None, 2)
    if len(parts) == 3 and _NUMBER.match(parts[1]) and _UNIT.match(parts[2]):
        return parts[0], float(parts[1]), parts[2]
    return text.strip(), None, None


class MtSicsConfig(SerialConfig):
    """An MT-SICS balance. ``command`` is ``SI`` (weight now, stable or dynamic) or
    ``S`` (the balance waits for a stable weight: set ``timeout_s`` above its
    stabilisation time)."""

    driver: Literal["mt-sics"] = "mt-sics"
    command: Literal["S", "SI"] = "SI"


class MtSics(SerialInstrument, kind="mt-sics"):
    """A Mettler Toledo balance over MT-SICS (serial, pty or ``socket://``)."""

    Config: ClassVar[type[MtSicsConfig]] = MtSicsConfig
    config: MtSicsConfig
    terminator: ClassVar[bytes] = b"\r\n"
    default_channel: ClassVar[str] = "weight"

    _unit = "g"  # the last unit seen, for readings whose reply has none (overload)

    async def poll(self) -> list[Reading]:
        line = await self.query(self.config.command.encode() + b"\r\n")
        with self.tagged():
            reading = parse_weight(
                line, equipment=self.equipment, channel=self.channel, unit=self._unit
            )
        self._unit = reading.unit
        return [reading]

    async def zero(self) -> None:
        """``Z``: zero the balance (DeviceError if it is unstable or out of zero range)."""
        line = await self.query(b"Z\r\n")
        with self.tagged():
            parse_zero(line)

    async def tare(self) -> float:
        """``T``: tare the balance; returns the tare weight in the balance's unit."""
        line = await self.query(b"T\r\n")
        with self.tagged():
            value, unit = parse_tare(line)
        self._unit = unit
        return value

    async def identify(self) -> BalanceIdentity:
        """``I2`` then ``I4``: model, capacity, unit and serial number."""
        async with self.bus:
            i2 = await self.transact(b"I2\r\n")
            i4 = await self.transact(b"I4\r\n")
        with self.tagged():
            model, capacity, unit = split_i2(parse_identity(i2, "I2"))
            serial_no = parse_identity(i4, "I4")
        return BalanceIdentity(model=model, capacity=capacity, unit=unit, serial=serial_no)
