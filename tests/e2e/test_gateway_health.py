"""What the gateway says about itself must be true: an instrument that never gives a
reading is not "online", its up series is 0 from the start, and what it retained on
MQTT does not outlive the gateway's stop or the equipment's removal."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import free_port, wait_for_async
from labconfig import EXAMPLE_REGISTRY, http_get
from mqttsub import Subscriber
from servers import Mosquitto

from gateway.service import Gateway, load_everything
from simulators.modbus_transmitter import ModbusTransmitterSim

pytestmark = pytest.mark.e2e


def transmitter(eq_id: str, port: int, address: int) -> str:
    return (
        f'[[equipment]]\nid = "{eq_id}"\ndriver = "modbus"\nurl = "tcp://127.0.0.1:{port}"\n'
        "unit = 1\ninterval_s = 0.1\ntimeout_s = 0.5\n"
        f'[[equipment.channels]]\nname = "pressure"\nregister = "input"\naddress = {address}\n'
        'type = "float32"\nunit = "mbar"\n'
    )


def config(
    tmp_path: Path, site: str, mqtt: str, http: str, *equipment: str, extra_http: str = ""
) -> Path:
    path = tmp_path / "calgate.toml"
    path.write_text(
        f'[gateway]\nid = "edge-health"\nsite = "{site}"\nregistry = "{EXAMPLE_REGISTRY}"\n'
        f'state_dir = "{tmp_path / "state"}"\nstatus_interval_s = 1.0\n'
        f'[mqtt]\nurl = "{mqtt}"\nbackoff_max_s = 0.5\n[http]\nlisten = "{http}"\n'
        + extra_http
        + "".join(equipment)
    )
    return path


@pytest.fixture
async def sim() -> AsyncIterator[ModbusTransmitterSim]:
    async with ModbusTransmitterSim(units=(1,), seed=3) as server:
        yield server


def retained(sub: Subscriber, eq_id: str) -> list[dict[str, object]]:
    return sub.json(f"/{eq_id}/status")


async def test_an_instrument_that_answers_only_with_exceptions_is_not_online(
    tmp_path: Path, mosquitto: Mosquitto, sim: ModbusTransmitterSim, unique_name: str
) -> None:
    """PT-102 is read at address 20, which the transmitter does not have (exception 2 on
    every poll); PT-101 at 0 reads fine."""
    site = f"h-{unique_name[-8:]}"
    listen = f"127.0.0.1:{free_port()}"
    path = config(
        tmp_path, site, mosquitto.url, listen,
        transmitter("PT-101", sim.port, 0), transmitter("PT-102", sim.port, 20),
    )  # fmt: skip
    cfg, reg = load_everything(path)
    with Subscriber(mosquitto.port, f"calgate/{site}/#") as sub:
        gw = Gateway(cfg, reg)
        await gw.start()
        try:
            # before any poll: both series exist, at 0
            assert gw.metrics.equipment_up.value("PT-102") == 0.0
            assert 'calgate_equipment_up{equipment="PT-102"} 0' in gw.metrics.render()
            await wait_for_async(
                lambda: (
                    gw.metrics.poll_errors.value("PT-102", "device") >= 5
                    and gw.metrics.equipment_up.value("PT-101") == 1.0
                ),
                timeout_s=20,
                what="PT-102 failing, PT-101 reading",
            )
            _, body = await asyncio.to_thread(http_get, f"http://{listen}/status")
            status = json.loads(body)["equipment"]
            assert status["PT-101"]["connection"] == "online"
            assert status["PT-102"]["connection"] != "online"
            assert "exception" in (status["PT-102"]["last_error"] or "").lower()
            _, text = await asyncio.to_thread(http_get, f"http://{listen}/metrics")
            assert 'calgate_equipment_up{equipment="PT-102"} 0' in text
            assert 'calgate_equipment_up{equipment="PT-101"} 1' in text
            await wait_for_async(lambda: bool(retained(sub, "PT-101")), what="PT-101 status")
            assert all(s["connection"] != "online" for s in retained(sub, "PT-102"))
            types = [e["type"] for e in sub.json("/PT-102/event")]
            assert types.count("device_error") == 1
        finally:
            await gw.stop()


async def test_retained_statuses_go_offline_on_stop_and_removed_equipment_is_cleared(
    tmp_path: Path, mosquitto: Mosquitto, sim: ModbusTransmitterSim, unique_name: str
) -> None:
    """A clean stop leaves every equipment's retained status offline (it said online);
    PT-102 taken out of the config loses its retained status at the next start (it
    stayed for ever)."""
    site = f"r-{unique_name[-8:]}"
    both = (transmitter("PT-101", sim.port, 0), transmitter("PT-102", sim.port, 0))
    for equipment in (both, both[:1]):
        path = config(tmp_path, site, mosquitto.url, f"127.0.0.1:{free_port()}", *equipment)
        cfg, reg = load_everything(path)
        gw = Gateway(cfg, reg)
        await gw.start()
        try:
            await wait_for_async(
                lambda gw=gw: gw.metrics.equipment_up.value("PT-101") == 1.0,
                what="PT-101 read",
            )
        finally:
            await gw.stop()
        # what a dashboard that connects now is told (retained messages only)
        with Subscriber(mosquitto.port, f"calgate/{site}/#") as late:
            await asyncio.to_thread(late.barrier, f"calgate/{site}/test/barrier")
            statuses = {
                t.split("/")[2]: json.loads(p)
                for t, p, _ in late.messages
                if p and t.endswith("/status")
            }
        assert statuses["PT-101"]["connection"] == "offline"
        assert statuses["PT-101"]["last_error"] == "gateway stopped"
        assert statuses["PT-101"]["gateway"] == "edge-health"
        if equipment == both:
            assert statuses["PT-102"]["connection"] == "offline"
        else:
            assert "PT-102" not in statuses, statuses
        assert statuses["gateway"]["state"] == "offline"


async def test_healthz_and_status_reflect_sinks_and_instruments(
    tmp_path: Path, sim: ModbusTransmitterSim
) -> None:
    """MQTT refused and half the instruments failing: /healthz is 503 naming both (it said
    ok); /status shows the sink's connectivity, uptime, version and the recent events."""
    listen = f"127.0.0.1:{free_port()}"
    refused = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    path = config(
        tmp_path, "h", refused, listen,
        transmitter("PT-101", sim.port, 0), transmitter("PT-102", sim.port, 20),
        extra_http="health_max_sink_lag_s = 0.5\nhealth_max_down_fraction = 0.5\n",
    )  # fmt: skip
    cfg, reg = load_everything(path)
    gw = Gateway(cfg, reg)
    await gw.start()
    try:

        async def health() -> tuple[int, dict[str, object]]:
            code, body = await asyncio.to_thread(http_get, f"http://{listen}/healthz")
            return code, json.loads(body)

        async def both_reported() -> bool:
            code, body = await health()
            reasons = " | ".join(map(str, body.get("reasons", [])))  # type: ignore[call-overload]
            return code == 503 and "sink mqtt: not connected" in reasons and "PT-102" in reasons

        await wait_for_async(both_reported, timeout_s=20, what="an unhealthy /healthz")
        _, body = await health()
        reasons = body["reasons"]
        assert "1 of 2 equipment give no readings: PT-102" in " | ".join(map(str, reasons))  # type: ignore[call-overload]
        _, text = await asyncio.to_thread(http_get, f"http://{listen}/status")
        status = json.loads(text)
        g = status["gateway"]
        assert g["version"] == importlib.metadata.version("calgate")
        assert g["uptime_s"] > 0
        assert g["started"].endswith("Z")
        assert g["healthy"] is False
        mqtt = status["sinks"]["mqtt"]
        assert mqtt["connected"] is False
        assert mqtt["down_s"] > 0.5
        assert "refused" in (mqtt["last_error"] or "").lower()
        assert any(
            e["type"] == "device_error" and e["equipment"] == "PT-102" for e in status["events"]
        )
    finally:
        await gw.stop()
