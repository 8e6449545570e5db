"""Instrument I/O: transports and protocols that turn instrument replies into Readings."""

from drivers.base import DRIVERS, Bus, Buses, Driver, DriverConfig, Quality, Reading, now
from drivers.errors import ConnectError, DeviceError, DeviceTimeout, DriverError, FrameError

__all__ = [
    "DRIVERS",
    "Bus",
    "Buses",
    "ConnectError",
    "DeviceError",
    "DeviceTimeout",
    "Driver",
    "DriverConfig",
    "DriverError",
    "FrameError",
    "Quality",
    "Reading",
    "load_all",
    "now",
]


def load_all() -> dict[str, type[Driver]]:
    """Import every driver module so each registers itself in DRIVERS; return DRIVERS."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in {"base", "errors"} and not info.name.startswith("_"):
            importlib.import_module(f"drivers.{info.name}")
    return DRIVERS
