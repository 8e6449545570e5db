"""Re-stating certificates with a drift found as found: worked by hand.

A reference weight REF (NMI) calibrates a working standard WS, which calibrates a balance
BAL. WS's next certificate finds it 0.010 g heavy-reading at 100 g (beyond its ±0.005 g
MPE); the balance's references, taken through WS's as-left correction, were off by the
difference of WS's as-found and as-left corrections.
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import pytest

from calibration import Registry
from calibration.revision import Revisions, findings


def _write(root: Path, files: dict[str, str]) -> Registry:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Registry.load(root)


def _eq(eq_id: str, role: str, tolerance: str = "") -> str:
    return (
        f'id = "{eq_id}"\nrole = "{role}"\n[[channels]]\nname = "m"\nquantity = "mass"\n'
        f'unit = "g"\nresolution = 0.001\n{tolerance}'
    )


def _cert(
    number: str, item: str, cal: str, stds: str, pts: str, found: str = "", nmi: bool = False
) -> str:
    return (
        f'number = "{number}"\nitem = "{item}"\nissued_by = "Lab"\nnmi = {str(nmi).lower()}\n'
        f'calibrated = {cal}\ndue = 2030-01-01\nstandards = [{stds}]\nunit = "g"\n'
        f"points = [{pts}]\n" + (f"as_found = [{found}]\n" if found else "")
    )


def _pt(ref: float, ind: float, U: float) -> str:
    return f"{{ reference = {ref}, indicated = {ind}, U = {U}, k = 2 }},"


MPE = "tolerance = { mpe = 0.005 }"


def _chain(
    root: Path, *, drifted: str, ws_100: float, bal_0: float, bal_100: float, more: dict[str, str]
) -> Registry:
    """REF (NMI, N1) → WS (W1) → BAL (B1); ``drifted`` (REF or WS) has a tolerance;
    ``ws_100`` and ``bal_*`` are W1's and B1's indications; ``more`` adds certificates."""
    return _write(
        root,
        {
            "equipment/REF.toml": _eq("REF", "reference_standard", MPE if drifted == "REF" else ""),
            "equipment/WS.toml": _eq("WS", "working_standard", MPE if drifted == "WS" else ""),
            "equipment/BAL.toml": _eq("BAL", "instrument"),
            "certificates/N1.toml": _cert(
                "N1", "REF", "2026-01-01", "", _pt(0, 0, 0.0002) + _pt(200, 200, 0.0002), nmi=True
            ),
            "certificates/W1.toml": _cert(
                "W1", "WS", "2026-02-01", '"REF"', _pt(0, 0, 0.001) + _pt(100, ws_100, 0.002)
            ),
            "certificates/B1.toml": _cert(
                "B1", "BAL", "2026-03-01", '"WS"', _pt(0, bal_0, 0.01) + _pt(100, bal_100, 0.02)
            ),
            **more,
        },
    )


def _ws_drifted(root: Path, more: dict[str, str] | None = None) -> Registry:
    # WS as left: +0.002 g at 100 g; next time (W2), as found: +0.012 g (fails ±0.005)
    w2 = _cert(
        "W2",
        "WS",
        "2026-08-01",
        '"REF"',
        _pt(0, 0, 0.001) + _pt(100, 100.0, 0.002),
        found=_pt(0, 0, 0.001) + _pt(100, 100.012, 0.004),
    )
    return _chain(
        root,
        drifted="WS",
        ws_100=100.002,
        bal_0=0.01,
        bal_100=100.03,
        more={"certificates/W2.toml": w2, **(more or {})},
    )


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return _ws_drifted(tmp_path)


def test_finding_is_the_period_before_the_failing_as_found(reg: Registry) -> None:
    (f,) = findings(reg)
    assert (f.certificate.number, f.found_by.number) == ("W1", "W2")
    assert f.window == (date(2026, 2, 1), date(2026, 7, 31))


def test_the_standard_itself_is_taken_as_found(reg: Registry) -> None:
    rev = Revisions(reg)
    w1 = reg.certificate("W1")
    assert w1 is not None
    r = rev.revise(w1)
    assert r.changed
    assert [(p.reference, p.indicated, p.U) for p in r.certificate.points] == [
        (0.0, 0.0, 0.001),
        (100.0, 100.012, 0.004),
    ]
    # its own reading of 100.012 is corrected to 100 (was 100.010 through W1)
    assert rev.corrector(w1).correct_one(100.012)[0] == pytest.approx(100.0, abs=1e-12)


def test_a_certificate_calibrated_with_it_has_its_references_moved(reg: Registry) -> None:
    rev = Revisions(reg)
    b1 = reg.certificate("B1")
    assert b1 is not None
    r = rev.revise(b1)
    assert r.changed
    assert "standard WS (W1" in r.notes[0]
    p0, p100 = r.certificate.points
    # WS showed x with c_L(x) = x − 0.002·x/100.002 = 100: x = 100.002; as found, that
    # indication is worth c_F(x) = x − 0.012·x/100.012
    x = 100.002
    assert p100.reference == pytest.approx(x - 0.012 * x / 100.012, abs=1e-12)
    assert p0.reference == pytest.approx(0.0, abs=1e-12)
    assert p100.indicated == 100.03
    # u: sqrt(0.01² + u_F(x)² − u_L(x)²), WS's u interpolated at x in each certificate
    u_f = 0.0005 + (0.002 - 0.0005) * x / 100.012
    u_l = 0.0005 + (0.001 - 0.0005) * min(x, 100.002) / 100.002
    assert p100.U / p100.k == pytest.approx(math.sqrt(0.01**2 + u_f**2 - u_l**2), rel=1e-12)
    # at 0 g the two WS certificates carry the same u: the point's U is unchanged
    assert pytest.approx(0.01, rel=1e-12) == p0.U
    # the balance now reads 100.03 as that reference, not 100.00
    corr = rev.corrector(b1)
    assert corr.correct_one(100.03)[0] == pytest.approx(p100.reference, abs=1e-12)


def test_a_reference_beyond_the_revised_span_is_moved_by_the_edge_error_and_said_so(
    tmp_path: Path,
) -> None:
    # As the fixture, and B2: BAL calibrated at 100.02 g (through W1, still as left).
    b2_file = _cert(
        "B2", "BAL", "2026-04-01", '"WS"', _pt(0, 0.01, 0.01) + _pt(100.02, 100.05, 0.02)
    )
    reg = _ws_drifted(tmp_path, {"certificates/B2.toml": b2_file})
    b2 = reg.certificate("B2")
    assert b2 is not None
    r = Revisions(reg).revise(b2)
    # W1 (span 0 to 100.002) gave 100.02 for an indication x = 100.02 + 0.002 (its edge
    # error); as found (span 0 to 100.012) x is beyond the span: its edge error 0.012 holds.
    assert r.certificate.points[1].reference == pytest.approx(100.022 - 0.012, abs=1e-12)
    assert r.certificate.points[0].reference == pytest.approx(0.0, abs=1e-12)
    assert any("100.02 g" in n and "outside the span" in n for n in r.notes), r.notes
    b1 = reg.certificate("B1")  # its 100 g lies inside the revised span: no such note
    assert b1 is not None
    assert all("outside" not in n for n in Revisions(reg).revise(b1).notes)


def test_a_certificate_without_a_drifted_standard_is_unchanged(reg: Registry) -> None:
    rev = Revisions(reg)
    n1 = reg.certificate("N1")
    w2 = reg.certificate("W2")
    assert n1 is not None
    assert w2 is not None
    assert not rev.revise(n1).changed
    assert not rev.revise(w2).changed
    assert rev.revise(w2).certificate is w2


def test_a_drift_two_levels_up_reaches_the_instrument(tmp_path: Path) -> None:
    """REF (the NMI-calibrated reference) is found out of tolerance: WS, calibrated with
    it in that period, is revised, and so is BAL, calibrated with WS."""
    reg = _chain(
        tmp_path,
        drifted="REF",
        ws_100=100.0,
        bal_0=0.0,
        bal_100=100.0,
        more={
            "certificates/N2.toml": _cert(
                "N2",
                "REF",
                "2026-09-01",
                "",
                _pt(0, 0, 0.0002) + _pt(200, 200, 0.0002),
                found=_pt(0, 0, 0.0002) + _pt(200, 200.02, 0.0002),
                nmi=True,
            ),
        },
    )
    rev = Revisions(reg)
    b1 = reg.certificate("B1")
    w1 = reg.certificate("W1")
    assert b1 is not None
    assert w1 is not None
    # REF as found reads 0.02 g high at 200 g: 0.01 g at 100 g. WS's 100 g reference
    # (read off REF at 100) was 100 − 0.01; WS's corrected 100 is then 99.99 too, and
    # BAL's 100 g reference (read off WS) moves by the same −0.01 g.
    (w100,) = [p for p in rev.revise(w1).certificate.points if p.indicated == 100.0]
    assert w100.reference == pytest.approx(100.0 - 0.02 * 100.0 / 200.02, abs=1e-9)
    (b100,) = [p for p in rev.revise(b1).certificate.points if p.indicated == 100.0]
    assert b100.reference == pytest.approx(w100.reference, abs=1e-9)
    assert "standard WS (W1" in rev.revise(b1).notes[0]
    assert "standard REF (N1" in rev.revise(b1).notes[0]


def test_a_drifted_weight_moves_the_references_it_gave_by_its_own_drift(tmp_path: Path) -> None:
    """A weight is a material measure: BAL took WS's conventional mass as its reference
    (100.0001 g for the 100 g piece, W1); WS was found 1.1 mg heavy at 100 g (W2, beyond
    E2's 0.16 mg), so the true reference was 100.0011 g: +1 mg, not −1 mg as for a gauge
    read 1 mg high. The 50 g piece did not drift: its reference stays."""
    e2 = 'tolerance = { oiml_r111 = { class = "E2" } }'
    reg = _write(
        tmp_path,
        {
            "equipment/REF.toml": _eq("REF", "reference_standard"),
            "equipment/WS.toml": _eq("WS", "working_standard", e2),
            "equipment/BAL.toml": _eq("BAL", "instrument"),
            "certificates/N1.toml": _cert(
                "N1", "REF", "2026-01-01", "", _pt(0, 0, 2e-5) + _pt(200, 200, 2e-5), nmi=True
            ),
            "certificates/W1.toml": _cert(
                "W1",
                "WS",
                "2026-02-01",
                '"REF"',
                _pt(50, 50.00005, 3e-5) + _pt(100, 100.0001, 3e-5),
            ),
            "certificates/W2.toml": _cert(
                "W2",
                "WS",
                "2026-08-01",
                '"REF"',
                _pt(50, 50.00005, 3e-5) + _pt(100, 100.0001, 3e-5),
                found=_pt(50, 50.00005, 3e-5) + _pt(100, 100.0011, 3e-5),
            ),
            "certificates/B1.toml": _cert(
                "B1",
                "BAL",
                "2026-03-01",
                '"WS"',
                _pt(50.00005, 50.01, 0.01) + _pt(100.0001, 100.02, 0.02),
            ),
        },
    )
    (f,) = findings(reg)
    assert (f.certificate.number, f.found_by.number) == ("W1", "W2")
    b1 = reg.certificate("B1")
    assert b1 is not None
    revised = Revisions(reg).revise(b1)
    assert revised.changed
    refs = [p.reference for p in revised.certificate.points]
    assert refs[0] == pytest.approx(50.00005, abs=1e-9)
    assert refs[1] == pytest.approx(100.0011, abs=1e-9)
    # the indications are what BAL showed: kept
    assert [p.indicated for p in revised.certificate.points] == [50.01, 100.02]
