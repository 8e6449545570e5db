"""Sartorius SBI balances (docs/internals/protocols.md): ``ESC P`` prints one weight frame.

Frame of 16 characters: position 1 sign (``+``, ``-`` or space), 2 space (or a bracket
marking non-verified digits), 3-10 the value right-aligned with its decimal point, 11
space (or bracket), 12-14 the unit — blank while the weight is unstable — and CR LF.
The 22-character variant prefixes a 6-character id code (``N     ``, ``G     ``…).

Status frames start with ``Stat``: ``H``/``HH`` overload, ``L``/``LL`` underload (raw =
nan, quality bad), ``C`` adjustment in progress and ``Err ###`` (DeviceError, code ``C``
or the error number). A value field reading ``High``/``Low`` (older 16-character
models) is taken as overload/underload too. (The exact placement of status codes in the
16-character format is unverified; the parser reads them on whitespace.)

Commands: ``ESC P`` print, ``ESC T`` tare, ``ESC V`` zero (no reply).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import ClassVar, Literal

from drivers.base import Reading, now
from drivers.errors import DeviceError, FrameError
from drivers.serial_io import Parity, SerialConfig, SerialInstrument

__all__ = ["Sbi", "SbiConfig", "parse_frame"]

ESC = b"\x1b"
_VALUE = re.compile(r"(?:\d+\.?\d*|\.\d+)\Z")
_UNIT = re.compile(r"[A-Za-z%/#][A-Za-z0-9%/#]{0,2}\Z")
_OVER = {"H", "HH", "High", "HIGH"}
_UNDER = {"L", "LL", "Low", "LOW"}


def _bad(equipment: str, channel: str, unit: str, flag: str, at: tuple[datetime, float]) -> Reading:
    return Reading(
        equipment=equipment,
        channel=channel,
        raw=math.nan,
        unit=unit,
        t_wall=at[0],
        t_mono=at[1],
        flags=frozenset({flag}),
        quality="bad",
    )


def parse_frame(
    line: bytes,
    *,
    equipment: str = "",
    channel: str = "weight",
    unit: str = "g",
    at: tuple[datetime, float] | None = None,
) -> Reading:
    """One 16- or 22-character SBI frame (with its CR LF). ``unit`` is the unit used
    when the frame has none (unstable weights, status frames)."""
    if not line.endswith(b"\r\n"):
        raise FrameError("partial frame (no CR LF)", frame=line)
    body = line[:-2]
    if len(body) not in (14, 20):
        raise FrameError(f"SBI frame of {len(line)} characters, expected 16 or 22", frame=line)
    if any(b < 0x20 or b > 0x7E for b in body):
        raise FrameError("not a printable ASCII frame", frame=line)
    text = body.decode("ascii")
    stamp = at if at is not None else now()

    if text.startswith("Stat"):
        tokens = text[4:].split()
        if len(tokens) == 1 and tokens[0] in _OVER:
            return _bad(equipment, channel, unit, "overload", stamp)
        if len(tokens) == 1 and tokens[0] in _UNDER:
            return _bad(equipment, channel, unit, "underload", stamp)
        if tokens == ["C"]:
            raise DeviceError("balance is adjusting (Stat C)", code="C")
        if len(tokens) == 2 and tokens[0] == "Err" and tokens[1].isdigit():
            raise DeviceError(f"balance error {tokens[1]}", code=int(tokens[1]))
        raise FrameError(f"unknown status frame {text!r}", frame=line)

    field = text[6:] if len(text) == 20 else text
    sign, value_text, unit_text = field[0], field[1:11], field[11:14]
    if sign not in "+- ":
        raise FrameError(f"bad sign {sign!r}", frame=line)
    value_text = value_text.replace("[", "").replace("]", "").strip()
    if value_text in _OVER:
        return _bad(equipment, channel, unit, "overload", stamp)
    if value_text in _UNDER:
        return _bad(equipment, channel, unit, "underload", stamp)
    if not _VALUE.match(value_text):
        raise FrameError(f"not a value: {value_text!r}", frame=line)
    raw = float(value_text)  # at most 10 characters: always finite
    if sign == "-":
        raw = -raw
    unit_text = unit_text.strip()
    if unit_text and not _UNIT.match(unit_text):
        raise FrameError(f"not a unit: {unit_text!r}", frame=line)
    stable = bool(unit_text)
    return Reading(
        equipment=equipment,
        channel=channel,
        raw=raw,
        unit=unit_text or unit,
        t_wall=stamp[0],
        t_mono=stamp[1],
        flags=frozenset({"stable" if stable else "dynamic"}),
        quality="good" if stable else "uncertain",
    )


class SbiConfig(SerialConfig):
    """A Sartorius balance in SBI mode; older models default to 1200 baud 7O1.
    ``unit`` is the balance's unit, used while the frame's unit field is blank."""

    driver: Literal["sartorius-sbi"] = "sartorius-sbi"
    baudrate: int = 1200
    bytesize: Literal[5, 6, 7, 8] = 7
    parity: Parity = "O"
    stopbits: Literal[1, 2] = 1
    unit: str = "g"


class Sbi(SerialInstrument, kind="sartorius-sbi"):
    """A Sartorius balance over SBI (serial, pty or ``socket://``)."""

    Config: ClassVar[type[SbiConfig]] = SbiConfig
    config: SbiConfig
    terminator: ClassVar[bytes] = b"\r\n"
    default_channel: ClassVar[str] = "weight"

    async def poll(self) -> list[Reading]:
        line = await self.query(ESC + b"P\r\n")
        with self.tagged():
            return [
                parse_frame(
                    line, equipment=self.equipment, channel=self.channel, unit=self.config.unit
                )
            ]

    async def tare(self) -> None:
        """``ESC T``: tare (SBI sends no acknowledgement)."""
        async with self.bus:
            await self.transact(ESC + b"T\r\n", reply=False)

    async def zero(self) -> None:
        """``ESC V``: zero (SBI sends no acknowledgement)."""
        async with self.bus:
            await self.transact(ESC + b"V\r\n", reply=False)
