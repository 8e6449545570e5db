"""Fault injection shared by every simulator.

A test (or ``calgate simulate --fault``) arms a fault; the simulator asks ``take()`` before
each reply and acts on what it gets: answer nothing, answer garbage, answer late, drop
the connection, or answer with the protocol's device error.
"""

from __future__ import annotations

import enum
import threading

__all__ = ["Fault", "Faults"]


class Fault(enum.Enum):
    NO_REPLY = "no-reply"
    GARBAGE = "garbage"
    SLOW = "slow"
    DISCONNECT = "disconnect"
    DEVICE_ERROR = "device-error"


class Faults:
    """Armed faults: each applies to the next ``count`` replies (``None``: until cleared)."""

    def __init__(self, *, slow_s: float = 3.0) -> None:
        self.slow_s = slow_s
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._remaining: int | None = None

    def arm(self, fault: Fault | str, count: int | None = None) -> None:
        with self._lock:
            self._fault = Fault(fault)
            self._remaining = count

    def clear(self) -> None:
        with self._lock:
            self._fault = None
            self._remaining = None

    @property
    def armed(self) -> Fault | None:
        return self._fault

    def take(self) -> Fault | None:
        """The fault for this reply, if any, counting it down."""
        with self._lock:
            fault = self._fault
            if fault is None:
                return None
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._fault = None
                    self._remaining = None
            return fault
