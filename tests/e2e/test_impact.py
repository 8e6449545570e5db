"""``calgate impact`` on real influxd: a standard found out of tolerance after the fact.

A gateway polls the lab's pressure instruments (PC-01, PT-101, PT-102, all calibrated with
the working standard WS-P1) into influxd; PT-101 is held near its lower process limit.
Then the registry gains WS-P1's next certificate, whose as-found results fail its
tolerance: everything calibrated with WS-P1 since its previous calibration is suspect.
``calgate impact`` must find exactly the stored readings of those channels in the window,
re-correct PT-101's to the values computed here from the certificate files (not through
the registry code), report the decisions that changed, and write ``reading_recorrected``
idempotently. Bad input gets clear errors and the exit codes of the other commands.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import free_port, wait_for_async
from servers import InfluxV1, VictoriaMetrics

from gateway.cli import main
from gateway.demo import example_registry, lab_toml
from gateway.registry_watch import revision_of
from gateway.service import Gateway, load_everything
from simulators.lab import Lab

pytestmark = pytest.mark.e2e

PRESSURE = ("PC-01", "PT-101", "PT-102")
# WS-P1 as found at its next calibration: +0.15 kPa (1.5 mbar) everywhere, beyond its MPE
# of 0.025 % of 3500 mbar (0.875 mbar). In kPa, as its certificates are written.
AS_FOUND_ERROR_KPA = 0.15


@dataclass
class Stored:
    config: Path
    registry: Path
    db: str
    site: str
    today: date


def _new_ws_p1_certificate(registry: Path, today: date) -> None:
    old = tomllib.loads((registry / "certificates" / "PCL-2025-0731.toml").read_text())
    pts = old["points"]

    def table(points: list[dict[str, float]], err: float) -> str:
        return ",\n".join(
            f"  {{ reference = {p['reference']}, indicated = {p['reference'] + err:.4f}, "
            f"U = {p['U']}, k = {p['k']} }}"
            for p in points
        )

    (registry / "certificates" / "PCL-NEXT-WS-P1.toml").write_text(
        f"""number = "PCL-NEXT-WS-P1"
