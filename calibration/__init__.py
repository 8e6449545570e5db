"""The calibration engine: registry, traceability, correction, uncertainty, conformity.

Pure domain code: no network I/O, never imports ``gateway`` or ``drivers``.

The registry (:mod:`calibration.registry`) loads a directory of equipment and certificate
files into an immutable :class:`Registry` snapshot, reporting every problem at once as a
:class:`RegistryError`. :mod:`calibration.chain` gives an item's :class:`CalibrationState`
and traceability tree at a time, and the reverse trace of a standard.
"""

from calibration.chain import PRECEDENCE, Affected, CalibrationState, ChainNode, Issue
from calibration.errors import CalibrationError, RegistryError
from calibration.registry import (
    Certificate,
    Channel,
    Equipment,
    Limits,
    Point,
    Range,
    Registry,
    Tolerance,
)

__all__ = [
    "PRECEDENCE",
    "Affected",
    "CalibrationError",
    "CalibrationState",
    "Certificate",
    "ChainNode",
    "Channel",
    "Equipment",
    "Issue",
    "Limits",
    "Point",
    "Range",
    "Registry",
    "RegistryError",
    "Tolerance",
]
