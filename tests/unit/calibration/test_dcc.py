"""PTB DCC import: D-SI 1.x and 2.x, single values and lists, errors, and a DCC that cites
its standard's certificate (a chain link)."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration import Registry, RegistryError
from calibration.dcc import certificate_fields, dsi_unit, read
from calibration.errors import CalibrationError

EXAMPLES = Path(__file__).parents[3] / "examples" / "registry"
CERTS = EXAMPLES / "certificates"


def dcc(
    *,
    values: str,
    number: str = "DCC-1",
    lab: str = "Example Calibration GmbH",
    code: str = "D-K-99999-01-00",
    item: str = "BAL-01",
    equipment: str = "",
    statements: str = (
        '<dcc:statement refType="basic_recalibration"><dcc:date>2027-05-31</dcc:date>'
        "</dcc:statement>"
    ),
    result_ref: str = "",
) -> bytes:
    """A minimal DCC around a ``dcc:list`` body."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<dcc:digitalCalibrationCertificate xmlns:dcc="https://ptb.de/dcc" xmlns:si="https://ptb.de/si" schemaVersion="3.2.1">
  <dcc:administrativeData>
    <dcc:coreData>
      <dcc:uniqueIdentifier>{number}</dcc:uniqueIdentifier>
      <dcc:beginPerformanceDate>2025-05-30</dcc:beginPerformanceDate>
      <dcc:endPerformanceDate>2025-05-31</dcc:endPerformanceDate>
    </dcc:coreData>
    <dcc:items><dcc:item><dcc:identifications>
      <dcc:identification><dcc:issuer>customer</dcc:issuer><dcc:value>{item}</dcc:value></dcc:identification>
    </dcc:identifications></dcc:item></dcc:items>
    <dcc:calibrationLaboratory>
      <dcc:calibrationLaboratoryCode>{code}</dcc:calibrationLaboratoryCode>
      <dcc:contact><dcc:name><dcc:content>{lab}</dcc:content></dcc:name></dcc:contact>
    </dcc:calibrationLaboratory>
    <dcc:statements>{statements}</dcc:statements>
  </dcc:administrativeData>
  <dcc:measurementResults><dcc:measurementResult>
    <dcc:name><dcc:content>weight</dcc:content></dcc:name>
    {equipment}
    <dcc:results><dcc:result{result_ref}><dcc:data><dcc:list>{values}</dcc:list></dcc:data></dcc:result></dcc:results>
  </dcc:measurementResult></dcc:measurementResults>
</dcc:digitalCalibrationCertificate>""".encode()


DSI1_LIST = """
<dcc:quantity refType="basic_referenceValue"><si:realListXMLList>
  <si:valueXMLList>0 100 200</si:valueXMLList><si:unitXMLList>\\gram</si:unitXMLList>
</si:realListXMLList></dcc:quantity>
<dcc:quantity refType="basic_measuredValue"><si:realListXMLList>
  <si:valueXMLList>0.00 100.01 200.03</si:valueXMLList><si:unitXMLList>\\gram \\gram \\gram</si:unitXMLList>
  <si:expandedUncXMLList>
    <si:uncertaintyXMLList>0.004 0.006 0.010</si:uncertaintyXMLList>
    <si:coverageFactorXMLList>2</si:coverageFactorXMLList>
    <si:coverageProbabilityXMLList>0.95</si:coverageProbabilityXMLList>
  </si:expandedUncXMLList>
</si:realListXMLList></dcc:quantity>"""

DSI2_SINGLE = """
<dcc:quantity refType="basic_referenceValue"><si:real><si:value>10</si:value><si:unit>\\kilo\\gram</si:unit></si:real></dcc:quantity>
<dcc:quantity refType="basic_referenceValue"><si:real><si:value>20000</si:value><si:unit>\\gram</si:unit></si:real></dcc:quantity>
<dcc:quantity refType="basic_measurementError"><si:real><si:value>0.5</si:value><si:unit>\\gram</si:unit>
  <si:measurementUncertaintyUnivariate><si:expandedMU>
    <si:valueExpandedMU>0.3</si:valueExpandedMU><si:coverageFactor>2</si:coverageFactor><si:coverageProbability>0.95</si:coverageProbability>
  </si:expandedMU></si:measurementUncertaintyUnivariate></si:real></dcc:quantity>
<dcc:quantity refType="basic_measurementError"><si:real><si:value>-1.2</si:value><si:unit>\\gram</si:unit>
  <si:measurementUncertaintyUnivariate><si:expandedMU>
    <si:valueExpandedMU>0.0005</si:valueExpandedMU><si:coverageFactor>2.1</si:coverageFactor>
  </si:expandedMU></si:measurementUncertaintyUnivariate></si:real></dcc:quantity>