item = "WS-P1"
issued_by = "Demo Metrology Lab, pressure calibration laboratory"
calibrated = {today.isoformat()}
due = {(today + timedelta(days=3 * 365)).isoformat()}
standards = ["REF-P1"]
unit = "kPa"
points = [
{table(pts, 0.0)}
]
as_found = [
{table(pts, AS_FOUND_ERROR_KPA)}
]
"""
    )


def _gateway_run(tmp_path: Path, influxd: InfluxV1, unique_name: str) -> Stored:
    registry = tmp_path / "registry"
    shutil.copytree(example_registry(), registry)
    db = unique_name
    influxd.create_database(db)
    site = f"impact-{unique_name[-8:]}"
    path = tmp_path / "calgate.toml"

    async def go() -> None:
        async with Lab(fixed_ports=False, opcua=False, seed=5) as lab:
            path.write_text(
                lab_toml(
                    lab.endpoints(),
                    registry=registry,
                    state_dir=tmp_path / "state",
                    influx={
                        "api": "v1",
                        "url": influxd.url,
                        "database": db,
                        "flush_interval_s": "0.1",
                    },
                    interval_s=0.1,
                    site=site,
                    gateway_id="edge-impact",
                    only=PRESSURE,
                )
            )
            config, reg = load_everything(path)
            gw = Gateway(config, reg)
            await gw.start()
            try:

                def count(eq: str) -> int:
                    rows = influxd.rows(
                        f"SELECT count(seq) FROM reading WHERE site='{site}' AND equipment='{eq}'",
                        db,
                    )
                    return int(rows[0]["count"]) if rows else 0  # type: ignore[call-overload]

                await wait_for_async(
                    lambda: all(count(e) >= 5 for e in PRESSURE), timeout_s=20, what="readings"
                )
                # Hold the manifold where PT-101 reads about 950.8 mbar corrected: inside its
                # guarded acceptance zone (950 + U), but not by the 1.5 mbar WS-P1 drifted.
                lab.manifold.setpoint = 950.8
                n = count("PT-101")
                await wait_for_async(
                    lambda: count("PT-101") >= n + 15, timeout_s=20, what="readings near 951"
                )
            finally:
                await gw.stop()

    asyncio.run(go())
    return Stored(path, registry, db, site, datetime.now(UTC).date())


@pytest.fixture
def stored(tmp_path: Path, influxd: InfluxV1, unique_name: str) -> Stored:
    run = _gateway_run(tmp_path, influxd, unique_name)
    # Readings of PT-101 from before its certificate PCL-2026-0906 (no certificate then),
    # through the gateway's own pipeline and line encoder: outside every window.
    _write_old_rows(run, influxd)
    _new_ws_p1_certificate(run.registry, run.today)
    return run


def _write_old_rows(run: Stored, influxd: InfluxV1) -> None:
    from calibration import Registry
    from drivers.base import Reading
    from gateway.pipeline import Pipeline
    from gateway.wire import measurement_line

    t0 = datetime(2026, 9, 1, 12, tzinfo=UTC)
    pipeline = Pipeline(Registry.load(run.registry), clock=lambda: t0)
    lines = []
    for i in range(7):
        r = Reading(
            equipment="PT-101", channel="pressure", raw=1013.0 + i, unit="mbar",
            t_wall=t0 + timedelta(minutes=i), t_mono=float(i),
        )  # fmt: skip
        (m,) = pipeline.process([r])
        lines.append(measurement_line(m, 10_000_000 + i, run.site))
    status, body = influxd.http(f"/write?db={run.db}&precision=ns", "\n".join(lines).encode())
    assert status == 204, body


# --------------------------------------------------------------------------- independent model


def _cert(registry: Path, name: str) -> dict[str, Any]:
    return tomllib.loads((registry / "certificates" / f"{name}.toml").read_text())


def _arrays(points: list[dict[str, float]], f: float) -> tuple[np.ndarray, ...]:
    pts = sorted(points, key=lambda p: p["indicated"])
    ind = np.array([p["indicated"] * f for p in pts])
    ref = np.array([p["reference"] * f for p in pts])
    u = np.array([p["U"] * f / p["k"] for p in pts])
    return ind, ref, u


def expected_pt101(registry: Path, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PT-101's value and U re-corrected by hand: WS-P1 taken as found (its correction
    c(x) = x − e(x), e interpolated in the indication): each PT-101 point's reference r,
    read off WS-P1 as c_left(x) = r, was really c_found(x); u of a point grows by the found
    certificate's u over the left's at x."""
    l_ind, l_ref, l_u = _arrays(_cert(registry, "PCL-2025-0731")["points"], 10.0)  # kPa -> mbar
    f_ind, f_ref, f_u = _arrays(_cert(registry, "PCL-NEXT-WS-P1")["as_found"], 10.0)
    ind, ref, u = _arrays(_cert(registry, "PCL-2026-0906")["points"], 10.0)
    x = ref.copy()  # WS-P1's indication when PT-101's reference was read off it
    for _ in range(10):
        x = ref + np.interp(x, l_ind, l_ind - l_ref)
    ref2 = x - np.interp(x, f_ind, f_ind - f_ref)  # what that indication was worth, as found
    u2 = np.sqrt(
        u**2 + np.maximum(0.0, np.interp(x, f_ind, f_u) ** 2 - np.interp(x, l_ind, l_u) ** 2)
    )
    (ch,) = tomllib.loads((registry / "equipment" / "PT-101.toml").read_text())["channels"]
    value = raw - np.interp(raw, ind, ind - ref2)
    uc = np.sqrt(
        np.interp(raw, ind, u2) ** 2
        + (ch["resolution"] / (2 * math.sqrt(3))) ** 2
        + ch["repeatability"] ** 2
    )
    return value, 2.0 * uc


def guarded(y: float, U: float) -> str:
    return "pass" if 950.0 + U <= y <= 1100.0 - U else "fail"


# --------------------------------------------------------------------------- the tests


def impact(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["impact", *args])
    out, err = capsys.readouterr()
    return code, out, err


def stored_rows(influxd: InfluxV1, run: Stored, eq: str, since: date) -> list[dict[str, Any]]:
    return influxd.rows(
        f"SELECT raw, value, U, conformity, seq FROM reading WHERE site='{run.site}' "
        f"AND equipment='{eq}' AND time >= '{since.isoformat()}T00:00:00Z'",
        run.db,
    )


