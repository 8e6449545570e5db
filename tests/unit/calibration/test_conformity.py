"""MPE tables, tolerance parsing, ILAC G8 decision rules, JCGM 106 p_c, TUR."""

from __future__ import annotations

import math
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calibration.conformity import (
    Tolerance,
    decide,
    decide_many,
    decider,
    instrument_conformity,
    judge_error,
    mpe,
    probability_of_conformity,
    r76_mpe,
    tur,
)
from calibration.errors import CalibrationError

# -- OIML R 76 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load_e", "mpe_e"),
    # class III, e = 1 g: bounds inclusive (OIML R 76-1:2006, 3.5.1, Table 6)
    [(0, 0.5), (500, 0.5), (501, 1.0), (2000, 1.0), (2001, 1.5), (10_000, 1.5)],
)
def test_r76_class_iii_boundaries(load_e: int, mpe_e: float) -> None:
    assert r76_mpe(float(load_e), 1.0, "III", "initial") == mpe_e
    assert r76_mpe(float(load_e), 1.0, "III", "in_service") == 2 * mpe_e


@pytest.mark.parametrize(
    ("cls", "bounds"),
    [("I", (50_000, 200_000)), ("II", (5_000, 20_000)), ("IIII", (50, 200))],
)
def test_r76_other_classes_at_their_bounds(cls: str, bounds: tuple[int, int]) -> None:
    half, one = bounds
    assert r76_mpe(half, 1.0, cls) == 0.5
    assert r76_mpe(half + 1, 1.0, cls) == 1.0
    assert r76_mpe(one, 1.0, cls) == 1.0
    assert r76_mpe(one + 1, 1.0, cls) == 1.5


def test_r76_in_grams_with_e_in_grams_and_float_noise() -> None:
    # class III, e = 0.001 kg: 0.5 kg is exactly 500 e, whatever the binary division gives
    tol = Tolerance.from_table(
        {"oiml_r76": {"class": "III", "e": 0.001, "verification": "initial"}}
    )
    assert mpe(tol, 0.5) == pytest.approx(0.0005)
    assert mpe(tol, 0.501) == pytest.approx(0.001)
    # in service (the default) is twice the initial MPE
    tol_s = Tolerance.from_table({"oiml_r76": {"class": "III", "e": 0.001}})
    assert mpe(tol_s, 0.5) == pytest.approx(0.001)


def test_r76_beyond_the_table_is_an_error() -> None:
    with pytest.raises(CalibrationError, match="beyond"):
        r76_mpe(10_001, 1.0, "III")
    with pytest.raises(CalibrationError, match="class"):
        r76_mpe(1, 1.0, "V")


# -- OIML R 111, EN 837, percentages ----------------------------------------------------------


@pytest.mark.parametrize(
    ("nominal", "unit", "cls", "mpe_mg"),
    [
        # OIML R 111-1:2004 Table 1, the 1 kg, 200 g and 100 g rows
        (1.0, "kg", "E1", 0.5),
        (1000.0, "g", "F2", 16.0),
        (1.0, "kg", "M3", 500.0),
        (200.0, "g", "E2", 0.3),
        (200.0, "g", "M1", 10.0),
        (100.0, "g", "F1", 0.5),
        (100.0, "g", "M2", 16.0),
        (100_000.0, "mg", "E1", 0.05),
    ],
)
def test_r111_rows(nominal: float, unit: str, cls: str, mpe_mg: float) -> None:
    tol = Tolerance.from_table({"oiml_r111": {"class": cls}})
    to_unit = {"kg": 1e-6, "g": 1e-3, "mg": 1.0}[unit]
    assert mpe(tol, nominal, unit) == pytest.approx(mpe_mg * to_unit)


def test_r111_reference_near_its_nominal_value() -> None:
    # The reference is the weight's conventional mass, a little off its nominal value.
    tol = Tolerance.from_table({"oiml_r111": {"class": "F1"}})
    assert mpe(tol, 1000.0021, "g") == pytest.approx(0.005)


