"""``calgate registry …`` and ``calgate correct`` on the example lab and on broken
registries, through the real CLI entry point (and once as a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from calibration import Registry
from gateway.cli import main
from gateway.commands.registry import parse_at

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples" / "registry"
BAD = ROOT / "tests" / "unit" / "calibration" / "bad_registries"
AT = "2026-11-27T12:00:00Z"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_example_lab(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "registry", "check", str(EXAMPLES), "--at", AT)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{EXAMPLES}: 12 equipment, 15 certificates: no errors"
    assert lines[1] == "status on 2026-11-27 (UTC):"
    bal02 = next(i for i, line in enumerate(lines) if line.strip().startswith("BAL-02"))
    assert "UNTRACEABLE" in lines[bal02]
    assert "MCS-2026-0310" in lines[bal02]
    assert lines[bal02 + 1].strip() == (
        "! standard WS-F1: certificate MCS-2023-0220 was not in force when MCS-2026-0310 was "
        "calibrated on 2026-03-10 (in force 2023-02-20 to 2026-02-28)"
    )
    pt102 = next(line for line in lines if line.strip().startswith("PT-102"))
    assert "DUE SOON" in pt102
    assert "due 2027-12-31" in pt102
    ok = [line for line in lines if line.startswith("  ") and " ok " in line]
    assert len(ok) == 10


def test_check_strict_fails_on_the_broken_chain(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "registry", "check", str(EXAMPLES), "--at", AT, "--strict")
    assert code == 78
    assert out.splitlines()[-1] == (
        "1 channel(s) expired, untraceable, suspect or without certificate"
    )


@pytest.mark.parametrize("case", ["points", "unknown_ids", "dcc", "cycle"])
def test_check_bad_registry_lists_every_error(
    capsys: pytest.CaptureFixture[str], case: str
) -> None:
    expected = (BAD / case / "expected.err").read_text(encoding="utf-8").splitlines()
    code, out, err = run(capsys, "registry", "check", str(BAD / case))
    assert code == 78
    assert out == ""
    lines = err.splitlines()
    n = len(expected)
    assert lines[0] == (
        f"calgate: registry {BAD / case} is not valid ({n} error{'s' if n != 1 else ''}):"
    )
    assert lines[1:] == expected


def test_chain_tree_human(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "registry", "chain", str(EXAMPLES), "BAL-01", "--at", AT)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "BAL-01 (weight) on 2026-11-27: ok"
    assert lines[1].startswith("  MCS-2026-1022  BAL-01/weight  [ok]  calibrated 2026-10-22")
    assert lines[2].startswith("  └── MCS-2025-0610  WS-E2/mass  [ok]")
    assert "needed in force on 2026-10-22" in lines[2]
    assert lines[3].startswith("      └── PTB-1.41-2024-0312  REF-W1/mass  [ok]")
    assert lines[3].endswith("— NMI)")


def test_chain_tree_json_broken(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "registry", "chain", str(EXAMPLES), "BAL-02", "--at", AT, "--json")
    assert code == 0
    tree = json.loads(out)
    assert (tree["number"], tree["item"], tree["status"]) == (
        "MCS-2026-0310",
        "BAL-02",
        "untraceable",
    )
    assert len(tree["reasons"]) == 1
    (ws,) = tree["standards"]
    assert (ws["number"], ws["item"], ws["status"], ws["evaluated_on"]) == (
        "MCS-2023-0220", "WS-F1", "expired", "2026-03-10"
    )  # fmt: skip
    (ref,) = ws["standards"]
    assert (ref["number"], ref["nmi"], ref["status"]) == ("PTB-1.41-2020-0207", True, "valid")


def test_chain_unknown_item(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "registry", "chain", str(EXAMPLES), "BAL-99")
    assert code == 64
    assert "unknown equipment 'BAL-99'" in err


def test_trace(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "registry", "trace", str(EXAMPLES), "WS-E2", "--json")
    assert code == 0
    got = [(a["certificate"], a["from"], a["to"]) for a in json.loads(out)]
    assert got == [
        ("MCS-2025-1015", "2025-10-15", "2026-10-21"),
        ("MCS-2026-1022", "2026-10-22", None),
    ]


def test_correct_bal01_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "correct", str(EXAMPLES), "BAL-01", "weight", "200.0", "--at", AT, "--json"
    )
    assert code == 0, err
    m = json.loads(out)
    assert m["ts"] == "2026-11-27T12:00:00.000000Z"
    assert (m["seq"], m["equipment"], m["channel"], m["unit"]) == (0, "BAL-01", "weight", "g")
    assert m["raw"] == 200.0
    # e(200.00) = 200.00 − 199.99992 = 0.00008 g, so y = 199.99992 g.
    assert m["value"] == pytest.approx(199.99992, abs=1e-9)
    # u² = (0.012/2)² + (0.01/(2√3))² + 0.005²
    u = (0.006**2 + 0.01**2 / 12 + 0.005**2) ** 0.5
    assert m["u"] == pytest.approx(u)
    assert m["U"] == pytest.approx(2 * u)
    assert m["k"] == 2
    assert (m["quality"], m["flags"], m["calibration"]) == ("good", [], "valid")
    assert (m["certificate"], m["conformity"]) == ("MCS-2026-1022", None)
    assert m["chain"] == ["MCS-2026-1022", "MCS-2025-0610", "PTB-1.41-2024-0312"]


def test_correct_bal01_human(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "correct", str(EXAMPLES), "BAL-01", "weight", "200.0", "--at", AT)
    assert code == 0
    assert "  corrected      200.000 g ± 0.017 g  (k = 2)" in out
    assert "  calibration    valid" in out
    assert "  chain          MCS-2026-1022 → MCS-2025-0610 → PTB-1.41-2024-0312 (NMI)" in out
    assert "as found       conforms  (OIML R76 class II, e = 0.01, in-service, rule guarded)" in out
    budget = out[out.index("uncertainty budget") :].splitlines()[1:]
    labels = [line.split()[0] for line in budget]
    assert labels == [
        "MCS-2026-1022", "MCS-2025-0610", "PTB-1.41-2024-0312",
        "resolution", "repeatability", "combined", "expanded",
    ]  # fmt: skip


def test_correct_conformity_and_range(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "correct", str(EXAMPLES), "PT-101", "pressure", "1013.5", "--at", AT, "--json"
    )
    assert code == 0
    m = json.loads(out)
    assert (m["conformity"], m["flags"], m["unit"]) == ("pass", [], "mbar")
    code, out, _ = run(
        capsys, "correct", str(EXAMPLES), "PT-101", "pressure", "2600", "--at", AT, "--json"
    )
    m = json.loads(out)
    assert (m["conformity"], m["flags"], m["quality"]) == ("fail", ["out_of_range"], "uncertain")
    code, out, _ = run(
        capsys, "correct", str(EXAMPLES), "BAL-02", "weight", "100", "--at", AT, "--json"
    )
    m = json.loads(out)
    assert (m["calibration"], m["chain"][0]) == ("untraceable", "MCS-2026-0310")
    code, out, _ = run(
        capsys, "correct", str(EXAMPLES), "PT-102", "pressure", "1000", "--at", AT, "--json"
    )
    assert json.loads(out)["calibration"] == "due_soon"


def test_correct_without_a_certificate_says_what_the_gateway_publishes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A channel with no certificate in force: `correct` (one reading "as the gateway
    would") gives the payload the gateway publishes (docs/interfaces.md: value as read,
    u, U, k null, quality uncertain, flag uncalibrated, conformity indeterminate against
    PT-101's limits); it printed U = 0.040 mbar, quality good and conformity pass."""
    (tmp_path / "equipment").mkdir()
    shutil.copy(EXAMPLES / "equipment" / "PT-101.toml", tmp_path / "equipment")
    code, out, err = run(capsys, "correct", str(tmp_path), "PT-101", "pressure", "1013.6", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert (m["raw"], m["value"], m["u"], m["U"], m["k"]) == (1013.6, 1013.6, None, None, None)
    assert (m["quality"], m["flags"], m["calibration"]) == ("uncertain", ["uncalibrated"], "none")
    assert (m["certificate"], m["conformity"], m["chain"]) == (None, "indeterminate", [])
    code, out, err = run(capsys, "correct", str(tmp_path), "PT-101", "pressure", "1013.6")
    assert code == 0, err
    assert "corrected      1013.6 mbar  (no uncertainty)" in out
    assert "expanded" not in out
    assert "uncertainty    none: no certificate in force" in out


def test_correct_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "correct", str(EXAMPLES), "BAL-01", "force", "1")
    assert code == 64
    assert "BAL-01 has no channel 'force'" in err
    code, _, err = run(capsys, "correct", str(EXAMPLES), "BAL-01", "weight", "nan")
    assert code == 64
    code, _, err = run(capsys, "correct", str(BAD / "cycle"), "BAL", "weight", "1")
    assert code == 78


