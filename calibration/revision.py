"""Certificates re-stated with what the registry knows now: drift found as found.

When an item is found out of tolerance at its next calibration (its successor's as-found
results fail its tolerance, :func:`calibration.chain.conforms`), what it measured, and
every calibration it took part in, while the previous certificate was in force is
nonconforming work to evaluate (ISO/IEC 17025:2017 7.10.1; METROLOGY.md 4, the reverse
trace). This module gives the best correction the registry now allows, by one rule:

**Worst case over the window.** When the drift began between the two calibrations is
not known; the as-found results are the only measurement of the item's state in that
period, and the last good calibration is the earliest the drift can have begun. So the
item is taken to have been in its as-found state throughout the period
``[certificate.calibrated, successor.calibrated)``:

- *Its own readings* are corrected through the successor's as-found points (the same
  model as the certificate: ``interpolate``, ``linear``, ``polynomial:N``), with their U.
- *A certificate calibrated with it as a standard* had references taken as the
  standard's corrected value ``c_L(x)`` at its indication x (through the certificate
  then in force); the true reference was ``c_F(x)`` (through the revised one). Each
  point's reference r becomes ``c_F(x)`` with x solved from ``c_L(x) = r`` (in the
  standard's unit), its indication kept. This is the GUM model of the reference as the
  standard's corrected indication, sensitivity coefficient 1 (JCGM 100:2008 5.1.2).
- *Uncertainty*: the point's standard uncertainty u_p becomes
  ``sqrt(u_p² + max(0, u_F(x)² − u_L(x)²))``: the revised standard's certificate
  contribution replaces the one the point was given (u_L), and U never shrinks.
  Where x lies outside the span of the revised results, the error at the span's edge is
  held (as :meth:`Corrector.correct_one` does) and the revision's notes say so.
- It propagates down the chain: an instrument calibrated with a working standard whose
  certificate was revised is revised in turn, to any depth. A standard of another
  quantity (units not compatible: an auxiliary thermometer) is not propagated and the
  revision says so.

- *A material measure* (a weight: its channel's tolerance is OIML R 111) gives no
  indication: its points carry the nominal value as ``reference`` and the conventional
  mass as ``indicated``, and a calibration with it took the conventional mass m_L(N) as
  its reference. The true reference was m_F(N), the as-found conventional mass at the
  same nominal N: r becomes ``m_F(c_L(r))`` (N = c_L(r), the nominal the weight's
  certificate gives for r; m_F the inverse of c_F), i.e. r + (e_F − e_L), the opposite
  sign of the indicating case. The uncertainty rule is the same.

Superseding certificates need no rule: a certificate entered since (a reissue, or a
calibration recorded late) is simply the one :meth:`Registry.in_force` now returns for
a reading's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from calibration import units

if TYPE_CHECKING:
    from calibration.corrector import Corrector
    from calibration.registry import Certificate, Point, Registry

__all__ = ["Finding", "Revised", "Revisions", "findings"]

# c_L(x) = x − e(x) with |e'| ≪ 1: each iteration gains the factor |e'| (~1e-5 for real
# standards); four leave nothing a float can show.
_ITERATIONS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """An item found out of tolerance: ``certificate`` was in force while it drifted,
    ``found_by`` (its successor) found it; ``window`` is the period in doubt, in UTC days
    inclusive (``found_by.calibrated`` − 1 day at the end)."""

    certificate: Certificate
    found_by: Certificate

    @property
    def item(self) -> str:
        return self.certificate.item

    @property
    def window(self) -> tuple[date, date]:
        return (self.certificate.calibrated, self.found_by.calibrated - timedelta(days=1))


def findings(reg: Registry, item: str | None = None) -> list[Finding]:
    """Every certificate whose successor's as-found results fail (of ``item``, or all)."""
    out: list[Finding] = []
    for cert in reg.certificates(item):
        nxt = reg.successor(cert)
        if nxt is not None and reg.conforms(nxt) is False:
            out.append(Finding(certificate=cert, found_by=nxt))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Revised:
    """A certificate as the registry now states it: ``points`` revised (or the same),
    ``notes`` saying what was applied, one line each."""

    certificate: Certificate
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.notes)

    @property
    def number(self) -> str:
        return self.certificate.number


