"""PTB Digital Calibration Certificates (DCC) into registry certificates.

A DCC (namespaces ``https://ptb.de/dcc`` and ``https://ptb.de/si``) is read with the
standard library's XML parser and checked for the structure calgate relies on; every
missing or malformed part is reported as ``file: path.to.element: message`` (the real PTB
XSD is not shipped, so validation is of what this reader uses, with clear messages, not
of the whole schema).

What is read, and where it goes:

==========================================================  =================================
``administrativeData/coreData/uniqueIdentifier``            ``number``
``administrativeData/coreData/endPerformanceDate``          ``calibrated`` (else ``begin…``)
``administrativeData/items/item/identifications``           ``item``: a value equal to an
                                                            equipment id, else to a serial
``administrativeData/calibrationLaboratory``                ``issued_by`` (contact name),
                                                            ``accreditation`` (lab code),
                                                            ``nmi`` (the name or code is a
                                                            national metrology institute's)
``administrativeData/statements/statement``                 ``due``: a statement whose
  ``[@refType~=basic_recalibration]``                       ``refType`` has
                                                            ``basic_recalibration``, with
                                                            ``dcc:date`` or ``dcc:period``
``measurementResults/measurementResult/measuringEquipments`` ``standards`` (resolved like the
                                                            item); ``dcc:certificate/
                                                            dcc:referralID`` cites the
                                                            standard's certificate: a chain
                                                            link
``…/results/result/data/list/quantity[@refType]``           points: ``basic_referenceValue``,
                                                            ``basic_measuredValue`` (or the
                                                            error ``basic_measurementError``)
==========================================================  =================================

Values are D-SI: a single ``si:real`` per quantity (one point per quantity, several
quantities per refType) or a ``si:realListXMLList`` (all points in one quantity), with the
expanded uncertainty either D-SI 1.x ``si:expandedUnc`` / ``si:expandedUncXMLList`` or
D-SI 2.x ``si:measurementUncertaintyUnivariate/si:expandedMU`` (and its ``…XMLList``
forms). The U of a point is the measurement error's, else the indication's, else the
reference's. A result whose ``refType`` contains ``basic_asFound`` gives ``as_found`` points.
D-SI units (``\\milli\\bar``, ``\\kilo\\newton``, ``\\gram``) are translated for pint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibration import units
from calibration.errors import CalibrationError, RegistryError

if TYPE_CHECKING:
    from calibration.registry import Equipment

__all__ = [
    "DCC_NS",
    "SI_NS",
    "DccDocument",
    "DccPoint",
    "DccStandard",
    "add_months",
    "certificate_fields",
    "dsi_unit",
    "read",
]

DCC_NS = "https://ptb.de/dcc"
SI_NS = "https://ptb.de/si"
_NS = {"dcc": DCC_NS, "si": SI_NS}

# Acronyms and names of national metrology institutes (and the BIPM): a certificate whose
# laboratory name or code contains one is an NMI certificate, the root of a chain.
NMI_NAMES = frozenset(
    {
        "PTB", "NIST", "NIM", "NPL", "LNE", "METAS", "NMIJ", "AIST", "KRISS", "NRC",
        "INRIM", "VSL", "MSL", "NMIA", "BEV", "CEM", "SMU", "GUM", "CMI", "DFM",
        "RISE", "VTT", "MIKES", "UME", "INMETRO", "CENAM", "NMISA", "NPLI", "SIRIM",
        "BIPM", "A*STAR", "NMC", "NIMT", "KEBS", "INTI", "INM", "JV", "BIM",
    }
)  # fmt: skip
NMI_LONG_NAMES = (
    "physikalisch-technische bundesanstalt",
    "national institute of metrology",
    "national institute of standards and technology",
    "national physical laboratory",
    "national metrology institute",
    "federal institute of metrology",
)


@dataclass(frozen=True, slots=True)
class DccPoint:
    reference: float
    indicated: float
    U: float
    k: float


@dataclass(frozen=True, slots=True)
class DccStandard:
    """A ``measuringEquipment``: its identification values and its cited certificate."""

    path: str
    name: str
    ids: tuple[str, ...]
    certificate: str | None


@dataclass(frozen=True, slots=True)
class DccDocument:
    """What calgate reads from a DCC, in the unit of the reference values."""

    source: str
    number: str
    item_ids: tuple[str, ...]
    issued_by: str
    accreditation: str
    nmi: bool
    calibrated: date
    due: date
    unit: str
    points: tuple[DccPoint, ...]
    as_found: tuple[DccPoint, ...] = ()
    standards: tuple[DccStandard, ...] = ()
    quantity_names: tuple[str, ...] = ()
    dsi_generations: frozenset[int] = field(default_factory=frozenset)


# -- D-SI units ---------------------------------------------------------------------------

_PREFIXES = {
    "yocto": "y", "zepto": "z", "atto": "a", "femto": "f", "pico": "p", "nano": "n",
    "micro": "µ", "milli": "m", "centi": "c", "deci": "d", "deca": "da", "hecto": "h",
    "kilo": "k", "mega": "M", "giga": "G", "tera": "T", "peta": "P", "exa": "E",
}  # fmt: skip
_UNITS = {
    "metre": "m", "meter": "m", "kilogram": "kg", "gram": "g", "second": "s", "ampere": "A",
    "kelvin": "K", "mole": "mol", "candela": "cd", "newton": "N", "pascal": "Pa", "bar": "bar",
    "joule": "J", "watt": "W", "volt": "V", "ohm": "ohm", "hertz": "Hz", "litre": "L",
    "liter": "L", "tonne": "t", "minute": "min", "hour": "h", "day": "d", "radian": "rad",
    "degreecelsius": "degC", "one": "dimensionless", "percent": "percent",
    "millimetreofmercury": "mmHg",
}  # fmt: skip
_TOKEN = re.compile(r"\\([A-Za-z]+)(?:\{([^}]*)\})?")


def dsi_unit(text: str) -> str:
    """A D-SI unit string (``\\milli\\bar``, ``\\kilo\\gram``, ``\\metre\\tothe{2}``) for pint.

    Text without a backslash is taken as a plain unit (``kPa``). Raises CalibrationError.
    """
    text = text.strip()
    if "\\" not in text:
        return units.normalise(text)
    pos = 0
    factors: list[str] = []
    prefix = ""
    divide = False
    for m in _TOKEN.finditer(text):
        if text[pos : m.start()].strip():
            raise CalibrationError(f"bad D-SI unit '{text}'")
        pos = m.end()
        word, arg = m.group(1), m.group(2)
        if word in _PREFIXES and not prefix:
            prefix = _PREFIXES[word]
        elif word == "per":
            divide = True
        elif word == "tothe":
            if not factors or arg is None:
                raise CalibrationError(f"bad D-SI unit '{text}': \\tothe needs a unit and {{n}}")
            factors[-1] = f"{factors[-1]}**{arg}"
        elif word in _UNITS:
            sym = _UNITS[word]
            factors.append(("/ " if divide else "") + prefix + sym)
            prefix, divide = "", False
        else:
            raise CalibrationError(f"unknown D-SI unit element \\{word} in '{text}'")
    if text[pos:].strip() or not factors or prefix:
        raise CalibrationError(f"bad D-SI unit '{text}'")
    expr = " ".join(f if f.startswith("/") else f"* {f}" for f in factors).removeprefix("* ")
    return units.normalise(expr)


# -- XML helpers ---------------------------------------------------------------------------


def _find(el: Any, path: str) -> list[Any]:
    """The children at ``path`` (``dcc:a/si:b``); ``…/text()``: their texts."""
    if path.endswith("/text()"):
        return [e.text for e in el.findall(path[: -len("/text()")], _NS) if e.text]
    return list(el.findall(path, _NS))


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{self.source}: {path}: {message}")

    def one(self, el: Any, xpath: str, path: str, *, required: bool = True) -> Any | None:
        found = _find(el, xpath)
        if not found:
            if required:
                self.error(path, "missing")
            return None
        return found[0]

    def text(self, el: Any, xpath: str, path: str, *, required: bool = True) -> str | None:
        node = self.one(el, xpath, path, required=required)
        if node is None:
            return None
        value = (node.text or "").strip()
        if not value:
            if required:
                self.error(path, "empty")
            return None
        return value

    def date(self, el: Any, xpath: str, path: str, *, required: bool = True) -> date | None:
        value = self.text(el, xpath, path, required=required)
        if value is None:
            return None
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            self.error(path, f"must be a date (YYYY-MM-DD) (got {value!r})")
            return None

    def floats(self, text: str | None, path: str) -> list[float] | None:
        if text is None:
            return None
        try:
            return [float(x) for x in text.split()]
        except ValueError:
            self.error(path, f"must be numbers (got {text!r})")
            return None

    def unit(self, text: str | None, path: str) -> str | None:
        if text is None:
            return None
        try:
            return dsi_unit(text)
        except CalibrationError as exc:
            self.error(path, str(exc))
            return None


@dataclass(slots=True)
class _Values:
    values: list[float]
    unit: str
    U: list[float] | None
    k: list[float] | None
    generation: int | None


def _content(el: Any) -> str:
    texts = _find(el, "dcc:name/dcc:content/text()") if el is not None else []
    return str(texts[0]).strip() if texts else ""


# -- D-SI values ---------------------------------------------------------------------------


def _real(r: _Reader, real: Any, path: str) -> _Values | None:
    value = r.floats(r.text(real, "si:value", f"{path}.value"), f"{path}.value")
    unit = r.unit(r.text(real, "si:unit", f"{path}.unit"), f"{path}.unit")
    if value is None or unit is None or len(value) != 1:
        if value is not None and len(value) != 1:
            r.error(f"{path}.value", "must be one number")
        return None
    U = k = None
    gen: int | None = None
    old = r.one(real, "si:expandedUnc", f"{path}.expandedUnc", required=False)
    new = r.one(
        real,
        "si:measurementUncertaintyUnivariate/si:expandedMU",
        f"{path}.measurementUncertaintyUnivariate.expandedMU",
        required=False,
    )
    if old is not None:
        gen = 1
        U = r.floats(r.text(old, "si:uncertainty", f"{path}.expandedUnc.uncertainty"), path)
        k = r.floats(r.text(old, "si:coverageFactor", f"{path}.expandedUnc.coverageFactor"), path)
    elif new is not None:
        gen = 2
        p = f"{path}.measurementUncertaintyUnivariate.expandedMU"
        U = r.floats(r.text(new, "si:valueExpandedMU", f"{p}.valueExpandedMU"), path)
        k = r.floats(r.text(new, "si:coverageFactor", f"{p}.coverageFactor"), path)
    if (old is not None or new is not None) and (U is None or k is None):
        return None
    return _Values(value, unit, U, k, gen)


def _real_list(r: _Reader, lst: Any, path: str) -> _Values | None:
    values = r.floats(
        r.text(lst, "si:valueXMLList", f"{path}.valueXMLList"), f"{path}.valueXMLList"
    )
    unit_text = r.text(lst, "si:unitXMLList", f"{path}.unitXMLList")
    if values is None or unit_text is None:
        return None
    unit_words = unit_text.split()
    if len(set(unit_words)) != 1:
        r.error(f"{path}.unitXMLList", f"one unit for the whole list, please (got '{unit_text}')")
        return None
    unit = r.unit(unit_words[0], f"{path}.unitXMLList")
    if unit is None:
        return None
    U = k = None
    gen: int | None = None
    old = r.one(lst, "si:expandedUncXMLList", "", required=False)
    new = r.one(
        lst,
        "si:measurementUncertaintyUnivariateXMLList/si:expandedMUXMLList",
        "",
        required=False,
    )
    if old is not None:
        gen = 1
        p = f"{path}.expandedUncXMLList"
        U = r.floats(r.text(old, "si:uncertaintyXMLList", f"{p}.uncertaintyXMLList"), p)
        k = r.floats(r.text(old, "si:coverageFactorXMLList", f"{p}.coverageFactorXMLList"), p)
    elif new is not None:
        gen = 2
        p = f"{path}.measurementUncertaintyUnivariateXMLList.expandedMUXMLList"
        U = r.floats(r.text(new, "si:valueExpandedMUXMLList", f"{p}.valueExpandedMUXMLList"), p)
        k = r.floats(r.text(new, "si:coverageFactorXMLList", f"{p}.coverageFactorXMLList"), p)
    if (old is not None or new is not None) and (U is None or k is None):
        return None
    n = len(values)
    if U is not None and k is not None:
        if len(k) == 1:
            k = k * n
        if len(U) != n or len(k) != n:
            r.error(
                path,
                f"{n} values but {len(U)} uncertainties and {len(k)} coverage factors",
            )
            return None
    return _Values(values, unit, U, k, gen)


def _quantity(r: _Reader, q: Any, path: str) -> _Values | None:
    real = r.one(q, "si:real", "", required=False)
    if real is not None:
        return _real(r, real, f"{path}.real")
    lst = r.one(q, "si:realListXMLList", "", required=False)
    if lst is not None:
        return _real_list(r, lst, f"{path}.realListXMLList")
    reals = _find(q, "si:list/si:real")
    if reals:
        parts = [_real(r, x, f"{path}.list.real[{i}]") for i, x in enumerate(reals)]
        if any(p is None for p in parts):
            return None
        ok = [p for p in parts if p is not None]
        if len({p.unit for p in ok}) != 1:
            r.error(f"{path}.list", "one unit for the whole list, please")
            return None
        has_u = [p.U is not None for p in ok]
        if any(has_u) and not all(has_u):
            r.error(f"{path}.list", "either every value has an uncertainty or none")
            return None
        return _Values(
            [p.values[0] for p in ok],
            ok[0].unit,
            [p.U[0] for p in ok if p.U] if all(has_u) else None,
            [p.k[0] for p in ok if p.k] if all(has_u) else None,
            ok[0].generation,
        )
    r.error(path, "no si:real, si:realListXMLList or si:list value")
    return None


def _merge(parts: Sequence[_Values]) -> _Values:
    """Several single-value quantities of one refType, as one list."""
    if len(parts) == 1:
        return parts[0]
    unit = parts[0].unit
    vals: list[float] = []
    Us: list[float] = []
    ks: list[float] = []
    with_u = all(p.U is not None for p in parts)
    for p in parts:
        f = units.factor(p.unit, unit)
        vals.extend(v * f for v in p.values)
        if with_u and p.U is not None and p.k is not None:
            Us.extend(u * f for u in p.U)
            ks.extend(p.k)
    gen = next((p.generation for p in parts if p.generation), None)
    return _Values(vals, unit, Us if with_u else None, ks if with_u else None, gen)


_ROLES = {
    "basic_referenceValue": "reference",
    "basic_measuredValue": "indicated",
    "basic_indicatedValue": "indicated",
    "basic_measurementError": "error",
}


def _points(r: _Reader, lst: Any, path: str) -> tuple[list[DccPoint], str, set[int]] | None:
    found: dict[str, list[_Values]] = {}
    failed = False
    for i, q in enumerate(_find(lst, "dcc:quantity")):
        refs = (q.get("refType") or "").split()
        role = next((_ROLES[t] for t in refs if t in _ROLES), None)
        if role is None:
            continue
        v = _quantity(r, q, f"{path}.quantity[{i}]")
        if v is None:
            failed = True
        else:
            found.setdefault(role, []).append(v)
    if failed:  # its own error is reported; do not add "missing" ones on top
        return None
    if "reference" not in found:
        r.error(path, "no quantity with refType basic_referenceValue")
        return None
    if "indicated" not in found and "error" not in found:
        r.error(path, "no quantity with refType basic_measuredValue or basic_measurementError")
        return None
    try:
        merged = {role: _merge(vs) for role, vs in found.items()}
        ref = merged["reference"]
        unit = ref.unit
        n = len(ref.values)
        conv: dict[str, tuple[list[float], list[float] | None, list[float] | None]] = {}
        for role, v in merged.items():
            f = units.factor(v.unit, unit)
            if len(v.values) != n:
                r.error(path, f"{n} reference values but {len(v.values)} {role} values")
                return None
            conv[role] = (
                [x * f for x in v.values],
                None if v.U is None else [x * f for x in v.U],
                v.k,
            )
    except CalibrationError as exc:
        r.error(path, str(exc))
        return None
    source = next(
        (role for role in ("error", "indicated", "reference") if role in conv and conv[role][1]),
        None,
    )
    if source is None:
        r.error(path, "no expanded uncertainty (si:expandedUnc or si:expandedMU) on any quantity")
        return None
    refs_v = conv["reference"][0]
    if "indicated" in conv:
        ind = conv["indicated"][0]
    else:
        ind = [a + e for a, e in zip(refs_v, conv["error"][0], strict=True)]
    Us, ks = conv[source][1], conv[source][2]
    assert Us is not None
    assert ks is not None
    points = [
        DccPoint(reference=a, indicated=b, U=u, k=k)
        for a, b, u, k in zip(refs_v, ind, Us, ks, strict=True)
    ]
    gens = {v.generation for v in merged.values() if v.generation is not None}
    return points, unit, gens


# -- the document --------------------------------------------------------------------------


def _duration(text: str) -> timedelta | tuple[int, int] | None:
    """An ISO 8601 period ``P1Y6M`` / ``P180D`` as (years, months) or days."""
    m = re.fullmatch(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?", text.strip())
    if not m or not any(m.groups()):
        return None
    years, months, days = (int(g) if g else 0 for g in m.groups())
    if days and (years or months):
        return None
    return timedelta(days=days) if days else (years, months)


def add_months(d: date, months: int) -> date:
    """``d`` plus ``months`` calendar months (the 31st becomes the month's last day)."""
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    for day in (d.day, 30, 29, 28):
        try:
            return date(year, month, day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def _is_nmi(*names: str) -> bool:
    for name in names:
        low = name.lower()
        if any(long in low for long in NMI_LONG_NAMES):
            return True
        if {t.upper() for t in re.split(r"[^A-Za-z*]+", name)} & NMI_NAMES:
            return True
    return False


def read(path: Path | bytes, *, source: str | None = None) -> DccDocument:
    """Parse and check a DCC; raise RegistryError with every problem found."""
    if isinstance(path, Path):
        src = source or path.name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RegistryError([f"{src}: (file): cannot read: {exc}"]) from exc
    else:
        src = source or "<dcc>"
        data = path
    r = _Reader(src)
    # The standard library's parser (expat): no network, no external entities, and
    # expat's limits on entity amplification; lxml cost the gateway 3.6 MB of memory.
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(data)
    except (ElementTree.ParseError, LookupError) as exc:  # LookupError: unknown encoding
        raise RegistryError([f"{src}: (file): XML syntax error: {exc}"]) from exc
    if root.tag != f"{{{DCC_NS}}}digitalCalibrationCertificate":
        raise RegistryError(
            [
                f"{src}: (root): not a DCC: expected dcc:digitalCalibrationCertificate in "
                f"namespace {DCC_NS}, got {root.tag}"
            ]
        )
    adm = r.one(root, "dcc:administrativeData", "administrativeData")
    results = r.one(root, "dcc:measurementResults", "measurementResults")
    if adm is None or results is None:
        raise RegistryError(r.errors)

    core = "administrativeData.coreData"
    number = r.text(adm, "dcc:coreData/dcc:uniqueIdentifier", f"{core}.uniqueIdentifier")
    begin = r.date(
        adm, "dcc:coreData/dcc:beginPerformanceDate", f"{core}.beginPerformanceDate", required=False
    )
    end = r.date(
        adm, "dcc:coreData/dcc:endPerformanceDate", f"{core}.endPerformanceDate", required=False
    )
    calibrated = end or begin
    if calibrated is None and not any(core in e for e in r.errors):
        r.error(f"{core}.endPerformanceDate", "missing (and no beginPerformanceDate)")

    item_ids = tuple(
        str(v).strip()
        for v in _find(
            adm, "dcc:items/dcc:item/dcc:identifications/dcc:identification/dcc:value/text()"
        )
    )
    if not item_ids:
        r.error("administrativeData.items.item.identifications", "missing: no identification value")

    lab = r.one(adm, "dcc:calibrationLaboratory", "administrativeData.calibrationLaboratory")
    issued_by = accreditation = ""
    if lab is not None:
        issued_by = (
            r.text(
                lab,
                "dcc:contact/dcc:name/dcc:content",
                "administrativeData.calibrationLaboratory.contact.name",
            )
            or ""
        )
        accreditation = r.text(lab, "dcc:calibrationLaboratoryCode", "", required=False) or ""

    due: date | None = None
    for i, st in enumerate(_find(adm, "dcc:statements/dcc:statement")):
        if "basic_recalibration" not in (st.get("refType") or "").split():
            continue
        p = f"administrativeData.statements.statement[{i}]"
        d = r.date(st, "dcc:date", f"{p}.date", required=False)
        period = r.text(st, "dcc:period", f"{p}.period", required=False)
        if d is not None:
            due = d
        elif period is not None and calibrated is not None:
            dur = _duration(period)
            if dur is None:
                r.error(
                    f"{p}.period", f"must be an ISO 8601 period like P1Y or P180D (got {period!r})"
                )
            elif isinstance(dur, timedelta):
                due = calibrated + dur
            else:
                due = add_months(calibrated, dur[0] * 12 + dur[1])
        elif period is None:
            r.error(p, "a basic_recalibration statement needs dcc:date or dcc:period")
        break
    if due is None and not any("statements" in e for e in r.errors):
        r.error(
            "administrativeData.statements",
            "no due date: add a statement with refType basic_recalibration and dcc:date or dcc:period",
        )

    standards: list[DccStandard] = []
    points: list[DccPoint] = []
    as_found: list[DccPoint] = []
    unit: str | None = None
    gens: set[int] = set()
    names: list[str] = []
    for i, mr in enumerate(_find(results, "dcc:measurementResult")):
        mp = f"measurementResults.measurementResult[{i}]"
        for j, me in enumerate(_find(mr, "dcc:measuringEquipments/dcc:measuringEquipment")):
            ep = f"{mp}.measuringEquipments.measuringEquipment[{j}]"
            ids = tuple(
                str(v).strip()
                for v in _find(me, "dcc:identifications/dcc:identification/dcc:value/text()")
            )
            cited = _find(me, "dcc:certificate/dcc:referralID/text()")
            if not ids:
                r.error(f"{ep}.identifications", "missing: cannot tell which standard this is")
                continue
            standards.append(
                DccStandard(
                    path=ep,
                    name=_content(me),
                    ids=ids,
                    certificate=str(cited[0]).strip() if cited else None,
                )
            )
        for j, res in enumerate(_find(mr, "dcc:results/dcc:result")):
            rp = f"{mp}.results.result[{j}]"
            lst = r.one(res, "dcc:data/dcc:list", f"{rp}.data.list")
            if lst is None:
                continue
            got = _points(r, lst, f"{rp}.data.list")
            if got is None:
                continue
            pts, u, g = got
            if unit is not None and u != unit:
                try:
                    f = units.factor(u, unit)
                except CalibrationError as exc:
                    r.error(rp, str(exc))
                    continue
                pts = [DccPoint(p.reference * f, p.indicated * f, p.U * f, p.k) for p in pts]
            unit = unit or u
            gens |= g
            names.extend(n for n in (_content(res), _content(mr)) if n)
            is_found = (
                "basic_asFound"
                in ((res.get("refType") or "") + " " + (mr.get("refType") or "")).split()
            )
            (as_found if is_found else points).extend(pts)
    if not points and not any(".data.list" in e for e in r.errors):
        r.error("measurementResults", "no result list with calibration points")
    if r.errors:
        raise RegistryError(r.errors)
    assert number is not None
    assert calibrated is not None
    assert due is not None
    assert unit is not None
    return DccDocument(
        source=src,
        number=number,
        item_ids=item_ids,
        issued_by=issued_by,
        accreditation=accreditation,
        nmi=_is_nmi(issued_by, accreditation),
        calibrated=calibrated,
        due=due,
        unit=unit,
        points=tuple(points),
        as_found=tuple(as_found),
        standards=tuple(standards),
        quantity_names=tuple(names),
        dsi_generations=frozenset(gens),
    )


def _resolve(ids: Sequence[str], equipment: Mapping[str, Equipment]) -> str | None:
    for v in ids:
        if v in equipment:
            return v
    for v in ids:
        for eq in equipment.values():
            if eq.serial and eq.serial == v:
                return eq.id
    return None


def certificate_fields(doc: DccDocument, equipment: Mapping[str, Equipment]) -> dict[str, Any]:
    """The registry certificate fields of ``doc``, its item and standards resolved.

    Raises RegistryError when an identification matches no equipment.
    """
    errors: list[str] = []
    item = _resolve(doc.item_ids, equipment)
    if item is None:
        errors.append(
            f"{doc.source}: administrativeData.items.item.identifications: no identification "
            f"matches an equipment id or serial number (values: {', '.join(doc.item_ids)})"
        )
    std_ids: list[str] = []
    cited: dict[str, str] = {}
    for s in doc.standards:
        sid = _resolve(s.ids, equipment)
        if sid is None:
            errors.append(
                f"{doc.source}: {s.path}.identifications: no identification matches an "
                f"equipment id or serial number (values: {', '.join(s.ids)})"
            )
            continue
        if sid not in std_ids:
            std_ids.append(sid)
        if s.certificate:
            cited[sid] = s.certificate
    if errors:
        raise RegistryError(errors)
    assert item is not None
    channel: str | None = None
    eq = equipment[item]
    if len(eq.channels) > 1:
        wanted = {n.lower() for n in doc.quantity_names}
        channel = next(
            (
                c.name
                for c in eq.channels
                if c.name.lower() in wanted or c.quantity.lower() in wanted
            ),
            None,
        )
    return {
        "number": doc.number,
        "item": item,
        "channel": channel,
        "issued_by": doc.issued_by,
        "accreditation": doc.accreditation,
        "nmi": doc.nmi,
        "calibrated": doc.calibrated,
        "due": doc.due,
        "standards": std_ids,
        "standard_certificates": cited,
        "unit": doc.unit,
        "model": "interpolate",
        "points": [
            {"reference": p.reference, "indicated": p.indicated, "U": p.U, "k": p.k}
            for p in doc.points
        ],
        "as_found": [
            {"reference": p.reference, "indicated": p.indicated, "U": p.U, "k": p.k}
            for p in doc.as_found
        ],
    }
