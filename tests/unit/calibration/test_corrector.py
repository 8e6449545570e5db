"""The Corrector: hand-worked corrections and uncertainties, both paths agreeing, budgets."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration.corrector import Corrector
from calibration.errors import CalibrationError
from calibration.uncertainty import ChainLevel

SQRT12 = math.sqrt(12.0)

# Certificate C-17: points (indicated, reference, U) with k = 2:
#   (10, 9.9, 0.02), (20, 20.1, 0.04), (30, 29.8, 0.06)  — given out of order below.
# errors e = 0.1, −0.1, 0.2; u = U/k = 0.01, 0.02, 0.03.
POINTS: dict[str, Any] = {
    "indicated": [20.0, 10.0, 30.0],
    "reference": [20.1, 9.9, 29.8],
    "U": [0.04, 0.02, 0.06],
    "k": 2.0,
}
CHANNEL: dict[str, Any] = {
    "unit": "g",
    "equipment": "BAL-01",
    "channel": "mass",
}


def make(model: str = "interpolate", **kw: Any) -> Corrector:
    args: dict[str, Any] = {
        **POINTS,
        "model": model,
        "resolution": 0.01,
        "repeatability": 0.005,
        "certificate": "C-17",
        **CHANNEL,
    }
    args.update(kw)
    return Corrector.build(**args)


def test_interpolated_correction_and_uncertainty_by_hand() -> None:
    c = make()
    assert c.span == (10.0, 30.0)
    assert c.k == 2.0
    assert c.certificate == "C-17"
    # r = 15: e = 0.0 → y = 15.0; u_cal = 0.015 (halfway between 0.01 and 0.02)
    # u_c² = 0.015² + (0.01/√12)² + 0.005² = 0.000225 + 0.0000083333 + 0.000025
    #      = 0.00025833333 → u_c = 0.0160727513; U = 2·u_c = 0.0321455025
    value, u, big_u, out = c.correct_one(15.0)
    assert value == pytest.approx(15.0, abs=1e-12)
    assert u == pytest.approx(math.sqrt(0.015**2 + (0.01 / SQRT12) ** 2 + 0.005**2))
    assert u == pytest.approx(0.0160727513, abs=1e-10)
    assert big_u == pytest.approx(2 * u)
    assert out is False
    # r = 27.5: e = −0.1 + 0.75·0.3 = 0.125 → y = 27.375; u_cal = 0.02 + 0.75·0.01 = 0.0275
    value, u, _, _ = c.correct_one(27.5)
    assert value == pytest.approx(27.375, abs=1e-12)
    assert u == pytest.approx(math.sqrt(0.0275**2 + (0.01 / SQRT12) ** 2 + 0.005**2))
    # at a calibration point the correction is the point's own: y(20) = 20.1
    assert c.correct_one(20.0)[0] == pytest.approx(20.1, abs=1e-12)


def test_never_extrapolates() -> None:
    c = make()
    # below the span: the edge error e(10) = 0.1 is kept, and flagged
    value, u, _, out = c.correct_one(5.0)
    assert out is True
    assert value == pytest.approx(4.9)
    assert u == pytest.approx(math.sqrt(0.01**2 + (0.01 / SQRT12) ** 2 + 0.005**2))
    # above: e(30) = 0.2
    assert c.correct_one(31.0)[0] == pytest.approx(30.8)
    res = c.correct(np.array([9.999, 10.0, 30.0, 30.001, math.nan]))
    assert res.out_of_range.tolist() == [True, False, False, True, True]
    assert math.isnan(res.value[-1])
    assert c.correct_one(math.nan)[3] is True
    for model in ("linear", "polynomial:2"):
        f = make(model)
        # beyond the span a fit is evaluated at the edge, never beyond it
        edge = f.correct_one(30.0)[0]
        assert f.correct_one(35.0)[0] == pytest.approx(edge + 5.0)
        assert f.correct_one(35.0)[3] is True


def test_linear_fit_adds_its_covariance() -> None:
    c = make("linear", resolution=0.0, repeatability=0.0)
    # Weighted LS of reference on indication, w = 1/u² = (10⁴, 2500, 1111.1):
    fit_u = np.array([0.01, 0.02, 0.03])
    x = np.array([10.0, 20.0, 30.0])
    y = np.array([9.9, 20.1, 29.8])
    w = 1 / fit_u**2
    s, sx, sxx, sy, sxy = (
        w.sum(),
        (w * x).sum(),
        (w * x * x).sum(),
        (w * y).sum(),
        (w * x * y).sum(),
    )
    d = s * sxx - sx**2
    a, b = (sxx * sy - sx * sxy) / d, (s * sxy - sx * sy) / d
    var_fit = (sxx + 15.0**2 * s - 2 * 15.0 * sx) / d
    value, u, _, _ = c.correct_one(15.0)
    assert value == pytest.approx(a + b * 15.0, abs=1e-12)
    # u_c² = u_cal² + u_fit² (resolution and repeatability zero here)
    assert u == pytest.approx(math.sqrt(0.015**2 + var_fit), rel=1e-10)


def test_quadratic_through_its_points_is_exact() -> None:
    c = make("polynomial:2")
    for ind, ref in [(10.0, 9.9), (20.0, 20.1), (30.0, 29.8)]:
        assert c.correct_one(ind)[0] == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("model", ["interpolate", "linear", "polynomial:2"])
@settings(max_examples=60, deadline=None)
@given(raw=st.lists(st.floats(-10.0, 50.0, allow_nan=False), min_size=1, max_size=20))
def test_scalar_and_array_paths_agree(model: str, raw: list[float]) -> None:
    c = make(model)
    arr = c.correct(np.array(raw))
    for i, r in enumerate(raw):
        value, u, big_u, out = c.correct_one(r)
        assert value == pytest.approx(float(arr.value[i]), rel=1e-12, abs=1e-12)
        assert u == pytest.approx(float(arr.u[i]), rel=1e-9)
        assert big_u == pytest.approx(float(arr.U[i]), rel=1e-9)
        assert out == bool(arr.out_of_range[i])


def test_identity_without_certificate() -> None:
    c = Corrector.identity(resolution=0.1, repeatability=0.02, limits=(0.0, 100.0), **CHANNEL)
    assert c.certificate is None
    assert c.span == (-math.inf, math.inf)
    # u = √((0.1/√12)² + 0.02²) = √(0.000833333 + 0.0004) = 0.0351188458
    value, u, big_u, out = c.correct_one(42.0)
    assert (value, out) == (42.0, False)
    assert u == pytest.approx(0.0351188458, abs=1e-10)
    assert big_u == pytest.approx(2 * u)
    res = c.correct(np.array([1.0, 2.0]))
    assert res.value.tolist() == [1.0, 2.0]
    assert res.out_of_range.tolist() == [False, False]
    assert c.judge(res.value, res.U) == ["pass", "pass"]
    assert [(label, round(u, 9)) for label, u in c.budget(1.0)] == [
        ("resolution", round(0.1 / SQRT12, 9)),
        ("repeatability", 0.02),
    ]


def test_degrees_of_freedom_give_student_k() -> None:
    # Only the certificate contributes and every point has ν = 16: ν_eff = 16,
    # k = t95(16) = 2.120 or t99(16) = 2.921 (GUM, JCGM 100:2008, Table G.2).
    c95 = make(resolution=0.0, repeatability=0.0, dof=16, coverage_probability=95.0)
    assert c95.dof_eff == 16
    assert round(c95.k, 3) == 2.120
    c99 = make(resolution=0.0, repeatability=0.0, dof=16, coverage_probability=99.0)
    assert round(c99.k, 3) == 2.921
    assert c99.correct_one(20.0)[2] == pytest.approx(c99.k * 0.02)
    # No dof: k is the equipment's coverage factor exactly, whatever p it stands for.
    assert make(coverage_factor=2.0).k == 2.0
    # Welch–Satterthwaite: u_cal = 0.01 (ν = 4) everywhere, repeatability 0.01 (ν = ∞):
    # u_c² = 0.0002, ν_eff = (0.0002)² / (0.01⁴/4) = 4e-8 / 2.5e-9 = 16, so k = t95.45(16).
    c2 = Corrector.build(
        indicated=[10.0, 20.0],
        reference=[10.0, 20.0],
        U=[0.02, 0.02],
        k=2.0,
        dof=[4, 4],
        model="interpolate",
        resolution=0.0,
        repeatability=0.01,
        certificate="C-2",
        **CHANNEL,
    )
    assert c2.dof_eff == 16
    assert c2.k == pytest.approx(2.1685, abs=1e-3)  # t95.45(16)


def test_judge_under_each_rule() -> None:
    c = make(limits=(10.0, 20.0), decision_rule="non_binary")
    values = np.array([15.0, 19.95, 20.05, 25.0])
    assert c.judge(values, np.full(4, 0.1)) == [
        "pass",
        "conditional_pass",
        "conditional_fail",
        "fail",
    ]
    assert c.judge_one(20.05, 0.1) == "conditional_fail"
    g = make(limits=(10.0, None), decision_rule="guarded")
    assert g.judge(np.array([10.05, 10.2]), np.array([0.1, 0.1])) == ["fail", "pass"]
    assert make().judge(np.array([1.0]), np.array([0.1])) == [None]


def test_budget_names_certificate_and_chain() -> None:
    c = make()
    b = c.budget(15.0)
    assert [label for label, _ in b] == ["C-17", "resolution", "repeatability"]
    _, u, big_u, _ = c.correct_one(15.0)
    assert b.u == pytest.approx(u)
    assert math.isclose(b.U, big_u, rel_tol=1e-12)
    assert b.value == pytest.approx(15.0)
    # With the chain: C-17's u (0.015 at r = 15) split into its own part and its
    # standard's (ACC-9, 0.009) and the NMI's (NMI-2, 0.004); the total is unchanged.
    chained = c.budget(15.0, upstream=[ChainLevel("ACC-9", 0.009), ChainLevel("NMI-2", 0.004)])
    labels = dict(chained)
    assert list(labels) == ["C-17", "ACC-9", "NMI-2", "resolution", "repeatability"]
    assert labels["C-17"] == pytest.approx(math.sqrt(0.015**2 - 0.009**2))
    assert labels["ACC-9"] == pytest.approx(math.sqrt(0.009**2 - 0.004**2))
    assert chained.u == pytest.approx(u)
    from GTC import reporting

    gtc = {i.label: i.u for i in reporting.budget(chained.result)}
    assert gtc["NMI-2"] == pytest.approx(0.004)
    fit = make("linear").budget(15.0)
    assert [label for label, _ in fit][:2] == ["C-17", "C-17 fit (linear)"]
    assert fit.u == pytest.approx(make("linear").correct_one(15.0)[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "cubic"}, "model"),
        ({"reference": [1.0, 2.0]}, "one per point"),
        ({"U": [0.1, -0.1, 0.1]}, "negative"),
        ({"k": 0.0}, "positive"),
        ({"indicated": [10.0, 10.0, 30.0]}, "share the indication"),
        ({"indicated": [10.0, math.nan, 30.0]}, "finite"),
        ({"decision_rule": "lenient"}, "decision rule"),
        ({"limits": (5.0, 1.0)}, "below"),
        ({"dof": [0.5, 3.0, 3.0]}, "degrees of freedom"),
        ({"resolution": -0.1}, "resolution"),
        ({"coverage_factor": 0.0}, "coverage factor"),
        ({"model": "polynomial:3"}, "at least 4 points"),
        ({"model": "linear", "U": [0.0, 0.1, 0.1]}, "U > 0"),
    ],
)
def test_bad_certificates_are_calibration_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        make(**change)


def test_indications_too_close_to_interpolate() -> None:
    with pytest.raises(CalibrationError, match="too close"):
        make(indicated=[0.0, 5e-324, 1.0], reference=[0.0, 1.0, 1.0])


def test_single_point_certificate() -> None:
    c = Corrector.build(
        indicated=[100.0],
        reference=[99.98],
        U=[0.01],
        k=[2.0],
        model="interpolate",
        resolution=0.0,
        repeatability=0.0,
        certificate="C-1",
        **CHANNEL,
    )
    assert c.correct_one(100.0) == pytest.approx((99.98, 0.005, 0.01, False))
    value, _, _, out = c.correct_one(101.0)
    assert (round(value, 9), out) == (100.98, True)
    assert c.correct(np.array([100.0])).value.tolist() == pytest.approx([99.98])


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.floats(-1e4, 1e4, allow_nan=False).map(lambda v: round(v, 3)),
            st.floats(-1.0, 1.0, allow_nan=False),
            st.floats(0.0, 0.5, allow_nan=False),
        ),
        min_size=1,
        max_size=12,
        unique_by=lambda t: t[0],
    )
)
def test_interpolation_reproduces_every_point(data: list[tuple[float, float, float]]) -> None:
    # At each calibration point the corrected value is the reference and u_cal its U/k.
    ind = [d[0] for d in data]
    ref = [d[0] - d[1] for d in data]
    big_u = [d[2] for d in data]
    c = Corrector.build(
        indicated=ind,
        reference=ref,
        U=big_u,
        k=2.0,
        model="interpolate",
        resolution=0.0,
        repeatability=0.0,
        certificate="C-H",
        **CHANNEL,
    )
    for x, r, bu in zip(ind, ref, big_u, strict=True):
        value, u, _, out = c.correct_one(x)
        assert value == pytest.approx(r, abs=1e-9)
        assert u == pytest.approx(bu / 2.0, abs=1e-12)
        assert out is False
    assert c.correct_one(min(ind) - 1.0)[3] is True
    assert c.correct_one(max(ind) + 1.0)[3] is True