class Revisions:
    """The registry's certificates, each revised once (memoised) by the module's rule."""

    def __init__(self, reg: Registry) -> None:
        self.registry = reg
        self._revised: dict[str, Revised] = {}
        self._correctors: dict[str, Corrector] = {}

    def revise(self, cert: Certificate) -> Revised:
        done = self._revised.get(cert.number)
        if done is None:
            done = self._revised[cert.number] = self._revise(cert)
        return done

    def corrector(self, cert: Certificate) -> Corrector:
        """The Corrector of the revised ``cert`` (memoised)."""
        c = self._correctors.get(cert.number)
        if c is None:
            c = self._correctors[cert.number] = self.registry.corrector_for(
                self.revise(cert).certificate
            )
        return c

    def in_force(
        self, eq_id: str, channel: str, at: datetime | date
    ) -> tuple[Certificate | None, Corrector]:
        """The certificate in force at ``at`` by the registry now, and its revised Corrector
        (the identity Corrector when there is none)."""
        cert = self.registry.in_force(eq_id, at, channel)
        if cert is None:
            return None, self.registry.corrector(eq_id, channel, at)
        return cert, self.corrector(cert)

    # -- the rule ---------------------------------------------------------------------------

    def _revise(self, cert: Certificate) -> Revised:
        reg = self.registry
        nxt = reg.successor(cert)
        if nxt is not None and reg.conforms(nxt) is False:
            note = (
                f"{cert.item} taken as found in {nxt.number} ({nxt.calibrated.isoformat()}) "
                f"for the whole period of {cert.number}"
            )
            return Revised(
                certificate=cert.model_copy(update={"points": nxt.found_points, "as_found": ()}),
                notes=(note,),
            )
        points: list[Point] = list(cert.points)
        notes: list[str] = []
        for std in cert.standards:
            cited = cert.standard_certificates.get(std)
            s_cert = reg.certificate(cited) if cited else reg.in_force(std, cert.calibrated)
            if s_cert is None:
                continue
            s_rev = self.revise(s_cert)
            if not s_rev.changed:
                continue
            if not units.compatible(s_cert.unit, cert.unit):
                notes.append(
                    f"standard {std} ({s_cert.number}) was revised, but its unit {s_cert.unit} "
                    f"is not {cert.unit}'s quantity: not propagated"
                )
                continue
            points, outside = self._shifted(points, cert.unit, s_cert)
            notes.append(
                f"references moved by the revision of standard {std} ({s_cert.number}: "
                + "; ".join(s_rev.notes)
                + ")"
            )
            if outside:
                notes.append(
                    f"reference(s) {', '.join(f'{r:g}' for r in outside)} {cert.unit}: "
                    f"{std} read them outside the span of its revised results; the error "
                    "at the span's edge was used there (an extrapolation)"
                )
        if not notes:
            return Revised(certificate=cert)
        return Revised(
            certificate=cert.model_copy(update={"points": tuple(points)}), notes=tuple(notes)
        )

    def _shifted(
        self, points: list[Point], unit: str, s_cert: Certificate
    ) -> tuple[list[Point], list[float]]:
        """The points with their references moved, and the references the standard read
        outside its revised certificate's span (where its edge error held)."""
        reg = self.registry
        old = reg.corrector_for(s_cert)
        new = self.corrector(s_cert)
        f = units.factor(unit, s_cert.unit)  # this certificate's unit -> the standard's
        measure = _is_material_measure(reg, s_cert)
        moved: list[Point] = []
        outside: list[float] = []
        for p in points:
            ref = p.reference * f
            if measure:
                # ref was the conventional mass m_L(N) of nominal N = c_L(ref); the true one
                # is m_F(N): solve c_F(x) = N (x the as-found conventional mass)
                nominal = old.correct_one(ref)[0]
                x = _inverse(new, nominal)
                value, out = x, new.correct_one(x)[3]
            else:
                x = _inverse(old, ref)  # the standard's indication: c_L(x) = ref
                value, _, _, out = new.correct_one(x)
            if out:
                outside.append(p.reference)
            shift = (value - ref) / f
            u_old = _cal_u(old, ref if measure else x) / f
            u_new = _cal_u(new, x) / f
            u = math.sqrt(p.u**2 + max(0.0, u_new**2 - u_old**2))
            moved.append(p.model_copy(update={"reference": p.reference + shift, "U": u * p.k}))
        return moved, outside


def _inverse(c: Corrector, y: float) -> float:
    """x with c(x) = y, by fixed-point iteration (c(x) = x − e(x), |e'| ≪ 1)."""
    x = y
    for _ in range(_ITERATIONS):
        x = y + (x - c.correct_one(x)[0])
    return x


def _is_material_measure(reg: Registry, cert: Certificate) -> bool:
    """A weight: the standard's channel is toleranced by OIML R 111 (a material measure,
    whose certificate gives conventional mass as ``indicated`` against the nominal)."""
    eq = reg.equipment(cert.item)
    ch = eq.channel(cert.channel) if eq is not None else None
    return ch is not None and ch.tolerance is not None and ch.tolerance.oiml_r111 is not None


def _cal_u(c: Corrector, x: float) -> float:
    """The certificate's own contribution to u at x (its points' U/k, interpolated)."""
    comps = c.components(x)
    return comps[0].u if c.certificate is not None else 0.0
