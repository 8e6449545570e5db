"""Traceability worked examples: statuses around due boundaries, chains that break each
way, suspect propagation through two levels, out-of-service standards, reverse-trace
windows, and the registry's correctors. Every expected value below is worked by hand
from the certificates written in each test."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from calibration import CalibrationError, Registry

# -- building small registries ------------------------------------------------------------


def equipment(
    eq_id: str,
    *,
    role: str = "instrument",
    status: str = "active",
    due_soon_days: int = 30,
    unit: str = "g",
    tolerance: str | None = None,
    extra: str = "",
) -> str:
    tol = f"tolerance = {tolerance}\n" if tolerance else ""
    return (
        f'id = "{eq_id}"\nrole = "{role}"\nstatus = "{status}"\ndue_soon_days = {due_soon_days}\n'
        f'[[channels]]\nname = "m"\nquantity = "mass"\nunit = "{unit}"\nresolution = 0.01\n'
        f"{tol}{extra}"
    )


def cert(
    number: str,
    item: str,
    calibrated: str,
    due: str,
    standards: tuple[str, ...] = (),
    *,
    nmi: bool = False,
    as_found_error: float | None = None,
    unit: str = "g",
    extra: str = "",
) -> str:
    stds = ", ".join(f'"{s}"' for s in standards)
    text = (
        f'number = "{number}"\nitem = "{item}"\nissued_by = "Lab {number}"\n'
        f"nmi = {'true' if nmi else 'false'}\ncalibrated = {calibrated}\ndue = {due}\n"
        f'standards = [{stds}]\nunit = "{unit}"\n{extra}'
        "points = [\n"
        "  { reference = 0.0, indicated = 0.0, U = 0.002, k = 2 },\n"
        "  { reference = 100.0, indicated = 100.004, U = 0.004, k = 2 },\n"
        "]\n"
    )
    if as_found_error is not None:
        text += (
            "as_found = [\n"
            "  { reference = 0.0, indicated = 0.0, U = 0.0002, k = 2 },\n"
            f"  {{ reference = 100.0, indicated = {100.0 + as_found_error!r}, U = 0.0002, k = 2 }},\n"
            "]\n"
        )
    return text


def build(tmp_path: Path, eqs: dict[str, str], certs: dict[str, str]) -> Registry:
    (tmp_path / "equipment").mkdir()
    (tmp_path / "certificates").mkdir()
    for eq_id, text in eqs.items():
        (tmp_path / "equipment" / f"{eq_id}.toml").write_text(text, encoding="utf-8")
    for number, text in certs.items():
        (tmp_path / "certificates" / f"{number}.toml").write_text(text, encoding="utf-8")
    return Registry.load(tmp_path)


def utc(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=UTC)


# -- status around the due date -----------------------------------------------------------


@pytest.fixture
def simple(tmp_path: Path) -> Registry:
    return build(
        tmp_path,
        {"REF": equipment("REF", role="reference_standard"), "INS": equipment("INS")},
        {
            "N-1": cert("N-1", "REF", "2024-01-10", "2030-01-10", nmi=True),
            "C-1": cert("C-1", "INS", "2026-01-01", "2026-06-30", ("REF",)),
        },
    )


@pytest.mark.parametrize(
    ("at", "status"),
    [
        (utc(2025, 12, 31, 23, 59, 59), "none"),
        (utc(2026, 1, 1), "valid"),
        (utc(2026, 5, 30, 12), "valid"),  # 31 days before due
        (utc(2026, 5, 31), "due_soon"),  # 30 days: due − date <= due_soon_days
        (utc(2026, 6, 30, 23, 59, 59), "due_soon"),  # in force through its due day
        (utc(2026, 7, 1), "expired"),
        # 01:30 at +02:00 is still 30 June in UTC
        (datetime(2026, 7, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))), "due_soon"),
        (datetime(2026, 7, 1, 0, 0), "expired"),  # naive: taken as UTC
        (date(2026, 6, 30), "due_soon"),
    ],
)
def test_status_around_due_boundaries(simple: Registry, at: datetime, status: str) -> None:
    assert simple.state("INS", at).status == status


def test_state_fields(simple: Registry) -> None:
    s = simple.state("INS", utc(2026, 6, 10))
    assert s.status == "due_soon"
    assert s.certificate == "C-1"
    assert s.due == date(2026, 6, 30)
    assert s.calibrated == date(2026, 1, 1)
    assert s.chain == ("C-1", "N-1")
    assert s.reasons == ("C-1 is due on 2026-06-30, in 20 days (due_soon_days = 30)",)
    assert s.conforms is None  # no tolerance on the channel
    e = simple.state("INS", utc(2026, 7, 3))
    assert e.reasons == ("C-1 expired: due 2026-06-30, 3 days ago",)
    n = simple.state("INS", utc(2025, 1, 1))
    assert (n.status, n.certificate, n.due, n.chain) == ("none", None, None, ())
    assert n.reasons == ("INS has no certificate calibrated on or before 2025-01-01",)


def test_unknown_item_and_channel(simple: Registry) -> None:
    with pytest.raises(CalibrationError, match="unknown equipment 'NOPE'"):
        simple.state("NOPE", utc(2026, 1, 2))
    with pytest.raises(CalibrationError, match="has no channel 'x'"):
        simple.chain_tree("INS", utc(2026, 1, 2), "x")


# -- chains that break --------------------------------------------------------------------


def test_standard_expired_on_the_child_calibration_date(tmp_path: Path) -> None:
    reg = build(
        tmp_path,
        {
            "REF": equipment("REF", role="reference_standard"),
            "WS": equipment("WS", role="working_standard"),
            "INS": equipment("INS"),
        },
        {
            "N-1": cert("N-1", "REF", "2023-01-10", "2030-01-10", nmi=True),
            "W-1": cert("W-1", "WS", "2024-01-01", "2025-01-01", ("REF",)),
            "C-1": cert("C-1", "INS", "2025-02-01", "2027-02-01", ("WS",)),
        },
    )
    s = reg.state("INS", utc(2025, 6, 1))
    assert s.status == "untraceable"
    assert s.chain == ("C-1", "W-1", "N-1")
    assert s.reasons == (
        "standard WS: certificate W-1 was not in force when C-1 was calibrated on 2025-02-01 "
        "(in force 2024-01-01 to 2025-01-01)",
    )
    tree = reg.chain_tree("INS", utc(2025, 6, 1))
    ws = tree.standards[0]
    assert (ws.number, ws.status, ws.evaluated_on) == ("W-1", "expired", date(2025, 2, 1))
    assert ws.reasons == (
        "W-1 of WS had expired (due 2025-01-01) when C-1 was calibrated on 2025-02-01",
    )
    assert ws.standards[0].status == "valid"
    # The standard itself, on its own, is expired now; that does not matter to C-1 beyond
    # the date C-1 was calibrated.
    assert reg.state("WS", utc(2025, 6, 1)).status == "expired"


def test_path_without_nmi(tmp_path: Path) -> None:
    reg = build(
        tmp_path,
        {"WS": equipment("WS", role="working_standard"), "INS": equipment("INS")},
        {
            "W-1": cert("W-1", "WS", "2024-01-01", "2028-01-01"),
            "C-1": cert("C-1", "INS", "2025-02-01", "2027-02-01", ("WS",)),
        },
    )
    s = reg.state("INS", utc(2025, 6, 1))
    assert s.status == "untraceable"
    assert s.reasons == (
        "via WS (W-1): W-1 (Lab W-1) is not an NMI certificate and names no standards",
    )
    assert reg.state("WS", utc(2025, 6, 1)).status == "untraceable"


def test_standard_without_certificate_then(tmp_path: Path) -> None:
    reg = build(
        tmp_path,
        {
            "REF": equipment("REF", role="reference_standard"),
            "WS": equipment("WS", role="working_standard"),
            "INS": equipment("INS"),
        },
        {
            "N-1": cert("N-1", "REF", "2023-01-10", "2030-01-10", nmi=True),
            "W-1": cert("W-1", "WS", "2025-03-01", "2028-01-01", ("REF",)),
            "C-1": cert("C-1", "INS", "2025-02-01", "2027-02-01", ("WS",)),
        },
    )
    tree = reg.chain_tree("INS", utc(2025, 6, 1))
    assert tree.status == "untraceable"
    assert tree.reasons == ("standard WS had no certificate when C-1 was calibrated on 2025-02-01",)
    assert (tree.standards[0].number, tree.standards[0].status) == (None, "none")
    assert tree.numbers() == ("C-1",)


def test_cited_standard_certificate_not_in_force(tmp_path: Path) -> None:
    reg = build(
        tmp_path,
        {
            "REF": equipment("REF", role="reference_standard"),
            "WS": equipment("WS", role="working_standard"),
            "INS": equipment("INS"),
        },
        {
            "N-1": cert("N-1", "REF", "2023-01-10", "2030-01-10", nmi=True),
            "W-1": cert("W-1", "WS", "2023-03-01", "2024-06-30", ("REF",)),
            "W-2": cert("W-2", "WS", "2024-06-01", "2026-06-30", ("REF",)),
            # C-1 says it used W-1 (old, expired): the citation wins over "latest".
            "C-1": cert(
                "C-1", "INS", "2025-01-15", "2027-01-15", ("WS",),
                extra='standard_certificates = { WS = "W-1" }\n',
            ),
            "C-2": cert("C-2", "INS", "2025-02-15", "2027-02-15", ("WS",)),
        },
    )  # fmt: skip
    old = reg.chain_tree("INS", date(2025, 2, 1))
    assert old.number == "C-1"
    assert old.status == "untraceable"
    assert old.standards[0].number == "W-1"
    new = reg.chain_tree("INS", date(2025, 3, 1))
    assert (new.number, new.status, new.standards[0].number) == ("C-2", "valid", "W-2")


def test_precedence_expired_over_untraceable_all_reasons_given(tmp_path: Path) -> None:
    reg = build(
        tmp_path,
        {"WS": equipment("WS", role="working_standard"), "INS": equipment("INS")},
        {
            "W-1": cert("W-1", "WS", "2024-01-01", "2028-01-01"),
            "C-1": cert("C-1", "INS", "2025-02-01", "2025-12-31", ("WS",)),
        },
    )
    s = reg.state("INS", utc(2026, 1, 5))
    assert s.status == "expired"
    assert s.reasons == (
        "C-1 expired: due 2025-12-31, 5 days ago",
        "via WS (W-1): W-1 (Lab W-1) is not an NMI certificate and names no standards",
    )


# -- suspect ------------------------------------------------------------------------------


@pytest.fixture
def drifted(tmp_path: Path) -> Registry:
    """REF drifted out of tolerance between N-1 (2024-01-10) and N-2 (2025-01-10).

    W-1 (2024-06-01) used REF under N-1: suspect. C-1 (2024-09-01) used WS under W-1:
    suspect through two levels. W-2 and C-2 came after REF's recalibration: valid.
    """
    tol = "{ mpe = 0.01 }"
    return build(
        tmp_path,
        {
            "REF": equipment("REF", role="reference_standard", tolerance=tol),
            "WS": equipment("WS", role="working_standard"),
            "INS": equipment("INS"),
        },
        {
            "N-1": cert("N-1", "REF", "2024-01-10", "2026-01-10", nmi=True),
            "N-2": cert("N-2", "REF", "2025-01-10", "2027-01-10", nmi=True, as_found_error=0.02),
            "W-1": cert("W-1", "WS", "2024-06-01", "2026-06-01", ("REF",)),
            "W-2": cert("W-2", "WS", "2025-03-01", "2027-03-01", ("REF",)),
            "C-1": cert("C-1", "INS", "2024-09-01", "2026-09-01", ("WS",)),
            "C-2": cert("C-2", "INS", "2025-04-01", "2027-04-01", ("WS",)),
        },
    )


def test_suspect_propagates_through_two_levels(drifted: Registry) -> None:
    ref_n2 = drifted.certificate("N-2")
    assert ref_n2 is not None
    assert drifted.conforms(ref_n2) is False
    ws = drifted.state("WS", utc(2024, 10, 1))
    assert ws.status == "suspect"
    assert ws.reasons == (
        "standard REF was found out of tolerance (as found) at its next calibration "
        "(N-2, 2025-01-10); W-1 was calibrated with it on 2024-06-01",
    )
    ins = drifted.state("INS", utc(2024, 10, 1))
    assert ins.status == "suspect"
    assert ins.chain == ("C-1", "W-1", "N-1")
    assert ins.reasons == (
        "via WS (W-1): standard REF was found out of tolerance (as found) at its next "
        "calibration (N-2, 2025-01-10); W-1 was calibrated with it on 2024-06-01",
    )
    # After the recalibrations, nothing is suspect.
    later = drifted.state("INS", utc(2025, 5, 1))
    assert (later.status, later.chain) == ("valid", ("C-2", "W-2", "N-2"))
    # REF now: N-2's as-left points are fine, only its as-found failed.
    assert drifted.state("REF", utc(2025, 5, 1)).status == "valid"
    assert drifted.state("REF", utc(2025, 5, 1)).conforms is False
    # REF looking back, under N-1: it was drifting.
    back = drifted.state("REF", utc(2024, 12, 1))
    assert (back.status, back.certificate) == ("suspect", "N-1")
    assert back.reasons == (
        "REF was found out of tolerance (as found) at its next calibration (N-2, 2025-01-10)",
    )


def test_out_of_service_standard_taints_uses_since_its_last_calibration(tmp_path: Path) -> None:
    reg = build(
        tmp_path,
        {
            "REF": equipment("REF", role="reference_standard"),
            "WS": equipment("WS", role="working_standard", status="out_of_service"),
            "INS": equipment("INS"),
        },
        {
            "N-1": cert("N-1", "REF", "2023-01-10", "2030-01-10", nmi=True),
            "W-1": cert("W-1", "WS", "2023-06-01", "2026-06-01", ("REF",)),
            "W-2": cert("W-2", "WS", "2025-03-01", "2028-03-01", ("REF",)),
            "C-1": cert("C-1", "INS", "2024-09-01", "2026-09-01", ("WS",)),
            "C-2": cert("C-2", "INS", "2025-04-01", "2027-04-01", ("WS",)),
        },
    )
    assert reg.state("INS", utc(2024, 10, 1)).status == "valid"
    s = reg.state("INS", utc(2025, 5, 1))
    assert s.status == "suspect"
    assert s.reasons == (
        "standard WS is out of service; C-2 was calibrated with it on 2025-04-01, after "
        "its last calibration (W-2, 2025-03-01)",
    )


# -- reverse trace ------------------------------------------------------------------------


def test_reverse_trace_windows(drifted: Registry) -> None:
    got = [(a.certificate, a.item, a.window, a.via, a.depth) for a in drifted.reverse_trace("REF")]
    assert got == [
        ("W-1", "WS", (date(2024, 6, 1), date(2025, 2, 28)), ("REF",), 1),
        ("C-1", "INS", (date(2024, 9, 1), date(2025, 3, 31)), ("REF", "WS"), 2),
        ("W-2", "WS", (date(2025, 3, 1), None), ("REF",), 1),
        ("C-2", "INS", (date(2025, 4, 1), None), ("REF", "WS"), 2),
    ]
    # Only what REF took part in while N-1 was in force (its drifted period):
    during = drifted.reverse_trace("REF", since=date(2024, 1, 10), until=date(2025, 1, 9))
    assert [a.certificate for a in during] == ["W-1", "C-1"]
    assert during[1].to_json() == {
        "item": "INS",
        "certificate": "C-1",
        "channel": "m",
        "from": "2024-09-01",
        "to": "2025-03-31",
        "in_force_to": "2025-03-31",  # superseded by C-2 on 2025-04-01
        "via": ["REF", "WS"],
        "depth": 2,
    }
    assert drifted.reverse_trace("INS") == []
    with pytest.raises(CalibrationError):
        drifted.reverse_trace("NOPE")


# -- the tree as JSON, and correctors -----------------------------------------------------


def test_tree_json(drifted: Registry) -> None:
    j = drifted.chain_tree("INS", utc(2024, 10, 1)).to_json()
    assert (j["number"], j["item"], j["status"]) == ("C-1", "INS", "suspect")
    assert j["calibrated"] == "2024-09-01"
    ws = j["standards"][0]
    assert (ws["number"], ws["item"], ws["status"], ws["evaluated_on"]) == (
        "W-1", "WS", "suspect", "2024-09-01"
    )  # fmt: skip
    ref = ws["standards"][0]
    assert (ref["number"], ref["nmi"], ref["status"], ref["standards"]) == (
        "N-1",
        True,
        "valid",
        [],
    )


def test_corrector_from_the_certificate_in_force(drifted: Registry) -> None:
    none = drifted.corrector("INS", "m", utc(2024, 1, 1))
    assert none.certificate is None
    assert none.unit == "g"
    r = none.correct(np.array([50.0]))
    assert r.value[0] == 50.0
    # identity: u from the resolution only, d/(2√3)
    assert r.u[0] == pytest.approx(0.01 / (2 * 3**0.5))
    c = drifted.corrector("INS", "m", utc(2024, 10, 1))
    assert (c.certificate, c.k, c.unit) == ("C-1", 2.0, "g")
    r = c.correct(np.array([50.002, 150.0]))
    # e(50.002) interpolated between (0, 0) and (100.004, 0.004): 0.002
    assert r.value[0] == pytest.approx(50.0)
    assert not r.out_of_range[0]
    assert r.out_of_range[1]
    assert drifted.corrector("INS", None, utc(2025, 5, 1)).certificate == "C-2"
    with pytest.raises(CalibrationError):
        drifted.corrector("INS", "nope", utc(2025, 5, 1))


def test_certificate_in_another_unit_corrects_in_the_channel_unit(tmp_path: Path) -> None:
    reg = build(
        tmp_path,
        {
            "REF": equipment("REF", role="reference_standard", unit="kg"),
            "INS": equipment("INS", unit="g"),
        },
        {
            "N-1": cert("N-1", "REF", "2024-01-10", "2030-01-10", nmi=True, unit="kg"),
            "C-1": cert("C-1", "INS", "2025-01-10", "2027-01-10", ("REF",), unit="kg"),
        },
    )
    c = reg.corrector("INS", "m", date(2025, 6, 1))
    # C-1's points in kg become g: (0, 0) and (100000, 100004), U 4 g at 100 kg.
    r = c.correct(np.array([50002.0]))
    assert r.value[0] == pytest.approx(50000.0)
    assert r.U[0] == pytest.approx(2 * ((3.0 / 2) ** 2 + (0.01 / (2 * 3**0.5)) ** 2) ** 0.5)
