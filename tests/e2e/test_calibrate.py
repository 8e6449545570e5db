"""``calgate calibrate`` against the simulated lab: certificates that recover the simulated
transmitters' errors, chains to the NMI, a registry that accepts them, a DCC that reads back,
and the runs that must not issue a certificate."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sys
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import scipy.stats
from labconfig import EXAMPLE_REGISTRY

from calibration import Registry, dcc
from calibration.certificate_out import certificate_html, certificate_toml
from calibration.dcc_out import certificate_dcc
from gateway.calibration_run import load_procedure, plan_run, run_calibration
from gateway.config import load_config
from gateway.demo import lab_toml
from simulators.faults import Fault
from simulators.lab import Lab
from simulators.mt_sics import MtSicsSim

pytestmark = pytest.mark.e2e

# Quick runs: a few setpoints up and down, five readings each, and a manifold that slews
# 5 bar/s (the simulator's default is 200 mbar/s, as a real controller's).
FAST_SLEW = 5000.0
FAST = """
readings = 5
interval_s = 0.1
stable = {{ window_s = 0.8, max_std = {max_std}, max_slope_per_s = 0.05 }}
timeout_s = {timeout_s}
operator = "T. Tester"
laboratory = {{ name = "Test Lab, pressure", accreditation = "DAkkS D-K-00000-00-00", city = "Berlin" }}
"""


def pressure_procedure(
    path: Path,
    setpoints: Sequence[float],
    *,
    max_std: float = 0.06,
    timeout_s: float = 30.0,
    extra: str = "",
) -> Path:
    path.write_text(
        "[procedure]\n"
        'name = "transmitters, test"\n'
        'generator = "PC-01"\nreference = "PC-01"\nreference_channel = "pressure"\n'
        'duts = [{ id = "PT-101", channel = "pressure" }, { id = "PT-102" }]\n'
        f"setpoints = [{', '.join(str(s) for s in setpoints)}]\n"
        'cycles = "up-down"\n' + FAST.format(max_std=max_std, timeout_s=timeout_s) + extra
    )
    return path


def registry_copy(tmp: Path) -> Path:
    reg = tmp / "registry"
    shutil.copytree(EXAMPLE_REGISTRY, reg)
    return reg


PRESSURE_LAB = {"PC-01", "PT-101", "PT-102"}


def config_for(endpoints: dict[str, dict[str, str]], tmp: Path, registry: Path) -> Path:
    """The lab's config (its pressure instruments only) on a copy of the registry."""
    path = tmp / "calgate.toml"
    path.write_text(
        lab_toml(endpoints, registry=registry, state_dir=tmp / "state", only=PRESSURE_LAB)
    )
    return path


