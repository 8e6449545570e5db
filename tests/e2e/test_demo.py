"""``calgate demo`` as a user runs it: every simulated instrument shows a corrected reading."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require_binary, wait_for
from labconfig import judging_registry

pytestmark = pytest.mark.e2e

INSTRUMENTS = ("BAL-01", "BAL-02", "PC-01", "PT-101", "PT-102", "UTM-01")


async def run_demo(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--duration", "6", "--refresh", "2", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode()


def last_table(out: str) -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in INSTRUMENTS:
            rows[parts[0]] = line  # the last refresh wins
    return rows


@pytest.mark.parametrize(
    ("args", "broker", "store"),
    [
        ((), "mosquitto", "InfluxDB (influxd)"),
        (("--embedded-broker", "--no-influxd"), "embedded broker", "local SQLite history"),
    ],
)
async def test_demo_shows_every_instrument_corrected_with_its_status(
    args: tuple[str, ...], broker: str, store: str
) -> None:
    code, out = await run_demo(*args)
    assert code == 0, out
    assert f"MQTT ({broker})" in out
    assert f"store:   {store}" in out
    assert out.splitlines()[0].startswith("lab console:  http://127.0.0.1:")
    assert out.count("lab console:") == 1, out  # first, and once
    rows = last_table(out)
    assert set(rows) == set(INSTRUMENTS), out
    # piped: plain lines no wider than 80 columns, the column header once (k in it)
    heads = [x for x in out.splitlines() if x.startswith("equipment ")]
    assert len(heads) == 1, out
    assert "value ± U (k=2)" in heads[0]
    for line in [*heads, *rows.values()]:
        assert len(line) <= 80, line
    for line in rows.values():
        assert re.search(r"\d+\.\d+ ± \d+\.?\d* (g|mbar|kN) ", line), line  # value ± U
        assert "online" in line, line
    assert "untraceable" in rows["BAL-02"]  # the example registry's broken chain
    assert "due_soon" in rows["PT-102"]  # and its certificate due soon
    assert "traceability_broken" in out
    # an event line is a log line, kept whole: the broken chain's reason to its end
    (broken,) = [x for x in out.splitlines() if "traceability_broken" in x]
    assert broken.endswith("(in force 2023-02-20 to 2026-02-28)"), broken
    assert out.rstrip().endswith("calgate demo: stopped")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has stopped


def test_sighup_stops_the_demo_with_its_servers_and_temporary_folder() -> None:
    """The terminal or SSH session closed (SIGHUP): mosquitto, influxd and the demo's
    temporary folder go as on Ctrl-C, instead of staying behind."""
    require_binary("mosquitto", "/usr/sbin/mosquitto")
    require_binary("influxd")
    children: list[int] = []
    config: Path | None = None
    with subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--refresh", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip().startswith("config:"):
                    config = Path(line.split()[1])
                    break
            assert config is not None
            assert config.is_file()
            children = _children(proc.pid)
            names = {Path(f"/proc/{c}/exe").resolve().name for c in children}
            assert {"mosquitto", "influxd"} <= names, names
            proc.send_signal(signal.SIGHUP)
            rest = proc.stdout.read()
            assert proc.wait(60) == 0, rest
            assert rest.rstrip().endswith("calgate demo: stopped")
            wait_for(lambda: all(_gone(c) for c in children), timeout_s=10, what="servers gone")
            assert not config.parent.exists(), "the temporary folder stays behind"
        finally:  # what the old code left behind, so the next run starts clean
            for pid in [proc.pid, *children]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if config is not None:
                shutil.rmtree(config.parent, ignore_errors=True)


async def test_demo_runs_on_the_registry_it_is_given(tmp_path: Path) -> None:
    """--registry DIR: the demo corrects through that registry, not the example lab's
    (a checkout's edited copy, or a lab's own): here BAL-02 is judged although its chain
    is broken (judge_untraceable), which the example registry does not do."""
    root = judging_registry(tmp_path)
    code, out = await run_demo("--embedded-broker", "--no-influxd", "--registry", str(root))
    assert code == 0, out
    assert f"registry {root}" in out
    assert "pass" in last_table(out)["BAL-02"].split()
    code, out = await run_demo("--registry", str(tmp_path / "nowhere"))
    assert code == 64
    assert "--registry: " in out
