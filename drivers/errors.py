"""The driver exception tree (STYLE.md "Errors").

Each error subclasses the builtin a caller would naturally catch, so
``except TimeoutError`` or ``except ConnectionError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "DeviceError",
    "DeviceTimeout",
    "DriverError",
    "FrameError",
]


class DriverError(Exception):
    """Base of every error a driver raises; ``equipment`` names the instrument."""

    def __init__(self, message: str, *, equipment: str | None = None) -> None:
        super().__init__(message)
        self.equipment = equipment

    def __str__(self) -> str:
        base = super().__str__()
        return f"{self.equipment}: {base}" if self.equipment else base


class ConnectError(DriverError, ConnectionError):
    """The port, socket or server cannot be reached (unplugged, refused, closed)."""


class DeviceTimeout(DriverError, TimeoutError):
    """The instrument did not answer within ``timeout_s``."""


class FrameError(DriverError, ValueError):
    """An unparsable reply: the poll is skipped, the connection kept."""

    def __init__(self, message: str, *, frame: bytes = b"", equipment: str | None = None) -> None:
        super().__init__(message, equipment=equipment)
        self.frame = frame


class DeviceError(DriverError):
    """The instrument answered with an error (MT-SICS ``EL``, a Modbus exception...)."""

    def __init__(self, message: str, *, code: str | int, equipment: str | None = None) -> None:
        super().__init__(message, equipment=equipment)
        self.code = code
