"""GUM (JCGM 100:2008) helpers: Type B inputs, combination, ν_eff, coverage factors, budgets.

- Type B from a half-width a: rectangular a/√3, triangular a/√6, U-shaped a/√2; a digital
  resolution d is a rectangular half-width d/2, u = d/(2√3); a certificate's U at k gives
  u = U/k (GUM 4.3.3, 4.3.7).
- Welch–Satterthwaite (GUM G.4.1): ν_eff = u_c⁴ / Σ uᵢ⁴/νᵢ (uᵢ already multiplied by their
  sensitivity coefficients), truncated down to an integer; not valid for correlated
  inputs.
- k_p = t_p(ν_eff): the Student-t quantile comes from GTC
  (:func:`GTC.reporting.k_factor`, which calls ``scipy.special.stdtrit``, the inverse
  of the t distribution function; scipy comes with GTC); with ν_eff infinite (or above
  GTC's ``inf_dof``) it is the normal quantile ``scipy.special.ndtri``.
- Budgets are GTC uncertain numbers (``ureal`` with labels), so each input keeps its
  identity: a certificate point is labelled with its certificate number and, along a
  chain, each level's certificate is a Type B input of the next, labelled with its own
  number back to the NMI.

GTC is imported lazily (it costs about half a second), so importing this module for the
arithmetic helpers stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from calibration.errors import CalibrationError

__all__ = [
    "Budget",
    "ChainLevel",
    "Contribution",
    "chain_contributions",
    "combine",
    "coverage_factor",
    "coverage_probability",
    "effective_dof",
    "from_expanded",
    "make_budget",
    "rectangular",
    "resolution",
    "triangular",
    "u_shaped",
    "welch_satterthwaite",
]

SQRT3 = math.sqrt(3.0)


def rectangular(half_width: float) -> float:
    """u of a rectangular distribution of half-width a: a/√3."""
    return _nonneg(half_width, "half-width") / SQRT3


def triangular(half_width: float) -> float:
    """u of a triangular distribution of half-width a: a/√6."""
    return _nonneg(half_width, "half-width") / math.sqrt(6.0)


def u_shaped(half_width: float) -> float:
    """u of a U-shaped (arcsine) distribution of half-width a: a/√2."""
    return _nonneg(half_width, "half-width") / math.sqrt(2.0)


def resolution(d: float) -> float:
    """u of a digital resolution d (a rectangular half-width d/2): d/(2√3)."""
    return _nonneg(d, "resolution") / (2.0 * SQRT3)


def from_expanded(U: float, k: float) -> float:
    """u = U/k of a certificate's expanded uncertainty U at coverage factor k."""
    if not k > 0.0:
        raise CalibrationError(f"coverage factor must be positive (got {k!r})")
    return _nonneg(U, "U") / k


def combine(*u: float) -> float:
    """Root sum of squares of uncorrelated components (already times their cᵢ)."""
    return math.sqrt(math.fsum(x * x for x in u))


def welch_satterthwaite(u: Sequence[float], dof: Sequence[float]) -> float:
    """ν_eff = u_c⁴ / Σ uᵢ⁴/νᵢ, not truncated; ``inf`` when every νᵢ is infinite.

    ``u`` are the components cᵢ·u(xᵢ); ``dof`` their degrees of freedom (``inf`` for a
    Type B input known exactly). Components of zero contribute nothing.
    """
    if len(u) != len(dof):
        raise CalibrationError(f"{len(u)} components but {len(dof)} degrees of freedom")
    for nu in dof:
        if not nu > 0.0:  # also refuses NaN
            raise CalibrationError(f"degrees of freedom must be positive (got {nu!r})")
    uc2 = math.fsum(x * x for x in u)
    if uc2 == 0.0:
        return math.inf
    denom = math.fsum((x * x) ** 2 / nu for x, nu in zip(u, dof, strict=True) if x != 0.0)
    if denom == 0.0:
        return math.inf
    return uc2 * uc2 / denom


def effective_dof(u: Sequence[float], dof: Sequence[float]) -> float:
    """ν_eff truncated down to an integer (GUM G.4.1), at least 1; ``inf`` stays ``inf``."""
    nu = welch_satterthwaite(u, dof)
    if math.isinf(nu):
        return math.inf
    # A hair of tolerance so that 16.999999999999996 (an exact 17 in rounding) stays 17.
    return float(max(1, math.floor(nu * (1.0 + 1e-12))))


def coverage_probability(k: float) -> float:
    """The coverage probability (%) of ±k standard deviations of a normal distribution.

    k = 2 gives 95.45 %: the probability the equipment's coverage factor stands for.
    """
    if not k > 0.0:
        raise CalibrationError(f"coverage factor must be positive (got {k!r})")
    return 100.0 * math.erf(k / math.sqrt(2.0))


def coverage_factor(dof: float, p: float = 95.45) -> float:
    """k_p = t_p(ν): the two-sided Student-t quantile for coverage probability p (%).

    ``dof`` is truncated down to an integer first (GUM G.4.1); ``inf`` gives the normal
    quantile. Uses :func:`GTC.reporting.k_factor`.
    """
    if not 0.0 < p < 100.0:
        raise CalibrationError(f"coverage probability must be in (0, 100) % (got {p!r})")
    if not dof >= 1.0:  # also refuses NaN
        raise CalibrationError(f"degrees of freedom must be at least 1 (got {dof!r})")
    from GTC import reporting

    nu = dof if math.isinf(dof) else float(math.floor(dof * (1.0 + 1e-12)))
    return float(reporting.k_factor(nu, p))


