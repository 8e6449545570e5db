"""Certificates that calgate issues: the registry TOML and the human-readable HTML.

An :class:`IssuedCertificate` holds what a calibration run found for one device under
test; :func:`certificate_toml` writes it in the registry's certificate format
(ARCHITECTURE.md 4.2), so the registry uses it at once, and :func:`certificate_html`
writes the report for people. The DCC of the same results is :mod:`calibration.dcc_out`.

METROLOGY. ISO/IEC 17025:2017 7.8.2.1 asks every report for: a title; the name and
address of the laboratory; the location of the activity; a unique identification on every
page; the customer; the method used; the description and identification of the item; the
dates of the calibration and of issue; the results with their units; the identification
of the person(s) authorising the report; and a statement that the results relate only to
the item calibrated. 7.8.4.1 adds for calibration certificates: the measurement
uncertainty of the results in the unit of the measurand (with k and coverage
probability), the conditions under which the calibration was made, and a statement of
metrological traceability; 7.8.6 the conformity statement with the decision rule applied
(ILAC G8:09/2019). The reference standard used is named with its certificate, and the
traceability statement follows its chain to the national metrology institute.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from calibration.conformity import InstrumentConformity
from calibration.evaluation import PointResult
from calibration.registry import Channel, Equipment
from calibration.rounding import round_result, round_uncertainty

__all__ = [
    "IssuedCertificate",
    "Laboratory",
    "UsedStandard",
    "certificate_html",
    "certificate_record",
    "certificate_toml",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Laboratory:
    """The issuing laboratory (ISO/IEC 17025 7.8.2.1 b)."""

    name: str
    accreditation: str = ""
    address: str = ""
    city: str = ""
    country: str = "DE"  # ISO 3166-1 alpha-2, for the DCC's coreData


@dataclass(frozen=True, slots=True, kw_only=True)
class UsedStandard:
    """A standard used in the run, with its certificate in force and that one's chain."""

    equipment: Equipment
    certificate: str
    issued_by: str
    calibrated: date
    due: date
    chain: tuple[tuple[str, str], ...]  # (certificate number, issuer), the standard's first
    nmi: str  # the issuer of the chain's root (an NMI certificate)
    role: str = "reference standard"
    sha256: str = ""  # of the standard's certificate file, for the DCC's citation

    def traceability(self) -> str:
        """``PCL-2026-0905 (Lab A) → NIM-LP-2025-0417 (NIM, national metrology institute)``."""
        links = [f"{n} ({who})" for n, who in self.chain]
        return " → ".join(links)


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    """One DUT's results of one run, with what the certificate must state."""

    number: str
    item: Equipment
    channel: Channel
    laboratory: Laboratory
    operator: str
    customer: str
    calibrated: date
    issued: date
    due: date
    begin: datetime
    end: datetime
    procedure: str
    method: str
    norms: tuple[str, ...]
    location: str
    conditions: str
    standards: tuple[UsedStandard, ...]
    points: tuple[PointResult, ...]  # as left (= as found when not adjusted)
    conformity: InstrumentConformity | None  # of the as-found results
    tolerance: str | None
    decision_rule: str
    as_found_points: tuple[PointResult, ...] = ()  # only when adjusted
    as_left_conformity: InstrumentConformity | None = None  # only when adjusted

    @property
    def unit(self) -> str:
        return self.channel.unit

    @property
    def as_found(self) -> str | None:
        """``conforms``, ``fails``, or None when the channel has no tolerance."""
        return _word(self.conformity)

    @property
    def adjusted(self) -> bool:
        return bool(self.as_found_points)

    @property
    def as_left(self) -> str | None:
        """After an adjustment, ``conforms`` or ``fails`` as left; None otherwise."""
        return _word(self.as_left_conformity) if self.adjusted else None

    @property
    def found_points(self) -> tuple[PointResult, ...]:
        return self.as_found_points or self.points


def _word(c: InstrumentConformity | None) -> str | None:
    if c is None:
        return None
    return "conforms" if c.conforms else "fails"


# -- the registry record ----------------------------------------------------------------------


def certificate_record(cert: IssuedCertificate) -> dict[str, Any]:
    """The registry's certificate fields (ARCHITECTURE.md 4.2) of ``cert``.

    ``points`` are the as-left results; ``as_found`` is written only when the item was
    adjusted (otherwise the points are both, and the registry judges them). Each point
    keeps its ν_eff as ``dof`` (omitted when infinite), so a corrector built from this
    certificate finds its own coverage factor.
    """

    def rows(pts: Sequence[PointResult]) -> list[dict[str, Any]]:
        out = []
        for p in pts:
            row: dict[str, Any] = {"reference": p.reference, "indicated": p.indicated}
            row["U"] = p.U
            row["k"] = p.k
            if math.isfinite(p.dof):
                row["dof"] = p.dof
            out.append(row)
        return out

    record: dict[str, Any] = {
        "number": cert.number,
        "item": cert.item.id,
        "channel": cert.channel.name,
        "issued_by": cert.laboratory.name,
        "accreditation": cert.laboratory.accreditation,
        "nmi": False,
        "calibrated": cert.calibrated,
        "due": cert.due,
        "standards": [s.equipment.id for s in cert.standards],
        "standard_certificates": {s.equipment.id: s.certificate for s in cert.standards},
        "unit": cert.unit,
        "model": "interpolate",
        "points": rows(cert.points),
    }
    if cert.adjusted:
        record["as_found"] = rows(cert.as_found_points)
    return record


