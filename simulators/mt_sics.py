"""A simulated Mettler Toledo balance speaking MT-SICS, and the weighing cell it shares
with the Sartorius simulator.

The load settles exponentially after each change (:class:`simulators.physics.SettlingValue`)
with white noise and optional drift; a weight is *stable* only once the load has
settled to within half a digit. Replies are formatted like a real balance: the value
rounded to the resolution ``d`` and right-aligned in a 10-character field, CR LF.

Scripting: ``place(mass)``, ``remove(mass=None)``, ``set_load(mass)`` (negative: the pan
lifted off, i.e. underload), more than capacity + 9 d is overload; ``faults`` arms
NO_REPLY, GARBAGE, SLOW, DISCONNECT or DEVICE_ERROR (replied as ``EL``).

Control over the line, for unattended calibration runs (not an MT-SICS command; a real
balance answers it ``ES``): ``SIMLOAD <mass>`` puts ``mass`` (in the balance's unit) on
the pan, as an operator placing a test load would, and replies ``SIMLOAD A``
(``SIMLOAD L`` for a mass that is not a number).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable

from simulators.faults import Faults
from simulators.physics import SettlingValue
from simulators.serial_server import SerialSimulator

__all__ = ["Balance", "MtSicsSim"]


class Balance:
    """A weighing cell: gross load, zero offset, tare, capacity and resolution ``d``."""

    def __init__(
        self,
        *,
        capacity: float = 220.0,
        resolution: float = 0.01,
        unit: str = "g",
        tau_s: float = 0.3,
        noise: float | None = None,
        drift_per_s: float = 0.0,
        zero_range: float = 0.02,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity <= 0 or resolution <= 0:
            raise ValueError("capacity and resolution must be positive")
        self.capacity = capacity
        self.d = resolution
        self.unit = unit
        self.zero_range = zero_range * capacity
        self.clock = clock
        self.decimals = max(0, -math.floor(math.log10(resolution) + 1e-9))
        self.load = SettlingValue(
            value=0.0,
            tau_s=tau_s,
            drift_per_s=drift_per_s,
            noise=noise if noise is not None else resolution / 5,
            clock=clock,
            rng=random.Random(seed),
        )
        self.zero_offset = 0.0
        self.tare_value = 0.0
        self._changed = clock()

    # -- scripting --------------------------------------------------------------------

    def set_load(self, mass: float) -> None:
        """The load on the pan becomes ``mass`` (it settles toward it)."""
        self.load.set_target(mass)
        self._changed = self.clock()

    def place(self, mass: float) -> None:
        self.set_load(self.load.target + mass)

    def remove(self, mass: float | None = None) -> None:
        """Take ``mass`` off the pan (None: everything)."""
        self.set_load(0.0 if mass is None else self.load.target - mass)

    # -- what the balance sees --------------------------------------------------------

    def gross_true(self) -> float:
        return self.load.true_value() - self.zero_offset

    def net(self) -> float:
        """The net weight now, with noise, rounded to ``d``."""
        return self.round(self.load.read() - self.zero_offset - self.tare_value)

    def round(self, value: float) -> float:
        return round(round(value / self.d) * self.d, self.decimals)

    def fmt(self, value: float) -> str:
        return f"{value:.{self.decimals}f}"

    def stable(self) -> bool:
        drift = abs(self.load.drift_per_s) * (self.clock() - self._changed)
        return self.load.settled_within(self.d / 2 + drift)

    def overload(self) -> bool:
        return self.gross_true() > self.capacity + 9 * self.d

    def underload(self) -> bool:
        return self.gross_true() < -self.zero_range

    async def settle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a stable weight (how ``S``, ``Z`` and ``T`` behave)."""
        deadline = self.clock() + timeout_s
        while not self.stable():
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def do_zero(self) -> str:
        """Zero: ``A`` done, ``+``/``-`` outside the zero range."""
        load = self.load.true_value()
        if load > self.zero_range:
            return "+"
        if load < -self.zero_range:
            return "-"
        self.zero_offset = load
        self.tare_value = 0.0
        return "A"

    def do_tare(self) -> str:
        """Tare: ``S`` done, ``+``/``-`` over capacity or below zero."""
        gross = self.gross_true()
        if gross > self.capacity + 9 * self.d:
            return "+"
        if gross < -self.d / 2:
            return "-"
        self.tare_value = self.round(gross)
        return "S"


