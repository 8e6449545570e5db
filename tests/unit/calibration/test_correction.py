"""Correction models against hand-worked examples (numbers worked out in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.correction import fit_polynomial, interpolate_error, parse_model
from calibration.errors import CalibrationError


@pytest.mark.parametrize(
    ("model", "degree"),
    [
        ("interpolate", 0),
        ("linear", 1),
        ("polynomial:1", 1),
        ("polynomial:3", 3),
        (" polynomial: 2 ", 2),
    ],
)
def test_parse_model(model: str, degree: int) -> None:
    assert parse_model(model) == degree


@pytest.mark.parametrize(
    "model", ["spline", "polynomial", "polynomial:0", "polynomial:10", "", "linear:2"]
)
def test_parse_model_refuses(model: str) -> None:
    with pytest.raises(CalibrationError, match=r"model|degree"):
        parse_model(model)


def test_interpolated_error_by_hand() -> None:
    # Points (indicated, reference): (10, 9.9), (20, 20.1), (30, 29.8)
    # errors e = indicated − reference: 0.1, −0.1, 0.2
    ind = np.array([10.0, 20.0, 30.0])
    ref = np.array([9.9, 20.1, 29.8])
    # r = 15: halfway between 10 and 20: e = 0.1 + 0.5·(−0.1 − 0.1) = 0.0
    # r = 27.5: 3/4 of the way from 20 to 30: e = −0.1 + 0.75·(0.2 − (−0.1)) = 0.125
    # beyond the edges the error is held (never extrapolated): e(5) = e(10) = 0.1
    e = interpolate_error(ind, ref, np.array([15.0, 27.5, 10.0, 30.0, 5.0, 35.0]))
    np.testing.assert_allclose(e, [0.0, 0.125, 0.1, 0.2, 0.1, 0.2], atol=1e-12)


def test_weighted_linear_fit_matches_closed_form() -> None:
    # x = (0, 1, 2, 3), y = (0.1, 0.9, 2.1, 2.9), u = (0.1, 0.1, 0.2, 0.2) → w = 1/u² =
    # (100, 100, 25, 25). Sums: S = 250, Sx = 225, Sxx = 425, Sy = 225, Sxy = 412.5.
    # Δ = S·Sxx − Sx² = 106250 − 50625 = 55625.
    # a = (Sxx·Sy − Sx·Sxy)/Δ = (95625 − 92812.5)/55625 = 2812.5/55625
    # b = (S·Sxy − Sx·Sy)/Δ = (103125 − 50625)/55625 = 52500/55625
    # var a = Sxx/Δ = 425/55625, var b = S/Δ = 250/55625, cov(a, b) = −Sx/Δ = −225/55625
    # var of the prediction at x = 1.5: (425 + 1.5²·250 + 2·1.5·(−225))/55625 = 312.5/55625
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([0.1, 0.9, 2.1, 2.9])
    u = np.array([0.1, 0.1, 0.2, 0.2])
    fit = fit_polynomial(x, y, u, 1)
    delta = 55625.0
    a, b = fit.coefficients_in_x()
    assert a == pytest.approx(2812.5 / delta, rel=1e-12)
    assert b == pytest.approx(52500.0 / delta, rel=1e-12)
    assert float(fit.predict(1.5)) == pytest.approx(2812.5 / delta + 1.5 * 52500.0 / delta)
    for xx, var in [(0.0, 425.0), (1.5, 312.5), (3.0, 425.0 + 9 * 250.0 - 6 * 225.0)]:
        assert float(fit.variance(xx)) == pytest.approx(var / delta, rel=1e-10)
    assert fit.dof == 2
    # χ² = Σ w·(y − a − b·x)²
    resid = y - (2812.5 + 52500.0 * x) / delta
    assert fit.chi2 == pytest.approx(float(np.sum(resid**2 / u**2)), rel=1e-10)


def test_quadratic_through_three_exact_points() -> None:
    # y = x² exactly at x = 1, 2, 4: the fit is that parabola (9 at x = 3).
    fit = fit_polynomial(np.array([1.0, 2.0, 4.0]), np.array([1.0, 4.0, 16.0]), np.full(3, 0.01), 2)
    np.testing.assert_allclose(
        fit.predict(np.array([1.0, 2.0, 4.0, 3.0])), [1, 4, 16, 9], atol=1e-9
    )
    np.testing.assert_allclose(fit.coefficients_in_x(), [0.0, 0.0, 1.0], atol=1e-9)
    # An exact interpolation keeps each point's own uncertainty at the point.
    np.testing.assert_allclose(fit.variance(np.array([1.0, 2.0, 4.0])), 1e-4, rtol=1e-8)
    assert fit.chi2 == pytest.approx(0.0, abs=1e-12)


def test_fit_well_conditioned_over_a_wide_span() -> None:
    # 0–100 000 Pa, cubic: the scaled variable keeps this exact.
    x = np.linspace(0.0, 1e5, 11)
    y = 3.0 + 0.999 * x + 2e-8 * x**2 - 1e-14 * x**3
    fit = fit_polynomial(x, y, np.full(11, 0.5), 3)
    np.testing.assert_allclose(fit.predict(x), y, rtol=0, atol=1e-6)


def test_fit_refuses_bad_points() -> None:
    with pytest.raises(CalibrationError, match="at least 3 points"):
        fit_polynomial(np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.array([0.1, 0.1]), 2)
    with pytest.raises(CalibrationError, match="U > 0"):
        fit_polynomial(np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.array([0.1, 0.0]), 1)
    with pytest.raises(CalibrationError, match="distinct"):
        fit_polynomial(np.array([1.0, 1.0, 2.0]), np.array([1.0, 1.1, 2.0]), np.full(3, 0.1), 2)
