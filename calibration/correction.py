"""Correction models: a certificate's points -> the corrected value of a raw reading.

ARCHITECTURE.md 4.2:

- ``interpolate``: the error e(r) = indicated − reference is interpolated linearly in the
  indicated value between the points sorted by indication; the corrected value is
  y = r − e(r).
- ``linear`` / ``polynomial:N``: weighted least squares of the reference on the
  indication, weights 1/u² with u = U/k of each point. The weights are the points' stated
  uncertainties (absolute, like ``curve_fit(absolute_sigma=True)``): the covariance of the
  coefficients is (XᵀWX)⁻¹, not rescaled by the residuals, so a fit through exact points
  keeps the points' uncertainty. Its propagation to a prediction, u_fit²(r) = vᵀCv with
  v = (1, z, z², …), is added to the corrected value's variance.

Fits are made in a centred and scaled variable z = (r − centre) / scale (the span's
midpoint and half-width), which keeps the normal equations well conditioned for spans
such as 0–100 000 Pa and degrees up to a few. Because vᵀCv with v = (zʲ) is itself a
polynomial of degree 2N in z, both the prediction and its variance are evaluated by
Horner's rule, in numpy for arrays and in plain Python for one value.

Never extrapolate: a reading outside [min indicated, max indicated] is corrected with the
correction at the nearest edge (y = r − e(edge), u at the edge) and flagged out of range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from calibration.errors import CalibrationError

__all__ = [
    "Fit",
    "fit_polynomial",
    "horner",
    "interpolate_error",
    "parse_model",
]

FloatArray = NDArray[np.float64]

_MODEL_RE = re.compile(r"^\s*(interpolate|linear|polynomial\s*:\s*([0-9]+))\s*$")
MAX_DEGREE = 9


def parse_model(model: str) -> int:
    """The polynomial degree of a model name: 0 for ``interpolate``, 1 for ``linear``.

    ``polynomial:N`` gives N (1 ≤ N ≤ 9). Anything else is a :class:`CalibrationError`.
    """
    m = _MODEL_RE.match(model) if isinstance(model, str) else None
    if m is None:
        raise CalibrationError(
            f"unknown correction model {model!r}: use interpolate, linear or polynomial:N"
        )
    if m.group(1) == "interpolate":
        return 0
    if m.group(1) == "linear":
        return 1
    degree = int(m.group(2))
    if not 1 <= degree <= MAX_DEGREE:
        raise CalibrationError(f"polynomial degree must be 1..{MAX_DEGREE} (got {degree})")
    return degree


def interpolate_error(
    indicated: FloatArray, reference: FloatArray, raw: FloatArray | float
) -> FloatArray:
    """e(r) interpolated linearly in the indication, held constant beyond the edges.

    ``indicated`` must be strictly increasing.
    """
    err = np.asarray(indicated, dtype=float) - np.asarray(reference, dtype=float)
    return np.asarray(np.interp(raw, indicated, err), dtype=float)


def horner(coef_high_first: list[float], z: float) -> float:
    """A polynomial (coefficients highest degree first) at z, in plain Python."""
    acc = 0.0
    for c in coef_high_first:
        acc = acc * z + c
    return acc


@dataclass(frozen=True, slots=True)
class Fit:
    """A weighted least-squares polynomial reference = f(indication), in z = (x − c)/s.

    ``coef`` are the coefficients a₀…a_N (lowest degree first, in z), ``cov`` their
    covariance, ``var_poly`` the coefficients (lowest first) of the polynomial
    vᵀ·cov·v in z, ``chi2`` the weighted sum of squared residuals and ``dof`` = n − N − 1.
    """

    degree: int
    centre: float
    scale: float
    coef: FloatArray
    cov: FloatArray
    var_poly: FloatArray
    chi2: float
    dof: int

    def z(self, x: FloatArray | float) -> FloatArray:
        return (np.asarray(x, dtype=float) - self.centre) / self.scale

    def predict(self, x: FloatArray | float) -> FloatArray:
        """The fitted reference value at indication x."""
        return np.asarray(np.polyval(self.coef[::-1], self.z(x)), dtype=float)

    def variance(self, x: FloatArray | float) -> FloatArray:
        """u_fit²(x) = vᵀ·cov·v, the variance of the prediction (never negative)."""
        v = np.polyval(self.var_poly[::-1], self.z(x))
        return np.asarray(np.maximum(v, 0.0), dtype=float)

    def coefficients_in_x(self) -> FloatArray:
        """The coefficients b₀…b_N (lowest first) of the same polynomial in x itself."""
        # p(z) with z = (x - c)/s: expand with numpy's poly1d composition.
        p = np.poly1d(self.coef[::-1])
        zx = np.poly1d([1.0 / self.scale, -self.centre / self.scale])
        return np.asarray(p(zx).coeffs[::-1], dtype=float)


def fit_polynomial(indicated: FloatArray, reference: FloatArray, u: FloatArray, degree: int) -> Fit:
    """Weighted least squares of ``reference`` on ``indicated`` (weights 1/u²).

    Raises :class:`CalibrationError` when there are fewer points than coefficients, a
    point has no uncertainty (u ≤ 0 cannot be a weight), or the indications do not
    determine the polynomial (fewer distinct indications than coefficients).
    """
    x = np.asarray(indicated, dtype=float)
    y = np.asarray(reference, dtype=float)
    uu = np.asarray(u, dtype=float)
    n = x.size
    ncoef = degree + 1
    if n < ncoef:
        raise CalibrationError(
            f"a degree-{degree} fit needs at least {ncoef} points (the certificate has {n})"
        )
    if np.unique(x).size < ncoef:
        raise CalibrationError(f"a degree-{degree} fit needs at least {ncoef} distinct indications")
    if not bool(np.all(uu > 0.0)):
        raise CalibrationError("a least-squares fit needs U > 0 at every point (weights 1/u²)")
    lo, hi = float(x.min()), float(x.max())
    centre = 0.5 * (lo + hi)
    scale = 0.5 * (hi - lo)
    z = (x - centre) / scale
    # Rows scaled by 1/u: A = diag(1/u)·V, b = y/u; solve by SVD-based lstsq and form the
    # covariance (AᵀA)⁻¹ from the pseudo-inverse of the well-conditioned scaled design.
    vander = np.vander(z, ncoef, increasing=True)
    a = vander / uu[:, None]
    b = y / uu
    coef, _, rank, _ = np.linalg.lstsq(a, b, rcond=None)
    if rank < ncoef:  # pragma: no cover - excluded by the distinct-indications check
        raise CalibrationError(f"the points do not determine a degree-{degree} polynomial")
    pinv = np.linalg.pinv(a)
    cov = pinv @ pinv.T
    cov = 0.5 * (cov + cov.T)
    var_poly = np.zeros(2 * degree + 1)
    for j in range(ncoef):
        for m in range(ncoef):
            var_poly[j + m] += cov[j, m]
    resid = (y - vander @ coef) / uu
    return Fit(
        degree=degree,
        centre=centre,
        scale=scale,
        coef=np.asarray(coef, dtype=float),
        cov=np.asarray(cov, dtype=float),
        var_poly=var_poly,
        chi2=float(resid @ resid),
        dof=n - ncoef,
    )


def check_points(
    indicated: FloatArray, reference: FloatArray, U: FloatArray, k: FloatArray
) -> None:
    """Refuse points that cannot describe a calibration (CalibrationError)."""
    n = indicated.size
    if n == 0:
        raise CalibrationError("a certificate needs at least one point")
    for name, arr in (("reference", reference), ("U", U), ("k", k)):
        if arr.size != n:
            raise CalibrationError(
                f"{name} has {arr.size} values for {n} indications: give one per point"
            )
    for name, arr in (("indicated", indicated), ("reference", reference), ("U", U), ("k", k)):
        if not bool(np.all(np.isfinite(arr))):
            raise CalibrationError(f"{name} must be finite at every point")
    if bool(np.any(U < 0.0)):
        raise CalibrationError("U must not be negative")
    if bool(np.any(k <= 0.0)):
        raise CalibrationError("k must be positive")
    if n > 1 and bool(np.any(np.diff(np.sort(indicated)) == 0.0)):
        dup = sorted({float(v) for v in indicated if int(np.sum(indicated == v)) > 1})
        raise CalibrationError(
            f"two points share the indication {dup[0]:g}: the correction would be ambiguous"
        )