async def calgate(*args: str, timeout_s: float = 100.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode or 0, out.decode(), err.decode()


def json_lines(text: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return {r["equipment"]: r for r in rows}


async def test_pressure_run_recovers_each_transmitters_error_and_issues_usable_certificates(
    tmp_path: Path,
) -> None:
    registry = registry_copy(tmp_path)
    out = tmp_path / "out"
    setpoints = [300.0, 1000.0, 1700.0]
    async with Lab(fixed_ports=False, opcua=False, seed=3) as lab:
        lab.manifold.slew_per_s = FAST_SLEW
        config = config_for(lab.endpoints(), tmp_path, registry)
        proc = pressure_procedure(tmp_path / "proc.toml", setpoints)
        code, stdout, err = await calgate(
            "calibrate", "-c", str(config), str(proc), "--out", str(out),
            "--into", str(registry), "--json",
        )  # fmt: skip
        # Each transmitter's error as the simulator defines it: it reads the manifold plus
        # its own offset, and the controller reads the manifold itself.
        units = {eq: int(lab.endpoints()[eq]["unit"]) for eq in ("PT-101", "PT-102")}
        expected = {eq: lab.transmitters.devices[u].offset for eq, u in units.items()}
        vented = not lab.manifold.output
    assert code == 0, err
    assert vented  # the controller's output is off after the run
    rows = json_lines(stdout)
    assert set(rows) == {"PT-101", "PT-102"}
    reg = Registry.load(registry)
    now = datetime.now(UTC)
    for eq, row in rows.items():
        number = row["number"]
        assert row["channel"] == "pressure"
        # The offsets (0.35 and -0.8 mbar) lie far inside PT-101's ±2.5 mbar (guarded:
        # less a U of tenths) and PT-102's ±6.25 mbar: both conform as found.
        assert row["as_found"] == "conforms", row
        pts = row["points"]
        assert [round(p["reference"], -1) for p in pts] == setpoints
        for p in pts:
            assert p["direction"] == "up-down"
            assert [s["direction"] for s in p["series"]] == ["up", "down"]
            # The certificate recovers the simulated error at every point within its U.
            assert abs(p["error"] - expected[eq]) <= p["U"], (eq, p)
            assert p["error"] == pytest.approx(p["indicated"] - p["reference"], abs=1e-9)
            # k = t_p(ν_eff) for p = 95.45 % (the normal quantile when ν_eff is infinite)
            nu = math.inf if p["dof"] is None else p["dof"]
            assert nu == int(nu) or math.isinf(nu)  # truncated (GUM G.4.1)
            quantile = 0.5 + math.erf(2 / math.sqrt(2)) / 2
            assert p["k"] == pytest.approx(
                scipy.stats.norm.ppf(quantile)
                if math.isinf(nu)
                else scipy.stats.t.ppf(quantile, nu),
                rel=1e-9,
            )
        names = {Path(f).name for f in row["files"]}
        assert names == {f"{number}.toml", f"{number}.xml", f"{number}.html"}
        # The registry uses the new certificate now, through the reference to the NMI.
        cert = reg.certificate(number)
        assert cert is not None
        assert cert.standards == ("PC-01",)
        assert cert.standard_certificates == {"PC-01": "PCL-2026-0905"}
        assert reg.in_force(eq, now, "pressure") == cert
        # Due after the equipment's calibration_interval_months (24).
        assert cert.due == cert.calibrated.replace(year=cert.calibrated.year + 2)
        tree = reg.chain_tree(eq, now, "pressure")
        assert tree.number == number
        assert tree.status in ("valid", "due_soon"), tree.reasons
        chain = list(tree.walk())
        assert [n.item for n in chain] == [eq, "PC-01", "WS-P1", "REF-P1"]
        assert chain[-1].nmi
        for p, q in zip(pts, cert.points, strict=True):
            assert (q.reference, q.indicated, q.U, q.k) == (
                p["reference"], p["indicated"], p["U"], p["k"],
            )  # fmt: skip
        # The DCC reads back to the same points.
        doc = dcc.read(out / f"{number}.xml")
        assert doc.number == number
        assert doc.standards[0].certificate == "PCL-2026-0905"
        assert doc.due == cert.due
        assert len(doc.points) == len(cert.points)
        for a, b in zip(doc.points, cert.points, strict=True):
            assert a.reference == pytest.approx(b.reference, rel=1e-12)
            assert a.indicated == pytest.approx(b.indicated, rel=1e-12)
            assert (a.U, a.k) == (b.U, b.k)
        html = (out / f"{number}.html").read_text()
        for needed in (number, "Test Lab, pressure", "PCL-2026-0905", "NIM-LP-2025-0417",
                       "Decision rule", "T. Tester", eq):  # fmt: skip
            assert needed in html
    code, text, err = await calgate("registry", "check", str(registry))
    assert code == 0, text + err
    # calgate registry import-dcc brings the DCC into another registry: the same points.
    fresh = tmp_path / "fresh"
    shutil.copytree(EXAMPLE_REGISTRY, fresh)
    for eq, row in rows.items():
        xml = out / f"{row['number']}.xml"
        code, text, err = await calgate("registry", "import-dcc", str(xml), "--into", str(fresh))
        assert code == 0, text + err
        imported = Registry.load(fresh).certificate(row["number"])
        assert imported is not None
        assert (imported.item, imported.standards) == (eq, ("PC-01",))
        mine = reg.certificate(row["number"])
        assert mine is not None
        for a, b in zip(imported.points, mine.points, strict=True):
            assert (a.U, a.k) == (b.U, b.k)
            assert a.reference == pytest.approx(b.reference, rel=1e-12)
            assert a.indicated == pytest.approx(b.indicated, rel=1e-12)
    # calgate correct corrects through the new certificate.
    code, text, err = await calgate(
        "correct", str(registry), "PT-101", "pressure", "1000.0", "--json"
    )
    assert code == 0, err
    assert json.loads(text)["certificate"] == rows["PT-101"]["number"]


async def test_a_dut_read_in_another_unit_is_calibrated_in_its_channels_unit(
    tmp_path: Path,
) -> None:
    """PT-101 wired up in kPa (scale 0.1), its registry channel in mbar: the certificate's
    indications are in mbar, as the gateway converts the readings before correcting."""
    registry = registry_copy(tmp_path)
    async with Lab(fixed_ports=False, opcua=False, seed=6) as lab:
        lab.manifold.slew_per_s = FAST_SLEW
        config = config_for(lab.endpoints(), tmp_path, registry)
        text = config.read_text()
        block = text.index('id = "PT-101"')
        at = text.index('unit = "mbar"', block)
        config.write_text(text[:at] + 'unit = "kPa"\n  scale = 0.1' + text[at + 13 :])
        offset = lab.transmitters.devices[int(lab.endpoints()["PT-101"]["unit"])].offset
        proc = pressure_procedure(tmp_path / "p.toml", [400.0, 1200.0])
        code, stdout, err = await calgate(
            "calibrate", "-c", str(config), str(proc), "--out", str(tmp_path / "out"), "--json"
        )  # fmt: skip
    assert code == 0, err
    row = json_lines(stdout)["PT-101"]
    for p, setpoint in zip(row["points"], (400.0, 1200.0), strict=True):
        assert p["reference"] == pytest.approx(setpoint, abs=5.0)
        assert p["indicated"] == pytest.approx(setpoint, abs=5.0)  # mbar, not kPa
        assert abs(p["error"] - offset) <= p["U"], p


async def test_a_controller_set_to_kpa_is_driven_and_read_in_kpa(tmp_path: Path) -> None:
    """The controller works in kPa (:UNIT:PRES KPA), the procedure's setpoints are in its
    registry channel's mbar: it is sent 40 kPa for 400 mbar, and read back in mbar."""
    registry = registry_copy(tmp_path)
    async with Lab(fixed_ports=False, opcua=False, seed=7) as lab:
        lab.manifold.slew_per_s = FAST_SLEW
        lab.controller.unit = "KPA"
        config = config_for(lab.endpoints(), tmp_path, registry)
        proc = pressure_procedure(tmp_path / "p.toml", [400.0, 1200.0])
        code, stdout, err = await calgate(
            "calibrate", "-c", str(config), str(proc), "--out", str(tmp_path / "out"), "--json"
        )  # fmt: skip
    assert code == 0, err
    for row in json_lines(stdout).values():
        refs = [p["reference"] for p in row["points"]]
        assert refs == [pytest.approx(400.0, abs=5.0), pytest.approx(1200.0, abs=5.0)], row


async def test_a_dut_failing_as_found_is_adjusted_and_measured_again_as_left(
    tmp_path: Path,
) -> None:
    registry = registry_copy(tmp_path)
    async with Lab(fixed_ports=False, opcua=False, seed=8) as lab:
        lab.manifold.slew_per_s = FAST_SLEW
        pt102 = lab.transmitters.devices[int(lab.endpoints()["PT-102"]["unit"])]
        pt102.offset = 9.0  # beyond PT-102's EN 837 class 0.25 of 2500 mbar: ±6.25 mbar
        config = load_config(config_for(lab.endpoints(), tmp_path, registry))
        procedure = load_procedure(
            pressure_procedure(tmp_path / "p.toml", [400.0, 1600.0], extra='adjust = "ask"\n')
        )
        plan = plan_run(config, Registry.load(registry), procedure)
        prompts: list[str] = []

        async def technician(message: str) -> str:
            prompts.append(message)
            pt102.offset = 0.2  # trims the transmitter's zero
            return "\n"

        outcome = await run_calibration(plan, operator=technician)
    assert len(prompts) == 1
    assert prompts[0].startswith("PT-102 fails as found: adjust it now")
    assert outcome.failures == ()
    certs = {c.item.id: c for c in outcome.certificates}
    assert not certs["PT-101"].adjusted
    assert certs["PT-101"].as_left is None
    c = certs["PT-102"]
    assert (c.adjusted, c.as_found, c.as_left) == (True, "fails", "conforms")
    assert len(c.as_found_points) == len(c.points) == 2
    for p in c.as_found_points:
        assert abs(p.error - 9.0) <= p.U, p
    for p in c.points:
        assert abs(p.error - 0.2) <= p.U, p
    # The registry takes both results and judges the item by its as-found ones.
    (registry / "certificates" / f"{c.number}.toml").write_text(certificate_toml(c))
    reg = Registry.load(registry)
    stored = reg.certificate(c.number)
    assert stored is not None
    assert [q.indicated for q in stored.as_found] == [p.indicated for p in c.as_found_points]
    assert [q.indicated for q in stored.points] == [p.indicated for p in c.points]
    assert reg.conforms(stored) is False
    # The DCC carries both: the as-found result reads back as as_found.
    doc = dcc.read(certificate_dcc(c).encode())
    assert [q.reference for q in doc.as_found] == [p.reference for p in c.as_found_points]
    assert [q.reference for q in doc.points] == [p.reference for p in c.points]
    html = certificate_html(c)
    assert "Results as found (before adjustment)" in html
    assert "As left, after adjustment, the item conforms to" in html


async def test_a_registry_that_refuses_the_new_certificates_is_left_as_it_was(
    tmp_path: Path,
) -> None:
    registry = registry_copy(tmp_path)
    other = tmp_path / "other"  # PT-101's channel is called "p" there
    shutil.copytree(EXAMPLE_REGISTRY, other)
    for f in (other / "equipment" / "PT-101.toml", other / "certificates" / "PCL-2026-0906.toml"):
        text = f.read_text()
        f.write_text(
            text.replace('name = "pressure"', 'name = "p"').replace(
                'channel = "pressure"', 'channel = "p"'
            )
        )
    before = sorted(p.name for p in (other / "certificates").iterdir())
    Registry.load(other)
    async with Lab(fixed_ports=False, opcua=False, seed=10) as lab:
        lab.manifold.slew_per_s = FAST_SLEW
        config = config_for(lab.endpoints(), tmp_path, registry)
        proc = pressure_procedure(tmp_path / "p.toml", [400.0, 800.0])
        code, _, err = await calgate(
            "calibrate", "-c", str(config), str(proc), "--out", str(tmp_path / "out"),
            "--into", str(other),
        )  # fmt: skip
    assert code == 78
    assert f"the registry {other} refuses the new certificates" in err
    assert "has no channel 'pressure'" in err
    assert sorted(p.name for p in (other / "certificates").iterdir()) == before
    assert len(list((tmp_path / "out").glob("*.toml"))) == 2  # both kept in --out


async def test_a_point_that_never_settles_ends_the_run_without_certificates(
    tmp_path: Path,
) -> None:
    registry = registry_copy(tmp_path)
    out = tmp_path / "out"
    async with Lab(fixed_ports=False, opcua=False, seed=4) as lab:
        lab.manifold.slew_per_s = FAST_SLEW
        config = config_for(lab.endpoints(), tmp_path, registry)
        # The manifold's noise (0.02 mbar) never lets the spread fall below 1 µbar.
        proc = pressure_procedure(tmp_path / "p.toml", [500.0, 900.0], max_std=1e-6, timeout_s=2.0)
        code, _, err = await calgate("calibrate", "-c", str(config), str(proc), "--out", str(out))
    assert code == 1
    assert "setpoint 500 mbar (up) did not settle within 2 s" in err, err
    assert "no certificate issued" in err
    assert not out.exists() or not list(out.iterdir())
    assert len(list((registry / "certificates").iterdir())) == len(
        list((EXAMPLE_REGISTRY / "certificates").iterdir())
    )


async def test_a_controller_that_holds_another_pressure_ends_the_run(tmp_path: Path) -> None:
    registry = registry_copy(tmp_path)
    async with Lab(fixed_ports=False, opcua=False, seed=9) as lab:
        lab.manifold.slew_per_s = 0.0  # a leak: the pressure stays where it is, steadily
        config = config_for(lab.endpoints(), tmp_path, registry)
        proc = pressure_procedure(tmp_path / "p.toml", [500.0, 900.0], timeout_s=2.0)
        code, _, err = await calgate("calibrate", "-c", str(config), str(proc))
    assert code == 1
    assert "setpoint 500 mbar (up) did not settle within 2 s" in err, err
    assert "from the setpoint (max ±9)" in err  # 1 % of the largest setpoint


async def test_a_dut_that_goes_offline_mid_run_gets_no_certificate(tmp_path: Path) -> None:
    registry = registry_copy(tmp_path)
    out = tmp_path / "out"
    async with Lab(fixed_ports=False, opcua=False, seed=5) as lab:
        lab.manifold.slew_per_s = FAST_SLEW
        config = config_for(lab.endpoints(), tmp_path, registry)
        proc = pressure_procedure(tmp_path / "p.toml", [400.0, 800.0])
        task = asyncio.create_task(
            calgate("calibrate", "-c", str(config), str(proc), "--out", str(out), "--json")
        )
        while lab.manifold.setpoint != 800.0:  # the run reached its second point
            assert not task.done(), task.result()
            await asyncio.sleep(0.02)
        lab.transmitters.faults[2].arm(Fault.NO_REPLY)  # PT-102 falls silent for good
        lab.transmitters.faults[1].arm(Fault.NO_REPLY, 1)  # PT-101 misses one reply only
        code, stdout, err = await task
    assert code == 1
    rows = json_lines(stdout)
    assert "went offline during the run" in rows["PT-102"]["error"]
    assert "DeviceTimeout" in rows["PT-102"]["error"]
    assert "PT-102: no certificate" in err
    assert "error" not in rows["PT-101"]  # one lost reply is tried again, not an outage
    files = sorted(p.name for p in out.iterdir())
    assert all("PT-102" not in f for f in files)
    assert len(files) == 3  # PT-101's TOML, DCC and HTML


async def test_an_untraceable_reference_is_refused_before_anything_moves(tmp_path: Path) -> None:
    registry = registry_copy(tmp_path)
    (registry / "certificates" / "NIM-LP-2025-0417.xml").unlink()  # REF-P1's NMI certificate
    out = tmp_path / "out"
    async with Lab(fixed_ports=False, opcua=False, seed=6) as lab:
        lab.manifold.slew_per_s = FAST_SLEW
        config = config_for(lab.endpoints(), tmp_path, registry)
        setpoint = lab.manifold.setpoint
        proc = pressure_procedure(tmp_path / "p.toml", [400.0, 800.0])
        code, _, err = await calgate("calibrate", "-c", str(config), str(proc), "--out", str(out))
        assert lab.manifold.setpoint == setpoint  # the controller was never driven
    assert code == 1
    assert "refused: reference standard PC-01 is untraceable" in err, err
    assert "REF-P1" in err
    assert not out.exists()


async def test_an_expired_reference_is_refused(tmp_path: Path) -> None:
    registry = registry_copy(tmp_path)
    cert = registry / "certificates" / "PCL-2026-0905.toml"  # PC-01's certificate
    cert.write_text(cert.read_text().replace("due = 2028-09-30", "due = 2026-10-01"))
    # Refused before any connection: the config points at a port nobody serves.
    serial = {"tcp": "socket://127.0.0.1:9"}
    modbus = {"tcp": "tcp://127.0.0.1:9", "unit": "1"}
    endpoints = {"BAL-01": serial, "BAL-02": serial, "PC-01": serial}
    config = config_for(endpoints | {"PT-101": modbus, "PT-102": modbus}, tmp_path, registry)
    proc = pressure_procedure(tmp_path / "p.toml", [400.0, 800.0])
    code, _, err = await calgate("calibrate", "-c", str(config), str(proc))
    assert code == 1, err
    assert "refused: reference standard PC-01 is expired" in err, err
    assert "2026-10-01" in err


async def send_line(port: int, line: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(line.encode() + b"\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


async def balance_run(
    tmp_path: Path, *, place: bool, timeout_s: float = 20.0
) -> tuple[int, list[str], str, list[float]]:
    """``calgate calibrate`` of BAL-01 (a simulated MT-SICS balance) with loads 0, 100 and
    200 g; at each prompt the "operator" places the load over the simulator's control
    command (when ``place``) and presses Enter. Returns exit code, stdout lines, stderr and
    the masses placed."""
    registry = registry_copy(tmp_path)
    async with MtSicsSim(port=0, pty=False, seed=7) as sim:
        port = int(sim.endpoints()["tcp"].rsplit(":", 1)[1])
        config = tmp_path / "calgate.toml"
        config.write_text(
            f'[gateway]\nregistry = "{registry}"\n[[equipment]]\nid = "BAL-01"\n'
            f'driver = "mt-sics"\nport = "{sim.endpoints()["tcp"]}"\n'
        )
        proc = tmp_path / "balance.toml"
        proc.write_text(
            '[procedure]\nname = "BAL-01, EURAMET cg-18 errors of indication"\n'
            'duts = [{ id = "BAL-01" }]\n'
            'loads = [{ nominal = 0.0 }, { nominal = 100.0, standard = "WS-E2" },'
            ' { nominal = 200.0, standard = "WS-E2" }]\n'
            "readings = 4\ninterval_s = 0.1\n"
            "stable = { window_s = 0.5, max_std = 0.01, max_slope_per_s = 0.02 }\n"
            f"timeout_s = {timeout_s}\n"
        )
        run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "calibrate", "-c", str(config), str(proc),
            "--out", str(tmp_path / "out"), "--json",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert run.stdout is not None
        assert run.stdin is not None
        assert run.stderr is not None
        placed: list[float] = []
        lines: list[str] = []
        while line := (await asyncio.wait_for(run.stdout.readline(), 60)).decode():
            lines.append(line)
            if line.startswith(">>> "):  # the operator's prompt: place the load, press Enter
                mass = 0.0 if "empty the pan" in line else float(line.split()[2])
                if place:
                    assert await send_line(port, f"SIMLOAD {mass}") == "SIMLOAD A"
                    placed.append(mass)
                run.stdin.write(b"\n")
                await run.stdin.drain()
        err = (await run.stderr.read()).decode()
        code = await asyncio.wait_for(run.wait(), 10)
    return code, lines, err, placed


async def test_balance_run_with_loads_placed_through_the_simulators_control_command(
    tmp_path: Path,
) -> None:
    code, lines, err, placed = await balance_run(tmp_path, place=True)
    assert code == 0, err
    assert placed == [0.0, 100.0, 200.0]
    row = json_lines("".join(lines))["BAL-01"]
    # The reference is each weight's conventional mass from its certificate file (mg):
    # `indicated` at `reference` = the nominal value, as BAL-01's own certificate in the
    # example registry (MCS-2026-1022) takes them: 100.00005 g and 199.99992 g.
    ws = tomllib.loads((EXAMPLE_REGISTRY / "certificates" / "MCS-2025-0610.toml").read_text())
    mass_g = {p["reference"] / 1000: p["indicated"] / 1000 for p in ws["points"]}
    assert (mass_g[100.0], mass_g[200.0]) == (100.00005, 199.99992)
    for p, nominal in zip(row["points"], placed, strict=True):
        # the simulated balance shows the load placed (its nominal) exactly, rounded to
        # d = 0.01 g: an error within U of zero.
        ref = 0.0 if nominal == 0 else mass_g[nominal]
        assert p["reference"] == pytest.approx(ref, abs=1e-9)
        assert abs(p["error"]) <= p["U"]
        assert p["U"] >= 0.01 / (2 * 3**0.5) * 1.9  # at least the resolution's share
    toml = (tmp_path / "out" / f"{row['number']}.toml").read_text()
    assert 'standards = [\n    "WS-E2",\n]' in toml
    assert row["as_found"] == "conforms"


async def test_a_load_that_was_not_placed_ends_the_run(tmp_path: Path) -> None:
    code, _, err, _ = await balance_run(tmp_path, place=False, timeout_s=1.5)
    assert code == 1
    assert "load 100 g (up) did not settle within 1.5 s" in err, err
    assert "BAL-01: stable at 0 g, -100 g from the nominal load (max ±2)" in err
    assert not (tmp_path / "out").exists()
