"""Conformity: maximum permissible errors, decision rules, probability of conformity.

- Decision rules (ILAC G8:09/2019), for a value y with expanded uncertainty U against
  tolerance limits [TL, TU] (either side may be open):

  ``simple``      pass when TL ≤ y ≤ TU (guard band w = 0), else fail;
  ``guarded``     pass when TL + U ≤ y ≤ TU − U (w = U), else fail;
  ``non_binary``  ``pass`` inside [TL + U, TU − U]; ``conditional_pass`` inside [TL, TU]
                  but within U of a limit; ``conditional_fail`` outside by less than U;
                  ``fail`` outside by U or more.

  Every acceptance bound is inclusive: a value exactly on a limit is inside it.
- Probability of conformity (JCGM 106:2012, normal PDF):
  p_c = Φ((TU − y)/u) − Φ((TL − y)/u).
- Test uncertainty ratio (ANSI/NCSL Z540.3 handbook): TUR = (TU − TL) / (2·U₉₅).
- Maximum permissible errors: a fixed ±MPE, a percentage of span or of
  reading, an EN 837-1 accuracy class (percent of span), OIML R 76-1 (weighing
  instruments, in verification scale intervals e, bounds inclusive, in service twice the
  initial MPE) and OIML R 111-1 (weights from 1 mg to 50 kg, see :data:`R111_MPE_MG`).
- Instrument conformity: every as-found point's error (indicated − reference) within
  ±MPE(reference) under the channel's decision rule, with the point's own U.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from calibration.errors import CalibrationError

__all__ = [
    "DECISION_RULES",
    "EN837_CLASSES",
    "INDETERMINATE",
    "OUTCOMES",
    "R76_BANDS",
    "R111_MPE_MG",
    "Decision",
    "DecisionRule",
    "OimlR76",
    "OimlR111",
    "PointVerdict",
    "Tolerance",
    "decide",
    "decide_many",
    "decider",
    "instrument_conformity",
    "judge_error",
    "mpe",
    "probability_of_conformity",
    "tur",
    "withheld",
]

Decision = Literal["pass", "conditional_pass", "conditional_fail", "fail"]
#: The decision rules of ILAC G8:09/2019 a channel may use (ARCHITECTURE.md 4.2).
DecisionRule = Literal["simple", "guarded", "non_binary"]
DECISION_RULES: tuple[DecisionRule, ...] = get_args(DecisionRule)
OUTCOMES: tuple[str, ...] = ("pass", "conditional_pass", "conditional_fail", "fail")
ACCEPTED: frozenset[str] = frozenset({"pass", "conditional_pass"})
# The conformity of a value no decision can rest on: outside the calibrated span (not
# extrapolated, so its U does not hold), or corrected through an untraceable chain.
INDETERMINATE = "indeterminate"
_SLACK = 1e-12


# -- decision rules -------------------------------------------------------------------------


def check_rule(rule: str) -> DecisionRule:
    """``rule`` as a :data:`DecisionRule`; CalibrationError when it is none of them."""
    for known in DECISION_RULES:
        if rule == known:
            return known
    raise CalibrationError(f"unknown decision rule {rule!r}: use {', '.join(DECISION_RULES)}")


def decide(
    y: float, U: float, low: float | None, high: float | None, rule: DecisionRule = "simple"
) -> str | None:
    """The ILAC G8 decision on y ± U against [low, high]; ``None`` when it cannot be made.

    ``None`` when there are no limits or y is not a number. An open side is ``None``.
    Plain Python arithmetic (no numpy) so that it is cheap per value.
    """
    if (low is None and high is None) or y != y:
        return None
    # Distance inside the nearest limit (negative when outside): the whole decision.
    inside = math.inf
    scale = abs(y)
    if high is not None:
        inside = high - y
        scale = max(scale, abs(high))
    if low is not None:
        inside = min(inside, y - low)
        scale = max(scale, abs(low))
    # Bounds are inclusive, and a value on a bound in decimal (10.8 against 11 − 0.2) must
    # not fall off it by the last bit of binary arithmetic: compare with a slack of a few
    # thousand ulps of the values involved (y and the limits), far below any metrological meaning.
    slack = _SLACK * scale
    if rule == "simple":
        return "pass" if inside >= -slack else "fail"
    if rule == "guarded":
        return "pass" if inside >= U - slack else "fail"
    if rule == "non_binary":
        if inside >= U - slack:
            return "pass"
        if inside >= -slack:
            return "conditional_pass"
        if -inside < U - slack:
            return "conditional_fail"
        return "fail"
    check_rule(rule)
    raise AssertionError("unreachable")  # pragma: no cover


def _no_decision(y: float, U: float) -> str | None:
    return None


def _indeterminate(y: float, U: float) -> str | None:
    return INDETERMINATE


def withheld() -> Callable[[float, float], str | None]:
    """The decider of a channel whose values support no decision (untraceable)."""
    return _indeterminate


def decider(
    low: float | None, high: float | None, rule: DecisionRule = "simple"
) -> Callable[[float, float], str | None]:
    """``f(y, U) == decide(y, U, low, high, rule)`` for every y and U, cheaper per call.

    For the hot path (one decision per value): the rule and the limits' part of the slack
    are settled once. With both limits the arithmetic is :func:`decide`'s, step for step
    (so the results are the same to the bit); with one open side it is :func:`decide`.
    """
    check_rule(rule)
    if low is None and high is None:
        return _no_decision
    if low is None or high is None:
        lo, hi, rl = low, high, rule
        return lambda y, U: decide(y, U, lo, hi, rl)
    tl, tu = low, high
    # decide's scale is max(|y|, |high|, |low|): the limits' part, taken once
    lim = max(abs(tu), abs(tl))

    simple, guarded = rule == "simple", rule == "guarded"

    def two_sided(y: float, U: float) -> str | None:
        if y != y:
            return None
        inside = tu - y
        d = y - tl
        if d < inside:  # min(inside, d)
            inside = d
        a = abs(y)
        slack = _SLACK * (a if a > lim else lim)
        if simple:
            return "pass" if inside >= -slack else "fail"
        if inside >= U - slack:
            return "pass"
        if guarded:
            return "fail"
        if inside >= -slack:  # non-binary from here
            return "conditional_pass"
        if -inside < U - slack:
            return "conditional_fail"
        return "fail"

    return two_sided


def decide_many(
    y: ArrayLike, U: ArrayLike, low: float | None, high: float | None, rule: DecisionRule = "simple"
) -> list[str | None]:
    """:func:`decide` for each (y, U) pair (U broadcast against y)."""
    check_rule(rule)
    ys = np.asarray(y, dtype=float)
    us = np.broadcast_to(np.asarray(U, dtype=float), ys.shape)
    if low is None and high is None:
        return [None] * ys.size
    return [
        decide(a, b, low, high, rule)
        for a, b in zip(ys.ravel().tolist(), us.ravel().tolist(), strict=True)
    ]


def judge_error(error: float, U: float, limit: float, rule: DecisionRule = "simple") -> str | None:
    """The decision on an error against ±limit (an MPE) with the point's own U."""
    return decide(error, U, -limit, limit, rule)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def probability_of_conformity(y: float, u: float, low: float | None, high: float | None) -> float:
    """p_c = Φ((TU − y)/u) − Φ((TL − y)/u) for a normal PDF (JCGM 106:2012, 7.2).

    An open side contributes Φ(±∞). With u = 0 the answer is 1 inside the limits
    (bounds inclusive) and 0 outside.
    """
    if low is None and high is None:
        raise CalibrationError("probability of conformity needs at least one limit")
    if not u >= 0.0:
        raise CalibrationError(f"u must be >= 0 (got {u!r})")
    if u == 0.0:
        ok = (low is None or y >= low) and (high is None or y <= high)
        return 1.0 if ok else 0.0
    upper = 1.0 if high is None else _phi((high - y) / u)
    lower = 0.0 if low is None else _phi((low - y) / u)
    return max(0.0, upper - lower)


