"""Units: parse, check compatibility, and convert certificate data.

The units metrology labs actually write (``kPa``, ``mbar``, ``g``, ``kN``, ``mV``, ``degC``
…) are answered from a small built-in table that mirrors pint's definitions (same spelling,
same dimensionality text, same conversion factors; tests/unit/calibration/test_units_table.py
checks every entry against pint). Anything else falls back to pint, imported on first need:
building its UnitRegistry costs about half a second and ~15 MB, which the gateway does not
pay while every unit of the registry is in the table.

Only multiplicative conversions are offered: a certificate in ``bar`` for a channel in
``kPa`` is scaled at load; offset units (``degC`` to ``K``) are refused for conversion
because a certificate's U and errors are differences, which a plain factor would
mis-convert.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any, NamedTuple

from calibration.errors import CalibrationError

__all__ = ["compatible", "dimensionality", "factor", "normalise", "parse_unit", "registry"]


# -- the built-in table ---------------------------------------------------------------------


class _Unit(NamedTuple):
    name: str  # pint's name for the unit: equal names are the same unit
    dims: str  # the dimensionality as pint prints it
    key: frozenset[tuple[str, int]]  # the dimensionality, for comparisons
    scale: Fraction  # value in the coherent SI unit per 1 in this unit
    multiplicative: bool


def _dims(text: str, **exponents: int) -> tuple[str, frozenset[tuple[str, int]]]:
    return text, frozenset((f"[{d}]", e) for d, e in exponents.items())


# (text as pint prints it, exponents); pint's text follows its definitions' order, so a
# force in kgf prints ``[length] * [mass]`` where one in N prints ``[mass] * [length]``.
_PRESSURE = _dims("[mass] / [length] / [time] ** 2", mass=1, length=-1, time=-2)
_MASS = _dims("[mass]", mass=1)
_FORCE = _dims("[mass] * [length] / [time] ** 2", mass=1, length=1, time=-2)
_FORCE_G0 = _dims("[length] * [mass] / [time] ** 2", mass=1, length=1, time=-2)
_LENGTH = _dims("[length]", length=1)
_TEMPERATURE = _dims("[temperature]", temperature=1)
_VOLTAGE = _dims("[mass] * [length] ** 2 / [time] ** 3 / [current]", mass=1, length=2, time=-3, current=-1)  # fmt: skip
_CURRENT = _dims("[current]", current=1)
_RESISTANCE = _dims("[mass] * [length] ** 2 / [time] ** 3 / [current] ** 2", mass=1, length=2, time=-3, current=-2)  # fmt: skip
_TIME = _dims("[time]", time=1)
_FREQUENCY = _dims("1 / [time]", time=-1)
_ONE = _dims("dimensionless")
_TORQUE = _dims("[mass] * [length] ** 2 / [time] ** 2", mass=1, length=2, time=-2)
_VOLUME = _dims("[length] ** 3", length=3)

# pint's constants: standard gravity, the avoirdupois pound, the inch, conventional
# mercury (13.5951 g/cm³) and water (1 g/cm³) densities, the standard atmosphere.
_G0 = Fraction("9.80665")
_LB = Fraction("0.45359237")
_INCH = Fraction("0.0254")
_HG = Fraction("13595.1") * _G0  # pressure per metre of mercury
_H2O = Fraction(1000) * _G0  # pressure per metre of water
_ATM = Fraction(101325)

_PREFIXES: dict[str, tuple[str, Fraction]] = {
    "G": ("giga", Fraction(10**9)),
    "M": ("mega", Fraction(10**6)),
    "k": ("kilo", Fraction(10**3)),
    "h": ("hecto", Fraction(10**2)),
    "c": ("centi", Fraction(1, 10**2)),
    "m": ("milli", Fraction(1, 10**3)),
    "µ": ("micro", Fraction(1, 10**6)),  # U+00B5 MICRO SIGN
    "μ": ("micro", Fraction(1, 10**6)),  # U+03BC GREEK SMALL LETTER MU
    "u": ("micro", Fraction(1, 10**6)),
    "n": ("nano", Fraction(1, 10**9)),
}

_TABLE: dict[str, _Unit] = {}


def _add(
    spellings: str,
    name: str,
    dims: tuple[str, frozenset[tuple[str, int]]],
    scale: Fraction | int = 1,
    *,
    prefixes: str = "",
    multiplicative: bool = True,
) -> None:
    """Enter each of ``spellings`` (``|``-separated) and each ``prefixes`` letter before it."""
    for spelling in spellings.split("|"):
        _TABLE[spelling] = _Unit(name, dims[0], dims[1], Fraction(scale), multiplicative)
        for p in prefixes:
            word, f = _PREFIXES[p]
            _TABLE[p + spelling] = _Unit(word + name, dims[0], dims[1], f * scale, multiplicative)


_add("Pa", "pascal", _PRESSURE, prefixes="GMkhm")
_add("bar", "bar", _PRESSURE, 10**5, prefixes="m")
_add("psi", "pound_force_per_square_inch", _PRESSURE, _LB * _G0 / _INCH**2)
_add("mmHg", "millimeter_Hg", _PRESSURE, _HG / 1000)
_add("inHg", "inch_Hg", _PRESSURE, _HG * _INCH)
_add("torr", "torr", _PRESSURE, _ATM / 760)
_add("atm", "standard_atmosphere", _PRESSURE, _ATM)
_add("mmH2O", "millimeter_H2O", _PRESSURE, _H2O / 1000)
_add("cmH2O", "centimeter_H2O", _PRESSURE, _H2O / 100)
_add("inH2O", "inch_H2O", _PRESSURE, _H2O * _INCH)
_add("g", "gram", _MASS, Fraction(1, 1000), prefixes="kmµμu")
_add("t", "metric_ton", _MASS, 1000)
_add("N", "newton", _FORCE, prefixes="kmM")
_add("kgf", "force_kilogram", _FORCE_G0, _G0)
_add("lbf", "force_pound", _FORCE_G0, _LB * _G0)
_add("m", "meter", _LENGTH, prefixes="kcmµμun")
_add("K", "kelvin", _TEMPERATURE, prefixes="m")
_add("degC|°C|degree_Celsius", "degree_Celsius", _TEMPERATURE, multiplicative=False)
_add("V", "volt", _VOLTAGE, prefixes="kmµμu")
_add("A", "ampere", _CURRENT, prefixes="mµμu")
_add("ohm|Ω", "ohm", _RESISTANCE, prefixes="kMm")
_add("s", "second", _TIME, prefixes="m")
_add("min", "minute", _TIME, 60)
_add("h", "hour", _TIME, 3600)
_add("Hz", "hertz", _FREQUENCY, prefixes="kMG")
_add("%|percent", "percent", _ONE, Fraction(1, 100))
_add("ppm", "ppm", _ONE, Fraction(1, 10**6))
_add("dimensionless", "dimensionless", _ONE)
_add("N*m|N * m|N·m|N m", "meter * newton", _TORQUE)
_add("L|l", "liter", _VOLUME, Fraction(1, 1000))
_add("mL|ml", "milliliter", _VOLUME, Fraction(1, 10**6))


def _table(text: object) -> _Unit | None:
    """The table's entry for ``text``, or None (then pint decides)."""
    return _TABLE.get(text.strip()) if isinstance(text, str) else None


