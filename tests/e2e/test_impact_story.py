"""The README's story on the demo lab, as a user plays it.

``calgate run`` (a child process) polls the lab's pressure instruments into influxd and
mosquitto. It announces the registry it applied (``registry_loaded``, digests as computed
here, also in ``/status``). The quality team then records WS-P1's next calibration, which
found it 1.5 mbar high (``examples/drift/PCL-2026-1201.toml``), and reloads (SIGHUP): the
gateway emits ``traceability_suspect`` once for each polled channel WS-P1 calibrated,
naming the window and the command; a second reload with nothing new emits none. The
command (``calgate impact``) then re-evaluates exactly the readings stored in the window
and writes the re-corrected series.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, wait_for_async
from labconfig import calgate, calgate_run, http_get
from mqttsub import Subscriber
from servers import InfluxV1, Mosquitto

from gateway.demo import example_registry, lab_toml
from gateway.registry_watch import revision_of
from simulators.lab import Lab

pytestmark = pytest.mark.e2e

DRIFT = Path(example_registry()).parent / "drift" / "PCL-2026-1201.toml"
PRESSURE = ("PC-01", "PT-101", "PT-102")


async def test_a_standard_found_out_of_tolerance_the_event_the_report_the_series(
    tmp_path: Path, mosquitto: Mosquitto, influxd: InfluxV1, unique_name: str
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(example_registry(), registry)
    db = unique_name
    influxd.create_database(db)
    site = f"story-{unique_name[-8:]}"
    http = f"127.0.0.1:{free_port()}"
    config = tmp_path / "calgate.toml"
    log = tmp_path / "gateway.log"
    events_topic = f"calgate/{site}/+/event"

    async with Lab(fixed_ports=False, opcua=False, seed=3) as lab:
        config.write_text(
            lab_toml(
                lab.endpoints(), registry=registry, state_dir=tmp_path / "state",
                mqtt_url=mosquitto.url, http=http, interval_s=0.1, site=site,
                influx={"api": "v1", "url": influxd.url, "database": db, "flush_interval_s": "0.1"},
                only=PRESSURE,
            )
        )  # fmt: skip
        with Subscriber(mosquitto.port, events_topic) as sub:

            def events(kind: str) -> list[dict[str, Any]]:
                return [e for e in sub.json("/event") if e["type"] == kind]

            async with calgate_run(config, log) as gw:
                await wait_for_async(
                    lambda: len(events("registry_loaded")) == 1,
                    timeout_s=30,
                    what="registry_loaded",
                )
                (loaded,) = events("registry_loaded")
                before = revision_of(registry)
                assert (loaded["digest"], loaded["files"]) == (before.digest, before.files)
                assert loaded["reload"] is False
                status = json.loads(http_get(f"http://{http}/status")[1])
                assert status["gateway"]["registry"]["digest"] == before.digest

                await asyncio.sleep(1.0)  # readings through the certificates as they were
                shutil.copy(DRIFT, registry / "certificates" / DRIFT.name)
                gw.send_signal(signal.SIGHUP)
                await wait_for_async(
                    lambda: len(events("registry_loaded")) == 2, timeout_s=20, what="the reload"
                )
                after = revision_of(registry)
                assert events("registry_loaded")[1]["digest"] == after.digest != before.digest
                suspect = {e["equipment"]: e for e in events("traceability_suspect")}
                assert set(suspect) == set(PRESSURE)
                assert len(events("traceability_suspect")) == 3
                cmd = f"calgate impact -c {config} --standard WS-P1"
                for e in suspect.values():
                    assert e["command"] == cmd
                    assert cmd in e["message"]
                    assert e["standard"] == "WS-P1"
                    assert e["found_by"] == "PCL-2026-1201"
                assert suspect["PT-101"]["from"] == "2026-09-06"

                # once: a reload that brings nothing new announces the registry only
                gw.send_signal(signal.SIGHUP)
                await wait_for_async(
                    lambda: len(events("registry_loaded")) == 3, timeout_s=20, what="reload 2"
                )
                await asyncio.sleep(0.5)
                assert len(events("traceability_suspect")) == 3
                gw.send_signal(signal.SIGTERM)
                assert await gw.wait() == 0

    # The command the event named, as the user runs it.
    def impact(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*calgate(), "impact", "-c", str(config), "--standard", "WS-P1", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = impact("--json", "--write")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    stored = {
        str(r["equipment"]): int(r["count"])  # type: ignore[call-overload]
        for r in influxd.rows(
            f"SELECT count(seq) FROM reading WHERE site='{site}' GROUP BY equipment", db
        )
    }
    got = {c["equipment"]: c["readings"] for c in report["channels"] if c["readings"]}
    assert got == stored  # every stored reading of the three is in their windows
    assert report["written"] == sum(stored.values())
    rec = influxd.rows(
        f"SELECT count(value) FROM reading_recorrected WHERE site='{site}' GROUP BY equipment", db
    )
    assert {str(r["equipment"]): r["count"] for r in rec} == stored
    # the re-corrected PT-101 series sits 1.5 mbar (the drift) below the stored one
    pairs = influxd.rows(
        f"SELECT value, stored_value FROM reading_recorrected WHERE site='{site}' "
        "AND equipment='PT-101'",
        db,
    )
    shifts = Counter(round(float(p["stored_value"]) - float(p["value"]), 1) for p in pairs)  # type: ignore[arg-type]
    assert set(shifts) == {1.5}
    text = impact()
    assert text.returncode == 0
    assert "WS-P1: found out of tolerance (as found) in PCL-2026-1201" in text.stdout


async def test_a_registry_changed_while_the_gateway_was_stopped_is_told_at_start(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    """The registry applied last is remembered in the state directory: a certificate of
    PT-101 entered late while the service was down gives certificate_superseded at the
    next start, once."""
    registry = tmp_path / "registry"
    shutil.copytree(example_registry(), registry)
    site = f"restart-{unique_name[-8:]}"
    config = tmp_path / "calgate.toml"
    log = tmp_path / "gateway.log"
    config.write_text(
        lab_toml(
            _nowhere(),
            registry=registry, state_dir=tmp_path / "state", mqtt_url=mosquitto.url,
            site=site, only=("PT-101",),
        )
    )  # fmt: skip
    with Subscriber(mosquitto.port, f"calgate/{site}/+/event") as sub:

        def events(kind: str) -> list[dict[str, Any]]:
            return [e for e in sub.json("/event") if e["type"] == kind]

        async def run_once(n_loaded: int) -> None:
            async with calgate_run(config, log) as gw:
                await wait_for_async(
                    lambda: len(events("registry_loaded")) == n_loaded, timeout_s=30,
                    what="registry_loaded",
                )  # fmt: skip
                gw.send_signal(signal.SIGTERM)
                assert await gw.wait() == 0

        await run_once(1)
        src = (registry / "certificates" / "PCL-2026-0906.toml").read_text()
        yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
        (registry / "certificates" / "PCL-LATE.toml").write_text(
            src.replace("PCL-2026-0906", "PCL-LATE").replace(
                "calibrated = 2026-09-06", f"calibrated = {yesterday}"
            )
        )
        await run_once(2)
        await run_once(3)
    (e,) = events("certificate_superseded")
    assert (e["equipment"], e["certificate"], e["superseded"]) == (
        "PT-101",
        "PCL-LATE",
        "PCL-2026-0906",
    )
    assert e["command"] == f"calgate impact -c {config} --certificate PCL-LATE"
    assert [x["reload"] for x in events("registry_loaded")] == [False, False, False]


def _nowhere() -> dict[str, dict[str, str]]:
    """Lab endpoints where nothing listens: the equipment stays offline (not needed here)."""
    dead = f"127.0.0.1:{free_port()}"
    serial = {"tcp": f"socket://{dead}"}
    return {
        "BAL-01": serial, "BAL-02": serial, "PC-01": serial,
        "PT-101": {"tcp": f"tcp://{dead}", "unit": "1"},
        "PT-102": {"tcp": f"tcp://{dead}", "unit": "2"},
    }  # fmt: skip
