"""Display rounding of a result and its uncertainty (GUM 7.2.6, ILAC P14, EA-4/02).

Full precision travels on the wire; only displays round. The expanded uncertainty is
given to at most two significant digits and the value is rounded to the same decimal
place. Rounding is to the nearest (half away from zero), except that U is rounded *up*
when rounding to the nearest would lower it by more than 5 % (EA-4/02 M; this only
happens with one significant digit, e.g. 0.014 → 0.02), and U is never shown below the
laboratory's CMC when one is given (ILAC P14).

Work is done in :class:`decimal.Decimal` from the float's shortest repr, so 0.0105 is
the decimal 0.0105 the user sees, not the binary 0.01049999….
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from calibration.errors import CalibrationError

__all__ = ["format_value", "round_result", "round_uncertainty"]

# Rounding U down by more than this fraction is not allowed (EA-4/02 M): round up.
MAX_DOWN = Decimal("0.05")


def _dec(x: float) -> Decimal:
    return Decimal(repr(float(x)))


def _quantum(u: Decimal, digits: int) -> Decimal:
    """The decimal place (as a power of ten) of the last of ``digits`` significant digits."""
    return Decimal(1).scaleb(u.adjusted() - digits + 1)


def _round_u(U: float, digits: int, cmc: float | None) -> tuple[Decimal, Decimal]:
    """U rounded (as a Decimal) and the quantum of its last shown digit."""
    if digits not in (1, 2):
        raise CalibrationError(f"U is shown with 1 or 2 significant digits (got {digits})")
    if not (U > 0.0 and math.isfinite(U)):
        raise CalibrationError(f"U must be positive and finite to round (got {U!r})")
    u = _dec(U)
    floor = None
    if cmc is not None:
        if not (cmc >= 0.0 and math.isfinite(cmc)):
            raise CalibrationError(f"CMC must be finite and >= 0 (got {cmc!r})")
        floor = _dec(cmc)
        u = max(u, floor)
    q = _quantum(u, digits)
    r = u.quantize(q, rounding=ROUND_HALF_UP)
    if r < u * (1 - MAX_DOWN) or (floor is not None and r < floor):
        r = u.quantize(q, rounding=ROUND_CEILING)
    if r.adjusted() > u.adjusted():
        # Carried into a new decade (0.0996 → 0.100, 9.96 → 10.0): keep ``digits`` digits.
        q = _quantum(r, digits)
        r = r.quantize(q, rounding=ROUND_CEILING)
    return r, q


def _plain(d: Decimal) -> str:
    s = format(d, "f")
    if d == 0 and s.startswith("-"):
        s = s[1:]
    return s


def round_uncertainty(U: float, digits: int = 2, *, cmc: float | None = None) -> str:
    """U to ``digits`` (1 or 2) significant digits, as shown: 0.02345 → ``"0.023"``."""
    r, q = _round_u(U, digits, cmc)
    return _plain(r.quantize(q)) if q < 1 else _plain(r.quantize(Decimal(1)))


def round_result(
    value: float, U: float, digits: int = 2, *, cmc: float | None = None
) -> tuple[str, str]:
    """(value, U) as shown: U to ``digits`` significant digits, value to the same place."""
    r, q = _round_u(U, digits, cmc)
    u_text = round_uncertainty(U, digits, cmc=cmc)
    if not math.isfinite(value):
        return (repr(float(value)), u_text)
    v = _dec(value).quantize(q, rounding=ROUND_HALF_UP)
    v_text = _plain(v) if q < 1 else _plain(v.quantize(Decimal(1)))
    del r
    return v_text, u_text


def format_value(
    value: float,
    U: float,
    *,
    unit: str | None = None,
    digits: int = 2,
    cmc: float | None = None,
) -> str:
    """``"10.057 ± 0.023"`` (and `` g`` when a unit is given) for value 10.05729, U 0.0234.

    U of zero or not finite cannot be rounded: the value is shown with six significant
    digits and U as given.
    """
    tail = f" {unit}" if unit else ""
    if not (U > 0.0 and math.isfinite(U)):
        return f"{value:.6g} ± {U:g}{tail}"
    v, u = round_result(value, U, digits, cmc=cmc)
    return f"{v} ± {u}{tail}"
