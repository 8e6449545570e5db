"""``calgate demo`` as a user runs it: every simulated instrument shows a corrected reading."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

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
    rows = last_table(out)
    assert set(rows) == set(INSTRUMENTS), out
    for line in rows.values():
        assert re.search(r"\d+\.\d+ ± \d+\.?\d* \(k=2\)", line), line  # value ± U (k)
        assert "online" in line, line
    assert "untraceable" in rows["BAL-02"]  # the example registry's broken chain
    assert "due_soon" in rows["PT-102"]  # and its certificate due soon
    assert "traceability_broken" in out
    assert out.rstrip().endswith("calgate demo: stopped")
