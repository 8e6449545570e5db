"""The Corrector: one equipment channel's certificate, prepared for the hot path.

Built once per channel from the certificate in force (the registry does that), then
called per reading. :meth:`Corrector.correct` takes an array and does a handful of
vectorised numpy calls; :meth:`Corrector.correct_one` takes one float and does plain
Python arithmetic on lists prepared at build (``bisect`` plus a few multiplications):
one numpy call per scalar costs more than the arithmetic it replaces (bench/README.md).

For a raw reading r (ARCHITECTURE.md 4.2):

- corrected value y = r − e(r), e from the certificate's model (see
  :mod:`calibration.correction`);
- u_c² = u_cal(r)² + u_fit(r)² + (d/(2√3))² + s_rep², with u_cal(r) the points' U/k
  interpolated linearly in the indication, u_fit the fit's covariance propagated to the
  prediction (zero for ``interpolate``), d the resolution and s_rep the repeatability.
  For fits, u_cal is kept as well as u_fit on purpose: the points' U mostly comes from
  one reference standard, so their errors are correlated, which a least-squares fit that
  weights them as independent would average away;
- U = k·u_c. k is the equipment's coverage factor, or, when the certificate gives
  degrees of freedom, k = t_p(ν_eff) with p the coverage probability of that factor
  (k = 2 → 95.45 %) and ν_eff by Welch–Satterthwaite, truncated down. One k serves the
  whole channel: the one of the smallest ν_eff over the span (evaluated at each point and
  midway between neighbours), so no reading is under-covered.

Out of range: a raw value outside [min indicated, max indicated] is never extrapolated.
Its value is r − e(edge) (the correction at the nearest edge) with u at that edge, and it
is flagged ``out_of_range``; the gateway marks such readings ``uncertain``. NaN is never
inside the span (flagged, value NaN). An identity corrector (no certificate) has the span
(−inf, +inf), value = raw and u_c² = (d/(2√3))² + s_rep².
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from calibration import uncertainty as unc
from calibration.conformity import DecisionRule, check_rule, decide
from calibration.correction import Fit, check_points, fit_polynomial, horner, parse_model
from calibration.errors import CalibrationError

__all__ = ["Corrected", "Corrector"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Corrected:
    """Corrected values of an array of raw readings, element by element."""

    value: FloatArray
    u: FloatArray
    U: FloatArray
    out_of_range: NDArray[np.bool_]


def _array(x: ArrayLike | None, n: int, name: str) -> FloatArray:
    a = np.asarray(x, dtype=float)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.ndim != 1:
        raise CalibrationError(f"{name} must be one-dimensional")
    return a


class Corrector:
    """Corrects raw readings of one channel through one certificate (or none).

    Use :meth:`build` or :meth:`identity`; attributes are read-only by convention.
    """

    __slots__ = (
        "_centre",
        "_coef",
        "_const2",
        "_dof",
        "_errs",
        "_errs_arr",
        "_fit",
        "_hi",
        "_inv_scale",
        "_lo",
        "_rep",
        "_res_u",
        "_slope_e",
        "_slope_u",
        "_uc",
        "_uc_arr",
        "_var_poly",
        "_xs",
        "_xs_arr",
        "certificate",
        "channel",
        "coverage_probability",
        "decision_rule",
        "dof_eff",
        "equipment",
        "k",
        "limits",
        "model",
        "span",
        "unit",
    )

    certificate: str | None
    channel: str
    coverage_probability: float
    decision_rule: DecisionRule
    dof_eff: float
    equipment: str
    k: float
    limits: tuple[float | None, float | None] | None
    model: str
    span: tuple[float, float]
    unit: str

    _centre: float
    _coef: list[float]
    _const2: float
    _dof: list[float]
    _errs: list[float]
    _errs_arr: FloatArray
    _fit: Fit | None
    _hi: float
    _inv_scale: float
    _lo: float
    _rep: float
    _res_u: float
    _slope_e: list[float]
    _slope_u: list[float]
    _uc: list[float]
    _uc_arr: FloatArray
    _var_poly: list[float]
    _xs: list[float]
    _xs_arr: FloatArray

    def __init__(self) -> None:  # use build() or identity()
        self.certificate = None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        *,
        indicated: ArrayLike,
        reference: ArrayLike,
        U: ArrayLike,
        k: ArrayLike,
        model: str,
        resolution: float,
        repeatability: float,
        coverage_factor: float = 2.0,
        dof: ArrayLike | None = None,
        limits: tuple[float | None, float | None] | None = None,
        decision_rule: DecisionRule = "simple",
        unit: str,
        certificate: str | None,
        equipment: str,
        channel: str,
        coverage_probability: float | None = None,
    ) -> Corrector:
        """A Corrector from a certificate's points (any order; sorted by indication here).

        ``U``, ``k`` and ``dof`` are per point (a scalar is broadcast); ``dof`` entries
        may be ``inf`` (a point given without degrees of freedom). ``coverage_probability``
        defaults to that of ``coverage_factor`` for a normal distribution (95.45 % for 2).
        Bad data is a :class:`CalibrationError`.
        """
        ind = _array(indicated, 1, "indicated")
        n = ind.size
        ref = _array(reference, n, "reference")
        big_u = _array(U, n, "U")
        kk = _array(k, n, "k")
        check_points(ind, ref, big_u, kk)
        degree = parse_model(model)
        order = np.argsort(ind, kind="stable")
        ind, ref, big_u, kk = ind[order], ref[order], big_u[order], kk[order]
        u_pts = big_u / kk
        if dof is None:
            dofs = np.full(n, math.inf)
        else:
            dofs = _array(dof, n, "dof")
            if dofs.size != n:
                raise CalibrationError(f"dof has {dofs.size} values for {n} points")
            if not bool(np.all(dofs >= 1.0)):  # refuses NaN too
                raise CalibrationError("degrees of freedom must be >= 1 (or inf)")
            dofs = dofs[order]

        self = cls._common(
            resolution=resolution,
            repeatability=repeatability,
            coverage_factor=coverage_factor,
            coverage_probability=coverage_probability,
            limits=limits,
            decision_rule=decision_rule,
            unit=unit,
            certificate=certificate,
            equipment=equipment,
            channel=channel,
        )
        self.model = model.strip()
        self.span = (float(ind[0]), float(ind[-1]))
        self._lo, self._hi = self.span
        self._xs_arr = ind
        self._xs = ind.tolist()
        self._uc_arr = u_pts
        self._uc = u_pts.tolist()
        self._dof = dofs.tolist()
        self._slope_u = _slopes(self._xs, self._uc)
        if degree == 0:
            errs = ind - ref
            self._errs_arr = errs
            self._errs = errs.tolist()
            self._slope_e = _slopes(self._xs, self._errs)
            self._fit = None
        else:
            fit = fit_polynomial(ind, ref, u_pts, degree)
            self._fit = fit
            self._coef = fit.coef[::-1].tolist()  # highest first, for Horner
            self._var_poly = fit.var_poly[::-1].tolist()
            self._centre = fit.centre
            self._inv_scale = 1.0 / fit.scale
        self.dof_eff = self._min_dof_eff()
        if math.isinf(self.dof_eff):
            self.k = float(coverage_factor)
        else:
            self.k = unc.coverage_factor(self.dof_eff, self.coverage_probability)
        return self

    @classmethod
    def identity(
        cls,
        *,
        resolution: float,
        repeatability: float,
        coverage_factor: float = 2.0,
        limits: tuple[float | None, float | None] | None = None,
        decision_rule: DecisionRule = "simple",
        unit: str,
        equipment: str,
        channel: str,
        coverage_probability: float | None = None,
    ) -> Corrector:
        """A Corrector with no certificate: value = raw, u from resolution and repeatability."""
        self = cls._common(
            resolution=resolution,
            repeatability=repeatability,
            coverage_factor=coverage_factor,
            coverage_probability=coverage_probability,
            limits=limits,
            decision_rule=decision_rule,
            unit=unit,
            certificate=None,
            equipment=equipment,
            channel=channel,
        )
        self.model = "identity"
        self.span = (-math.inf, math.inf)
        self._lo, self._hi = self.span
        self._fit = None
        self.dof_eff = math.inf
        self.k = float(coverage_factor)
        return self

    @classmethod
    def _common(
        cls,
        *,
        resolution: float,
        repeatability: float,
        coverage_factor: float,
        coverage_probability: float | None,
        limits: tuple[float | None, float | None] | None,
        decision_rule: DecisionRule,
        unit: str,
        certificate: str | None,
        equipment: str,
        channel: str,
    ) -> Corrector:
        if not (coverage_factor > 0.0 and math.isfinite(coverage_factor)):
            raise CalibrationError(f"coverage factor must be positive (got {coverage_factor!r})")
        check_rule(decision_rule)
        if limits is not None:
            low, high = limits
            if low is not None and high is not None and not low < high:
                raise CalibrationError(f"limits: low ({low!r}) must be below high ({high!r})")
            if low is None and high is None:
                limits = None
        if not (repeatability >= 0.0 and math.isfinite(repeatability)):
            raise CalibrationError(f"repeatability must be finite and >= 0 (got {repeatability!r})")
        self = cls()
        self.certificate = certificate
        self.unit = unit
        self.equipment = equipment
        self.channel = channel
        self.decision_rule = decision_rule
        self.limits = limits
        self.coverage_probability = (
            unc.coverage_probability(coverage_factor)
            if coverage_probability is None
            else float(coverage_probability)
        )
        if not 0.0 < self.coverage_probability < 100.0:
            raise CalibrationError("coverage probability must be in (0, 100) %")
        self._res_u = unc.resolution(resolution)
        self._rep = float(repeatability)
        self._const2 = self._res_u**2 + self._rep**2
        return self

    def _min_dof_eff(self) -> float:
        """The smallest ν_eff (truncated) over the points and the midpoints between them."""
        if all(math.isinf(d) for d in self._dof):
            return math.inf
        xs = self._xs
        probes = list(xs) + [0.5 * (a + b) for a, b in itertools.pairwise(xs)]
        worst = math.inf
        for x in probes:
            comps = self.components(x)
            worst = min(worst, unc.effective_dof([c.u for c in comps], [c.dof for c in comps]))
        return worst

    # -- the hot path ---------------------------------------------------------------------

    def correct(self, raw: ArrayLike) -> Corrected:
        """Correct an array of raw readings (vectorised; shape kept)."""
        x = np.asarray(raw, dtype=float)
        lo, hi = self._lo, self._hi
        out = ~((x >= lo) & (x <= hi))
        if self.model == "identity":
            u = np.full(x.shape, math.sqrt(self._const2))
            return Corrected(x.copy(), u, self.k * u, out)
        xc = np.clip(x, lo, hi)
        ucal = np.interp(xc, self._xs_arr, self._uc_arr)
        var = ucal * ucal + self._const2
        if self._fit is None:
            value = x - np.interp(xc, self._xs_arr, self._errs_arr)
        else:
            value = x - xc + self._fit.predict(xc)
            var = var + self._fit.variance(xc)
        u = np.sqrt(var)
        return Corrected(value, u, self.k * u, out)

    def correct_one(self, raw: float) -> tuple[float, float, float, bool]:
        """(value, u, U, out_of_range) of one raw reading, in plain Python."""
        x = raw
        out = False
        if x < self._lo:
            x = self._lo
            out = True
        elif x > self._hi:
            x = self._hi
            out = True
        elif x != x:
            out = True
        if self.model == "identity":
            u = math.sqrt(self._const2)
            return float(raw), u, self.k * u, out
        xs = self._xs
        i = bisect_right(xs, x) - 1
        if i < 0:
            i = 0
        elif i >= len(xs) - 1:
            i = len(xs) - 2 if len(xs) > 1 else 0
        dx = x - xs[i]
        ucal = self._uc[i] + dx * self._slope_u[i]
        var = ucal * ucal + self._const2
        fit = self._fit
        if fit is None:
            value = raw - (self._errs[i] + dx * self._slope_e[i])
        else:
            z = (x - self._centre) * self._inv_scale
            value = raw - x + horner(self._coef, z)
            vf = horner(self._var_poly, z)
            if vf > 0.0:
                var += vf
        u = math.sqrt(var)
        return value, u, self.k * u, out

    # -- conformity -----------------------------------------------------------------------

    def judge(self, value: ArrayLike, U: ArrayLike) -> list[str | None]:
        """The decision on each corrected value against the channel's limits.

        ``None`` per value when the channel has no limits (or the value is NaN); otherwise
        ``pass``/``fail`` (simple, guarded) or one of the four non-binary outcomes.
        """
        ys = np.asarray(value, dtype=float).ravel().tolist()
        us = np.broadcast_to(np.asarray(U, dtype=float), np.shape(value)).ravel().tolist()
        if self.limits is None:
            return [None] * len(ys)
        low, high = self.limits
        rule = self.decision_rule
        return [decide(y, uu, low, high, rule) for y, uu in zip(ys, us, strict=True)]

    def judge_one(self, value: float, U: float) -> str | None:
        """:meth:`judge` for one value, without numpy."""
        if self.limits is None:
            return None
        return decide(value, U, self.limits[0], self.limits[1], self.decision_rule)

    # -- uncertainty budget ---------------------------------------------------------------

    def components(self, raw: float) -> list[unc.Contribution]:
        """The contributions (label, u_i, ν_i) to u_c at ``raw`` (clamped to the span).

        The certificate's point contribution is labelled with the certificate number; its
        ν is the smaller of the two neighbouring points' (conservative between points).
        """
        comps: list[unc.Contribution] = []
        if self.model != "identity":
            x = min(max(raw, self._lo), self._hi)
            xs = self._xs
            i = max(0, min(bisect_right(xs, x) - 1, max(len(xs) - 2, 0)))
            ucal = self._uc[i] + (x - xs[i]) * self._slope_u[i]
            nu = min(self._dof[i], self._dof[min(i + 1, len(xs) - 1)])
            label = self.certificate or "calibration"
            comps.append(unc.Contribution(label, abs(ucal), nu))
            if self._fit is not None:
                vf = float(self._fit.variance(x))
                comps.append(
                    unc.Contribution(f"{label} fit ({self.model})", math.sqrt(vf), min(self._dof))
                )
        comps.append(unc.Contribution("resolution", self._res_u))
        comps.append(unc.Contribution("repeatability", self._rep))
        return comps

    def budget(self, raw: float, upstream: Sequence[unc.ChainLevel] | None = None) -> unc.Budget:
        """The GUM budget of one corrected reading, as a GTC result with named inputs.

        ``upstream`` lists the chain above this certificate (the item's standard first,
        the NMI last), each a :class:`~calibration.uncertainty.ChainLevel` with the u its
        certificate carries at this reading; the certificate's contribution is then split
        into its own part and each upstream level's part (labelled with their certificate
        numbers) so that the total is unchanged.
        """
        value, _, _, _ = self.correct_one(float(raw))
        comps = self.components(float(raw))
        if upstream and self.model != "identity":
            head = comps[0]
            comps = [*unc.chain_contributions(head.label, head.u, head.dof, upstream), *comps[1:]]
        return unc.make_budget(value, comps, self.k)

    def __repr__(self) -> str:
        return (
            f"Corrector({self.equipment}/{self.channel}, certificate={self.certificate!r}, "
            f"model={self.model!r}, span={self.span}, k={self.k:g}, unit={self.unit!r})"
        )


def _slopes(xs: list[float], ys: list[float]) -> list[float]:
    """Per-interval slopes (ys[i+1] − ys[i]) / (xs[i+1] − xs[i]); [0.0] for one point."""
    if len(xs) < 2:
        return [0.0]
    out = [(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)]
    for i, s in enumerate(out):
        if not math.isfinite(s):
            raise CalibrationError(
                f"indications {xs[i]!r} and {xs[i + 1]!r} are too close to interpolate between"
            )
    return out