def test_import_dcc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "registry"
    shutil.copytree(EXAMPLES, reg)
    dcc = tmp_path / "incoming.xml"
    (reg / "certificates" / "MCS-2026-0310.xml").rename(dcc)
    code, out, err = run(capsys, "registry", "import-dcc", str(dcc), "--into", str(reg))
    assert code == 0, err
    assert (reg / "certificates" / "MCS-2026-0310.xml").read_bytes() == dcc.read_bytes()
    assert "  item        BAL-02" in out
    assert "  points      6 in g (D-SI 2.x)" in out
    assert "  standards   WS-F1 (certificate MCS-2023-0220)" in out
    assert "  status now  UNTRACEABLE" in out
    # again: refused, nothing changed
    code, _, err = run(capsys, "registry", "import-dcc", str(dcc), "--into", str(reg))
    assert code == 78
    assert "already in the registry" in err


def test_import_dcc_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "registry"
    shutil.copytree(EXAMPLES, reg)
    before = sorted(p.name for p in (reg / "certificates").iterdir())
    orphan = BAD / "dcc" / "certificates" / "orphan.xml"
    code, _, err = run(capsys, "registry", "import-dcc", str(orphan), "--into", str(reg))
    assert code == 78
    assert err.splitlines()[1:] == [
        "orphan.xml: administrativeData.items.item.identifications: no identification matches "
        "an equipment id or serial number (values: SA-9999)",
        "orphan.xml: measurementResults.measurementResult[0].measuringEquipments"
        ".measuringEquipment[0].identifications: no identification matches an equipment id or "
        "serial number (values: WS-X)",
    ]
    garbage = tmp_path / "garbage.xml"
    garbage.write_bytes(b"\x00\x01 not xml")
    code, _, err = run(capsys, "registry", "import-dcc", str(garbage), "--into", str(reg))
    assert code == 78
    assert "garbage.xml: (file): XML syntax error" in err
    assert sorted(p.name for p in (reg / "certificates").iterdir()) == before