<dcc:quantity refType="basic_temperature"><si:real><si:value>20.1</si:value><si:unit>\\degreecelsius</si:unit></si:real></dcc:quantity>"""


def test_dsi1_list() -> None:
    doc = read(dcc(values=DSI1_LIST), source="x.xml")
    assert doc.number == "DCC-1"
    assert doc.calibrated == date(2025, 5, 31)  # the end of the performance
    assert doc.due == date(2027, 5, 31)
    assert doc.unit == "g"
    assert not doc.nmi
    assert doc.dsi_generations == frozenset({1})
    assert [(p.reference, p.indicated, p.U, p.k) for p in doc.points] == [
        (0.0, 0.0, 0.004, 2.0),
        (100.0, 100.01, 0.006, 2.0),
        (200.0, 200.03, 0.010, 2.0),
    ]


def test_dsi2_single_values_errors_only_and_mixed_units() -> None:
    doc = read(dcc(values=DSI2_SINGLE), source="x.xml")
    assert doc.dsi_generations == frozenset({2})
    assert doc.unit == "kg"
    got = [x for p in doc.points for x in (p.reference, p.indicated, p.U, p.k)]
    assert got == pytest.approx([10.0, 10.0005, 0.0003, 2.0, 20.0, 19.9988, 0.0000005, 2.1])


def test_examples_both_generations() -> None:
    nim = read(CERTS / "NIM-LP-2025-0417.xml")
    assert nim.dsi_generations == frozenset({1})
    assert nim.nmi  # "National Institute of Metrology"
    assert nim.unit == "kPa"
    assert len(nim.points) == 6
    assert pytest.approx(0.0009) == nim.points[0].U
    assert nim.item_ids == ("PS-745-113377", "REF-P1")
    bal = read(CERTS / "MCS-2026-0310.xml")
    assert bal.dsi_generations == frozenset({2})
    assert bal.due == date(2028, 3, 10)  # P24M after 2026-03-10
    assert not bal.nmi
    assert bal.accreditation == "DAkkS D-K-15070-01-00"
    assert [p.indicated for p in bal.points] == [0.0, 20.0, 50.0, 100.0, 200.0, 220.0]
    (std,) = bal.standards
    assert (std.ids, std.certificate) == (("WS-F1",), "MCS-2023-0220")


def test_item_resolved_by_serial_and_cited_certificate_is_a_chain_link() -> None:
    reg = Registry.load(EXAMPLES)
    equipment = {i: reg.require(i) for i in reg.equipment_ids()}
    fields = certificate_fields(read(CERTS / "MCS-2026-0310.xml"), equipment)
    assert fields["item"] == "BAL-02"  # by its serial number SA-0037712245
    assert fields["standards"] == ["WS-F1"]
    assert fields["standard_certificates"] == {"WS-F1": "MCS-2023-0220"}
    tree = reg.chain_tree("BAL-02", date(2026, 11, 1))
    assert tree.standards[0].number == "MCS-2023-0220"
    assert tree.status == "untraceable"


def test_nmi_detection() -> None:
    ptb = read(dcc(values=DSI1_LIST, lab="Physikalisch-Technische Bundesanstalt", code="PTB 1.1"))
    assert ptb.nmi
    nist = read(dcc(values=DSI1_LIST, lab="NIST, Mass and Force Group", code=""))
    assert nist.nmi
    lab = read(dcc(values=DSI1_LIST, lab="Nimbus Calibration Ltd", code="UKAS 0001"))
    assert not lab.nmi  # "Nimbus" is not NIM


def test_as_found_results_and_recalibration_period() -> None:
    both = (
        DSI1_LIST
        + '</dcc:list></dcc:data></dcc:result><dcc:result refType="basic_asFound">'
        + "<dcc:data><dcc:list>"
        + DSI1_LIST.replace("100.01", "100.02")
    )
    doc = read(
        dcc(
            values=both,
            statements=(
                '<dcc:statement refType="basic_recalibration"><dcc:period>P18M</dcc:period>'
                "</dcc:statement>"
            ),
        )
    )
    assert [p.indicated for p in doc.points] == [0.0, 100.01, 200.03]
    assert [p.indicated for p in doc.as_found] == [0.0, 100.02, 200.03]
    assert doc.due == date(2026, 11, 30)  # 2025-05-31 + 18 months, clamped to month end


@pytest.mark.parametrize(
    ("body", "kwargs", "expected"),
    [
        (
            DSI1_LIST.replace("0.004 0.006 0.010", "0.004 0.006"),
            {},
            [
                "x.xml: measurementResults.measurementResult[0].results.result[0].data.list"
                ".quantity[1].realListXMLList: 3 values but 2 uncertainties and 3 coverage factors"
            ],
        ),
        (
            DSI1_LIST.replace("<si:expandedUncXMLList>", "<si:other>").replace(
                "</si:expandedUncXMLList>", "</si:other>"
            ),
            {},
            [
                "x.xml: measurementResults.measurementResult[0].results.result[0].data.list: "
                "no expanded uncertainty (si:expandedUnc or si:expandedMU) on any quantity"
            ],
        ),
        (
            DSI1_LIST.replace("0.00 100.01", "0.00 abc"),
            {},
            [
                "x.xml: measurementResults.measurementResult[0].results.result[0].data.list"
                ".quantity[1].realListXMLList.valueXMLList: must be numbers (got '0.00 abc 200.03')"
            ],
        ),
        (
            DSI1_LIST,
            {"statements": ""},
            [
                "x.xml: administrativeData.statements: no due date: add a statement with refType "
                "basic_recalibration and dcc:date or dcc:period"
            ],
        ),
        (
            DSI1_LIST,
            {
                "statements": '<dcc:statement refType="basic_recalibration"><dcc:period>soon'
                "</dcc:period></dcc:statement>"
            },
            [
                "x.xml: administrativeData.statements.statement[0].period: must be an ISO 8601 "
                "period like P1Y or P180D (got 'soon')"
            ],
        ),
        (
            DSI1_LIST.replace("basic_referenceValue", "basic_nominalValue"),
            {},
            [
                "x.xml: measurementResults.measurementResult[0].results.result[0].data.list: "
                "no quantity with refType basic_referenceValue"
            ],
        ),
        (
            DSI1_LIST.replace("\\gram \\gram \\gram", "\\gram \\kilogram \\gram"),
            {},
            [
                "x.xml: measurementResults.measurementResult[0].results.result[0].data.list"
                ".quantity[1].realListXMLList.unitXMLList: one unit for the whole list, please "
                "(got '\\gram \\kilogram \\gram')"
            ],
        ),
    ],
)
def test_bad_dcc_errors(body: str, kwargs: dict[str, str], expected: list[str]) -> None:
    with pytest.raises(RegistryError) as info:
        read(dcc(values=body, **kwargs), source="x.xml")
    assert info.value.errors == expected


def test_unresolved_identifications() -> None:
    reg = Registry.load(EXAMPLES)
    equipment = {i: reg.require(i) for i in reg.equipment_ids()}
    doc = read(dcc(values=DSI1_LIST, item="SN-0"), source="x.xml")
    with pytest.raises(RegistryError) as info:
        certificate_fields(doc, equipment)
    assert info.value.errors == [
        "x.xml: administrativeData.items.item.identifications: no identification matches "
        "an equipment id or serial number (values: SN-0)"
    ]


@pytest.mark.parametrize(
    ("dsi", "unit"),
    [
        ("\\gram", "g"),
        ("\\kilogram", "kg"),
        ("\\milli\\gram", "mg"),
        ("\\milli\\bar", "mbar"),
        ("\\kilo\\pascal", "kPa"),
        ("\\kilo\\newton", "kN"),
        ("\\metre\\tothe{2}", "m**2"),
        ("\\newton\\per\\milli\\metre\\tothe{2}", "N / mm**2"),
        ("kPa", "kPa"),
    ],
)
def test_dsi_units(dsi: str, unit: str) -> None:
    from calibration.units import factor

    assert factor(dsi_unit(dsi), unit) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", ["\\gramm", "\\kilo", "\\gram junk", "\\tothe{2}", ""])
def test_bad_dsi_units(bad: str) -> None:
    with pytest.raises(CalibrationError):
        dsi_unit(bad)


def test_registry_refuses_a_duplicate_from_a_dcc(tmp_path: Path) -> None:
    reg_dir = tmp_path / "reg"
    shutil.copytree(EXAMPLES, reg_dir)
    shutil.copyfile(CERTS / "MCS-2026-0310.xml", reg_dir / "certificates" / "copy.xml")
    with pytest.raises(RegistryError) as info:
        Registry.load(reg_dir)
    assert info.value.errors == [
        "certificates/copy.xml: number: duplicate certificate number 'MCS-2026-0310' "
        "(also in certificates/MCS-2026-0310.xml)"
    ]


_EXAMPLE_BYTES = (CERTS / "MCS-2026-0310.xml").read_bytes()


@settings(max_examples=150, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(_EXAMPLE_BYTES)),
    junk=st.binary(max_size=40),
    at=st.integers(min_value=0, max_value=len(_EXAMPLE_BYTES)),
)
def test_mangled_dcc_is_a_registry_error_or_a_document(cut: int, junk: bytes, at: int) -> None:
    data = _EXAMPLE_BYTES[:at] + junk + _EXAMPLE_BYTES[at:cut] if cut > at else _EXAMPLE_BYTES[:cut]
    errors: list[str] = []
    try:
        doc = read(data, source="m.xml")
    except RegistryError as exc:
        errors = exc.errors
        doc = None
    if doc is None:
        assert errors
        assert all(e.startswith("m.xml: ") for e in errors)
    else:
        assert doc.number
        assert doc.points


def _hostile(body: str, dtd: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE x [{dtd}]>'
        f'<dcc:digitalCalibrationCertificate xmlns:dcc="https://ptb.de/dcc">{body}'
        "</dcc:digitalCalibrationCertificate>"
    ).encode()


def test_entity_expansion_bomb_is_refused_not_expanded() -> None:
    dtd = '<!ENTITY l0 "lol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10)
    )
    with pytest.raises(RegistryError, match="XML syntax error: limit on input amplification"):
        read(_hostile("&l9;", dtd), source="bomb.xml")


def test_external_entities_are_never_fetched() -> None:
    dtd = '<!ENTITY xxe SYSTEM "file:///etc/passwd">'
    with pytest.raises(RegistryError, match="XML syntax error: undefined entity &xxe;"):
        read(_hostile("&xxe;", dtd), source="xxe.xml")