def tur(low: float, high: float, U95: float) -> float:
    """Test uncertainty ratio (TU − TL) / (2·U₉₅)."""
    if not high > low:
        raise CalibrationError(f"TUR needs TL < TU (got {low!r}, {high!r})")
    if not U95 > 0.0:
        raise CalibrationError(f"TUR needs U95 > 0 (got {U95!r})")
    return (high - low) / (2.0 * U95)


# -- maximum permissible errors -------------------------------------------------------------

EN837_CLASSES: tuple[float, ...] = (0.1, 0.25, 0.6, 1.0, 1.6, 2.5, 4.0)

# OIML R 76-1, initial verification: per class, (upper bound in e inclusive, MPE in e).
# The last band of classes II-IIII ends at the class's largest number of intervals; a
# load beyond it has no MPE in the table (class I has no upper bound).
R76_BANDS: dict[str, tuple[tuple[float, float], ...]] = {
    "I": ((50_000, 0.5), (200_000, 1.0), (math.inf, 1.5)),
    "II": ((5_000, 0.5), (20_000, 1.0), (100_000, 1.5)),
    "III": ((500, 0.5), (2_000, 1.0), (10_000, 1.5)),
    "IIII": ((50, 0.5), (200, 1.0), (1_000, 1.5)),
}

