"""A simulated SCPI pressure controller (Druck PACE style) driving a shared Manifold.

``:SOUR:PRES <sp>`` sets the setpoint and ``:OUTP:STAT 1`` turns control on; the
:class:`~simulators.physics.Manifold` then slews toward the setpoint, and every reader
of the same manifold (``:SENS:PRES?`` here, the Modbus transmitter simulator elsewhere)
sees it move. Replies echo the header (``:SENS:PRES 1014.250``), terminator LF.

Errors go to a SCPI error queue read with ``:SYST:ERR?`` (``-113,"Undefined header"``,
``-222,"Data out of range"``…). A query this controller cannot answer gets an empty
reply line and an error in the queue, so a client that sees an unexpected reply can ask
why. A DEVICE_ERROR fault does exactly that with ``-310,"System error"``.

Commands accept the short and the long SCPI forms (``:SENSe:PRESsure?``), in any case.
"""

from __future__ import annotations

from collections import deque

from simulators.faults import Faults
from simulators.physics import Manifold
from simulators.serial_server import SerialSimulator

__all__ = ["PressureControllerSim"]

_PA_PER = {
    "PA": 1.0,
    "HPA": 100.0,
    "KPA": 1000.0,
    "MPA": 1e6,
    "MBAR": 100.0,
    "BAR": 1e5,
    "PSI": 6894.757293168,
    "INHG": 3386.389,
    "MMHG": 133.322387415,
    "TORR": 101325.0 / 760.0,
}
_SHORT = {
    "SENSE": "SENS",
    "PRESSURE": "PRES",
    "SOURCE": "SOUR",
    "OUTPUT": "OUTP",
    "STATE": "STAT",
    "SYSTEM": "SYST",
    "ERROR": "ERR",
    "INLIMITS": "INL",
}


def _short(header: str) -> str:
    """``:SENSe:PRESsure?`` -> ``:SENS:PRES?`` (uppercased, short forms)."""
    header = header.upper()
    query = header.endswith("?")
    parts = header.rstrip("?").split(":")
    out = ":".join(_SHORT.get(p, p) for p in parts)
    if out and not out.startswith((":", "*")):
        out = ":" + out
    return out + ("?" if query else "")


class PressureControllerSim(SerialSimulator):
    """A SCPI pressure controller on a pty and/or TCP."""

    reply_terminator = b"\n"

    def __init__(
        self,
        *,
        manifold: Manifold | None = None,
        unit: str | None = None,
        in_limits_tolerance: float = 0.5,
        range_min: float = 0.0,
        range_max: float = 2000.0,
        decimals: int = 3,
        idn: tuple[str, str, str, str] = ("CALGATE", "PACE5000-SIM", "SIM00001", "1.00"),
        host: str = "127.0.0.1",
        port: int = 0,
        tcp: bool = True,
        pty: bool = True,
        faults: Faults | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(host=host, port=port, tcp=tcp, pty=pty, faults=faults, seed=seed)
        self.manifold = manifold if manifold is not None else Manifold(seed=seed)
        if self.manifold.unit.upper() not in _PA_PER:
            raise ValueError(f"unknown manifold unit {self.manifold.unit!r}")
        self.unit = (unit or self.manifold.unit).upper()
        if self.unit not in _PA_PER:
            raise ValueError(f"unknown unit {unit!r}")
        self.in_limits_tolerance = in_limits_tolerance  # in the manifold's unit
        self.range_min = range_min  # setpoint range, in the manifold's unit
        self.range_max = range_max
        self.decimals = decimals
        self.idn = idn
        self.errors: deque[tuple[int, str]] = deque()
        self.max_errors = 10

    # -- units: the manifold's own <-> the displayed one -------------------------------

    def _to_display(self, value: float) -> float:
        return value * _PA_PER[self.manifold.unit.upper()] / _PA_PER[self.unit]

    def _from_display(self, value: float) -> float:
        return value * _PA_PER[self.unit] / _PA_PER[self.manifold.unit.upper()]

    def _fmt(self, value: float) -> str:
        return f"{self._to_display(value):.{self.decimals}f}"

    def push_error(self, code: int, message: str) -> None:
        if len(self.errors) >= self.max_errors:
            self.errors[-1] = (-350, "Queue overflow")
            return
        self.errors.append((code, message))

    # -- LineDevice -------------------------------------------------------------------

    def claims(self, command: bytes) -> bool:
        return command[:1] in (b":", b"*")

    def device_error(self, command: bytes) -> bytes | None:
        self.push_error(-310, "System error")
        return b"" if command.rstrip().endswith(b"?") else None

    async def handle(self, command: bytes) -> bytes | None:
        try:
            text = command.decode("ascii").strip()
        except UnicodeDecodeError:
            self.push_error(-101, "Invalid character")
            return None
        head, _, arg = text.partition(" ")
        arg = arg.strip()
        header = _short(head)
        query = header.endswith("?")
        reply = self._query(header) if query else self._command(header, arg)
        if reply is None and query:
            return b""  # the error is in the queue
        return reply

    def _query(self, header: str) -> bytes | None:
        m = self.manifold
        if header == "*IDN?":
            return ",".join(self.idn).encode()
        if header == ":SENS:PRES?":
            return f":SENS:PRES {self._fmt(m.pressure())}".encode()
        if header == ":SENS:PRES:INL?":
            ok = int(m.in_limits(self.in_limits_tolerance))
            return f":SENS:PRES:INL {self._fmt(m.pressure())}, {ok}".encode()
        if header == ":UNIT:PRES?":
            return f":UNIT:PRES {self.unit}".encode()
        if header == ":SOUR:PRES?":
            return f":SOUR:PRES {self._fmt(m.setpoint)}".encode()
        if header == ":OUTP:STAT?":
            return f":OUTP:STAT {int(m.output)}".encode()
        if header == ":SYST:ERR?":
            code, message = self.errors.popleft() if self.errors else (0, "No error")
            return f'{code},"{message}"'.encode()
        self.push_error(-113, "Undefined header")
        return None

    def _command(self, header: str, arg: str) -> bytes | None:
        m = self.manifold
        if header == "*RST":
            m.output = False
            m.setpoint = m.ambient
        elif header == "*CLS":
            self.errors.clear()
        elif header == ":SOUR:PRES":
            try:
                value = self._from_display(float(arg))
            except ValueError:
                self.push_error(-104, "Data type error")
                return None
            if not self.range_min <= value <= self.range_max:
                self.push_error(-222, "Data out of range")
                return None
            m.setpoint = value
        elif header == ":OUTP:STAT":
            state = {"1": True, "ON": True, "0": False, "OFF": False}.get(arg.upper())
            if state is None:
                self.push_error(-224, "Illegal parameter value")
                return None
            m.output = state
        elif header == ":UNIT:PRES":
            if arg.upper() not in _PA_PER:
                self.push_error(-224, "Illegal parameter value")
                return None
            self.unit = arg.upper()
        else:
            self.push_error(-113, "Undefined header")
        return None
