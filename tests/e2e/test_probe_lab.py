"""``calgate probe`` against the simulated lab prints a correct reading from every instrument."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for_async
from labconfig import EXAMPLE_REGISTRY, lab_config

from calibration import Registry
from simulators.lab import Lab

pytestmark = pytest.mark.e2e


async def probe(config: Path, *ids: str) -> tuple[int, list[dict[str, object]], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "probe", "-c", str(config), "--json", *ids,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    rows = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return proc.returncode or 0, rows, err.decode()


async def test_probe_reads_and_corrects_every_simulated_instrument(tmp_path: Path) -> None:
    async with Lab(fixed_ports=False, seed=1) as lab:
        config = lab_config(lab, tmp_path)
        for bal in (lab.balance.balance, lab.sbi.balance):
            await wait_for_async(lambda b=bal: b.load.settled_within(b.d / 10), what="settled pan")
        await wait_for_async(lambda: lab.manifold.in_limits(0.01), what="manifold at setpoint")
        code, rows, err = await probe(config)
        truth = {
            "BAL-01": 100.0,  # the lab places 100 g on BAL-01 and 200 g on BAL-02
            "BAL-02": 200.0,
            "PC-01": lab.manifold.true_pressure(),
            "PT-101": lab.manifold.true_pressure() + 0.35,  # each transmitter's own error
            "PT-102": lab.manifold.true_pressure() - 0.8,
            "UTM-01": 20.0,
        }
    assert code == 0, err
    by_eq = {r["equipment"]: r for r in rows}
    assert set(by_eq) == set(truth)
    registry = Registry.load(EXAMPLE_REGISTRY)
    now = datetime.now(UTC)
    for eq, row in by_eq.items():
        raw = float(row["raw"])  # type: ignore[arg-type]
        # The raw value is what the simulated instrument shows (noise, settling, resolution).
        assert abs(raw - truth[eq]) < 0.05 * max(1.0, abs(truth[eq]) / 100), (eq, raw)
        # The value is the raw value corrected through the certificate in force now.
        corrector = registry.corrector(eq, str(row["channel"]), now)
        res = corrector.correct(np.array([raw]))
        assert row["value"] == pytest.approx(float(res.value[0]), rel=1e-12), eq
        assert row["U"] == pytest.approx(float(res.U[0]), rel=1e-12), eq
        assert row["certificate"] == corrector.certificate
        assert row["calibration"] == registry.state(eq, now).status
        assert row["unit"] in {"g", "mbar", "kN"}


async def test_probe_reports_a_dead_instrument_and_still_reads_the_others(tmp_path: Path) -> None:
    async with Lab(fixed_ports=False, opcua=False, seed=2) as lab:
        config = lab_config(lab, tmp_path, only={"BAL-01", "PT-101"})
        await lab.balance.stop()  # unplugged
        code, rows, _ = await probe(config)
    assert code == 1
    by_eq = {r["equipment"]: r for r in rows}
    assert "error" in by_eq["BAL-01"]
    assert by_eq["PT-101"]["quality"] == "good"


async def test_probe_corrects_through_the_sound_part_of_a_broken_registry(
    tmp_path: Path,
) -> None:
    """A broken certificate of WS-F1 (a standard, not probed): PT-101 is still corrected
    through its certificate (it gave raw values for every instrument), and the note
    names what was left out."""
    root = tmp_path / "registry"
    shutil.copytree(EXAMPLE_REGISTRY, root)
    cert = root / "certificates" / "MCS-2026-0611.toml"
    cert.write_text(cert.read_text().replace('standards = ["REF-W1"]', 'standards = ["NOPE"]'))
    async with Lab(fixed_ports=False, opcua=False, seed=4) as lab:
        config = lab_config(lab, tmp_path, only={"PT-101"}, registry=root)
        code, rows, err = await probe(config, "PT-101")
    assert code == 0, err
    # WS-F1 is left out; PT-101's chain does not go through it: nothing is raw
    assert "); left out: WS-F1\n" in err
    (row,) = rows
    assert (
        row["certificate"]
        == Registry.load(EXAMPLE_REGISTRY)
        .corrector("PT-101", "pressure", datetime.now(UTC))
        .certificate
    )
    assert row["value"] != row["raw"]