# OIML R 111-1:2004 Table 1, MPE (mg) by nominal value (g), classes E1-M3 from 1 mg to
# 50 kg. The 1 kg, 200 g and 100 g rows come from the secondary transcription the project
# started from; the others were checked against two independent secondary transcriptions (a weight maker's table and a
# test-weight selection guide) that agree with each other. Rows above 50 kg (and the
# classes M1-2, M2-3 that exist only there) are left out: such a nominal value raises
# CalibrationError rather than guess. A class with no MPE at a nominal value (M2 below
# 100 mg, M3 below 1 g) is absent from that row.
_R111_CLASSES = ("E1", "E2", "F1", "F2", "M1", "M2", "M3")
_R111_ROWS: tuple[tuple[float, tuple[float | None, ...]], ...] = (
    (50_000.0, (25, 80, 250, 800, 2500, 8000, 25000)),
    (20_000.0, (10, 30, 100, 300, 1000, 3000, 10000)),
    (10_000.0, (5.0, 16, 50, 160, 500, 1600, 5000)),
    (5_000.0, (2.5, 8.0, 25, 80, 250, 800, 2500)),
    (2_000.0, (1.0, 3.0, 10, 30, 100, 300, 1000)),
    (1_000.0, (0.5, 1.6, 5.0, 16, 50, 160, 500)),
    (500.0, (0.25, 0.8, 2.5, 8.0, 25, 80, 250)),
    (200.0, (0.10, 0.3, 1.0, 3.0, 10, 30, 100)),
    (100.0, (0.05, 0.16, 0.5, 1.6, 5.0, 16, 50)),
    (50.0, (0.03, 0.10, 0.3, 1.0, 3.0, 10, 30)),
    (20.0, (0.025, 0.08, 0.25, 0.8, 2.5, 8.0, 25)),
    (10.0, (0.020, 0.06, 0.20, 0.6, 2.0, 6.0, 20)),
    (5.0, (0.016, 0.05, 0.16, 0.5, 1.6, 5.0, 16)),
    (2.0, (0.012, 0.04, 0.12, 0.4, 1.2, 4.0, 12)),
    (1.0, (0.010, 0.03, 0.10, 0.3, 1.0, 3.0, 10)),
    (0.5, (0.008, 0.025, 0.08, 0.25, 0.8, 2.5, None)),
    (0.2, (0.006, 0.020, 0.06, 0.20, 0.6, 2.0, None)),
    (0.1, (0.005, 0.016, 0.05, 0.16, 0.5, 1.6, None)),
    (0.05, (0.004, 0.012, 0.04, 0.12, 0.4, None, None)),
    (0.02, (0.003, 0.010, 0.03, 0.10, 0.3, None, None)),
    (0.01, (0.003, 0.008, 0.025, 0.08, 0.25, None, None)),
    (0.005, (0.003, 0.006, 0.020, 0.06, 0.20, None, None)),
    (0.002, (0.003, 0.006, 0.020, 0.06, 0.20, None, None)),
    (0.001, (0.003, 0.006, 0.020, 0.06, 0.20, None, None)),
)
R111_MPE_MG: dict[float, dict[str, float]] = {
    g: {c: float(v) for c, v in zip(_R111_CLASSES, row, strict=True) if v is not None}
    for g, row in _R111_ROWS
}

