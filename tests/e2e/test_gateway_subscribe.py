"""An OPC UA channel in ``subscribe`` mode: data changes flow through the gateway, corrected."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

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


async def test_subscribed_force_readings_are_corrected_and_published(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with Lab(fixed_ports=False, seed=11) as lab:
        text = lab_toml(
            lab.endpoints(), registry=example_registry(), state_dir=tmp_path / "state",
            mqtt_url=mosquitto.url, only={"UTM-01"}, interval_s=5.0, site="lab-s",
        ).replace('mode = "poll"', 'mode = "subscribe"')  # fmt: skip
        path = tmp_path / "calgate.toml"
        path.write_text(text)
        config, registry = load_everything(path)
        with Subscriber(mosquitto.port, "calgate/lab-s/UTM-01/#") as sub:
            gw = Gateway(config, registry)
            await gw.start()
            try:
                # Polling every 5 s would give one or two readings; data changes give many.
                await wait_for_async(lambda: len(sub.json("/force/reading")) >= 10, timeout_s=20)
                lab.machine.set_force(40.0)
                await wait_for_async(
                    lambda: any(abs(r["raw"] - 40.0) < 0.5 for r in sub.json("/force/reading")),
                    timeout_s=20,
                )
            finally:
                await gw.stop()
    reg = Registry.load(example_registry())
    corrector = reg.corrector("UTM-01", "force", datetime.now(UTC))
    readings = sub.json("/force/reading")
    assert len(readings) >= 10
    for r in readings:
        expected = corrector.correct(np.array([r["raw"]]))
        assert r["value"] == pytest.approx(float(expected.value[0]), rel=1e-12)
        assert r["U"] == pytest.approx(float(expected.U[0]), rel=1e-12)
        assert r["unit"] == "kN"
    stamps = [r["ts"] for r in readings]
    assert len(set(stamps)) == len(stamps), "each data change has its own source timestamp"