def certificate_toml(cert: IssuedCertificate) -> str:
    """The registry certificate file ``<NUMBER>.toml``, with a comment header."""
    import tomli_w

    verdict = cert.as_found or "not judged (no tolerance)"
    if cert.adjusted:
        left = f"adjusted, as left: {cert.as_left or 'not judged'}"
    else:
        left = "not adjusted (as found = as left)"
    head = [
        f"# Issued by calgate calibrate: {cert.procedure}",
        f"# Method: {cert.method} ({', '.join(cert.norms)})",
        f"# Standards: {', '.join(f'{s.equipment.id} ({s.certificate})' for s in cert.standards)}",
        f"# As found: {verdict}; {left}. U at k from ν_eff (GUM G.4.1).",
    ]
    return "\n".join(head) + "\n" + tomli_w.dumps(certificate_record(cert))


# -- the human-readable certificate --------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 60em; color: #111; }
h1 { font-size: 1.5em; margin-bottom: 0; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #999; padding: 0.2em 0.6em; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; } dd { margin: 0; }
.fails { color: #a00; font-weight: bold; } .conforms { color: #060; font-weight: bold; }
footer { margin-top: 2em; font-size: 0.85em; color: #444; }
"""

_RULES = {
    "simple": "simple acceptance (ILAC G8:09/2019 4.2.1): a point conforms when its error "
    "lies within the maximum permissible error; the uncertainty is not taken into account",
    "guarded": "guarded acceptance with guard band w = U (ILAC G8:09/2019 4.2.3): a point "
    "conforms when its error lies within the maximum permissible error reduced by U",
    "non_binary": "non-binary statement (ILAC G8:09/2019 4.2.2): pass, conditional pass "
    "(within the MPE but within U of it), conditional fail, fail",
}


def _e(x: object) -> str:
    return html.escape(str(x))


def _shown(value: float, U: float) -> str:
    return round_result(value, U)[0]


def _dl(rows: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"


def certificate_html(cert: IssuedCertificate) -> str:
    """The calibration certificate as one self-contained HTML page (ISO/IEC 17025 7.8)."""
    lab, eq, unit = cert.laboratory, cert.item, cert.unit
    number = _e(cert.number)
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Calibration certificate {number}</title><style>{_CSS}</style></head><body>",
        f"<header><p>{_e(lab.name)}"
        + (f"<br>{_e(lab.address)}" if lab.address else "")
        + (f"<br>{_e(lab.city)}" if lab.city else "")
        + (f"<br>Accreditation: {_e(lab.accreditation)}" if lab.accreditation else "")
        + "</p>",
        f"<h1>Calibration certificate</h1><p>Certificate number <strong>{number}</strong></p>"
        "</header>",
        "<h2>Item calibrated</h2>",
        _dl(
            [
                ("Description", eq.description or eq.id),
                ("Identification", eq.id),
                ("Manufacturer", eq.manufacturer or "-"),
                ("Model", eq.model or "-"),
                ("Serial number", eq.serial or "-"),
                ("Channel", f"{cert.channel.name} ({cert.channel.quantity}, {unit})"),
                ("Resolution", f"{cert.channel.resolution:g} {unit}"),
                ("Customer", cert.customer),
            ]
        ),
        "<h2>Dates</h2>",
        _dl(
            [
                ("Date of calibration", cert.calibrated.isoformat()),
                ("Performed", f"{cert.begin:%Y-%m-%d %H:%M:%S} to {cert.end:%H:%M:%S} UTC"),
                ("Date of issue", cert.issued.isoformat()),
                ("Recalibration due", cert.due.isoformat()),
            ]
        ),
        "<h2>Method</h2>",
        f"<p>{_e(cert.method)}. Procedure: {_e(cert.procedure)}. "
        f"Standards and guidelines: {_e(', '.join(cert.norms))}.</p>",
        _dl(
            [
                ("Location", cert.location),
                ("Conditions", cert.conditions),
                ("Operator", cert.operator),
            ]
        ),
        "<h2>Reference standards used</h2>",
        "<table><tr><th class=l>Standard</th><th class=l>Description</th>"
        "<th class=l>Serial</th><th class=l>Certificate</th><th class=l>Calibrated by</th>"
        "<th class=l>Due</th></tr>",
    ]
    for s in cert.standards:
        se = s.equipment
        out.append(
            f"<tr><td class=l>{_e(se.id)}</td><td class=l>{_e(se.description)}</td>"
            f"<td class=l>{_e(se.serial or '-')}</td><td class=l>{_e(s.certificate)}</td>"
            f"<td class=l>{_e(s.issued_by)}</td><td class=l>{_e(s.due.isoformat())}</td></tr>"
        )
    out.append("</table>")
    if cert.adjusted:
        out.append("<h2>Results as found (before adjustment)</h2>")
        out.extend(_results_table(cert.as_found_points, cert.conformity, unit))
        out.append("<h2>Results as left (after adjustment)</h2>")
        out.extend(_results_table(cert.points, cert.as_left_conformity, unit))
    else:
        out.append("<h2>Results</h2>")
        out.extend(_results_table(cert.points, cert.conformity, unit))
    out.append(
        "<p>The error is the indication minus the reference value. The expanded uncertainty "
        "U is the standard uncertainty multiplied by the coverage factor k, which for the "
        "effective degrees of freedom ν<sub>eff</sub> (Welch–Satterthwaite) corresponds to a "
        "coverage probability of approximately 95 % (JCGM 100:2008, EA-4/02 M). It contains "
        "the reference standard's uncertainty, the resolution of the item, the repeatability "
        "(standard deviation of the mean), the stability of the reference during the readings"
        + (", and half the hysteresis as a rectangular distribution" if _has_updown(cert) else "")
        + ".</p>"
    )
    if _has_updown(cert):
        out.append(
            f"<p>Each point{' (as left)' if cert.adjusted else ''} is the mean of the increasing and the decreasing series "
            "(hysteresis: the difference of their errors):</p><table><tr>"
            f"<th>Reference / {_e(unit)}</th><th>Error ↑ / {_e(unit)}</th>"
            f"<th>Error ↓ / {_e(unit)}</th><th>Hysteresis / {_e(unit)}</th></tr>"
        )
        for p in cert.points:
            if len(p.series) == 2:
                up, down = p.series
                out.append(
                    f"<tr><td>{_shown(p.reference, p.U)}</td><td>{_shown(up.error, p.U)}</td>"
                    f"<td>{_shown(down.error, p.U)}</td>"
                    f"<td>{_shown(p.hysteresis or 0.0, p.U)}</td></tr>"
                )
        out.append("</table>")
    out.append("<h2>Metrological traceability</h2>")
    for s in cert.standards:
        out.append(
            f"<p>The measurements are traceable to the SI through {_e(s.equipment.id)}, "
            f"calibrated under the unbroken chain of certificates {_e(s.traceability())}: "
            f"it ends at {_e(s.nmi)}, a national metrology institute.</p>"
        )
    out.append("<h2>Statement of conformity</h2>")
    if cert.conformity is None:
        out.append("<p>No tolerance is specified for this item: no conformity statement.</p>")
    else:
        for when, verdict in (
            ("As found", cert.conformity),
            ("As left, after adjustment", cert.as_left_conformity if cert.adjusted else None),
        ):
            if verdict is None:
                continue
            word = "conforms to" if verdict.conforms else "does not conform to"
            out.append(
                f'<p class="{_word(verdict)}">{when}, the item {word} the specification '
                f"{_e(cert.tolerance or '')}.</p>"
            )
        out.append(
            f"<p>Decision rule: {_e(_RULES.get(cert.decision_rule, cert.decision_rule))}.</p>"
        )
    if cert.adjusted:
        out.append(
            "<p>The item was adjusted after the as-found measurement and measured again: "
            "the as-left results are the calibration results.</p>"
        )
    else:
        out.append("<p>The item was not adjusted: the results are as found and as left.</p>")
    out.append(
        "<footer><p>The results relate only to the item calibrated, at the time of the "
        "calibration. This certificate may not be reproduced other than in full without "
        "the written approval of the issuing laboratory.</p>"
        f"<p>Authorised by: {_e(cert.operator)}. Certificate {number}, issued "
        f"{_e(cert.issued.isoformat())} by {_e(lab.name)} with calgate.</p></footer>"
    )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _results_table(
    points: Sequence[PointResult], conformity: InstrumentConformity | None, unit: str
) -> list[str]:
    out = [
        f"<table><tr><th>Reference value / {_e(unit)}</th><th>Indication / {_e(unit)}</th>"
        f"<th>Error / {_e(unit)}</th><th>U / {_e(unit)}</th><th>k</th><th>ν<sub>eff</sub></th>"
        "<th class=l>Series</th>"
        + ("<th>MPE</th><th class=l>Decision</th>" if conformity else "")
        + "</tr>"
    ]
    verdicts = conformity.points if conformity else ()
    for i, p in enumerate(points):
        dof = "∞" if math.isinf(p.dof) else f"{p.dof:g}"
        row = (
            f"<tr><td>{_shown(p.reference, p.U)}</td><td>{_shown(p.indicated, p.U)}</td>"
            f"<td>{_shown(p.error, p.U)}</td><td>{round_uncertainty(p.U)}</td>"
            f"<td>{p.k:.2f}</td><td>{dof}</td><td class=l>{_e(p.direction)}</td>"
        )
        if verdicts:
            v = verdicts[i]
            row += f"<td>±{v.mpe:g}</td><td class=l>{_e(v.decision)}</td>"
        out.append(row + "</tr>")
    out.append("</table>")
    return out


def _has_updown(cert: IssuedCertificate) -> bool:
    return any(len(p.series) == 2 for p in cert.points)