# Mass units a weight's nominal value may be in, as grams per unit.
_GRAMS: dict[str, float] = {
    "kg": 1000.0,
    "g": 1.0,
    "mg": 1e-3,
    "µg": 1e-6,
    "μg": 1e-6,
    "ug": 1e-6,
    "t": 1e6,
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class OimlR76(_Frozen):
    """OIML R 76-1 accuracy class, verification scale interval e and verification stage."""

    class_: Literal["I", "II", "III", "IIII"] = Field(alias="class")
    e: float = Field(gt=0, allow_inf_nan=False)
    verification: Literal["initial", "in_service"] = "in_service"


class OimlR111(_Frozen):
    """OIML R 111-1 weight class (the nominal value is each point's reference)."""

    class_: Literal["E1", "E2", "F1", "F2", "M1", "M1-2", "M2", "M2-3", "M3"] = Field(alias="class")


class Tolerance(_Frozen):
    """A channel's ``tolerance`` table: exactly one variant of ARCHITECTURE.md 4.2."""

    mpe: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    mpe_percent_of_span: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    mpe_percent_of_reading: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    en837_class: float | None = None
    span: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    oiml_r76: OimlR76 | None = None
    oiml_r111: OimlR111 | None = None

    @model_validator(mode="after")
    def _one_variant(self) -> Tolerance:
        kinds = [k for k in _KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(_KINDS)} (got {', '.join(kinds) or 'none'})"
            )
        if self.en837_class is not None and self.en837_class not in EN837_CLASSES:
            raise ValueError(
                "en837_class must be one of "
                f"{', '.join(f'{c:g}' for c in EN837_CLASSES)} (got {self.en837_class:g})"
            )
        needs_span = kinds[0] in ("mpe_percent_of_span", "en837_class")
        if needs_span and self.span is None:
            raise ValueError(f"{kinds[0]} needs span")
        if not needs_span and self.span is not None:
            raise ValueError("span is only used with mpe_percent_of_span or en837_class")
        return self

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Tolerance:
        """Parse a TOML ``tolerance`` table; a bad one is a :class:`CalibrationError`."""
        try:
            return cls.model_validate(dict(table))
        except ValidationError as exc:
            msgs = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msgs.append(f"tolerance{'.' + loc if loc else ''}: {err['msg']}")
            raise CalibrationError("; ".join(msgs)) from exc

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) is not None)

    def mpe_at(self, reference: float, unit: str | None = None) -> float:
        """The MPE (±, in the channel's unit) at ``reference``; see :func:`mpe`."""
        return mpe(self, reference, unit)


_KINDS = (
    "mpe",
    "mpe_percent_of_span",
    "mpe_percent_of_reading",
    "en837_class",
    "oiml_r76",
    "oiml_r111",
)


def r76_mpe(load: float, e: float, cls: str, verification: str = "initial") -> float:
    """OIML R 76-1 MPE (±, in the unit of ``e``) at ``load``, bounds inclusive."""
    bands = R76_BANDS.get(cls)
    if bands is None:
        raise CalibrationError(f"unknown OIML R76 class {cls!r}: use I, II, III or IIII")
    if not e > 0.0:
        raise CalibrationError(f"e must be positive (got {e!r})")
    if verification not in ("initial", "in_service"):
        raise CalibrationError(f"verification must be initial or in_service (got {verification!r})")
    m = abs(load) / e
    factor = 2.0 if verification == "in_service" else 1.0
    for bound, n_e in bands:
        # Loads are whole multiples of e; forgive float noise such as 500.00000000000006.
        if m <= bound * (1.0 + 1e-9):
            return factor * n_e * e
    raise CalibrationError(
        f"a load of {m:g} e is beyond OIML R76 class {cls}'s table (max {bands[-1][0]:g} e)"
    )


