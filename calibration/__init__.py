"""The calibration engine: registry, traceability, correction, uncertainty, conformity.

Pure domain code: no network I/O, never imports ``gateway`` or ``drivers``.

- :mod:`calibration.registry` loads a directory of equipment and certificate files (TOML,
  or PTB DCC XML through :mod:`calibration.dcc`) into an immutable :class:`Registry`
  snapshot, reporting every problem at once as a :class:`RegistryError`.
- :mod:`calibration.chain` gives an item's :class:`CalibrationState` and traceability
  tree (:class:`ChainNode`) at a time, and the reverse trace of a standard
  (:class:`Affected`).
- :mod:`calibration.corrector` turns raw readings into corrected values with u and U
  (:class:`Corrector`, :class:`Corrected`); :mod:`calibration.uncertainty` builds GUM
  budgets with GTC; :mod:`calibration.conformity` holds MPEs (:class:`Tolerance`) and
  ILAC G8 decision rules; :mod:`calibration.rounding` the display rounding (GUM 7.2.6).
"""

from calibration.chain import (
    CALIBRATION_STATUSES,
    PRECEDENCE,
    Affected,
    CalibrationState,
    CalStatus,
    ChainNode,
    Issue,
)
from calibration.conformity import DecisionRule, Tolerance, decide, instrument_conformity, mpe
from calibration.corrector import Corrected, Corrector
from calibration.errors import CalibrationError, RegistryError
from calibration.registry import (
    Certificate,
    Channel,
    Equipment,
    Limits,
    Point,
    Range,
    Registry,
)
from calibration.rounding import format_value, round_result
from calibration.uncertainty import Budget, ChainLevel, Contribution

__all__ = [
    "CALIBRATION_STATUSES",
    "PRECEDENCE",
    "Affected",
    "Budget",
    "CalStatus",
    "CalibrationError",
    "CalibrationState",
    "Certificate",
    "ChainLevel",
    "ChainNode",
    "Channel",
    "Contribution",
    "Corrected",
    "Corrector",
    "DecisionRule",
    "Equipment",
    "Issue",
    "Limits",
    "Point",
    "Range",
    "Registry",
    "RegistryError",
    "Tolerance",
    "decide",
    "format_value",
    "instrument_conformity",
    "mpe",
    "round_result",
]
