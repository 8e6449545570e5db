"""Display rounding (GUM 7.2.6, ILAC P14, EA-4/02): U to 2 significant digits, value alike."""

from __future__ import annotations

import pytest

from calibration.errors import CalibrationError
from calibration.rounding import format_value, round_result, round_uncertainty


@pytest.mark.parametrize(
    ("U", "text"),
    [
        (0.02345, "0.023"),
        (0.0234, "0.023"),
        (0.0235, "0.024"),  # half away from zero, on the decimal the user sees
        (0.0105, "0.011"),
        (0.1, "0.10"),  # trailing zero kept: two significant digits
        (0.0996, "0.10"),  # carried into the next decade: still two digits
        (9.96, "10"),
        (1.234, "1.2"),
        (1234.0, "1200"),
        (99.6, "100"),
        (5e-7, "0.00000050"),
    ],
)
def test_two_significant_digits(U: float, text: str) -> None:
    assert round_uncertainty(U) == text


@pytest.mark.parametrize(
    ("U", "text"),
    [
        (0.023, "0.03"),  # 0.02 would be 13 % lower: round up (EA-4/02)
        (0.016, "0.02"),
        (0.25, "0.3"),
        # to the nearest would be 0.01, lowering U by 29 % (> 5 %): round up (EA-4/02)
        (0.014, "0.02"),
        (0.0106, "0.02"),  # 0.01 would be 5.7 % lower
        (0.0105, "0.01"),  # 0.01 is 4.8 % lower: nearest is fine
        (0.0102, "0.01"),
        (0.0095, "0.01"),
        (0.01, "0.01"),  # exact: no change
        (0.096, "0.1"),  # carried into the next decade
    ],
)
def test_one_significant_digit(U: float, text: str) -> None:
    assert round_uncertainty(U, 1) == text


def test_value_to_the_same_decimal_place() -> None:
    assert format_value(10.05729, 0.0234) == "10.057 ± 0.023"
    assert round_result(10.05729, 0.0234) == ("10.057", "0.023")
    assert format_value(1014.2487, 0.0996) == "1014.25 ± 0.10"
    assert format_value(123456.7, 1234.0) == "123500 ± 1200"
    assert format_value(1.5, 0.25, digits=1) == "1.5 ± 0.3"
    assert format_value(2.0, 0.1, unit="bar") == "2.00 ± 0.10 bar"
    # a tiny negative value rounds to an unsigned zero
    assert format_value(-0.0001, 0.023) == "0.000 ± 0.023"
    assert format_value(-3.14159, 0.0123) == "-3.142 ± 0.012"


def test_never_below_the_cmc() -> None:
    assert round_uncertainty(0.02, cmc=0.025) == "0.025"
    assert round_uncertainty(0.0251, cmc=0.0251) == "0.026"  # 0.025 would be below the CMC
    assert format_value(5.0, 0.01, cmc=0.02) == "5.000 ± 0.020"


def test_u_that_cannot_be_rounded() -> None:
    assert format_value(1.23456789, 0.0) == "1.23457 ± 0"
    with pytest.raises(CalibrationError):
        round_uncertainty(-0.1)
    with pytest.raises(CalibrationError):
        round_uncertainty(0.1, 3)
    assert round_result(float("nan"), 0.1) == ("nan", "0.10")
