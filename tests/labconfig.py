"""Write a ``calgate.toml`` for a running :class:`simulators.lab.Lab` (tests), and run the
gateway on it: in the test's process (:func:`lab_gateway`) or as ``calgate run`` in a
child process (:func:`calgate_run`), with what the end-to-end tests read of it
(:func:`committed_seq`, :func:`http_get`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from mqttsub import Subscriber
from servers import Mosquitto

from gateway.demo import example_registry, lab_toml
from gateway.outbox import committed_seq_in
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
    http: str | None = None,
) -> AsyncIterator[tuple[Lab, Subscriber]]:
    """The simulated lab, a subscriber to everything the gateway publishes, and the
    gateway polling the lab at 10 Hz (stopped on the way out; the subscriber keeps what
    it received). ``opcua``: the testing machine too; ``http``: the status server's
    listen address (none by default)."""
    async with Lab(fixed_ports=False, opcua=opcua, seed=seed) as lab:
        path = lab_config(
            lab, tmp_path, mqtt_url=mosquitto.url, interval_s=0.1, registry=registry, http=http
        )
        config, reg = load_everything(path)
        with Subscriber(mosquitto.port, "calgate/lab-t/#") as sub:
            gw = Gateway(config, reg)
            await gw.start()
            try:
                yield lab, sub
            finally:
                await gw.stop()


def calgate() -> list[str]:
    """The console script systemd runs (``calgate``), from this interpreter's environment."""
    script = Path(sys.executable).parent / "calgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


async def start_calgate_run(
    config: Path, log: Path, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``calgate run -c config`` as a child process, its output appended to ``log``."""
    with log.open("ab") as f:
        return await asyncio.create_subprocess_exec(
            *calgate(), "run", "-c", str(config), stdout=f, stderr=f,
            env=os.environ | dict(env or {}),
        )  # fmt: skip


@contextlib.asynccontextmanager
async def calgate_run(
    config: Path, log: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """:func:`start_calgate_run`, killed (SIGKILL) on the way out if still running."""
    proc = await start_calgate_run(config, log, env)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()


def committed_seq(state: Path) -> int:
    """The highest seq the outbox in ``state`` committed (rows may be deleted once
    delivered: the stored ``next_seq`` then says how far it got)."""
    return committed_seq_in(state / "outbox.sqlite")


async def every_seq_arrives(sub: Subscriber, last: int, *, timeout_s: float = 10.0) -> bool:
    """Wait until ``sub`` has every seq 1..``last``; whether it got them (the caller's
    assertion names the missing ones)."""
    from helpers import wait_for_async

    try:
        await wait_for_async(
            lambda: sub.seqs() >= set(range(1, last + 1)), timeout_s=timeout_s, what="every seq"
        )
    except TimeoutError:
        return False
    return True


def http_get(url: str) -> tuple[int, str]:
    """The status code and body of a GET (an error status is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
