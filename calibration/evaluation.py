"""Evaluation of a calibration point: error of indication, GUM uncertainty, coverage factor.

METROLOGY. A calibration point compares a device under test (DUT) with a reference
standard at one value of the measurand (one setpoint of a pressure generator, one test
load on a balance):

- ``n`` simultaneous readings are taken once the reference is stable; the reference value
  rᵢ of each is the reference's *corrected* reading (through its own certificate), the
  DUT's indication iᵢ its raw reading. The point's reference value is r̄, its indication ī
  and its error of indication e = ī − r̄ (EURAMET cg-17, DKD-R 6-1; EURAMET cg-18
  §5.2 for non-automatic weighing instruments, where r is the conventional mass of the
  test load).
- Its standard uncertainty combines, uncorrelated (GUM 5.1.2, every sensitivity 1):

  ==========================  ======================================================  ======
  input                       standard uncertainty                                    ν
  ==========================  ======================================================  ======
  reference standard          u of its corrected reading at r̄ (certificate U/k        from its
                              interpolated, its resolution and repeatability), each     certificate
                              component kept with its own label and ν
  DUT resolution d            d / (2√3) (GUM F.2.2.1; cg-18 §7.1)                      ∞
  DUT resolution at zero d₀   d₀ / (2√3), a balance only: its indication at a load is  ∞
                              read against its zero indication, and both are rounded
                              (EURAMET cg-18 §7.1.1: δI_dig0 beside δI_digL)
  repeatability               s(e) / √n, s of the n differences iᵢ − rᵢ (GUM 4.2.3)    n − 1
  reference stability         a / √3, a = |b|·T / 2, b the slope of the reference      ∞
                              over the reading window of duration T: its drift
                              during the measurement (DKD-R 6-1)
  hysteresis (up and down)    a / √3, a = |e↓ − e↑| / 2 (DKD-R 6-1: half the           ∞
                              hysteresis as a rectangular contribution)
  ==========================  ======================================================  ======

- For a point measured increasing and decreasing (DKD-R 6-1, EURAMET cg-17),
  the result is the mean of the two series: r = (r̄↑ + r̄↓)/2, i = (ī↑ + ī↓)/2, and the
  repeatability of the mean is √(s↑² + s↓²)/2 (two inputs s↑/(2√n↑), s↓/(2√n↓)).
- U = k·u_c with k = t_p(ν_eff) (Welch–Satterthwaite, GUM G.4.1, truncated) for the
  coverage probability p of k = 2 for a normal distribution (95.45 %), through GTC
  (:func:`calibration.uncertainty.coverage_factor`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from calibration import uncertainty as unc
from calibration.errors import CalibrationError

__all__ = ["PointResult", "Series", "SeriesResult", "evaluate_point", "slope_per_s"]

P_K2 = unc.coverage_probability(2.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """The simultaneous readings of one point in one direction (``up`` or ``down``).

    ``reference`` are the reference's corrected values, ``indicated`` the DUT's raw ones,
    ``t_s`` the acquisition times (monotonic seconds), one per reading.
    """

    direction: str
    reference: tuple[float, ...]
    indicated: tuple[float, ...]
    t_s: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.reference)
        if n < 2 or len(self.indicated) != n or len(self.t_s) != n:
            raise CalibrationError(
                "a series needs at least 2 readings, one reference and one indication each"
            )
        if not all(math.isfinite(x) for x in (*self.reference, *self.indicated)):
            raise CalibrationError("a series' readings must be finite numbers")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesResult:
    """The mean of one series: reference, indication, error, and s(e)/√n."""

    direction: str
    reference: float
    indicated: float
    error: float
    s_mean: float
    n: int
    drift_half_width: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PointResult:
    """One calibration point as reported: values, U at k, ν_eff and the budget."""

    direction: str  # "up", "down" (single series) or "up-down" (mean of both)
    reference: float
    indicated: float
    error: float
    u: float
    U: float
    k: float
    dof: float
    hysteresis: float | None
    components: tuple[unc.Contribution, ...]
    series: tuple[SeriesResult, ...]


def slope_per_s(t_s: Sequence[float], values: Sequence[float]) -> float:
    """The least-squares slope of ``values`` against time (per second); 0 for one time."""
    if len(t_s) < 2 or max(t_s) == min(t_s):
        return 0.0
    return float(statistics.linear_regression(t_s, values).slope)


def _series_result(s: Series) -> SeriesResult:
    n = len(s.reference)
    diffs = [i - r for i, r in zip(s.indicated, s.reference, strict=True)]
    duration = max(s.t_s) - min(s.t_s)
    return SeriesResult(
        direction=s.direction,
        reference=math.fsum(s.reference) / n,
        indicated=math.fsum(s.indicated) / n,
        error=math.fsum(diffs) / n,
        s_mean=statistics.stdev(diffs) / math.sqrt(n),
        n=n,
        drift_half_width=abs(slope_per_s(s.t_s, s.reference)) * duration / 2.0,
    )


def evaluate_point(
    series: Sequence[Series],
    *,
    reference_components: Sequence[unc.Contribution],
    dut_resolution: float,
    zero_resolution: float | None = None,
    reference_label: str = "reference",
    p: float = P_K2,
) -> PointResult:
    """The calibration result of one point from its series (one, or up and down).

    ``reference_components`` are the reference standard's contributions at the point
    (``Corrector.components`` at the mean raw reference: certificate, resolution,
    repeatability), used as they are, labelled ``reference_label: <label>``.
    ``zero_resolution`` is a weighing instrument's resolution at zero (cg-18 §7.1.1): its
    rounding enters beside the rounding of the load's indication.
    """
    if not 1 <= len(series) <= 2:
        raise CalibrationError("a point has one series (up) or two (up and down)")
    results = tuple(_series_result(s) for s in series)
    m = len(results)
    comps: list[unc.Contribution] = [
        unc.Contribution(f"{reference_label}: {c.label}", c.u, c.dof) for c in reference_components
    ]
    comps.append(unc.Contribution("DUT resolution", unc.resolution(dut_resolution)))
    if zero_resolution is not None:
        comps.append(unc.Contribution("DUT resolution at zero", unc.resolution(zero_resolution)))
    for r in results:
        comps.append(unc.Contribution(f"repeatability ({r.direction})", r.s_mean / m, r.n - 1))
    drift = math.sqrt(math.fsum((r.drift_half_width / m) ** 2 for r in results))
    comps.append(unc.Contribution("reference stability", unc.rectangular(drift)))
    hysteresis: float | None = None
    if m == 2:
        hysteresis = abs(results[1].error - results[0].error)
        comps.append(unc.Contribution("hysteresis", unc.rectangular(hysteresis / 2.0)))
    u_c = unc.combine(*(c.u for c in comps))
    dof = unc.effective_dof([c.u for c in comps], [c.dof for c in comps])
    k = unc.coverage_factor(dof, p)
    reference = math.fsum(r.reference for r in results) / m
    indicated = math.fsum(r.indicated for r in results) / m
    return PointResult(
        direction=results[0].direction if m == 1 else "up-down",
        reference=reference,
        indicated=indicated,
        error=indicated - reference,
        u=u_c,
        U=k * u_c,
        k=k,
        dof=dof,
        hysteresis=hysteresis,
        components=tuple(comps),
        series=results,
    )
