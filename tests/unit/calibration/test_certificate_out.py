"""Issued certificates: the registry TOML, the DCC and the HTML say the same thing.

The DCC schema (dcc.xsd 3.x and the D-SI XSD) is published by PTB but shipped by no
package on PyPI, and cannot be fetched here, so the DCC's structure is checked against the
element order of the DCC 3.3 sequences it uses (``ORDER`` below, from the schema's
documentation), its D-SI lists for consistency, and by reading it back with the
registry's own DCC reader.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tomllib
from datetime import UTC, date, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from labconfig import EXAMPLE_REGISTRY

from calibration import Certificate, Registry, dcc
from calibration.certificate_out import (
    IssuedCertificate,
    Laboratory,
    UsedStandard,
    certificate_html,
    certificate_record,
    certificate_toml,
)
from calibration.conformity import instrument_conformity
from calibration.dcc_out import certificate_dcc, to_dsi_unit
from calibration.errors import CalibrationError
from calibration.evaluation import Series, evaluate_point
from calibration.uncertainty import Contribution

DAY = date(2026, 12, 1)


def issued(reg: Registry, *, points: int = 3) -> IssuedCertificate:
    eq = reg.require("PT-101")
    ch = eq.channels[0]
    pc = reg.require("PC-01")
    results = []
    for i in range(points):
        ref = 200.0 + 700.0 * i
        up = Series(
            direction="up",
            reference=(ref, ref + 0.01, ref - 0.01),
            indicated=(ref + 0.36, ref + 0.35, ref + 0.33),
            t_s=(0.0, 0.2, 0.4),
        )
        down = Series(
            direction="down",
            reference=(ref, ref, ref + 0.02),
            indicated=(ref + 0.38, ref + 0.37, ref + 0.4),
            t_s=(5.0, 5.2, 5.4),
        )
        results.append(
            evaluate_point(
                [up, down],
                reference_components=[Contribution("PCL-2026-0905", 0.07)],
                dut_resolution=ch.resolution,
                reference_label="PC-01",
            )
        )
    assert ch.tolerance is not None
    conformity = instrument_conformity(
        indicated=[p.indicated for p in results],
        reference=[p.reference for p in results],
        U=[p.U for p in results],
        tolerance=ch.tolerance,
        rule=ch.decision_rule,
    )
    std = UsedStandard(
        equipment=pc,
        certificate="PCL-2026-0905",
        issued_by="Demo Metrology Lab <pressure>",
        calibrated=date(2026, 9, 5),
        due=date(2028, 9, 30),
        chain=(
            ("PCL-2026-0905", "Demo Metrology Lab"),
            ("PCL-2025-0731", "Demo Metrology Lab"),
            ("NIM-LP-2025-0417", "NIM, NMI"),
        ),
        nmi="National Institute of Metrology, China (NIM)",
        sha256="ab" * 32,
    )
    begin = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    return IssuedCertificate(
        number="CAL-TEST-0001",
        item=eq,
        channel=ch,
        laboratory=Laboratory(name="Test & Lab", accreditation="DAkkS D-K-1", city="Berlin"),
        operator="T. Tester",
        customer="in-house",
        calibrated=DAY,
        issued=DAY,
        due=date(2028, 12, 1),
        begin=begin,
        end=begin.replace(hour=9, minute=20),
        procedure="transmitters <5 points>",
        method="Comparison with a reference standard",
        norms=("EURAMET cg-17", "DKD-R 6-1"),
        location="calibration laboratory",
        conditions="(20 ± 2) °C",
        standards=(std,),
        points=tuple(results),
        conformity=conformity,
        tolerance="MPE ±0.1 % of span 2500",
        decision_rule=ch.decision_rule,
    )


@pytest.fixture(scope="module")
def reg() -> Registry:
    return Registry.load(EXAMPLE_REGISTRY)


def test_toml_is_a_registry_certificate_the_registry_uses(reg: Registry, tmp_path: Path) -> None:
    cert = issued(reg)
    text = certificate_toml(cert)
    data = tomllib.loads(text)
    assert data == {
        **certificate_record(cert),
        "calibrated": DAY,
        "due": date(2028, 12, 1),
    }
    parsed = Certificate.model_validate(data)
    assert [(p.reference, p.indicated, p.U, p.k) for p in parsed.points] == [
        (p.reference, p.indicated, p.U, p.k) for p in cert.points
    ]
    assert [p.dof for p in parsed.points] == [p.dof for p in cert.points]
    root = tmp_path / "registry"
    shutil.copytree(EXAMPLE_REGISTRY, root)
    (root / "certificates" / "CAL-TEST-0001.toml").write_text(text)
    loaded = Registry.load(root)
    assert loaded.in_force("PT-101", DAY, "pressure") == loaded.certificate("CAL-TEST-0001")
    assert loaded.chain_tree("PT-101", DAY, "pressure").numbers() == (
        "CAL-TEST-0001",
        "PCL-2026-0905",
        "PCL-2025-0731",
        "NIM-LP-2025-0417",
    )
    assert loaded.conforms(loaded.certificate("CAL-TEST-0001")) is cert.conformity.conforms  # type: ignore[arg-type, union-attr]


def test_dcc_reads_back_to_the_same_points_and_links(reg: Registry) -> None:
    cert = issued(reg)
    doc = dcc.read(certificate_dcc(cert).encode())
    assert doc.number == "CAL-TEST-0001"
    assert (doc.calibrated, doc.due) == (DAY, date(2028, 12, 1))
    assert doc.issued_by == "Test & Lab"
    assert doc.accreditation == "DAkkS D-K-1"
    assert not doc.nmi
    assert doc.unit == "mbar"
    assert doc.dsi_generations == {1}
    for a, b in zip(doc.points, cert.points, strict=True):
        assert (a.reference, a.U, a.k) == (b.reference, b.U, b.k)
        assert a.indicated == pytest.approx(b.indicated, rel=1e-15)
    assert doc.as_found == ()
    fields = dcc.certificate_fields(doc, {e: reg.require(e) for e in reg.equipment_ids()})
    assert fields["item"] == "PT-101"
    assert fields["standards"] == ["PC-01"]
    assert fields["standard_certificates"] == {"PC-01": "PCL-2026-0905"}


# The DCC 3.3 sequences of the elements the writer uses (child order, required ones in
# capitals-free form: REQUIRED lists those that must be present).
ORDER = {
    "digitalCalibrationCertificate": ["administrativeData", "measurementResults"],
    "administrativeData": [
        "dccSoftware", "refTypeDefinitions", "coreData", "items", "calibrationLaboratory",
        "respPersons", "customer", "statements",
    ],
    "coreData": [
        "countryCodeISO3166_1", "usedLangCodeISO639_1", "mandatoryLangCodeISO639_1",
        "uniqueIdentifier", "identifications", "receiptDate", "beginPerformanceDate",
        "endPerformanceDate", "performanceLocation", "previousReport",
    ],
    "software": ["name", "release", "type", "description"],
    "item": [
        "name", "equipmentClass", "description", "installedSoftwares", "manufacturer",
        "model", "identifications", "itemQuantities", "subItems",
    ],
    "identification": ["issuer", "value", "name"],
    "calibrationLaboratory": ["calibrationLaboratoryCode", "contact"],
    "contact": ["name", "eMail", "phone", "fax", "location", "descriptionData"],
    "customer": ["name", "eMail", "phone", "fax", "location", "descriptionData"],
    "respPerson": ["person", "description", "role", "mainSigner"],
    "statement": [
        "name", "description", "countryCodeISO3166_1", "convention", "traceable", "norm",
        "reference", "declaration", "valid", "date", "period", "respAuthority", "conformity",
    ],
    "measurementResult": [
        "name", "description", "usedMethods", "usedSoftware", "measuringEquipments",
        "influenceConditions", "results", "measurementMetaData",
    ],
    "usedMethod": ["name", "description", "norm", "reference"],
    "measuringEquipment": [
        "name", "equipmentClass", "description", "certificate", "manufacturer", "model",
        "identifications",
    ],
    "certificate": ["referral", "referralID", "procedure", "value", "description"],
    "influenceCondition": ["name", "description", "status", "certificate", "data"],
    "result": ["name", "description", "data", "measurementMetaData"],
    "quantity": ["name", "description", "realListXMLList"],
    "realListXMLList": ["label", "valueXMLList", "unitXMLList", "expandedUncXMLList"],
    "expandedUncXMLList": [
        "uncertaintyXMLList", "coverageFactorXMLList", "coverageProbabilityXMLList",
        "distributionXMLList",
    ],
}  # fmt: skip
REQUIRED = {
    "administrativeData": {"dccSoftware", "coreData", "items", "calibrationLaboratory",
                           "respPersons", "customer"},
    "coreData": {"countryCodeISO3166_1", "usedLangCodeISO639_1", "mandatoryLangCodeISO639_1",
                 "uniqueIdentifier", "beginPerformanceDate", "endPerformanceDate",
                 "performanceLocation"},
    "item": {"name", "manufacturer", "identifications"},
    "contact": {"name", "location"},
    "customer": {"name", "location"},
    "measurementResult": {"name", "results"},
    "certificate": {"referral", "referralID", "procedure", "value"},
    "realListXMLList": {"valueXMLList", "unitXMLList"},
}  # fmt: skip


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def test_dcc_structure_follows_the_schemas_sequences(reg: Registry) -> None:
    root = ET.fromstring(certificate_dcc(issued(reg)).encode())
    assert root.get("schemaVersion") == "3.3.0"
    checked = set()
    for el in root.iter():
        name = _local(el.tag)
        children = [_local(c.tag) for c in el]
        if name in ORDER:
            checked.add(name)
            order = ORDER[name]
            unknown = [c for c in children if c not in order]
            assert not unknown, (name, unknown)
            positions = [order.index(c) for c in children]
            assert positions == sorted(positions), (name, children)
        missing = REQUIRED.get(name, set()) - set(children)
        assert not missing, (name, missing)
        if name == "realListXMLList":
            values = el.find("{*}valueXMLList")
            assert values is not None
            assert values.text
            n = len(values.text.split())
            unc = el.find("{*}expandedUncXMLList")
            if unc is not None:
                for part in ("uncertaintyXMLList", "coverageFactorXMLList"):
                    found = unc.find("{*}" + part)
                    assert found is not None
                    assert found.text
                    assert len(found.text.split()) == n
        if name in ("uniqueIdentifier", "beginPerformanceDate", "value", "date"):
            assert el.text
            assert el.text.strip()
    assert checked >= {"administrativeData", "coreData", "item", "statement", "quantity"}
    refs = [q.get("refType") for q in root.iter("{https://ptb.de/dcc}quantity")]
    assert refs[:3] == ["basic_referenceValue", "basic_measuredValue", "basic_measurementError"]
    statements = [s.get("refType") for s in root.iter("{https://ptb.de/dcc}statement")]
    assert statements == ["basic_conformity", "basic_recalibration"]
    ic = next(root.iter("{https://ptb.de/dcc}influenceCondition"))
    assert ic.get("refType") == "basic_adjustment basic_beforeAdjustment"


def test_html_states_what_iso_iec_17025_asks_for(reg: Registry) -> None:
    cert = issued(reg)
    page = certificate_html(cert)
    for needed in (
        "Test &amp; Lab",  # issuer (escaped)
        "CAL-TEST-0001",  # unique number
        "KE-33X-1184512",  # item: serial
        "PT-101",
        "2026-12-01",  # dates
        "2028-12-01",
        "Comparison with a reference standard",  # method
        "EURAMET cg-17",
        "transmitters &lt;5 points&gt;",  # the procedure, escaped
        "PCL-2026-0905",  # the reference standard's certificate and the chain to the NMI
        "NIM-LP-2025-0417",
        "National Institute of Metrology, China (NIM)",
        "guarded acceptance",  # decision rule
        "conforms to",
        "T. Tester",
        "k",
    ):
        assert needed in page, needed
    assert "<pressure>" not in page  # every text is escaped
    # Results rounded for display: U to two significant digits, error to the same place.
    p = cert.points[0]
    assert f"{p.k:.2f}" in page


@pytest.mark.parametrize(
    ("unit", "dsi"),
    [("mbar", "\\milli\\bar"), ("kPa", "\\kilo\\pascal"), ("g", "\\gram"), ("kN", "\\kilo\\newton"),
     ("bar", "\\bar"), ("mg", "\\milli\\gram"), ("Pa", "\\pascal")],
)  # fmt: skip
def test_dsi_units(unit: str, dsi: str) -> None:
    assert to_dsi_unit(unit) == dsi
    assert dcc.dsi_unit(dsi) == dcc.dsi_unit(unit)


def test_a_unit_without_dsi_form_is_refused() -> None:
    with pytest.raises(CalibrationError, match="no D-SI form"):
        to_dsi_unit("psi")


def test_infinite_dof_is_left_out_of_the_toml(reg: Registry) -> None:
    # Readings without scatter: no Type A input, ν_eff infinite, k of the normal distribution.
    flat = [
        evaluate_point(
            [Series(direction="up", reference=(r, r), indicated=(r + 0.3, r + 0.3), t_s=(0, 1))],
            reference_components=[Contribution("C", 0.05)],
            dut_resolution=0.01,
        )
        for r in (100.0, 900.0)
    ]
    assert all(math.isinf(p.dof) for p in flat)
    cert = dataclasses.replace(issued(reg), points=tuple(flat))
    rows = certificate_record(cert)["points"]
    assert all("dof" not in row for row in rows)
    assert Certificate.model_validate(tomllib.loads(certificate_toml(cert))).points[0].dof is None
    assert "∞" in certificate_html(cert)