def test_calgate_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "registry", "check", str(BAD / "dates")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 78
    assert proc.stderr.splitlines()[1:] == (BAD / "dates" / "expected.err").read_text().splitlines()


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _eq(eq_id: str, role: str, tolerance: str = "") -> str:
    return (
        f'id = "{eq_id}"\nrole = "{role}"\n[[channels]]\nname = "m"\nquantity = "mass"\n'
        f'unit = "g"\n{tolerance}'
    )


def _cert(number: str, item: str, calibrated: str, std: str = "", found: float = 0.0) -> str:
    text = (
        f'number = "{number}"\nitem = "{item}"\nissued_by = "Lab"\nnmi = {str(not std).lower()}\n'
        f'calibrated = {calibrated}\ndue = 2030-01-01\nstandards = [{std}]\nunit = "g"\n'
        "points = [\n  { reference = 100.0, indicated = 100.001, U = 0.002, k = 2 },\n"
        "  { reference = 200.0, indicated = 200.002, U = 0.004, k = 2 },\n]\n"
    )
    if found:
        text += (
            f"as_found = [\n  {{ reference = 100.0, indicated = {100 + found}, U = 0.002, k = 2 }},\n"
            "  { reference = 200.0, indicated = 200.002, U = 0.004, k = 2 },\n]\n"
        )
    return text