# -- pint, for everything else ----------------------------------------------------------------


@functools.cache
def registry() -> Any:
    """The shared pint UnitRegistry (pint is imported and the registry built on first call)."""
    import pint

    return pint.UnitRegistry(cache_folder=None)


@functools.lru_cache(maxsize=256)
def parse_unit(text: str) -> Any:
    """A pint Unit from text such as ``"kPa"``, ``"mbar"``, ``"g"``, ``"kN"`` (imports pint)."""
    if not isinstance(text, str) or not text.strip():
        raise CalibrationError("unit must be a non-empty string")
    try:
        unit = registry().Unit(text.strip())
    # pint's parser lets tokenizer, arithmetic and assertion errors escape on garbage
    # such as "0/0" or "'": any failure to parse is an unknown unit.
    except Exception as exc:
        raise CalibrationError(f"unknown unit {text!r}") from exc
    return unit


# -- the public questions: the table when it knows every unit, else pint ----------------------


def dimensionality(text: str) -> str:
    """The unit's dimensionality, e.g. ``[mass]``."""
    entry = _table(text)
    if entry is not None:
        return entry.dims
    return str(parse_unit(text).dimensionality)


def compatible(a: str, b: str) -> bool:
    """True when values in ``a`` can be expressed in ``b`` (same dimensionality)."""
    ea, eb = _table(a), _table(b)
    if ea is not None and eb is not None:
        return ea.key == eb.key
    try:
        return bool(parse_unit(a).dimensionality == parse_unit(b).dimensionality)
    except CalibrationError:
        return False


def _offset_error(from_unit: str, to_unit: str) -> CalibrationError:
    return CalibrationError(
        f"cannot convert {from_unit!r} to {to_unit!r}: offset units need the same unit"
    )


@functools.lru_cache(maxsize=256)
def factor(from_unit: str, to_unit: str) -> float:
    """The factor f with value_in_to = f · value_in_from (``factor("bar", "kPa") == 100``)."""
    src, dst = _table(from_unit), _table(to_unit)
    if src is not None and dst is not None:
        if src.key != dst.key:
            raise CalibrationError(
                f"unit {from_unit!r} ({src.dims}) is not compatible with {to_unit!r} ({dst.dims})"
            )
        if src.name == dst.name:
            return 1.0
        if not (src.multiplicative and dst.multiplicative):
            raise _offset_error(from_unit, to_unit)
        return float(src.scale / dst.scale)  # exact ratio, rounded once
    return _pint_factor(from_unit, to_unit)


def _pint_factor(from_unit: str, to_unit: str) -> float:
    import pint

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
            raise _offset_error(from_unit, to_unit)
        return float(q.to(dst).magnitude)
    except pint.errors.PintError as exc:  # pragma: no cover - guarded by the check above
        raise CalibrationError(f"cannot convert {from_unit!r} to {to_unit!r}: {exc}") from exc


def normalise(text: str) -> str:
    """The unit as written, stripped (kept as the user wrote it for display)."""
    if _table(text) is None:
        parse_unit(text)
    return text.strip()
