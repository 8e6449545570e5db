"""Registry loading: the example lab, unit conversion at load, and every bad registry
beside its expected error text (``bad_registries/<case>/expected.err``, telegraf-style)."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration import Registry, RegistryError
from calibration.errors import CalibrationError
from calibration.registry import MAX_FILE_BYTES
from calibration.units import compatible, factor, parse_unit

HERE = Path(__file__).parent
EXAMPLES = HERE.parents[2] / "examples" / "registry"
BAD = sorted(p for p in (HERE / "bad_registries").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def lab() -> Registry:
    return Registry.load(EXAMPLES)


def test_example_lab_loads(lab: Registry) -> None:
    assert lab.equipment_ids() == [
        "BAL-01", "BAL-02", "FTS-01", "PC-01", "PT-101", "PT-102",
        "REF-P1", "REF-W1", "UTM-01", "WS-E2", "WS-F1", "WS-P1",
    ]  # fmt: skip
    assert len(lab.certificates()) == 15
    bal = lab.equipment("BAL-01")
    assert bal is not None
    assert [c.name for c in bal.channels] == ["weight"]
    ch = bal.channels[0]
    assert (ch.quantity, ch.unit, ch.resolution, ch.decision_rule) == ("mass", "g", 0.01, "guarded")
    assert ch.tolerance is not None
    assert ch.tolerance.oiml_r76 is not None
    assert ch.tolerance.oiml_r76.class_ == "II"
    assert lab.equipment("NOPE") is None


def test_certificate_units_are_converted_at_load(lab: Registry) -> None:
    # PT-101's certificate is in kPa, its channel in mbar: x10, U included.
    c = lab.certificate("PCL-2026-0906")
    assert c is not None
    assert (c.unit, c.source_unit) == ("mbar", "kPa")
    assert c.points[0].reference == pytest.approx(20.008)
    assert c.points[0].indicated == pytest.approx(20.358)
    assert pytest.approx(0.046) == c.points[0].U
    assert c.points[0].k == 2
    # PT-102's in bar: x1000.
    c = lab.certificate("PCL-2025-1201")
    assert c is not None
    assert c.points[-1].reference == pytest.approx(2500.11)
    assert pytest.approx(0.12) == c.points[-1].U
    # WS-E2's in mg, the channel in g.
    c = lab.certificate("MCS-2025-0610")
    assert c is not None
    assert c.points[0].reference == pytest.approx(100.00005)
    assert pytest.approx(0.00005) == c.points[0].U


def test_superseded_certificates_are_kept(lab: Registry) -> None:
    numbers = [c.number for c in lab.certificates("BAL-01")]
    assert numbers == ["MCS-2025-1015", "MCS-2026-1022"]
    assert lab.in_force("BAL-01", date(2025, 10, 14)) is None
    first = lab.in_force("BAL-01", date(2025, 10, 15))
    assert first is not None
    assert first.number == "MCS-2025-1015"
    # the day before the new calibration, late in the evening UTC, still the old one
    old = lab.in_force("BAL-01", datetime(2026, 10, 21, 23, 59, tzinfo=UTC))
    assert old is not None
    assert old.number == "MCS-2025-1015"
    new = lab.in_force("BAL-01", datetime(2026, 10, 22, 0, 0, tzinfo=UTC))
    assert new is not None
    assert new.number == "MCS-2026-1022"
    nxt = lab.successor(first)
    assert nxt is not None
    assert nxt.number == "MCS-2026-1022"
    assert lab.successor(new) is None


def test_dcc_certificates_load_with_the_registry(lab: Registry) -> None:
    c = lab.certificate("MCS-2026-0310")
    assert c is not None
    assert c.source == "certificates/MCS-2026-0310.xml"
    assert (c.item, c.channel, c.calibrated, c.due) == (
        "BAL-02",
        "weight",
        date(2026, 3, 10),
        date(2028, 3, 10),
    )
    assert c.standards == ("WS-F1",)
    assert dict(c.standard_certificates) == {"WS-F1": "MCS-2023-0220"}
    n = lab.certificate("NIM-LP-2025-0417")
    assert n is not None
    assert n.nmi
    assert n.item == "REF-P1"
    assert len(n.points) == 6


@pytest.mark.parametrize("case", BAD, ids=[p.name for p in BAD])
def test_bad_registry_lists_every_error(case: Path) -> None:
    expected = (case / "expected.err").read_text(encoding="utf-8").splitlines()
    with pytest.raises(RegistryError) as info:
        Registry.load(case)
    assert info.value.errors == expected
    assert isinstance(info.value, ValueError)
    # the message carries the count and every line
    assert str(info.value).splitlines()[1:] == expected


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as info:
        Registry.load(tmp_path / "missing")
    assert info.value.errors == [f"{tmp_path / 'missing'}: (file): not a directory"]


def test_registry_is_immutable(lab: Registry) -> None:
    with pytest.raises(AttributeError):
        lab.root = Path("/")  # type: ignore[misc]
    c = lab.certificate("MCS-2026-1022")
    assert c is not None
    with pytest.raises(ValueError, match="frozen"):
        c.number = "X"  # type: ignore[misc]


def test_units() -> None:
    assert factor("bar", "kPa") == pytest.approx(100.0)
    assert factor("mbar", "kPa") == pytest.approx(0.1)
    assert factor("mg", "g") == pytest.approx(0.001)
    assert compatible("kN", "N")
    assert not compatible("g", "kPa")
    with pytest.raises(CalibrationError, match="not compatible"):
        factor("g", "kPa")
    with pytest.raises(CalibrationError, match="offset units"):
        factor("degC", "K")
    with pytest.raises(CalibrationError, match="unknown unit"):
        parse_unit("bananas")


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=300))
def test_any_equipment_file_is_loaded_or_refused_with_errors(tmp_path: Path, text: str) -> None:
    root = tmp_path / "fuzz"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(EXAMPLES, root)
    (root / "equipment" / "BAL-01.toml").write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        Registry.load(root)
    assert info.value.errors
    assert all(": " in e for e in info.value.errors)


@pytest.mark.parametrize("garbage", ["0/0", "'", "-e-k[!)3\\.=[", "", "   ", "kg**"])
def test_garbage_units_are_unknown_units(garbage: str) -> None:
    with pytest.raises(CalibrationError):
        parse_unit(garbage)
    assert not compatible(garbage, "g")


_GAUGE = """
id = "PG-1"
role = "instrument"