# -- budgets --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainLevel:
    """One upstream level of a traceability chain, as it bears on one reading.

    ``u`` is the standard uncertainty (in the reading's unit, at the reading) that this
    level's certificate carries, i.e. U/k of the standard's certificate there; it already
    contains every level above it. Levels are listed from the item's own standard up to
    the NMI.
    """

    certificate: str
    u: float
    dof: float = math.inf


@dataclass(frozen=True, slots=True)
class Contribution:
    """One line of an uncertainty budget: |cᵢ|·u(xᵢ) in the result's unit."""

    label: str
    u: float
    dof: float = math.inf


def chain_contributions(
    certificate: str, u_cal: float, dof: float, upstream: Sequence[ChainLevel] | None
) -> list[Contribution]:
    """Split a certificate's u into its own part and the parts of the levels above it.

    The item's certificate (``u_cal``) already contains the uncertainty of the standard
    used, which contains that of its standard, and so on to the NMI. Level i's own part is
    √(uᵢ² − uᵢ₊₁²), so the parts add in quadrature to ``u_cal``: the budget names every
    certificate of the chain without counting any of them twice. A level that claims more
    than the level below it (inconsistent data) keeps its full u and the own part below it
    is zero; the total then exceeds ``u_cal``, which a budget shows rather than hides.
    """
    levels = [ChainLevel(certificate, u_cal, dof), *(upstream or ())]
    out: list[Contribution] = []
    for i, lvl in enumerate(levels):
        if not (lvl.u >= 0.0 and math.isfinite(lvl.u)):
            raise CalibrationError(f"{lvl.certificate}: u must be finite and >= 0")
        above = levels[i + 1].u if i + 1 < len(levels) else 0.0
        own = math.sqrt(max(0.0, lvl.u * lvl.u - above * above))
        out.append(Contribution(lvl.certificate, own, lvl.dof))
    return out


@dataclass(frozen=True, slots=True)
class Budget:
    """The uncertainty budget of one corrected reading.

    ``components`` are in a fixed order (certificate and chain, fit, resolution,
    repeatability); ``result`` is the GTC uncertain number (value, u, df, and each input's
    identity), usable with :func:`GTC.reporting.budget` or a GTC archive. Iterating a
    Budget yields ``(label, u_i)`` pairs.
    """

    value: float
    u: float
    U: float
    k: float
    dof: float
    components: tuple[Contribution, ...]
    result: Any = field(repr=False, compare=False)

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter([(c.label, c.u) for c in self.components])

    def archive_json(self, label: str = "y") -> str:
        """A GTC JSON archive of the result (``label``), inputs and their identities kept.

        Load it with ``GTC.persistence.loads_json(text)[label]``: the budget, with every
        certificate's label, survives across processes.
        """
        from GTC import persistence, result

        ar = persistence.Archive()
        y = self.result
        if not hasattr(y, "u"):  # no uncertain input at all: archive a constant
            from GTC import ureal

            y = ureal(float(y), 0.0, label=label)
        ar.add(**{label: result(y, label=label)})
        return str(persistence.dumps_json(ar))

    def lines(self) -> list[str]:
        """The budget as text lines: label, u_i and its share of u_c²."""
        uc2 = self.u * self.u
        rows = []
        for c in self.components:
            share = 100.0 * c.u * c.u / uc2 if uc2 > 0.0 else 0.0
            dof = "inf" if math.isinf(c.dof) else f"{c.dof:g}"
            rows.append(f"{c.label:<32} u = {c.u:.6g}  ν = {dof:<6} {share:5.1f} %")
        dof = "inf" if math.isinf(self.dof) else f"{self.dof:g}"
        rows.append(f"{'combined':<32} u = {self.u:.6g}  ν = {dof}")
        rows.append(f"{'expanded':<32} U = {self.U:.6g}  k = {self.k:g}")
        return rows


def make_budget(value: float, components: Iterable[Contribution], k: float) -> Budget:
    """A GTC sum ``value + Σ δᵢ`` with each δᵢ = ureal(0, uᵢ, νᵢ, label), and its budget."""
    from GTC import ureal

    comps = tuple(components)
    y: Any = value
    for c in comps:
        if c.u > 0.0:
            # GTC refuses ν < 1; a truncated ν_eff is at least 1 anyway.
            y = y + ureal(0.0, c.u, max(c.dof, 1.0), label=c.label)
    u = float(getattr(y, "u", 0.0))
    dof = float(getattr(y, "df", math.inf))
    return Budget(
        value=float(getattr(y, "x", y)),
        u=u,
        U=k * u,
        k=k,
        dof=dof,
        components=comps,
        result=y,
    )


def _nonneg(x: float, name: str) -> float:
    if not (x >= 0.0 and math.isfinite(x)):
        raise CalibrationError(f"{name} must be finite and >= 0 (got {x!r})")
    return float(x)
