"""A calibration point's error, budget and coverage factor, against numbers worked by hand."""

from __future__ import annotations

import math

import pytest
import scipy.stats

from calibration.errors import CalibrationError
from calibration.evaluation import Series, evaluate_point
from calibration.uncertainty import Contribution

P = math.erf(2 / math.sqrt(2))  # the coverage probability of k = 2, normal distribution


def series(direction: str, ind: list[float], ref: float = 10.0, drift: float = 0.0) -> Series:
    n = len(ind)
    return Series(
        direction=direction,
        reference=tuple(ref + drift * i for i in range(n)),
        indicated=tuple(ind),
        t_s=tuple(float(i) for i in range(n)),
    )


def test_up_and_down_point_worked_example() -> None:
    # Up: errors 0.1, 0.3, 0.1, 0.3 (mean 0.2); down: 0.3, 0.5, 0.3, 0.5 (mean 0.4).
    up = series("up", [10.1, 10.3, 10.1, 10.3])
    down = series("down", [10.3, 10.5, 10.3, 10.5])
    p = evaluate_point(
        [up, down],
        reference_components=[Contribution("C-1", 0.05)],
        dut_resolution=0.1,
        reference_label="REF",
    )
    assert p.direction == "up-down"
    assert p.reference == pytest.approx(10.0)
    assert p.indicated == pytest.approx(10.3)
    assert p.error == pytest.approx(0.3)
    assert p.hysteresis == pytest.approx(0.2)
    # By hand: s of each series' errors = √(4·0.1²/3); s of the mean /√4; the result is the
    # mean of two series, so each enters halved.
    s_mean = math.sqrt(4 * 0.01 / 3) / 2
    parts = {
        "REF: C-1": 0.05,
        "DUT resolution": 0.1 / (2 * math.sqrt(3)),
        "repeatability (up)": s_mean / 2,
        "repeatability (down)": s_mean / 2,
        "reference stability": 0.0,
        "hysteresis": 0.1 / math.sqrt(3),
    }
    assert {c.label: c.u for c in p.components} == pytest.approx(parts)
    u_c = math.sqrt(sum(u * u for u in parts.values()))
    assert p.u == pytest.approx(u_c)
    # Welch–Satterthwaite: only the two repeatabilities (ν = 3) have finite ν.
    nu = u_c**4 / (2 * (s_mean / 2) ** 4 / 3)
    assert nu == pytest.approx(150.0)
    k = scipy.stats.t.ppf(0.5 + P / 2, math.floor(nu + 1e-9))
    assert p.dof == 150
    assert p.k == pytest.approx(k, rel=1e-9)
    expanded = k * u_c
    assert pytest.approx(expanded, rel=1e-9) == p.U


def test_drift_of_the_reference_is_a_rectangular_contribution() -> None:
    # The reference rises 0.01 per second over 4 readings (3 s): a = 0.01·3/2.
    up = series("up", [10.0, 10.01, 10.02, 10.03], drift=0.01)
    p = evaluate_point([up], reference_components=[], dut_resolution=0.001)
    assert p.direction == "up"
    assert p.hysteresis is None
    assert p.error == pytest.approx(0.0, abs=1e-12)
    u = {c.label: c.u for c in p.components}
    assert u["reference stability"] == pytest.approx(0.015 / math.sqrt(3))
    assert u["repeatability (up)"] == pytest.approx(0.0, abs=1e-12)
    assert math.isinf(p.dof)
    assert p.k == pytest.approx(scipy.stats.norm.ppf(0.5 + P / 2), rel=1e-9)


def test_a_series_needs_two_finite_readings() -> None:
    with pytest.raises(CalibrationError, match="at least 2 readings"):
        series("up", [10.0])
    with pytest.raises(CalibrationError, match="finite"):
        series("up", [10.0, math.nan])


def test_a_point_agrees_with_the_same_model_built_in_gtc() -> None:
    """The model of the module docstring built independently with GTC's uncertain
    numbers: e = (ē↑ + ē↓)/2 + δ_ref + δ_res + δ_stab + δ_hyst, ē from GTC's type A
    estimate of each series' differences (ν = n − 1), Welch–Satterthwaite by GTC."""
    from GTC import type_a, ureal

    t = [0.0, 1.0, 2.0, 3.0, 4.0]
    ref_up = [1000.00, 1000.01, 1000.02, 1000.01, 1000.03]
    ind_up = [1000.42, 1000.45, 1000.41, 1000.44, 1000.46]
    ref_dn = [1000.02, 1000.01, 1000.00, 1000.00, 999.99]
    ind_dn = [1000.61, 1000.58, 1000.60, 1000.57, 1000.59]
    p = evaluate_point(
        [
            Series(direction="up", reference=tuple(ref_up), indicated=tuple(ind_up), t_s=tuple(t)),
            Series(
                direction="down",
                reference=tuple(ref_dn),
                indicated=tuple(ind_dn),
                t_s=tuple(x + 10 for x in t),
            ),
        ],
        reference_components=[Contribution("cert", 0.05, 50)],
        dut_resolution=0.01,
    )
    e_up = type_a.estimate([i - r for i, r in zip(ind_up, ref_up, strict=True)])
    e_dn = type_a.estimate([i - r for i, r in zip(ind_dn, ref_dn, strict=True)])
    slope_up = scipy.stats.linregress(t, ref_up).slope
    slope_dn = scipy.stats.linregress(t, ref_dn).slope
    # each series' drift over its 4 s, half-width |b|·T/2, halved again in the mean
    a_stab = math.hypot(abs(slope_up) * 4 / 2 / 2, abs(slope_dn) * 4 / 2 / 2)
    h = abs(e_dn.x - e_up.x)
    e = (
        (e_up + e_dn) / 2
        + ureal(0, 0.05, 50)
        + ureal(0, 0.01 / math.sqrt(12))
        + ureal(0, a_stab / math.sqrt(3))
        + ureal(0, h / 2 / math.sqrt(3))
    )
    assert p.error == pytest.approx(e.x, rel=1e-12)
    assert p.u == pytest.approx(e.u, rel=1e-12)
    assert p.dof == math.floor(e.df)
    k = scipy.stats.t.ppf(0.5 + P / 2, math.floor(e.df))
    assert p.k == pytest.approx(k, rel=1e-9)
    assert pytest.approx(k * e.u, rel=1e-9) == p.U


def test_a_balance_point_counts_the_rounding_of_its_zero_and_of_its_load() -> None:
    """EURAMET cg-18 §7.1.1: E = I_L − I_0 − m_ref, both indications rounded to d, so two
    rectangular contributions d/(2√3): for d = 0.01 g, u ≥ √2·0.01/√12 = 0.00408 g,
    U(k=2) ≥ 0.0082 g (one term alone gave 0.0058 g)."""
    readings = [100.0] * 10
    p = evaluate_point(
        [series("up", readings, ref=100.0)],
        reference_components=[],
        dut_resolution=0.01,
        zero_resolution=0.01,
    )
    one = 0.01 / (2 * math.sqrt(3))
    assert {c.label: c.u for c in p.components}["DUT resolution at zero"] == pytest.approx(one)
    assert p.u == pytest.approx(math.sqrt(2) * one)
    expanded = p.U
    assert expanded == pytest.approx(2 * math.sqrt(2) * one)
    assert expanded > 0.0081