[[channels]]
name = "{name}"
quantity = "pressure"
unit = "kPa"
range = {range}
tolerance = {{ {kind} = 1.6, span = {span} }}
"""


@pytest.mark.parametrize(
    ("range_", "span", "bounds"),
    [
        ("[-100.0, 150.0]", "[-100.0, 150.0]", (-100.0, 150.0)),
        ("{ low = -100.0, high = 150.0 }", "{ low = -100.0, high = 150.0 }", (-100.0, 150.0)),
        ("250.0", "250.0", (0.0, 250.0)),
    ],
)
@pytest.mark.parametrize("kind", ["en837_class", "mpe_percent_of_span"])
def test_spans_and_ranges_in_every_spelling(
    tmp_path: Path, range_: str, span: str, bounds: tuple[float, float], kind: str
) -> None:
    # A compound gauge -100 ... 150 kPa of class 1.6: its span is 250 kPa, so the MPE is
    # 1.6 % of 250 kPa = 4.0 kPa everywhere on the scale (EN 837-1), however it is written.
    (tmp_path / "equipment").mkdir()
    (tmp_path / "equipment" / "PG-1.toml").write_text(
        _GAUGE.format(name="p", range=range_, kind=kind, span=span), encoding="utf-8"
    )
    reg = Registry.load(tmp_path)
    ch = reg.require("PG-1").channels[0]
    assert ch.range is not None
    assert (ch.range.low, ch.range.high) == bounds
    assert ch.tolerance is not None
    assert ch.tolerance.mpe_at(-50.0) == pytest.approx(4.0)
    assert ch.tolerance.mpe_at(140.0) == pytest.approx(4.0)


def test_a_registry_without_certificates_loads_with_every_channel_none(tmp_path: Path) -> None:
    # git keeps no empty directory: a new lab's registry has equipment/ and no certificates/
    shutil.copytree(EXAMPLES / "equipment", tmp_path / "equipment")
    reg = Registry.load(tmp_path)
    assert reg.certificates() == ()
    assert reg.notes == (
        "certificates/: (file): no such directory: "
        "no certificates yet: every channel's calibration is none",
    )
    at = datetime(2026, 11, 27, tzinfo=UTC)
    statuses = {
        reg.state(e, at, ch.name).status
        for e in reg.equipment_ids()
        for ch in reg.require(e).channels
    }
    assert statuses == {"none"}
    # and a channel without a certificate corrects as the identity: the raw value
    corrector = reg.corrector("PT-101", "pressure", at)
    assert corrector.certificate is None
    assert corrector.correct_one(1013.25)[0] == 1013.25


def test_an_empty_registry_directory_loads_with_notes(tmp_path: Path) -> None:
    (tmp_path / "certificates").mkdir()
    reg = Registry.load(tmp_path)
    assert reg.equipment_ids() == []
    assert reg.notes == (
        "equipment/: (file): no such directory: no equipment yet",
        "certificates/: (file): no .toml or .xml files: "
        "no certificates yet: every channel's calibration is none",
    )


def test_sound_only_leaves_out_the_broken_files_and_what_belongs_to_them(
    tmp_path: Path,
) -> None:
    """A broken certificate of WS-F1 (unknown standard) and a TOML syntax error in one of
    FTS-01's: both items and their certificates are left out and listed; the rest loads."""
    root = tmp_path / "registry"
    shutil.copytree(EXAMPLES, root)
    certs = root / "certificates"
    ws = certs / "MCS-2026-0611.toml"
    ws.write_text(ws.read_text().replace('standards = ["REF-W1"]', 'standards = ["REF-W9"]'))
    fts = certs / "PTB-1.22-2026-0520.toml"
    fts.write_text(fts.read_text() + "\n[[[broken\n")
    with pytest.raises(RegistryError) as info:
        Registry.load(root)
    reg = Registry.load(root, sound_only=True)
    assert reg.problems == tuple(info.value.errors)
    assert reg.unsound == {"WS-F1", "FTS-01"}
    assert reg.equipment("WS-F1") is None
    assert reg.equipment("FTS-01") is None
    assert reg.certificates("WS-F1") == ()
    assert reg.equipment("BAL-01") is not None
    assert reg.certificate("MCS-2026-1022") is not None