def test_impact_finds_recorrects_and_rejudges_the_drifted_standards_readings(
    stored: Stored, influxd: InfluxV1, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = impact(capsys, "-c", str(stored.config), "--standard", "WS-P1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [(f["item"], f["certificate"], f["found_by"]) for f in report["findings"]] == [
        ("WS-P1", "PCL-2025-0731", "PCL-NEXT-WS-P1")
    ]
    channels = {c["equipment"]: c for c in report["channels"]}
    # Everything calibrated with WS-P1 while in doubt, and WS-P1 itself (not polled).
    assert set(channels) == {"WS-P1", *PRESSURE}
    assert channels["WS-P1"]["readings"] == 0
    assert channels["WS-P1"]["polled"] is False
    # Exactly the stored readings of each window (PT-101's certificate from 2026-09-06,
    # PC-01's from 2026-09-05, PT-102's from 2025-12-01): the old PT-101 rows are out.
    since = {"PT-101": date(2026, 9, 6), "PC-01": date(2026, 9, 5), "PT-102": date(2025, 12, 1)}
    for eq in PRESSURE:
        rows = stored_rows(influxd, stored, eq, since[eq])
        assert channels[eq]["readings"] == len(rows) > 0, eq
        assert channels[eq]["certificates_now"] == channels[eq]["certificates_stored"]
    all_pt101 = influxd.rows(
        f"SELECT count(seq) FROM reading WHERE site='{stored.site}' AND equipment='PT-101'",
        stored.db,
    )
    assert all_pt101[0]["count"] == channels["PT-101"]["readings"] + 7

    # Without --standard or --certificate: every finding of the registry (this one).
    code, out_all, err = impact(capsys, "-c", str(stored.config), "--json")
    assert code == 0, err
    assert json.loads(out_all)["channels"] == report["channels"]

    # PT-101: the decisions, counted here from the stored rows and the hand computation.
    rows = stored_rows(influxd, stored, "PT-101", since["PT-101"])
    raw = np.array([r["raw"] for r in rows], dtype=float)
    value, big_u = expected_pt101(stored.registry, raw)
    transitions: Counter[str] = Counter()
    changed = 0
    for r, y, U in zip(rows, value, big_u, strict=True):
        new = guarded(float(y), float(U))
        if new != r["conformity"]:
            transitions[f"{r['conformity']}→{new}"] += 1
        if new != r["conformity"] or abs(y - r["value"]) > r["U"]:
            changed += 1
    assert transitions["pass→fail"] >= 10  # the readings held near 950.8 mbar
    assert channels["PT-101"]["conformity_changes"] == dict(transitions)
    assert channels["PT-101"]["changed"] == changed
    shift = np.abs(value - np.array([r["value"] for r in rows])) / np.array([r["U"] for r in rows])
    assert channels["PT-101"]["max_change_in_U"] == pytest.approx(float(shift.max()), rel=1e-9)
    # PC-01 and PT-102 have no process limits: no decision, but their values moved.
    for eq in ("PC-01", "PT-102"):
        assert channels[eq]["conformity_changes"] == {}
        assert channels[eq]["max_change_in_U"] > 1.0

    # --write: reading_recorrected holds every re-corrected reading, at the stored times,
    # with the hand-computed values; `reading` is untouched; a second run changes nothing.
    before = influxd.rows(f"SELECT * FROM reading WHERE site='{stored.site}'", stored.db)
    digest = revision_of(stored.registry).digest
    assert report["registry"]["digest"] == digest
    for _ in range(2):
        code, out, err = impact(
            capsys, "-c", str(stored.config), "--standard", "WS-P1", "--write", "--json"
        )
        assert code == 0, err
        assert json.loads(out)["written"] == sum(channels[e]["readings"] for e in PRESSURE)
        rec = influxd.rows(
            "SELECT * FROM reading_recorrected WHERE equipment='PT-101' GROUP BY *", stored.db
        )
        assert len(rec) == len(rows)
        by_seq = {int(r["seq"]): r for r in rec}
        for r, y, U in zip(rows, value, big_u, strict=True):
            got = by_seq[int(r["seq"])]
            assert got["time"] == r["time"]
            assert got["value"] == pytest.approx(float(y), rel=1e-12, abs=1e-9)
            assert got["U"] == pytest.approx(float(U), rel=1e-9)
            assert got["conformity"] == guarded(float(y), float(U))
            assert got["stored_value"] == r["value"]
            assert got["certificate"] == "PCL-2026-0906"
            assert got["calibration"] == "suspect"
            assert (got["quality"], got["flags"]) == ("uncertain", "")  # suspect: uncertain
            assert got["registry"] == digest
            assert (got["site"], got["channel"], got["unit"]) == (stored.site, "pressure", "mbar")
    assert influxd.rows(f"SELECT * FROM reading WHERE site='{stored.site}'", stored.db) == before

    # Text and CSV: the changed readings, one row each.
    csv_path = stored.config.parent / "changed.csv"
    code, out, err = impact(
        capsys, "-c", str(stored.config), "--certificate", "PCL-2026-0906", "--csv", str(csv_path)
    )
    assert code == 0, err
    assert "PT-101/pressure" in out
    assert f"pass → fail: {transitions['pass→fail']}" in out
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("time,equipment,channel,seq,raw,value_stored,value_now")
    assert len(lines) == 1 + changed

    # --since/--until cut the window: nothing before today's readings, nothing after now.
    code, out, err = impact(
        capsys, "-c", str(stored.config), "--standard", "WS-P1", "--json",
        "--until", stored.today.isoformat(),
    )  # fmt: skip
    assert code == 0, err
    assert all(c["readings"] == 0 for c in json.loads(out)["channels"])


def test_impact_reads_the_v2_api_through_the_v1_compatible_query(
    stored: Stored,
    influxd: InfluxV1,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``api = "v2"``: the bucket through ``/query?db=<bucket>`` with a token, as InfluxDB
    2.x (virtual DBRP mapping) and 3.x serve it; influxd 1.6 (auth off) answers the same
    request."""
    text = stored.config.read_text()
    v2 = text.replace('api = "v1"', 'api = "v2"').replace(
        f'database = "{stored.db}"',
        f'bucket = "{stored.db}"\norg = "lab"\ntoken_env = "CALGATE_TEST_TOKEN"',
    )
    cfg2 = stored.config.with_name("calgate-v2.toml")
    cfg2.write_text(v2)
    monkeypatch.setenv("CALGATE_TEST_TOKEN", "not-checked-by-influxd-1.6")
    _, out1, _ = impact(capsys, "-c", str(stored.config), "--standard", "WS-P1", "--json")
    code, out2, err = impact(capsys, "-c", str(cfg2), "--standard", "WS-P1", "--json")
    assert code == 0, err
    assert json.loads(out2)["channels"] == json.loads(out1)["channels"]


def test_impact_bad_input_clear_errors_and_exit_codes(
    stored: Stored, influxd: InfluxV1, victoria: VictoriaMetrics, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(stored.config)
    code, _, err = impact(capsys, "-c", cfg, "--standard", "WS-P9")
    assert code == 64
    assert "unknown equipment 'WS-P9'" in err
    code, _, err = impact(capsys, "-c", cfg, "--certificate", "NO-SUCH-1")
    assert code == 64
    assert "unknown certificate 'NO-SUCH-1'" in err
    # A standard with no finding: nothing suspect, said so; exit 0.
    code, out, _ = impact(capsys, "-c", cfg, "--standard", "WS-E2")
    assert code == 0
    assert "nothing it took part in is suspect" in out
    # A window with no data.
    code, out, _ = impact(
        capsys, "-c", cfg, "--standard", "WS-P1", "--since", "2020-01-01", "--until", "2020-02-01"
    )
    assert code == 0
    assert out.count("no stored readings in the window") == 3
    # The database unreachable: 69, as `calgate run` for an unavailable resource.
    dead = stored.config.with_name("dead.toml")
    dead.write_text(
        stored.config.read_text().replace(influxd.url, f"http://127.0.0.1:{free_port()}")
    )
    code, _, err = impact(capsys, "-c", str(dead), "--standard", "WS-P1")
    assert code == 69
    assert "cannot query" in err
    # No [influxdb] table: nothing stored to read, the config's fault, 78.
    bare = stored.config.with_name("bare.toml")
    bare.write_text(re.sub(r"\[influxdb\]\n(.+\n)*", "", stored.config.read_text()))
    code, _, err = impact(capsys, "-c", str(bare), "--standard", "WS-P1")
    assert code == 78
    assert "no [influxdb] table" in err
    # A database the config names that does not exist: the config's fault, 78.
    nodb = stored.config.with_name("nodb.toml")
    nodb.write_text(stored.config.read_text().replace(stored.db, "no_such_database"))
    code, _, err = impact(capsys, "-c", str(nodb), "--standard", "WS-P1")
    assert code == 78
    assert "database not found" in err
    # victoria-metrics takes the v2 writes but answers no InfluxQL: said so, not a wrong count.
    vm = stored.config.with_name("vm.toml")
    vm.write_text(
        stored.config.read_text()
        .replace(influxd.url, victoria.url)
        .replace('api = "v1"', 'api = "v2"')
        .replace(f'database = "{stored.db}"', 'bucket = "b"\norg = "lab"')
    )
    code, _, err = impact(capsys, "-c", str(vm), "--standard", "WS-P1")
    assert code == 69
    assert "does not answer InfluxQL" in err


async def test_impact_writes_through_the_v2_write_api(
    victoria: VictoriaMetrics, unique_name: str
) -> None:
    """``--write`` with ``api = "v2"`` posts to ``/api/v2/write`` (org, bucket, token), as
    the sink does; victoria-metrics serves that API and keeps the numeric fields."""
    from gateway.impact import Writer
    from gateway.settings import InfluxSettings
    from gateway.sinks.influx import session
    from gateway.wire import recorrected_line

    settings = InfluxSettings(api="v2", url=victoria.url, org="lab", bucket=unique_name)
    t0 = 1_796_000_000_000_000_000
    lines = [
        recorrected_line(
            site=unique_name,
            equipment="PT-101",
            channel="pressure",
            quantity="p",
            unit="mbar",
            certificate="PCL-2026-0906",
            raw=951.0 + i,
            value=950.0 + i,
            u=0.04,
            U=0.08,
            k=2.0,
            quality="uncertain",
            flags="",
            calibration="suspect",
            conformity="fail",
            seq=i,
            stored_value=951.0 + i,
            stored_U=0.08,
            stored_conformity="pass",
            stored_certificate="PCL-2026-0906",
            basis="b",
            registry="d",
            time_ns=t0 + i * 1_000_000_000,
        )
        for i in range(12)
    ]
    async with session(settings) as http:
        await Writer(settings.model_copy(update={"batch_size": 5}), http).write(lines)
    series = victoria.export_until(
        f'reading_recorrected_value{{site="{unique_name}"}}',
        lambda s: sum(len(x["values"]) for x in s) >= 12,
    )
    (s,) = series
    assert s["metric"]["certificate"] == "PCL-2026-0906"
    assert s["values"] == [950.0 + i for i in range(12)]
    assert s["timestamps"] == [(t0 + i * 1_000_000_000) // 1_000_000 for i in range(12)]


def test_impact_applies_a_superseding_certificate_entered_late(
    stored: Stored, influxd: InfluxV1, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recalibration of PT-101 dated yesterday, recorded after today's readings were
    corrected through PCL-2026-0906: ``--certificate`` on it re-corrects them through it."""
    src = _cert(stored.registry, "PCL-2026-0906")
    yesterday = stored.today - timedelta(days=1)
    points = ",\n".join(
        f"  {{ reference = {p['reference']}, indicated = {p['indicated'] + 0.1:.4f}, "
        f"U = {p['U']}, k = {p['k']} }}"
        for p in src["points"]
    )
    (stored.registry / "certificates" / "PCL-LATE.toml").write_text(
        f'number = "PCL-LATE"\nitem = "PT-101"\nchannel = "pressure"\nissued_by = "NMI"\n'
        f"nmi = true\ncalibrated = {yesterday.isoformat()}\n"
        f"due = {(yesterday + timedelta(days=700)).isoformat()}\n"
        f'unit = "kPa"\npoints = [\n{points}\n]\n'
    )
    code, out, err = impact(
        capsys, "-c", str(stored.config), "--certificate", "PCL-LATE", "--json", "--write"
    )
    assert code == 0, err
    (ch,) = json.loads(out)["channels"]
    rows = stored_rows(influxd, stored, "PT-101", yesterday)
    assert ch["readings"] == len(rows) > 0
    assert ch["certificates_stored"] == ["PCL-2026-0906"]
    assert ch["certificates_now"] == ["PCL-LATE"]
    ind, ref, _ = _arrays(_cert(stored.registry, "PCL-LATE")["points"], 10.0)
    rec = {
        int(r["seq"]): r  # type: ignore[call-overload]
        for r in influxd.rows(
            "SELECT * FROM reading_recorrected WHERE certificate='PCL-LATE' GROUP BY *", stored.db
        )
    }
    assert len(rec) == len(rows)
    for r in rows:
        got = rec[int(r["seq"])]
        want = r["raw"] - np.interp(r["raw"], ind, ind - ref)  # 1 mbar lower than stored
        assert got["value"] == pytest.approx(want, abs=1e-9)
        assert got["value"] == pytest.approx(r["value"] - 1.0, abs=1e-6)
        assert got["stored_certificate"] == "PCL-2026-0906"
        assert got["basis"] == ""