def r111_nominal_g(mass_g: float) -> float | None:
    """The OIML R 111 nominal value (g) a reference mass belongs to, or None.

    A point's reference is the weight's (conventional) mass, close to but not exactly its
    nominal value; it belongs to the nominal value within ±20 % of it. Neighbouring
    nominal values differ by a factor of at least 2, so the bands never overlap.
    """
    m = abs(mass_g)
    for g in R111_MPE_MG:
        if abs(m - g) <= R111_NOMINAL_TOLERANCE * g:
            return g
    return None


R111_NOMINAL_TOLERANCE = 0.2


def r111_mpe_mg(nominal_g: float, cls: str) -> float:
    """OIML R 111-1 MPE in mg of a weight of ``nominal_g`` grams in class ``cls``."""
    key = r111_nominal_g(nominal_g)
    if key is None:
        raise CalibrationError(
            f"no OIML R111 MPE for a nominal value of {nominal_g:g} g "
            "(the table covers 1 mg to 50 kg in the 1-2-5 series)"
        )
    row = R111_MPE_MG[key]
    if cls not in row:
        raise CalibrationError(
            f"no OIML R111 class {cls} MPE for a nominal value of {key:g} g "
            f"(classes there: {', '.join(row)})"
        )
    return row[cls]


def mpe(tolerance: Tolerance, reference: float, unit: str | None = None) -> float:
    """The maximum permissible error (±, in the channel's unit) at ``reference``.

    ``unit`` is needed only for OIML R 111 (the nominal value is converted to grams and
    the MPE from mg back to ``unit``; a mass unit of kg, g, mg, µg or t).
    """
    t = tolerance
    if t.mpe is not None:
        return t.mpe
    if t.mpe_percent_of_span is not None:
        assert t.span is not None
        return t.mpe_percent_of_span / 100.0 * t.span
    if t.mpe_percent_of_reading is not None:
        return t.mpe_percent_of_reading / 100.0 * abs(reference)
    if t.en837_class is not None:
        assert t.span is not None
        return t.en837_class / 100.0 * t.span
    if t.oiml_r76 is not None:
        r = t.oiml_r76
        return r76_mpe(reference, r.e, r.class_, r.verification)
    assert t.oiml_r111 is not None
    if unit is None or unit.strip() not in _GRAMS:
        raise CalibrationError(f"OIML R111 needs a mass unit ({', '.join(_GRAMS)}); got {unit!r}")
    g = _GRAMS[unit.strip()]
    return r111_mpe_mg(reference * g, t.oiml_r111.class_) * 1e-3 / g


# -- instrument conformity ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointVerdict:
    """One as-found point judged: its error, MPE, U and the decision."""

    reference: float
    indicated: float
    error: float
    mpe: float
    U: float
    decision: str


@dataclass(frozen=True, slots=True)
class InstrumentConformity:
    """Whether an instrument conforms: every point accepted (pass or conditional pass)."""

    conforms: bool
    points: tuple[PointVerdict, ...]

    @property
    def worst(self) -> str:
        """The worst decision over the points (``pass`` when there are none)."""
        return max((p.decision for p in self.points), key=OUTCOMES.index, default="pass")


def instrument_conformity(
    *,
    indicated: Sequence[float],
    reference: Sequence[float],
    U: Sequence[float],
    tolerance: Tolerance,
    rule: DecisionRule = "simple",
    unit: str | None = None,
) -> InstrumentConformity:
    """Judge as-found points: error = indicated − reference within ±MPE(reference).

    Each point is judged under ``rule`` with its own U. The instrument conforms when every
    point is ``pass`` or ``conditional_pass`` (a non-binary conditional pass is inside the
    MPE; a conditional fail is not).
    """
    check_rule(rule)
    if not len(indicated) == len(reference) == len(U):
        raise CalibrationError("indicated, reference and U need one value per point")
    verdicts = []
    for ind, ref, uu in zip(indicated, reference, U, strict=True):
        limit = mpe(tolerance, ref, unit)
        err = ind - ref
        d = judge_error(err, uu, limit, rule)
        verdicts.append(PointVerdict(ref, ind, err, limit, uu, d or "fail"))
    ok = all(v.decision in ACCEPTED for v in verdicts)
    return InstrumentConformity(ok, tuple(verdicts))
