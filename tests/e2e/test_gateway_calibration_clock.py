"""Calibration due soon and expired, also while the gateway runs and the date passes.

PT-101's certificate in the example registry (PCL-2026-0906) is due on 2028-09-30 and
the equipment is ``due_soon`` 45 days before. The gateway is run against real mosquitto
with its clock moved over those dates: a ``calibration_due_soon`` and then a
``calibration_expired`` event arrive once each (transitions, not every check), the
retained status follows, the ``calgate_calibration_status`` metric too, and readings
corrected after the boundary carry the new ``calibration`` status. A recalibration
certificate dated ahead applies from its day on, without a reload.
"""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for_async
from mqttsub import Subscriber
from servers import Mosquitto

from calibration import Registry
from gateway.demo import example_registry, lab_toml
from gateway.service import Gateway, load_everything
from simulators.lab import Lab

pytestmark = pytest.mark.e2e

EQ = "PT-101"
CERT = "PCL-2026-0906"
DUE = date(2028, 9, 30)
DUE_SOON_DAYS = 45


def utc(d: date, hour: int = 12) -> datetime:
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


VALID_AT = utc(DUE - timedelta(days=DUE_SOON_DAYS + 1))
DUE_SOON_AT = utc(DUE - timedelta(days=DUE_SOON_DAYS))  # the first due-soon day
LAST_DAY = datetime(2028, 9, 30, 23, 59, 59, tzinfo=UTC)  # in force through its due day
EXPIRED_AT = datetime(2028, 10, 1, 0, 0, 1, tzinfo=UTC)


class Clock:
    """A settable UTC clock for the gateway (thread-safe enough for a test)."""

    def __init__(self, t: datetime) -> None:
        self._t = t
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._t

    def set(self, t: datetime) -> None:
        with self._lock:
            self._t = t


def test_the_registry_agrees_with_these_dates() -> None:
    """The premise of the tests below, from the registry itself."""
    reg = Registry.load(example_registry())
    assert reg.state(EQ, VALID_AT).status == "valid"
    assert reg.state(EQ, DUE_SOON_AT - timedelta(days=1)).status == "valid"
    assert reg.state(EQ, DUE_SOON_AT).status == "due_soon"
    assert reg.state(EQ, LAST_DAY).status == "due_soon"
    assert reg.state(EQ, EXPIRED_AT).status == "expired"
    assert reg.state(EQ, EXPIRED_AT).certificate == CERT
    assert reg.state(EQ, EXPIRED_AT).due == DUE


def write_config(lab: Lab, tmp_path: Path, mqtt_url: str, site: str, status_s: float) -> Path:
    path = tmp_path / "calgate.toml"
    path.write_text(
        lab_toml(
            lab.endpoints(),
            registry=example_registry(),
            state_dir=tmp_path / "state",
            mqtt_url=mqtt_url,
            interval_s=0.05,
            site=site,
            gateway_id="edge-clock",
            only={EQ},
            gateway_extra={"status_interval_s": status_s},
        )
    )
    return path


def cal_events(sub: Subscriber) -> list[dict[str, Any]]:
    return [e for e in sub.json(f"{EQ}/event") if e["type"].startswith("calibration_")]


def status_metric(gw: Gateway) -> dict[str, float]:
    series = gw.metrics.calibration_status.series()
    return {labels[1]: child.value for labels, child in series.items() if labels[0] == EQ}


@pytest.fixture
def site(unique_name: str) -> str:
    return f"clock-{unique_name[-8:]}"


