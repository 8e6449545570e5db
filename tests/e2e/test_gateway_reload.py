"""SIGHUP (what ``systemctl reload calgate`` sends) reloads config and registry in place.

``calgate run`` runs as a child process on a copy of the example registry, publishing to
real mosquitto. While it polls: a newer certificate for PT-101 applies from the reload
on (its number, its correction), an added equipment starts polling and a removed one
stops (its retained status, /status entry and metric series go), and a broken config is
refused with its errors logged while the running one carries on. Across all of it no
reading is lost: every seq from 1 to the last committed arrives on MQTT.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import free_port, wait_for_async
from labconfig import committed_seq, every_seq_arrives, http_get, start_calgate_run
from mqttsub import Subscriber
from servers import Mosquitto

from calibration import Registry
from gateway.demo import example_registry, lab_toml
from simulators.lab import Lab

pytestmark = pytest.mark.e2e

NEW_CERT = "PCL-RELOAD-0001"


def new_certificate(today: datetime) -> str:
    """A recalibration of PT-101 dated today (UTC), in mbar, reading 1.2 mbar high (by an
    NMI, so its chain holds whatever today's date)."""
    cal = today.date()
    due = cal + timedelta(days=730)
    points = ",\n".join(
        f"  {{ reference = {ref:.1f}, indicated = {ref + 1.2:.1f}, U = 0.6, k = 2 }}"
        for ref in (0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0)
    )
    return (
        f'number = "{NEW_CERT}"\nitem = "PT-101"\nchannel = "pressure"\n'
        'issued_by = "A national metrology institute"\nnmi = true\n'
        f"calibrated = {cal.isoformat()}\ndue = {due.isoformat()}\n"
        'standards = []\nunit = "mbar"\nmodel = "interpolate"\n'
        f"points = [\n{points},\n]\n"
    )


async def test_sighup_applies_certificates_and_equipment_without_losing_a_reading(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    registry_dir = tmp_path / "registry"
    shutil.copytree(example_registry(), registry_dir)
    state = tmp_path / "state"
    log = tmp_path / "gateway.log"
    site = f"reload-{unique_name[-8:]}"
    http = f"127.0.0.1:{free_port()}"
    config = tmp_path / "calgate.toml"
    base = f"calgate/{site}"

    async with Lab(fixed_ports=False, opcua=False, seed=8) as lab:

        def write(only: set[str]) -> None:
            config.write_text(
                lab_toml(
                    lab.endpoints(),
                    registry=registry_dir,
                    state_dir=state,
                    mqtt_url=mosquitto.url,
                    http=http,
                    interval_s=0.05,
                    site=site,
                    gateway_id="edge-reload",
                    only=only,
                    gateway_extra={"status_interval_s": 0.5},
                )
            )

        write({"PT-101", "PC-01"})
        bal_url = lab.endpoints()["BAL-01"]["tcp"]
        with Subscriber(mosquitto.port, f"{base}/#") as sub:

            def readings(eq: str) -> list[dict[str, Any]]:
                return sub.json(f"/{eq}/pressure/reading") + sub.json(f"/{eq}/weight/reading")

            gw = await start_calgate_run(config, log)
            try:
                await wait_for_async(
                    lambda: len(readings("PT-101")) >= 10 and len(readings("PC-01")) >= 10,
                    timeout_s=30,
                    what="readings of PT-101 and PC-01",
                )
                old = readings("PT-101")[-1]["certificate"]
                assert old != NEW_CERT

                # (1) A newer certificate for PT-101, then SIGHUP.
                today = datetime.now(UTC)
                (registry_dir / "certificates" / f"{NEW_CERT}.toml").write_text(
                    new_certificate(today)
                )
                reg = Registry.load(registry_dir)  # what the reloaded gateway will use
                corrector = reg.corrector("PT-101", "pressure", today)
                assert corrector.certificate == NEW_CERT
                assert reg.state("PT-101", today).status == "valid"
                gw.send_signal(signal.SIGHUP)
                await wait_for_async(
                    lambda: sum(r["certificate"] == NEW_CERT for r in readings("PT-101")) >= 10,
                    timeout_s=20,
                    what="readings corrected by the new certificate",
                )

                # (2) BAL-01 added, PC-01 removed, then SIGHUP.
                pc_before = len(readings("PC-01"))
                write({"PT-101", "BAL-01"})
                gw.send_signal(signal.SIGHUP)
                await wait_for_async(
                    lambda: len(readings("BAL-01")) >= 5, timeout_s=20, what="BAL-01 polling"
                )
                pc_after_reload = len(readings("PC-01"))
                seen = len(readings("PT-101"))
                await wait_for_async(
                    lambda: len(readings("PT-101")) >= seen + 20, timeout_s=20, what="a moment"
                )
                assert len(readings("PC-01")) == pc_after_reload, "PC-01 still polled"
                assert pc_after_reload >= pc_before
                status = json.loads(http_get(f"http://{http}/status")[1])
                assert set(status["equipment"]) == {"PT-101", "BAL-01"}
                assert status["equipment"]["PT-101"]["certificate"] == NEW_CERT
                gw_status = f"{base}/gateway/edge-reload/status"
                await wait_for_async(
                    lambda: sub.json(gw_status)[-1]["equipment"] == ["BAL-01", "PT-101"],
                    what="the gateway's retained status to list the new equipment",
                )
                assert sub.json(gw_status)[-1]["started"] == sub.json(gw_status)[0]["started"]
                metrics = http_get(f"http://{http}/metrics")[1]
                assert 'calgate_polls_total{equipment="BAL-01"}' in metrics
                assert 'equipment="PC-01"' not in metrics, "series of removed equipment"

                # (3) A broken config is refused; the running one carries on.
                good = config.read_text()
                config.write_text(  # BAL-01: an unknown driver; PT-101: a negative interval
                    good.replace('driver = "mt-sics"', 'driver = "no-such-driver"').replace(
                        "interval_s = 0.05", "interval_s = -1"
                    )
                )
                gw.send_signal(signal.SIGHUP)
                await wait_for_async(
                    lambda: log.read_text(errors="replace").count("reload refused") >= 2,
                    timeout_s=20,
                    what="the refusal logged, every error",
                )
                refused = [
                    line
                    for line in log.read_text(errors="replace").splitlines()
                    if "reload refused" in line
                ]
                assert any(
                    "equipment[0] (BAL-01).driver" in x and "no-such-driver" in x for x in refused
                )
                assert any("equipment[1] (PT-101).interval_s" in x for x in refused)
                # ... and told where the operator looks, not only in the journal
                await wait_for_async(
                    lambda: any(e["type"] == "reload_refused" for e in sub.json("/event")),
                    what="a reload_refused event on MQTT",
                )
                (told,) = [e for e in sub.json("/event") if e["type"] == "reload_refused"]
                assert told["severity"] == "warning"
                assert told["equipment"] == "gateway"
                assert any("no-such-driver" in x for x in told["errors"])
                last = json.loads(http_get(f"http://{http}/status")[1])["gateway"]["last_reload"]
                assert last["result"] == "refused"
                assert last["errors"] == told["errors"]
                seen_pt, seen_bal = len(readings("PT-101")), len(readings("BAL-01"))
                await wait_for_async(
                    lambda: (
                        len(readings("PT-101")) >= seen_pt + 10
                        and len(readings("BAL-01")) >= seen_bal + 10
                    ),
                    timeout_s=20,
                    what="polling to go on after a refused reload",
                )
                assert gw.returncode is None

                # A broken registry entry of a polled instrument is refused the same way
                # (the config is fine again): PT-101's new certificate in kilograms.
                config.write_text(good)
                broken = registry_dir / "certificates" / "PCL-BROKEN.toml"
                broken.write_text(
                    new_certificate(today)
                    .replace(NEW_CERT, "PCL-BROKEN")
                    .replace('unit = "mbar"', 'unit = "kg"')
                )
                gw.send_signal(signal.SIGHUP)
                await wait_for_async(
                    lambda: "PCL-BROKEN" in log.read_text(errors="replace"),
                    timeout_s=20,
                    what="the broken registry refused",
                )
                line = next(
                    x for x in log.read_text(errors="replace").splitlines() if "PCL-BROKEN" in x
                )
                assert "reload refused" in line
                assert "'kg' is not compatible" in line
                seen_pt = len(readings("PT-101"))
                await wait_for_async(
                    lambda: len(readings("PT-101")) >= seen_pt + 10, what="polling going on"
                )
                assert readings("PT-101")[-1]["certificate"] == NEW_CERT

                # (4) What a reload cannot apply (the HTTP address) is said, and kept;
                # changed equipment (BAL-01's interval, equipment[0]) restarts.
                broken.unlink()
                other = f"127.0.0.1:{free_port()}"
                config.write_text(
                    good.replace(http, other).replace("interval_s = 0.05", "interval_s = 0.1", 1)
                )
                seen_bal = len(readings("BAL-01"))
                gw.send_signal(signal.SIGHUP)
                await wait_for_async(
                    lambda: "[http] changed" in log.read_text(errors="replace"),
                    timeout_s=20,
                    what="the warning",
                )
                assert http_get(f"http://{http}/healthz")[0] == 200
                await wait_for_async(
                    lambda: len(readings("BAL-01")) >= seen_bal + 10,
                    timeout_s=20,
                    what="BAL-01 polling again after its restart",
                )
            finally:
                if gw.returncode is None:
                    gw.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(gw.wait(), 30)
            assert gw.returncode == 0, log.read_text()[-3000:]
            last = committed_seq(state)
            assert await every_seq_arrives(sub, last)

        # The removed equipment's retained status is gone; the others' stay.
        with Subscriber(mosquitto.port, f"{base}/+/status") as late:
            late.wait_for(
                lambda s: {"PT-101", "BAL-01"} <= {t.split("/")[-2] for t in s.topics()},
                what="retained statuses",
            )
            retained = {t.split("/")[-2] for t, p, r in late.messages if r and p}
            assert "PT-101" in retained
            assert "PC-01" not in retained

    # Every seq arrived; the new certificate applied from the reload on, never before.
    seqs = [m["seq"] for m in sub.json("/reading") + sub.json("/event")]
    assert set(seqs) == set(range(1, last + 1))
    pt = sorted(readings("PT-101"), key=lambda r: r["seq"])
    certs = [r["certificate"] for r in pt]
    first_new = certs.index(NEW_CERT)
    assert set(certs[:first_new]) == {old}
    assert set(certs[first_new:]) == {NEW_CERT}
    for r in pt[first_new:]:
        assert r["calibration"] == "valid"
        res = corrector.correct(np.array([r["raw"]]))
        assert r["value"] == pytest.approx(float(res.value[0]), rel=1e-12)
        assert r["U"] == pytest.approx(float(res.U[0]), rel=1e-12)
        assert r["value"] == pytest.approx(r["raw"] - 1.2, abs=1e-9)
    # PT-101, unchanged in the config, kept polling through every reload: one connection.
    assert log.read_text(errors="replace").count("PT-101: connected to") == 1
    assert log.read_text(errors="replace").count(f"connected to {bal_url}") == 2  # restarted
    # PC-01's readings all precede BAL-01's first: it stopped before BAL-01 started.
    pc = [r["seq"] for r in readings("PC-01")]
    bal = [r["seq"] for r in readings("BAL-01")]
    assert max(pc) < min(bal)