def test_r111_unknown_nominal_or_class_is_a_clear_error() -> None:
    tol = Tolerance.from_table({"oiml_r111": {"class": "F1"}})
    with pytest.raises(CalibrationError, match="nominal value of 300 g"):
        mpe(tol, 300.0, "g")
    with pytest.raises(CalibrationError, match="nominal value"):
        mpe(tol, 100.0, "kg")  # above 50 kg: not in the table we carry
    with pytest.raises(CalibrationError, match="class M3"):
        mpe(Tolerance.from_table({"oiml_r111": {"class": "M3"}}), 500.0, "mg")
    with pytest.raises(CalibrationError, match="mass unit"):
        mpe(tol, 1.0, "bar")


def test_en837_class_1_6_on_0_to_10_bar() -> None:
    tol = Tolerance.from_table({"en837_class": 1.6, "span": 10.0})
    # ±1.6 % of the 10 bar span, uniform over the scale
    assert mpe(tol, 0.0) == pytest.approx(0.16)
    assert mpe(tol, 7.3) == pytest.approx(0.16)


def test_percentages_and_fixed_mpe() -> None:
    assert mpe(Tolerance.from_table({"mpe": 0.02}), 123.0) == 0.02
    assert mpe(
        Tolerance.from_table({"mpe_percent_of_span": 0.25, "span": 400.0}), 5.0
    ) == pytest.approx(1.0)
    assert mpe(Tolerance.from_table({"mpe_percent_of_reading": 0.5}), -200.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "exactly one"),
        ({"mpe": 1.0, "mpe_percent_of_reading": 1.0}, "exactly one"),
        ({"mpe_percent_of_span": 1.0}, "needs span"),
        ({"en837_class": 1.6}, "needs span"),
        ({"en837_class": 1.5, "span": 10.0}, "en837_class must be one of"),
        ({"mpe": 1.0, "span": 10.0}, "span is only used"),
        ({"mpe": -1.0}, "greater than 0"),
        ({"mpe": 1.0, "colour": "red"}, "Extra inputs"),
        ({"oiml_r76": {"class": "V", "e": 1.0}}, "oiml_r76.class"),
        ({"oiml_r111": {"class": "E3"}}, "oiml_r111.class"),
    ],
)
def test_tolerance_refuses(table: dict[str, Any], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Tolerance.from_table(table)


def test_tolerance_is_frozen_and_knows_its_kind() -> None:
    tol = Tolerance.from_table({"oiml_r76": {"class": "II", "e": 0.01}})
    assert tol.kind == "oiml_r76"
    with pytest.raises(pydantic.ValidationError):
        tol.mpe = 3.0


# -- decision rules (ILAC G8:09/2019) ---------------------------------------------------------

# Limits [TL, TU] = [9, 11], U = 0.2 throughout.


@pytest.mark.parametrize(
    ("y", "expected"),
    [(9.0, "pass"), (11.0, "pass"), (10.0, "pass"), (11.0001, "fail"), (8.9999, "fail")],
)
def test_simple_acceptance(y: float, expected: str) -> None:
    assert decide(y, 0.2, 9.0, 11.0, "simple") == expected


@pytest.mark.parametrize(
    ("y", "expected"),
    # acceptance region [TL + U, TU − U] = [9.2, 10.8], inclusive
    [
        (9.2, "pass"),
        (10.8, "pass"),
        (10.0, "pass"),
        (10.8001, "fail"),
        (9.1999, "fail"),
        (11.0, "fail"),
    ],
)
def test_guarded_acceptance(y: float, expected: str) -> None:
    assert decide(y, 0.2, 9.0, 11.0, "guarded") == expected


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        (10.0, "pass"),
        (10.8, "pass"),  # exactly U inside
        (10.9, "conditional_pass"),  # inside, within U of TU
        (11.0, "conditional_pass"),  # on the limit
        (9.0, "conditional_pass"),
        (11.1, "conditional_fail"),  # outside by less than U
        (8.85, "conditional_fail"),
        (11.2, "fail"),  # outside by U exactly
        (12.0, "fail"),
        (8.7, "fail"),
    ],
)
def test_non_binary(y: float, expected: str) -> None:
    assert decide(y, 0.2, 9.0, 11.0, "non_binary") == expected


