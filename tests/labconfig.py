"""Write a ``calgate.toml`` for a running :class:`simulators.lab.Lab` (tests), and run the
gateway on it."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from mqttsub import Subscriber
from servers import Mosquitto

from gateway.demo import example_registry, lab_toml
from gateway.service import Gateway, load_everything
from simulators.lab import Lab

EXAMPLE_REGISTRY = example_registry()


def judging_registry(directory: Path) -> Path:
    """A copy of the example registry in which BAL-02 (its chain is broken) is judged
    against its process limits all the same (``judge_untraceable``: the lab's choice),
    for the tests that push it out of tolerance and back."""
    root = directory / "registry"
    shutil.copytree(EXAMPLE_REGISTRY, root)
    path = root / "equipment" / "BAL-02.toml"
    path.write_text(path.read_text() + "judge_untraceable = true\n")
    return root


def lab_config(
    lab: Any,
    directory: Path,
    *,
    mqtt_url: str | None = None,
    http: str | None = None,
    interval_s: float = 0.2,
    only: Iterable[str] | None = None,
    registry: Path = EXAMPLE_REGISTRY,
) -> Path:
    """``directory/calgate.toml`` for the lab, site ``lab-t``, gateway ``edge-test``,
    fast backoff so tests see recoveries quickly."""
    path = directory / "calgate.toml"
    path.write_text(
        lab_toml(
            lab.endpoints(),
            registry=registry,
            state_dir=directory / "state",
            mqtt_url=mqtt_url,
            http=http,
            interval_s=interval_s,
            site="lab-t",
            gateway_id="edge-test",
            only=only,
            gateway_extra={"status_interval_s": 1.0, "backoff_min_s": 0.05, "backoff_max_s": 0.5},
        )
    )
    return path


@contextlib.asynccontextmanager
async def lab_gateway(
    tmp_path: Path,
    mosquitto: Mosquitto,
    seed: int,
    *,
    opcua: bool = False,
    registry: Path = EXAMPLE_REGISTRY,
) -> AsyncIterator[tuple[Lab, Subscriber]]:
    """The simulated lab, a subscriber to everything the gateway publishes, and the
    gateway polling the lab at 10 Hz (stopped on the way out; the subscriber keeps what
    it received). ``opcua``: the testing machine too."""
    async with Lab(fixed_ports=False, opcua=opcua, seed=seed) as lab:
        path = lab_config(lab, tmp_path, mqtt_url=mosquitto.url, interval_s=0.1, registry=registry)
        config, reg = load_everything(path)
        with Subscriber(mosquitto.port, "calgate/lab-t/#") as sub:
            gw = Gateway(config, reg)
            await gw.start()
            try:
                yield lab, sub
            finally:
                await gw.stop()