async def test_check_calibration_at_due_soon_and_expired_fires_once_each(
    tmp_path: Path, mosquitto: Mosquitto, site: str
) -> None:
    async with Lab(fixed_ports=False, opcua=False, seed=2) as lab:
        # The watcher's own (real-time) checks are an hour apart: only ours count here.
        path = write_config(lab, tmp_path, mosquitto.url, site, status_s=3600)
        config, reg = load_everything(path)
        with Subscriber(mosquitto.port, f"calgate/{site}/#") as sub:
            gw = Gateway(config, reg, clock=Clock(VALID_AT))  # today's date plays no part
            await gw.start()
            try:
                await wait_for_async(lambda: len(sub.json("/reading")) >= 3, what="readings")

                def status() -> dict[str, Any]:
                    return sub.json(f"{EQ}/status")[-1]

                await wait_for_async(lambda: status()["calibration"] == "valid", what="status")
                assert status()["due"] == DUE.isoformat()
                assert status()["certificate"] == CERT

                gw.check_calibration(at=VALID_AT)
                assert status_metric(gw)["valid"] == 1.0
                assert gw.metrics.calibration_days_until_due.value(EQ) == DUE_SOON_DAYS + 1

                gw.check_calibration(at=DUE_SOON_AT)
                await wait_for_async(
                    lambda: status()["calibration"] == "due_soon", what="due_soon status"
                )
                await wait_for_async(lambda: len(cal_events(sub)) == 1, what="due_soon event")
                assert status_metric(gw)["due_soon"] == 1.0
                assert status_metric(gw)["valid"] == 0.0
                assert gw.metrics.calibration_days_until_due.value(EQ) == DUE_SOON_DAYS
                # Still due soon, later that day and on the due day itself: no new event.
                gw.check_calibration(at=DUE_SOON_AT + timedelta(hours=6))
                gw.check_calibration(at=LAST_DAY)

                gw.check_calibration(at=EXPIRED_AT)
                await wait_for_async(
                    lambda: status()["calibration"] == "expired", what="expired status"
                )
                await wait_for_async(lambda: len(cal_events(sub)) >= 2, what="expired event")
                gw.check_calibration(at=EXPIRED_AT + timedelta(days=1))
                assert status_metric(gw)["expired"] == 1.0
                assert status_metric(gw)["due_soon"] == 0.0
                assert gw.metrics.calibration_days_until_due.value(EQ) == -2
                metrics = gw.metrics.render()
                assert (
                    f'calgate_calibration_status{{equipment="{EQ}",status="expired"}} 1' in metrics
                )
            finally:
                await gw.stop()
    with Subscriber(mosquitto.port, f"calgate/{site}/{EQ}/status") as late:
        late.wait_for(lambda s: bool(s.messages), what="the retained status")
        assert late.messages[-1][2], "retained"
        assert late.json()[-1]["calibration"] == "expired"
    events = cal_events(sub)
    assert [e["type"] for e in events] == ["calibration_due_soon", "calibration_expired"]
    due_soon, expired = events
    assert due_soon["severity"] == "warning"
    assert expired["severity"] == "critical"
    for e in events:
        assert e["equipment"] == EQ
        assert e["certificate"] == CERT
        assert e["due"] == DUE.isoformat()
    assert due_soon["previous"] == "valid"
    assert expired["previous"] == "due_soon"


async def test_the_date_passing_while_running_switches_events_status_and_readings(
    tmp_path: Path, mosquitto: Mosquitto, site: str
) -> None:
    clock = Clock(VALID_AT)
    async with Lab(fixed_ports=False, opcua=False, seed=4) as lab:
        path = write_config(lab, tmp_path, mosquitto.url, site, status_s=0.1)
        config, reg = load_everything(path)
        with Subscriber(mosquitto.port, f"calgate/{site}/#") as sub:
            gw = Gateway(config, reg, clock=clock)
            await gw.start()
            try:

                def readings() -> list[dict[str, Any]]:
                    return sub.json(f"{EQ}/pressure/reading")

                def status() -> dict[str, Any]:
                    return sub.json(f"{EQ}/status")[-1]

                await wait_for_async(lambda: len(readings()) >= 3, what="readings")
                assert {r["calibration"] for r in readings()} == {"valid"}

                clock.set(DUE_SOON_AT)  # the watcher notices by itself
                await wait_for_async(lambda: len(cal_events(sub)) == 1, what="due_soon event")
                await wait_for_async(lambda: status()["calibration"] == "due_soon", what="status")
                await wait_for_async(
                    lambda: readings()[-1]["calibration"] == "due_soon", what="due_soon readings"
                )

                clock.set(EXPIRED_AT)
                await wait_for_async(lambda: len(cal_events(sub)) == 2, what="expired event")
                await wait_for_async(lambda: status()["calibration"] == "expired", what="status")
                await wait_for_async(
                    lambda: readings()[-1]["calibration"] == "expired", what="expired readings"
                )
                # A few more watcher rounds and readings: no repeated events.
                seen = len(readings())
                await wait_for_async(lambda: len(readings()) >= seen + 5, what="more readings")
                assert status_metric(gw)["expired"] == 1.0
            finally:
                await gw.stop()
    events = cal_events(sub)
    assert [e["type"] for e in events] == ["calibration_due_soon", "calibration_expired"]
    # Readings switch at the boundary and never go back; expired ones are not "good".
    by_seq = sorted(readings(), key=lambda r: r["seq"])
    statuses = [r["calibration"] for r in by_seq]
    first_soon = statuses.index("due_soon")
    first_expired = statuses.index("expired")
    assert set(statuses[:first_soon]) == {"valid"}
    assert set(statuses[first_soon:first_expired]) == {"due_soon"}
    assert set(statuses[first_expired:]) == {"expired"}
    for r in by_seq[first_expired:]:
        assert r["certificate"] == CERT
        assert r["quality"] != "good"
    for r in by_seq[:first_expired]:
        assert r["quality"] == "good"


