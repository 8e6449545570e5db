"""A channel without a certificate in force does not stop the service (issue 10, point 3).

PT-101's certificate file is removed from a copy of the example registry: ``calgate
check-config`` lists the channel as a warning and exits 0, ``calgate run`` starts and
publishes PT-101 as read (calibration ``none``, quality ``uncertain``, flag
``uncalibrated``, the raw value, no uncertainty, no decision against its limits), its
retained status and ``/status`` say ``none``, and one ``calibration_missing`` event says
so; the other instruments are corrected as before. ``--strict`` and
``[gateway] require_calibration = true`` refuse to start, as the gateway did before.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import pytest
from helpers import free_port, wait_for_async
from labconfig import EXAMPLE_REGISTRY, calgate, calgate_run, http_get, lab_config
from mqttsub import Subscriber
from servers import Mosquitto

from simulators.lab import Lab

pytestmark = pytest.mark.e2e

ONLY = {"PT-101", "PT-102"}


def registry_without_pt101_certificate(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    shutil.copytree(EXAMPLE_REGISTRY, root)
    (root / "certificates" / "PCL-2026-0906.toml").unlink()  # PT-101's only certificate
    return root


async def command(*args: str) -> tuple[int, str]:
    """``calgate ARGS…`` as a child process: its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *calgate(), *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_channel_without_a_certificate_is_published_as_none_and_the_rest_runs(
    tmp_path: Path, own_mosquitto: Mosquitto
) -> None:
    mosquitto = own_mosquitto  # no retained status of another test's PT-101
    registry = registry_without_pt101_certificate(tmp_path)
    port = free_port()
    log = tmp_path / "gateway.log"
    async with Lab(fixed_ports=False, opcua=False, seed=21) as lab:
        config = lab_config(
            lab, tmp_path, mqtt_url=mosquitto.url, http=f"127.0.0.1:{port}", only=ONLY,
            registry=registry, interval_s=0.1,
        )  # fmt: skip
        code, err = await command("check-config", "-c", str(config))
        assert code == 0, err
        assert err.splitlines() == [
            f"warning: {config}: equipment[0] (PT-101).channels[0].name: channel 'pressure' "
            'of PT-101 has no certificate in force: published with calibration "none" '
            "(quality uncertain); calibrate it, or list it in `uncalibrated` if it is never "
            "calibrated"
        ]
        with Subscriber(mosquitto.port, "calgate/lab-t/#") as sub:
            async with calgate_run(config, log) as gw:

                def pt(name: str) -> list[dict[str, object]]:
                    return [m for m in sub.json(name) if m.get("equipment") == "PT-101"]

                await wait_for_async(
                    lambda: (
                        len(pt("/reading")) >= 5 and len(sub.json("PT-102/pressure/reading")) >= 5
                    ),
                    timeout_s=30,
                    what="readings of both transmitters",
                )
                status_code, body = http_get(f"http://127.0.0.1:{port}/status")
                gw.send_signal(signal.SIGTERM)
                assert await gw.wait() == 0, log.read_text()[-3000:]
    assert status_code == 200
    assert '"calibration": "none"' in body or '"calibration":"none"' in body
    for m in pt("/reading"):
        assert m["calibration"] == "none"
        assert m["quality"] == "uncertain"
        assert "uncalibrated" in m["flags"]  # type: ignore[operator]
        assert m["value"] == m["raw"]
        assert (m["u"], m["U"], m["k"], m["certificate"]) == (None, None, None, None)
        assert m["conformity"] == "indeterminate"  # PT-101 has limits: no decision on it
    # the neighbour is corrected as before
    for m in sub.json("PT-102/pressure/reading"):
        assert m["calibration"] in ("valid", "due_soon")
        assert m["U"] is not None
        assert "uncalibrated" not in m["flags"]
    (status,) = {m["calibration"] for m in pt("/status")}
    assert status == "none"
    missing = [m for m in sub.json("/event") if m["type"] == "calibration_missing"]
    assert [m["equipment"] for m in missing] == ["PT-101"]  # once
    assert missing[0]["severity"] == "warning"


async def test_strict_and_require_calibration_refuse_to_start(tmp_path: Path) -> None:
    registry = registry_without_pt101_certificate(tmp_path)
    async with Lab(fixed_ports=False, opcua=False, seed=22) as lab:
        config = lab_config(lab, tmp_path, only=ONLY, registry=registry)
        refusal = (
            f"{config}: equipment[0] (PT-101).channels[0].name: channel 'pressure' of PT-101 "
            "has no certificate in force (calibration required); calibrate it"
        )
        for cmd in ("run", "check-config"):
            code, err = await command(cmd, "--strict", "-c", str(config))
            assert code == 78, cmd
            assert err.splitlines() == [refusal, "1 error(s)"], cmd
        text = config.read_text()
        config.write_text(text.replace("[gateway]\n", "[gateway]\nrequire_calibration = true\n", 1))
        code, err = await command("check-config", "-c", str(config))
        assert code == 78
        assert refusal in err.splitlines()
        # a channel that is never calibrated, listed: no warning, no refusal, even strict
        config.write_text(
            text.replace('id = "PT-101"\n', 'id = "PT-101"\nuncalibrated = ["pressure"]\n', 1)
        )
        for strict in ((), ("--strict",)):
            code, err = await command("check-config", *strict, "-c", str(config))
            assert (code, err) == (0, ""), strict
