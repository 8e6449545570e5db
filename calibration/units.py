"""Units through pint: parse, check compatibility, and convert certificate data.

One module-level :class:`pint.UnitRegistry` is built on first use and cached (building it
costs about half a second). Only multiplicative conversions are offered: a certificate in
``bar`` for a channel in ``kPa`` is scaled at load; offset units (``degC`` to ``K``)
are refused for conversion because a certificate's U and errors are differences, which a
plain factor would mis-convert.
"""

from __future__ import annotations

import functools
from typing import Any

import pint

from calibration.errors import CalibrationError

__all__ = ["compatible", "dimensionality", "factor", "normalise", "parse_unit", "registry"]


@functools.cache
def registry() -> Any:
    """The shared pint UnitRegistry."""
    return pint.UnitRegistry(cache_folder=None)


@functools.lru_cache(maxsize=256)
def parse_unit(text: str) -> Any:
    """A pint Unit from text such as ``"kPa"``, ``"mbar"``, ``"g"``, ``"kN"``."""
    if not isinstance(text, str) or not text.strip():
        raise CalibrationError("unit must be a non-empty string")
    try:
        unit = registry().Unit(text.strip())
    # pint's parser lets tokenizer, arithmetic and assertion errors escape on garbage
    # such as "0/0" or "'": any failure to parse is an unknown unit.
    except Exception as exc:
        raise CalibrationError(f"unknown unit {text!r}") from exc
    return unit


def dimensionality(text: str) -> str:
    """The unit's dimensionality, e.g. ``[mass]``."""
    return str(parse_unit(text).dimensionality)


def compatible(a: str, b: str) -> bool:
    """True when values in ``a`` can be expressed in ``b`` (same dimensionality)."""
    try:
        return bool(parse_unit(a).dimensionality == parse_unit(b).dimensionality)
    except CalibrationError:
        return False


@functools.lru_cache(maxsize=256)
def factor(from_unit: str, to_unit: str) -> float:
    """The factor f with value_in_to = f · value_in_from (``factor("bar", "kPa") == 100``)."""
    src, dst = parse_unit(from_unit), parse_unit(to_unit)
    if src.dimensionality != dst.dimensionality:
        raise CalibrationError(
            f"unit {from_unit!r} ({src.dimensionality}) is not compatible with "
            f"{to_unit!r} ({dst.dimensionality})"
        )
    if src == dst:
        return 1.0
    reg = registry()
    try:
        q = reg.Quantity(1.0, src)
        if not q._is_multiplicative or not reg.Quantity(1.0, dst)._is_multiplicative:
            raise CalibrationError(
                f"cannot convert {from_unit!r} to {to_unit!r}: offset units need the same unit"
            )
        return float(q.to(dst).magnitude)
    except pint.errors.PintError as exc:  # pragma: no cover - guarded by the check above
        raise CalibrationError(f"cannot convert {from_unit!r} to {to_unit!r}: {exc}") from exc


def normalise(text: str) -> str:
    """The unit as written, stripped (kept as the user wrote it for display)."""
    parse_unit(text)
    return text.strip()