class BalanceSimulator(SerialSimulator):
    """A simulated balance on its own line: the weighing cell and the scripting of the pan,
    shared by the MT-SICS and SBI simulators (each adds its protocol)."""

    reply_terminator = b"\r\n"

    def __init__(
        self,
        *,
        capacity: float,
        resolution: float,
        unit: str,
        tau_s: float,
        noise: float | None,
        drift_per_s: float,
        host: str,
        port: int,
        tcp: bool,
        pty: bool,
        faults: Faults | None,
        seed: int | None,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(host=host, port=port, tcp=tcp, pty=pty, faults=faults, seed=seed)
        self.balance = Balance(
            capacity=capacity,
            resolution=resolution,
            unit=unit,
            tau_s=tau_s,
            noise=noise,
            drift_per_s=drift_per_s,
            seed=seed,
            clock=clock,
        )

    def place(self, mass: float) -> None:
        self.balance.place(mass)

    def remove(self, mass: float | None = None) -> None:
        self.balance.remove(mass)

    def set_load(self, mass: float) -> None:
        self.balance.set_load(mass)


class MtSicsSim(BalanceSimulator):
    """An MT-SICS balance on a pty and/or TCP: ``S``, ``SI``, ``Z``, ``T``, ``I2``, ``I4``, ``@``."""

    reply_terminator = b"\r\n"

    def __init__(
        self,
        *,
        capacity: float = 220.0,
        resolution: float = 0.01,
        unit: str = "g",
        model: str = "XS205-SIM",
        serial: str = "B000000001",
        tau_s: float = 0.3,
        noise: float | None = None,
        drift_per_s: float = 0.0,
        stable_timeout_s: float = 1.5,
        host: str = "127.0.0.1",
        port: int = 0,
        tcp: bool = True,
        pty: bool = True,
        faults: Faults | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            capacity=capacity, resolution=resolution, unit=unit, tau_s=tau_s, noise=noise,
            drift_per_s=drift_per_s, host=host, port=port, tcp=tcp, pty=pty, faults=faults,
            seed=seed, clock=clock,
        )  # fmt: skip
        self.model = model
        self.serial = serial
        self.stable_timeout_s = stable_timeout_s

    # -- LineDevice -------------------------------------------------------------------

    def claims(self, command: bytes) -> bool:
        return command[:1] not in (b":", b"*", b"\x1b")

    def device_error(self, command: bytes) -> bytes | None:
        return b"EL"

    def _weight(self, status: str) -> bytes:
        b = self.balance
        return f"S {status} {b.fmt(b.net()):>10} {b.unit}".encode()

    async def handle(self, command: bytes) -> bytes | None:
        try:
            text = command.decode("ascii").strip()
        except UnicodeDecodeError:
            return b"ET"
        b = self.balance
        if text.startswith("SIMLOAD "):
            try:
                mass = float(text.split(None, 1)[1])
            except ValueError:
                return b"SIMLOAD L"
            if not math.isfinite(mass):
                return b"SIMLOAD L"
            b.set_load(mass)
            return b"SIMLOAD A"
        if text in ("S", "SI"):
            if b.overload():
                return b"S +"
            if b.underload():
                return b"S -"
            if text == "SI":
                return self._weight("S" if b.stable() else "D")
            if not await b.settle(self.stable_timeout_s):
                return b"S I"
            return self._weight("S")
        if text == "Z":
            if not await b.settle(self.stable_timeout_s):
                return b"Z I"
            return f"Z {b.do_zero()}".encode()
        if text == "T":
            if not b.overload() and not await b.settle(self.stable_timeout_s):
                return b"T I"
            status = b.do_tare()
            if status != "S":
                return f"T {status}".encode()
            return f"T S {b.fmt(b.tare_value):>10} {b.unit}".encode()
        if text == "I2":
            return f'I2 A "{self.model} {b.fmt(b.capacity)} {b.unit}"'.encode()
        if text in ("I4", "@"):
            if text == "@":
                b.tare_value = 0.0
            return f'I4 A "{self.serial}"'.encode()
        return b"ES"