def test_one_sided_and_no_limits() -> None:
    assert decide(100.0, 1.0, None, 100.0, "simple") == "pass"
    assert decide(-1e9, 1.0, None, 100.0, "guarded") == "pass"
    assert decide(99.5, 1.0, None, 100.0, "guarded") == "fail"
    assert decide(0.5, 1.0, 0.0, None, "non_binary") == "conditional_pass"
    assert decide(5.0, 1.0, None, None, "simple") is None
    assert decide(math.nan, 1.0, 0.0, 1.0, "simple") is None
    assert decide_many([10.0, 11.5, 12.0], 0.6, 9.0, 11.0, "non_binary") == [
        "pass",
        "conditional_fail",
        "fail",
    ]
    with pytest.raises(CalibrationError, match="decision rule"):
        decide_many([1.0], 0.1, 0.0, 2.0, "lenient")


def test_guarded_with_u_wider_than_half_the_tolerance_accepts_nothing() -> None:
    assert decide(10.0, 1.5, 9.0, 11.0, "guarded") == "fail"
    assert decide(10.0, 1.5, 9.0, 11.0, "non_binary") == "conditional_pass"


# -- probability of conformity, TUR ------------------------------------------------------------


def test_probability_of_conformity_at_the_limit_is_one_half() -> None:
    # One-sided upper limit, y on it: Φ(0) = 0.5 (JCGM 106 7.2)
    assert probability_of_conformity(10.0, 0.3, None, 10.0) == pytest.approx(0.5)
    assert probability_of_conformity(10.0, 0.3, 10.0, None) == pytest.approx(0.5)


def test_probability_of_conformity_symmetric() -> None:
    # y in the middle of [9, 11], u = 0.5: Φ(2) − Φ(−2) = 0.954499736…
    assert probability_of_conformity(10.0, 0.5, 9.0, 11.0) == pytest.approx(0.9544997361036416)
    # y one u inside TU, far from TL: Φ(1) = 0.841344746…
    assert probability_of_conformity(10.5, 0.5, 0.0, 11.0) == pytest.approx(0.8413447460685429)
    # u = 0: certainty, bounds inclusive
    assert probability_of_conformity(11.0, 0.0, 9.0, 11.0) == 1.0
    assert probability_of_conformity(11.1, 0.0, 9.0, 11.0) == 0.0


def test_tur() -> None:
    # [−0.16, 0.16] bar judged with U95 = 0.02 bar: 0.32 / 0.04 = 8
    assert tur(-0.16, 0.16, 0.02) == pytest.approx(8.0)
    with pytest.raises(CalibrationError):
        tur(1.0, 1.0, 0.1)


# -- instrument conformity ---------------------------------------------------------------------


def test_instrument_conformity_of_as_found_points() -> None:
    # EN 837 class 1.6, 0–10 bar: MPE ±0.16 bar. Errors 0.05, 0.15, −0.10 with U = 0.02.
    tol = Tolerance.from_table({"en837_class": 1.6, "span": 10.0})
    pts: dict[str, Any] = {
        "indicated": [0.05, 5.15, 9.90],
        "reference": [0.0, 5.0, 10.0],
        "U": [0.02, 0.02, 0.02],
    }
    simple = instrument_conformity(**pts, tolerance=tol, rule="simple")
    assert simple.conforms
    assert [p.decision for p in simple.points] == ["pass", "pass", "pass"]
    assert simple.points[1].error == pytest.approx(0.15)
    # guarded: 0.15 > 0.16 − 0.02 fails
    guarded = instrument_conformity(**pts, tolerance=tol, rule="guarded")
    assert not guarded.conforms
    assert guarded.worst == "fail"
    # non-binary: conditional pass still conforms
    nb = instrument_conformity(**pts, tolerance=tol, rule="non_binary")
    assert nb.conforms
    assert nb.worst == "conditional_pass"
    # 0.17 out by less than U: conditional fail → does not conform
    pts["indicated"] = [0.05, 5.17, 9.90]
    assert not instrument_conformity(**pts, tolerance=tol, rule="non_binary").conforms
    assert judge_error(-0.17, 0.02, 0.16, "non_binary") == "conditional_fail"


