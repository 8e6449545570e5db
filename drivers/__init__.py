"""Instrument I/O: transports and protocols that turn instrument replies into Readings."""

from drivers.base import DRIVERS, Bus, Buses, Driver, DriverConfig, Quality, Reading, now
from drivers.errors import ConnectError, DeviceError, DeviceTimeout, DriverError, FrameError

__all__ = [
    "DRIVERS",
    "KINDS",
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
    "driver_class",
    "load_all",
    "now",
]


#: Each driver kind and the module that registers it, so a gateway imports only the
#: protocol stacks it uses (asyncua alone costs ~40 MB of RSS on an edge box).
KINDS: dict[str, str] = {
    "mt-sics": "drivers.mt_sics",
    "sartorius-sbi": "drivers.sbi",
    "scpi-pressure": "drivers.scpi",
    "modbus": "drivers.modbus",
    "opcua": "drivers.opcua",
}


def driver_class(kind: str) -> type[Driver] | None:
    """The driver class of ``kind``, importing its module on first use; None if unknown."""
    if kind not in DRIVERS and kind in KINDS:
        import importlib

        importlib.import_module(KINDS[kind])
    return DRIVERS.get(kind)


def load_all() -> dict[str, type[Driver]]:
    """Import every driver module so each registers itself in DRIVERS; return DRIVERS."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in {"base", "errors"} and not info.name.startswith("_"):
            importlib.import_module(f"drivers.{info.name}")
    return DRIVERS