def test_hostile_files_are_refused_each_with_its_error(tmp_path: Path) -> None:
    """Symbolic links out of the registry, a FIFO and a huge file: each refused with a
    ``file: (file): message`` line, none opened or read into memory (before: the link's
    target was loaded as calibration data, the FIFO's open() blocked for ever and the
    huge file was read whole)."""
    root = tmp_path / "registry"
    shutil.copytree(EXAMPLES, root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # a valid equipment file, but not the registry's: a link out of the registry
    (outside / "PT-201.toml").write_text(
        (root / "equipment" / "PT-101.toml").read_text().replace("PT-101", "PT-201")
    )
    (root / "equipment" / "PT-201.toml").symlink_to(outside / "PT-201.toml")
    (root / "certificates" / "ZERO.toml").symlink_to("/dev/zero")
    os.mkfifo(root / "certificates" / "FIFO.toml")
    huge = root / "certificates" / "HUGE.toml"
    with huge.open("w") as fh:  # valid TOML: one long comment
        fh.write("#" + "x" * (MAX_FILE_BYTES + 10) + "\n")
    # a link inside the registry is fine
    (root / "certificates" / "archive").mkdir()
    (root / "certificates" / "MCS-2026-1022.toml").rename(
        root / "certificates" / "archive" / "MCS-2026-1022.toml"
    )
    (root / "certificates" / "MCS-2026-1022.toml").symlink_to("archive/MCS-2026-1022.toml")
    with pytest.raises(RegistryError) as info:
        Registry.load(root)
    assert info.value.errors == [
        "certificates/FIFO.toml: (file): not a regular file: refused",
        f"certificates/HUGE.toml: (file): {MAX_FILE_BYTES + 12} bytes, more than the "
        f"{MAX_FILE_BYTES} a registry file may have: refused",
        "certificates/ZERO.toml: (file): a symbolic link out of the registry "
        "(to /dev/zero): refused",
        "equipment/PT-201.toml: (file): a symbolic link out of the registry "
        f"(to {outside.resolve() / 'PT-201.toml'}): refused",
    ]
    for name in ("FIFO.toml", "HUGE.toml", "ZERO.toml"):
        (root / "certificates" / name).unlink()
    (root / "equipment" / "PT-201.toml").unlink()
    reg = Registry.load(root)
    cert = reg.certificate("MCS-2026-1022")
    assert cert is not None
    assert cert.source == "certificates/MCS-2026-1022.toml"
