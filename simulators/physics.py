"""Plausible physical behaviour for the simulated instruments.

Values are computed lazily from the clock (no background task): a first-order settling
toward a target, a slow linear drift, and Gaussian noise. The pressure manifold is one
object that the simulated pressure controller drives and the simulated Modbus
transmitters read, so a transmitter and the controller can be compared.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Manifold", "SettlingValue"]


@dataclass
class SettlingValue:
    """A quantity that settles exponentially toward ``target`` after each change.

    ``tau_s`` is the time constant; ``drift_per_s`` a slow linear drift; ``noise`` the
    standard deviation of white noise added to each read. ``settled_within`` tells a
    balance whether its reading is stable.
    """

    value: float = 0.0
    tau_s: float = 0.5
    drift_per_s: float = 0.0
    noise: float = 0.0
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _target: float = field(init=False)
    _start: float = field(init=False)
    _t0: float = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._target = self._start = self.value
        self._t0 = self.clock()

    def set_target(self, target: float) -> None:
        with self._lock:
            now = self.clock()
            self._start = self._true(now)
            self._target = target
            self._t0 = now

    @property
    def target(self) -> float:
        return self._target

    def _true(self, now: float) -> float:
        dt = max(0.0, now - self._t0)
        settle = math.exp(-dt / self.tau_s) if self.tau_s > 0 else 0.0
        return self._target + (self._start - self._target) * settle + self.drift_per_s * dt

    def true_value(self) -> float:
        with self._lock:
            return self._true(self.clock())

    def read(self) -> float:
        """The value now, with noise."""
        v = self.true_value()
        return v + (self.rng.gauss(0.0, self.noise) if self.noise > 0 else 0.0)

    def settled_within(self, tolerance: float) -> bool:
        return abs(self.true_value() - self._target) <= tolerance


class Manifold:
    """A pressure manifold (in its own unit, default mbar) that a controller slews.

    The controller sets a ``setpoint`` and turns its output on; the pressure then slews
    toward the setpoint at ``slew_per_s`` (linear, then settles). With the output off the
    pressure relaxes to ``ambient``. Every transmitter on the manifold reads ``pressure()``.
    """

    def __init__(
        self,
        *,
        ambient: float = 1013.25,
        slew_per_s: float = 200.0,
        noise: float = 0.02,
        unit: str = "mbar",
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.unit = unit
        self.ambient = ambient
        self.slew_per_s = slew_per_s
        self.noise = noise
        self.clock = clock
        self.rng = random.Random(seed)
        self._lock = threading.Lock()
        self._p0 = ambient
        self._t0 = clock()
        self._setpoint = ambient
        self._output = False

    def _target(self) -> float:
        return self._setpoint if self._output else self.ambient

    def _true(self, now: float) -> float:
        target = self._target()
        dp = target - self._p0
        travel = self.slew_per_s * max(0.0, now - self._t0)
        if abs(dp) <= travel:
            return target
        return self._p0 + math.copysign(travel, dp)

    def _rebase(self) -> None:
        now = self.clock()
        self._p0 = self._true(now)
        self._t0 = now

    @property
    def setpoint(self) -> float:
        return self._setpoint

    @setpoint.setter
    def setpoint(self, value: float) -> None:
        with self._lock:
            self._rebase()
            self._setpoint = value

    @property
    def output(self) -> bool:
        return self._output

    @output.setter
    def output(self, on: bool) -> None:
        with self._lock:
            self._rebase()
            self._output = on

    def true_pressure(self) -> float:
        with self._lock:
            return self._true(self.clock())

    def pressure(self) -> float:
        """The pressure now, with the manifold's noise."""
        p = self.true_pressure()
        return p + (self.rng.gauss(0.0, self.noise) if self.noise > 0 else 0.0)

    def in_limits(self, tolerance: float) -> bool:
        return abs(self.true_pressure() - self._target()) <= tolerance