def test_check_lists_what_depends_on_a_drifted_standard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(
        tmp_path,
        {
            "equipment/REF.toml": _eq("REF", "reference_standard", "tolerance = { mpe = 0.01 }\n"),
            "equipment/WS.toml": _eq("WS", "working_standard"),
            "equipment/INS.toml": _eq("INS", "instrument"),
            "certificates/N-1.toml": _cert("N-1", "REF", "2024-01-10"),
            "certificates/N-2.toml": _cert("N-2", "REF", "2025-01-10", found=0.05),
            "certificates/W-1.toml": _cert("W-1", "WS", "2024-06-01", '"REF"'),
            "certificates/W-2.toml": _cert("W-2", "WS", "2025-03-01", '"REF"'),
            "certificates/C-1.toml": _cert("C-1", "INS", "2024-09-01", '"WS"'),
        },
    )
    code, out, _ = run(capsys, "registry", "check", str(tmp_path), "--at", "2025-02-01")
    assert code == 0
    lines = out.splitlines()
    assert lines[2:] == [
        "  INS  m         SUSPECT         C-1                  due 2030-01-01  instrument",
        "         ! via WS (W-1): standard REF was found out of tolerance (as found) at its "
        "next calibration (N-2, 2025-01-10); W-1 was calibrated with it on 2024-06-01",
        "  REF  m         ok              N-2                  due 2030-01-01  reference "
        "standard  as found: DOES NOT CONFORM",
        "  WS   m         SUSPECT         W-1                  due 2030-01-01  working standard",
        "         ! standard REF was found out of tolerance (as found) at its next "
        "calibration (N-2, 2025-01-10); W-1 was calibrated with it on 2024-06-01",
        "found out of tolerance (as found), with what depends on them (reverse trace):",
        "  REF: N-2 (2025-01-10); in use since N-1 (2024-01-10): 2 certificate(s) to review",
        "    W-1  WS/m  2024-06-01 to 2025-02-28",
        "      C-1  INS/m  2024-09-01 to now",
    ]