RECAL = "PCL-2028-0925"


def recalibration() -> str:
    """PT-101 recalibrated on 2028-09-25 (before the old certificate's due date), by an
    NMI directly; it reads 0.8 mbar low."""
    points = ",\n".join(
        f"  {{ reference = {ref:.1f}, indicated = {ref - 0.8:.1f}, U = 0.4, k = 2 }}"
        for ref in (1.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0)
    )
    return (
        f'number = "{RECAL}"\nitem = "PT-101"\nchannel = "pressure"\n'
        'issued_by = "A national metrology institute"\nnmi = true\n'
        "calibrated = 2028-09-25\ndue = 2030-09-25\nstandards = []\n"
        f'unit = "mbar"\nmodel = "interpolate"\npoints = [\n{points},\n]\n'
    )


async def test_a_certificate_dated_ahead_applies_on_its_day(
    tmp_path: Path, mosquitto: Mosquitto, site: str
) -> None:
    registry_dir = tmp_path / "registry"
    shutil.copytree(example_registry(), registry_dir)
    (registry_dir / "certificates" / f"{RECAL}.toml").write_text(recalibration())
    day_before = datetime(2028, 9, 24, 23, 59, 59, tzinfo=UTC)
    on_the_day = datetime(2028, 9, 25, 0, 0, 1, tzinfo=UTC)
    reg = Registry.load(registry_dir)
    assert reg.state(EQ, day_before).certificate == CERT
    assert reg.state(EQ, on_the_day).certificate == RECAL
    assert reg.state(EQ, on_the_day).status == "valid"
    corrector = reg.corrector(EQ, "pressure", on_the_day)

    clock = Clock(day_before)
    async with Lab(fixed_ports=False, opcua=False, seed=9) as lab:
        path = tmp_path / "calgate.toml"
        path.write_text(
            lab_toml(
                lab.endpoints(),
                registry=registry_dir,
                state_dir=tmp_path / "state",
                mqtt_url=mosquitto.url,
                interval_s=0.05,
                site=site,
                gateway_id="edge-clock",
                only={EQ},
                gateway_extra={"status_interval_s": 0.1},
            )
        )
        config, loaded = load_everything(path)
        with Subscriber(mosquitto.port, f"calgate/{site}/#") as sub:
            gw = Gateway(config, loaded, clock=clock)
            await gw.start()
            try:

                def readings() -> list[dict[str, Any]]:
                    return sub.json(f"{EQ}/pressure/reading")

                def status() -> dict[str, Any]:
                    return sub.json(f"{EQ}/status")[-1]

                await wait_for_async(lambda: len(readings()) >= 3, what="readings")
                assert readings()[-1]["calibration"] == "due_soon"
                assert readings()[-1]["certificate"] == CERT
                clock.set(on_the_day)
                await wait_for_async(
                    lambda: sum(r["certificate"] == RECAL for r in readings()) >= 5,
                    what="readings corrected by the new certificate",
                )
                await wait_for_async(lambda: status()["certificate"] == RECAL, what="status")
                assert status()["calibration"] == "valid"
                assert status()["due"] == "2030-09-25"
                assert status_metric(gw)["valid"] == 1.0
                assert gw.metrics.calibration_days_until_due.value(EQ) == 730
            finally:
                await gw.stop()
    by_seq = sorted(readings(), key=lambda r: r["seq"])
    certs = [r["certificate"] for r in by_seq]
    first = certs.index(RECAL)
    assert set(certs[:first]) == {CERT}
    assert set(certs[first:]) == {RECAL}
    for r in by_seq[first:]:
        assert r["calibration"] == "valid"
        res = corrector.correct(np.array([r["raw"]]))
        assert r["value"] == pytest.approx(float(res.value[0]), rel=1e-12)
        assert r["U"] == pytest.approx(float(res.U[0]), rel=1e-12)
        assert r["value"] == pytest.approx(r["raw"] + 0.8, abs=1e-9)
    # Due soon was announced at start; nothing expired.
    assert [e["type"] for e in cal_events(sub)] == ["calibration_due_soon"]