def test_decisions_with_odd_uncertainties() -> None:
    # An infinite U can never be accepted with a guard band; simple ignores U.
    assert decide(10.0, math.inf, 9.0, 11.0, "guarded") == "fail"
    assert decide(12.0, math.inf, 9.0, 11.0, "simple") == "fail"
    assert decide(10.0, math.inf, 9.0, 11.0, "non_binary") == "conditional_pass"
    assert decide(10.0, math.nan, 9.0, 11.0, "simple") == "pass"
    assert decide(10.0, math.nan, 9.0, 11.0, "guarded") == "fail"


@given(
    y=st.floats(-20.0, 20.0, allow_nan=False),
    big_u=st.floats(0.0, 5.0, allow_nan=False),
    low=st.one_of(st.none(), st.floats(-10.0, -0.1)),
    high=st.one_of(st.none(), st.floats(0.1, 10.0)),
)
def test_non_binary_refines_simple_and_guarded(
    y: float, big_u: float, low: float | None, high: float | None
) -> None:
    nb = decide(y, big_u, low, high, "non_binary")
    simple = decide(y, big_u, low, high, "simple")
    guarded = decide(y, big_u, low, high, "guarded")
    if low is None and high is None:
        assert nb is simple is guarded is None
        return
    assert (nb == "pass") == (guarded == "pass")
    assert (nb in ("pass", "conditional_pass")) == (simple == "pass")


# -- decider: decide with the rule and limits settled once (the gateway's hot path) -----------

_EDGES = [9.0, 11.0, 9.2, 10.8, 10.9, 11.1, 11.2, 8.85, 8.7, 9.1999, 10.8001, 1e300, -1e300]
_EDGES += [math.inf, -math.inf, math.nan, 0.0, -0.0, 10.8 + 1e-15, 9.2 - 1e-15]


@pytest.mark.parametrize("rule", ["simple", "guarded", "non_binary"])
@pytest.mark.parametrize(("low", "high"), [(9.0, 11.0), (None, 11.0), (9.0, None), (None, None)])
def test_decider_equals_decide_on_the_worked_examples(
    rule: str, low: float | None, high: float | None
) -> None:
    f = decider(low, high, rule)
    for y in _EDGES:
        for big_u in (0.0, 0.2, 1.5, math.inf, math.nan):
            assert f(y, big_u) == decide(y, big_u, low, high, rule), (y, big_u)


@given(
    y=st.floats(allow_nan=True),
    big_u=st.floats(0.0, 1e6, allow_nan=False),
    low=st.floats(-1e6, 1e6),
    width=st.floats(0.0, 1e6),
    rule=st.sampled_from(["simple", "guarded", "non_binary"]),
)
def test_decider_equals_decide(y: float, big_u: float, low: float, width: float, rule: str) -> None:
    high = low + width
    assert decider(low, high, rule)(y, big_u) == decide(y, big_u, low, high, rule)
    assert decider(-high, -low, rule)(y, big_u) == decide(y, big_u, -high, -low, rule)


def test_decider_refuses_an_unknown_rule() -> None:
    with pytest.raises(CalibrationError, match="decision rule"):
        decider(0.0, 1.0, "lenient")


def test_the_decision_rules_are_ilac_g8s_three_and_no_other() -> None:
    from calibration import DecisionRule
    from calibration.conformity import DECISION_RULES, check_rule

    assert DECISION_RULES == ("simple", "guarded", "non_binary")
    assert DecisionRule.__args__ == DECISION_RULES  # type: ignore[attr-defined]
    assert [check_rule(r) for r in DECISION_RULES] == list(DECISION_RULES)
    with pytest.raises(CalibrationError, match="unknown decision rule 'shared'"):
        decide(1.0, 0.1, 0.0, 2.0, "shared")  # type: ignore[arg-type]