def test_an_unknown_equipment_id_exits_64_from_probe_correct_and_chain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One exit code (EX_USAGE) for the same mistake, whichever command it is made in."""
    lab = EXAMPLES.parent / "calgate-lab.toml"
    for argv in (
        ("probe", "-c", str(lab), "BAL-99"),
        ("correct", str(EXAMPLES), "BAL-99", "weight", "1"),
        ("registry", "chain", str(EXAMPLES), "BAL-99"),
        ("registry", "trace", str(EXAMPLES), "BAL-99"),
    ):
        code, _, err = run(capsys, *argv)
        assert code == 64, argv
        assert "unknown equipment 'BAL-99'" in err, argv


def test_check_a_registry_without_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a new lab's registry in git: equipment/ and no certificates/ (git keeps no empty dir)
    shutil.copytree(EXAMPLES / "equipment", tmp_path / "equipment")
    code, out, err = run(capsys, "registry", "check", str(tmp_path), "--at", AT)
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"{tmp_path}: 12 equipment, 0 certificates: no errors"
    assert lines[1] == (
        "note: certificates/: (file): no such directory: "
        "no certificates yet: every channel's calibration is none"
    )
    rows = [line for line in lines if line.startswith("  ") and not line.strip().startswith("!")]
    assert len(rows) == 12
    assert all("NO CERTIFICATE" in row for row in rows)
    # --strict still refuses channels without a certificate
    code, out, _ = run(capsys, "registry", "check", str(tmp_path), "--at", AT, "--strict")
    assert code == 78
    assert out.splitlines()[-1] == (
        "12 channel(s) expired, untraceable, suspect or without certificate"
    )


def test_an_out_of_range_value_is_marked_and_not_judged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """500 g on BAL-01, a 220 g balance: never extrapolated, so quality uncertain and
    conformity indeterminate (it has no limits that would fail at the span's edge), and
    the text says why."""
    low, high = Registry.load(EXAMPLES).corrector("BAL-01", "weight", parse_at(AT)).span
    assert high < 500.0
    code, out, _ = run(capsys, "correct", str(EXAMPLES), "BAL-01", "weight", "500", "--at", AT)
    assert code == 0
    corrected = next(x for x in out.splitlines() if x.startswith("  corrected"))
    assert corrected.endswith("(k = 2)  ! not valid here: see quality")
    assert f"  quality        uncertain  (outside the calibrated span {low:g} to {high:g} g:" in out
    assert (
        "  conformity     indeterminate  (no decision on this value: outside the calibrated" in out
    )
    code, out, _ = run(
        capsys, "correct", str(EXAMPLES), "BAL-01", "weight", "500", "--at", AT, "--json"
    )
    m = json.loads(out)
    assert (m["quality"], m["conformity"], m["flags"]) == (
        "uncertain", "indeterminate", ["out_of_range"]
    )  # fmt: skip


def test_an_untraceable_value_is_not_judged(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "correct", str(EXAMPLES), "BAL-02", "weight", "100", "--at", AT, "--json"
    )
    assert code == 0
    m = json.loads(out)
    assert (m["calibration"], m["quality"], m["conformity"]) == (
        "untraceable", "uncertain", "indeterminate"
    )  # fmt: skip


def test_trace_and_chain_agree_on_when_a_certificate_stopped_being_in_force(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One rule (Registry.in_force_until: its due day, or the day before its successor
    was calibrated when that comes first) on both commands. WS-F1's MCS-2023-0220 was due
    on 2026-02-28 and superseded by MCS-2026-0611 on 2026-06-11: in force to 2026-02-28;
    readings were corrected through it (expired) until 2026-06-10."""
    code, out, _ = run(capsys, "registry", "trace", str(EXAMPLES), "REF-W1", "--json")
    assert code == 0
    ws = next(a for a in json.loads(out) if a["certificate"] == "MCS-2023-0220")
    assert (ws["from"], ws["to"], ws["in_force_to"]) == ("2023-02-20", "2026-06-10", "2026-02-28")
    code, out, _ = run(capsys, "registry", "trace", str(EXAMPLES), "REF-W1")
    line = next(x for x in out.splitlines() if "MCS-2023-0220" in x)
    assert "from 2023-02-20 to 2026-06-10 (in force to 2026-02-28, expired after)" in line

    code, out, _ = run(capsys, "registry", "chain", str(EXAMPLES), "BAL-02", "--at", AT, "--json")
    assert code == 0
    tree = json.loads(out)
    (node,) = tree["standards"]
    assert (node["number"], node["in_force_to"]) == ("MCS-2023-0220", "2026-02-28")
    assert any("(in force 2023-02-20 to 2026-02-28)" in r for r in tree["reasons"])
    # A superseded certificate is in force until the day before its successor.
    (ptb,) = node["standards"]
    reg = Registry.load(EXAMPLES)
    ptb_cert = reg.certificate(ptb["number"])
    assert ptb_cert is not None
    successor = reg.successor(ptb_cert)
    assert successor is not None
    assert successor.calibrated < ptb_cert.due
    assert ptb["in_force_to"] == (successor.calibrated - timedelta(days=1)).isoformat()


def test_import_dcc_stays_inside_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate number with ``../`` names a file inside certificates/; a registry
    without certificates/ yet (a new lab's, in git) gets the directory."""
    reg = tmp_path / "registry"
    shutil.copytree(EXAMPLES / "equipment", reg / "equipment")
    text = (EXAMPLES / "certificates" / "NIM-LP-2025-0417.xml").read_text(encoding="utf-8")
    dcc = tmp_path / "incoming.xml"
    dcc.write_text(text.replace("NIM-LP-2025-0417", "../../NIM-LP-2025-0417"), encoding="utf-8")
    code, out, err = run(capsys, "registry", "import-dcc", str(dcc), "--into", str(reg))
    assert code == 0, err
    dest = reg / "certificates" / "NIM-LP-2025-0417.xml"
    assert f"imported ../../NIM-LP-2025-0417 into {dest}" in out
    assert dest.read_bytes() == dcc.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incoming.xml", "registry"]


def test_output_piped_into_a_reader_that_has_gone() -> None:
    """`calgate registry check DIR | head -1`: when the reader has closed the pipe before
    calgate writes, calgate stops quietly (exit 141, as for SIGPIPE), no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: every write to the pipe fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "registry", "check", str(EXAMPLES)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr
