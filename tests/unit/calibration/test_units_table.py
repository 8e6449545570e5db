"""calibration.units' built-in table against pint, computed independently here.

Every table spelling must mean to the table what it means to pint (name, dimensionality
text, multiplicativity, and every pairwise factor within 1e-12); anything the table does
not hold still goes to pint; and the gateway's import + registry load never imports pint.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pint
import pytest

from calibration import units
from calibration.errors import CalibrationError

ROOT = Path(__file__).resolve().parents[3]
TABLE = sorted(units._TABLE)


@pytest.fixture(scope="module")
def ureg() -> Any:
    """pint's own registry, separate from the one calibration.units may build."""
    return pint.UnitRegistry(cache_folder=None)


def _pint_factor(ureg: Any, a: str, b: str) -> float | str:
    """What the pre-table calibration.units answered: a factor, or the error's kind."""
    ua, ub = ureg.Unit(a), ureg.Unit(b)
    if ua.dimensionality != ub.dimensionality:
        return "not compatible"
    if ua == ub:
        return 1.0
    qa, qb = ureg.Quantity(1.0, ua), ureg.Quantity(1.0, ub)
    if not (qa._is_multiplicative and qb._is_multiplicative):
        return "offset units"
    return float(qa.to(ub).magnitude)


def test_the_table_holds_the_units_labs_write() -> None:
    for spelling in ["Pa", "hPa", "kPa", "MPa", "GPa", "mPa", "bar", "mbar", "psi", "mmHg",
                     "inHg", "torr", "atm", "inH2O", "mmH2O", "g", "kg", "mg", "µg", "μg",
                     "ug", "t", "N", "kN", "mN", "MN", "kgf", "lbf", "m", "mm", "µm", "cm",
                     "km", "K", "degC", "V", "mV", "µV", "kV", "A", "mA", "µA", "ohm", "Ω",
                     "kΩ", "s", "ms", "min", "h", "Hz", "kHz", "MHz", "%", "ppm", "N*m",
                     "N·m", "L", "mL"]:  # fmt: skip
        assert spelling in units._TABLE, spelling


@pytest.mark.parametrize("spelling", TABLE)
def test_entry_matches_pint(ureg: Any, spelling: str) -> None:
    unit = ureg.Unit(spelling)
    entry = units._TABLE[spelling]
    assert units.dimensionality(spelling) == str(unit.dimensionality)
    assert units.dimensionality(f"  {spelling} ") == str(unit.dimensionality)
    assert units.normalise(f" {spelling}  ") == spelling
    assert entry.name == str(unit)  # equal names <=> pint's units are equal
    q = ureg.Quantity(1.0, unit)
    assert entry.multiplicative is q._is_multiplicative
    if entry.multiplicative:
        assert float(entry.scale) == pytest.approx(q.to_base_units().magnitude, rel=1e-12)


@pytest.mark.parametrize("a", TABLE)
def test_pairs_match_pint(ureg: Any, a: str) -> None:
    for b in TABLE:
        expected = _pint_factor(ureg, a, b)
        assert units.compatible(a, b) is (expected != "not compatible"), (a, b)
        if isinstance(expected, str):
            with pytest.raises(CalibrationError, match=expected):
                units.factor(a, b)
        else:
            assert units.factor(a, b) == pytest.approx(expected, rel=1e-12, abs=0), (a, b)


def test_prefix_factors_are_exact() -> None:
    assert units.factor("bar", "kPa") == 100.0
    assert units.factor("mbar", "kPa") == 0.1
    assert units.factor("mg", "g") == 0.001
    assert units.factor("g", "mg") == 1000.0
    assert units.factor("µV", "mV") == 0.001
    assert units.factor("kN", "N") == 1000.0


def test_offset_units_convert_only_to_themselves() -> None:
    for a, b in [("degC", "K"), ("K", "degC"), ("°C", "mK"), ("degree_Celsius", "K")]:
        with pytest.raises(CalibrationError, match="offset units need the same unit"):
            units.factor(a, b)
        assert units.compatible(a, b)
    assert units.factor("degC", "degC") == 1.0
    assert units.factor("degC", "°C") == 1.0
    with pytest.raises(CalibrationError, match=r"'degC' \(\[temperature\]\) is not compatible"):
        units.factor("degC", "kPa")


@pytest.mark.parametrize("bad", ["bananas", "Torr", "mTorr", "kg**", "0/0", "'", "", "   "])
def test_unknown_units_are_refused_as_before(bad: str) -> None:
    error = re.escape(f"unknown unit {bad!r}" if bad.strip() else "unit must be a non-empty string")
    with pytest.raises(CalibrationError, match=error):
        units.parse_unit(bad)
    with pytest.raises(CalibrationError, match=error):
        units.normalise(bad)
    with pytest.raises(CalibrationError, match=error):
        units.dimensionality(bad)
    with pytest.raises(CalibrationError, match=error):
        units.factor("kPa", bad)
    assert not units.compatible(bad, "kPa")
    assert not units.compatible("g", bad)


def test_units_outside_the_table_go_to_pint(ureg: Any) -> None:
    for unit in ["slug", "furlong/fortnight", "N / mm**2", "m**2", "kN * m"]:
        assert unit not in units._TABLE
    slug = ureg.Quantity(1.0, "slug").to("kg").magnitude
    assert units.factor("slug", "kg") == pytest.approx(slug, rel=1e-12)
    assert units.factor("slug", "g") == pytest.approx(1000 * slug, rel=1e-12)
    ff = ureg.Quantity(1.0, "furlong/fortnight").to("mm/s").magnitude
    assert units.factor("furlong/fortnight", "mm/s") == pytest.approx(ff, rel=1e-12)
    assert units.factor("N / mm**2", "MPa") == pytest.approx(1.0, rel=1e-12)
    assert units.compatible("slug", "g")
    assert not units.compatible("furlong/fortnight", "kPa")
    assert units.dimensionality("slug") == "[mass]"
    assert units.normalise(" furlong/fortnight ") == "furlong/fortnight"
    assert str(units.parse_unit("kPa")) == "kilopascal"  # parse_unit still gives pint Units
    with pytest.raises(CalibrationError, match="not compatible"):
        units.factor("slug", "kPa")
    with pytest.raises(CalibrationError, match="offset units"):
        units.factor("degF", "K")


def test_gateway_import_and_registry_load_leave_pint_out() -> None:
    code = f"""
import sys
import gateway.service
from calibration import Registry, units
from gateway.pipeline import unit_factor
lab = Registry.load({str(ROOT / "examples" / "registry")!r})
assert lab.equipment_ids(), "empty registry"
for a in units._TABLE:
    units.dimensionality(a)
    units.normalise(a)
    for b in ("kPa", "g", "kN", "degC", "V"):
        units.compatible(a, b)
        try:
            units.factor(a, b)
        except units.CalibrationError:
            pass
assert unit_factor("mbar", "kPa") == 0.1
print("pint" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
