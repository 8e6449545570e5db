"""An issued certificate as a PTB Digital Calibration Certificate (DCC 3.x, D-SI 1.x lists).

The document follows the element order of the DCC schema 3.3 (``dcc.xsd``) for what it
uses; :mod:`calibration.dcc` reads it back into the registry (``calgate registry
import-dcc``) to the same points:

- ``administrativeData``: ``dccSoftware`` (calgate), ``coreData`` (country, languages,
  ``uniqueIdentifier`` = the certificate number, performance dates and location),
  ``items/item`` (name, manufacturer, model, identifications: the equipment id as the
  laboratory's, the serial as the manufacturer's), ``calibrationLaboratory`` (code =
  accreditation, contact), ``respPersons``, ``customer``, ``statements``: a
  ``basic_conformity`` statement with the decision rule and the verdict, and a
  ``basic_recalibration`` statement with the due date;
- ``measurementResults/measurementResult``: ``usedMethods`` (the guidelines),
  ``measuringEquipments`` (each standard, ``basic_referenceStandard``, citing its
  certificate by ``referralID`` with the SHA-256 of the certificate file),
  ``influenceConditions`` (``basic_adjustment``: whether the item was adjusted), and the
  ``results``: one, or after an adjustment the as-found one (``basic_asFound
  basic_beforeAdjustment``, read back as the registry's ``as_found``) and the as-left one
  (``basic_asLeft basic_afterAdjustment``). Each ``data/list`` holds the reference values
  (``basic_referenceValue``), the indications (``basic_measuredValue``) and the errors of
  indication with their expanded uncertainties (``basic_measurementError``,
  ``si:expandedUncXMLList``) as D-SI ``si:realListXMLList``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.etree import ElementTree as ET

from calibration import units
from calibration.certificate_out import IssuedCertificate
from calibration.dcc import _PREFIXES, _UNITS, DCC_NS, SI_NS, dsi_unit
from calibration.errors import CalibrationError
from calibration.evaluation import PointResult
from calibration.registry import Equipment

__all__ = ["SCHEMA_VERSION", "certificate_dcc", "to_dsi_unit"]

SCHEMA_VERSION = "3.3.0"
_SCHEMA_LOCATION = f"{DCC_NS} https://ptb.de/dcc/v{SCHEMA_VERSION}/dcc.xsd"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
ET.register_namespace("dcc", DCC_NS)
ET.register_namespace("si", SI_NS)
ET.register_namespace("xsi", _XSI)


def to_dsi_unit(unit: str) -> str:
    """A pint unit of one symbol with an optional prefix (``mbar``, ``kPa``, ``g``) in D-SI
    (``\\milli\\bar``, ``\\kilo\\pascal``, ``\\gram``); raises CalibrationError otherwise."""
    target = units.normalise(unit)
    words = {sym: word for word, sym in _UNITS.items()}
    prefixes = {sym: word for word, sym in _PREFIXES.items()}
    text = unit.strip()
    for sym in sorted(words, key=len, reverse=True):
        if not text.endswith(sym):
            continue
        head = text[: -len(sym)]
        if head and head not in prefixes:
            continue
        candidate = (f"\\{prefixes[head]}" if head else "") + f"\\{words[sym]}"
        try:
            if dsi_unit(candidate) == target:
                return candidate
        except CalibrationError:
            continue
    raise CalibrationError(f"no D-SI form known for the unit {unit!r}")


def _el(parent: ET.Element, name: str, text: str | None = None, **attrs: str) -> ET.Element:
    ns, _, local = name.partition(":")
    e = ET.SubElement(parent, f"{{{DCC_NS if ns == 'dcc' else SI_NS}}}{local}", attrs)
    if text is not None:
        e.text = text
    return e


def _text(parent: ET.Element, name: str, content: str, **attrs: str) -> ET.Element:
    """A DCC ``textType``: ``<name><dcc:content lang="en">…</dcc:content></name>``."""
    e = _el(parent, name, **attrs)
    _el(e, "dcc:content", content, lang="en")
    return e


def _contact(parent: ET.Element, name: str, who: str, city: str, country: str) -> None:
    c = _el(parent, name)
    _text(c, "dcc:name", who)
    loc = _el(c, "dcc:location")
    if city:
        _el(loc, "dcc:city", city)
    _el(loc, "dcc:countryCode", country)


def _ids(parent: ET.Element, pairs: list[tuple[str, str, str]]) -> None:
    ids = _el(parent, "dcc:identifications")
    for issuer, value, name in pairs:
        i = _el(ids, "dcc:identification")
        _el(i, "dcc:issuer", issuer)
        _el(i, "dcc:value", value)
        _text(i, "dcc:name", name)


def _maker_model_ids(parent: ET.Element, eq: Equipment, *, manufacturer_required: bool) -> None:
    """``manufacturer``, ``model`` and ``identifications`` (the equipment id as the
    laboratory's, the serial as the manufacturer's): the tail of an item and of a
    measuring equipment alike."""
    if eq.manufacturer or manufacturer_required:
        _text(_el(parent, "dcc:manufacturer"), "dcc:name", eq.manufacturer or "unknown")
    if eq.model:
        _el(parent, "dcc:model", eq.model)
    pairs = [("calibrationLaboratory", eq.id, "equipment id")]
    if eq.serial:
        pairs.append(("manufacturer", eq.serial, "serial number"))
    _ids(parent, pairs)


def _numbers(xs: list[float]) -> str:
    return " ".join(repr(float(x)) for x in xs)


def _real_list(
    q: ET.Element, values: list[float], unit: str, U: list[float] | None, k: list[float] | None
) -> None:
    lst = _el(q, "si:realListXMLList")
    _el(lst, "si:valueXMLList", _numbers(values))
    _el(lst, "si:unitXMLList", unit)
    if U is not None and k is not None:
        unc = _el(lst, "si:expandedUncXMLList")
        _el(unc, "si:uncertaintyXMLList", _numbers(U))
        _el(unc, "si:coverageFactorXMLList", _numbers(k))
        _el(unc, "si:coverageProbabilityXMLList", "0.9545")
        _el(unc, "si:distributionXMLList", "normal")


def _result(
    parent: ET.Element, name: str, pts: Sequence[PointResult], unit: str, **attrs: str
) -> None:
    """One ``dcc:result``: reference values, indications, errors with U and k, ν_eff."""
    res = _el(parent, "dcc:result", **attrs)
    _text(res, "dcc:name", name)
    data_list = _el(_el(res, "dcc:data"), "dcc:list")
    q = _el(data_list, "dcc:quantity", refType="basic_referenceValue")
    _text(q, "dcc:name", "Reference value")
    _real_list(q, [p.reference for p in pts], unit, None, None)
    q = _el(data_list, "dcc:quantity", refType="basic_measuredValue")
    _text(q, "dcc:name", "Indication")
    _real_list(q, [p.indicated for p in pts], unit, None, None)
    q = _el(data_list, "dcc:quantity", refType="basic_measurementError")
    _text(q, "dcc:name", "Error of indication")
    _real_list(q, [p.error for p in pts], unit, [p.U for p in pts], [p.k for p in pts])
    dofs = [p.dof for p in pts]
    if all(math.isfinite(d) for d in dofs):
        q = _el(data_list, "dcc:quantity", refType="basic_effectiveDegreesOfFreedom")
        _text(q, "dcc:name", "Effective degrees of freedom")
        _real_list(q, dofs, "\\one", None, None)


_DCC_CONFORMITY = {
    "pass": "pass",
    "conditional_pass": "conditionalPass",
    "conditional_fail": "conditionalFail",
    "fail": "fail",
}


def certificate_dcc(cert: IssuedCertificate) -> str:
    """The DCC XML document of ``cert`` (UTF-8 text with an XML declaration)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("calgate")
    except PackageNotFoundError:  # running from a source tree
        release = "0"
    unit = to_dsi_unit(cert.unit)
    lab, eq = cert.laboratory, cert.item
    root = ET.Element(
        f"{{{DCC_NS}}}digitalCalibrationCertificate",
        {"schemaVersion": SCHEMA_VERSION, f"{{{_XSI}}}schemaLocation": _SCHEMA_LOCATION},
    )
    adm = _el(root, "dcc:administrativeData")
    sw = _el(_el(adm, "dcc:dccSoftware"), "dcc:software")
    _text(sw, "dcc:name", "calgate")
    _el(sw, "dcc:release", release)

    core = _el(adm, "dcc:coreData")
    _el(core, "dcc:countryCodeISO3166_1", lab.country)
    _el(core, "dcc:usedLangCodeISO639_1", "en")
    _el(core, "dcc:mandatoryLangCodeISO639_1", "en")
    _el(core, "dcc:uniqueIdentifier", cert.number)
    _el(core, "dcc:beginPerformanceDate", cert.begin.date().isoformat())
    _el(core, "dcc:endPerformanceDate", cert.calibrated.isoformat())
    _el(core, "dcc:performanceLocation", "laboratory")

    item = _el(_el(adm, "dcc:items"), "dcc:item")
    _text(item, "dcc:name", eq.description or eq.id)
    _maker_model_ids(item, eq, manufacturer_required=True)

    cl = _el(adm, "dcc:calibrationLaboratory")
    if lab.accreditation:
        _el(cl, "dcc:calibrationLaboratoryCode", lab.accreditation)
    _contact(cl, "dcc:contact", lab.name, lab.city, lab.country)

    rp = _el(_el(adm, "dcc:respPersons"), "dcc:respPerson")
    person = _el(rp, "dcc:person")
    _text(person, "dcc:name", cert.operator)
    _el(rp, "dcc:mainSigner", "true")

    _contact(adm, "dcc:customer", cert.customer, lab.city, lab.country)

    statements = _el(adm, "dcc:statements")
    phases = [("As found", "basic_conformity", cert.conformity)]
    if cert.adjusted:
        phases.append(
            ("As left", "basic_conformity basic_afterAdjustment", cert.as_left_conformity)
        )
    for when, ref_type, verdict in phases:
        if verdict is None:
            continue
        st = _el(statements, "dcc:statement", refType=ref_type)
        _text(
            st,
            "dcc:declaration",
            f"{when}, {'conforms to' if verdict.conforms else 'does not conform to'} "
            f"{cert.tolerance}; decision rule: {cert.decision_rule} (ILAC G8:09/2019).",
        )
        _el(st, "dcc:conformity", _DCC_CONFORMITY.get(verdict.worst, "fail"))
    st = _el(statements, "dcc:statement", refType="basic_recalibration")
    _text(st, "dcc:declaration", "Recalibration is due by this date.")
    _el(st, "dcc:date", cert.due.isoformat())

    results = _el(root, "dcc:measurementResults")
    mr = _el(results, "dcc:measurementResult")
    _text(mr, "dcc:name", f"{cert.channel.name} ({cert.channel.quantity})")
    methods = _el(mr, "dcc:usedMethods")
    m = _el(methods, "dcc:usedMethod", refType="basic_calibrationMethod")
    _text(m, "dcc:name", cert.method)
    _text(m, "dcc:description", f"Procedure: {cert.procedure}")
    for norm in cert.norms:
        _el(m, "dcc:norm", norm)

    equipments = _el(mr, "dcc:measuringEquipments")
    for s in cert.standards:
        me = _el(equipments, "dcc:measuringEquipment", refType="basic_referenceStandard")
        se = s.equipment
        _text(me, "dcc:name", se.description or se.id)
        c = _el(me, "dcc:certificate")
        _text(c, "dcc:referral", f"Calibration certificate {s.certificate} ({s.issued_by})")
        _el(c, "dcc:referralID", s.certificate)
        _el(c, "dcc:procedure", "SHA256" if s.sha256 else "none")
        _el(c, "dcc:value", s.sha256 or "-")
        _maker_model_ids(me, se, manufacturer_required=False)

    conditions = _el(mr, "dcc:influenceConditions")
    if cert.adjusted:
        ic = _el(conditions, "dcc:influenceCondition", refType="basic_adjustment")
        _text(ic, "dcc:name", "Adjustment")
        _text(
            ic,
            "dcc:description",
            "The item was adjusted after the as-found measurement and measured again as left.",
        )
    else:
        ic = _el(
            conditions, "dcc:influenceCondition", refType="basic_adjustment basic_beforeAdjustment"
        )
        _text(ic, "dcc:name", "Adjustment")
        _text(
            ic,
            "dcc:description",
            "The item was not adjusted: the results are as found (before adjustment) and as left.",
        )

    results_el = _el(mr, "dcc:results")
    if cert.adjusted:
        _result(
            results_el,
            "Errors of indication as found (before adjustment)",
            cert.as_found_points,
            unit,
            refType="basic_asFound basic_beforeAdjustment",
        )
        _result(
            results_el,
            "Errors of indication as left (after adjustment)",
            cert.points,
            unit,
            refType="basic_asLeft basic_afterAdjustment",
        )
    else:
        _result(results_el, "Errors of indication", cert.points, unit)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
