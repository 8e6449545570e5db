"""Simulators → gateway → real mosquitto: the payloads, statuses and events the registry implies."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from labconfig import http_get, judging_registry, lab_gateway
from servers import Mosquitto

from calibration import Registry

pytestmark = pytest.mark.e2e

RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

FIELDS = {
    "ts", "seq", "equipment", "channel", "raw", "value", "unit", "u", "U", "k",
    "quality", "flags", "calibration", "certificate", "conformity",
}  # fmt: skip


async def wait(pred: object, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():  # type: ignore[operator]
        if loop.time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.05)


async def test_measurements_statuses_and_events_arrive_as_the_registry_implies(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    root = judging_registry(tmp_path)  # BAL-02 judged although its chain is broken
    registry = Registry.load(root)
    async with lab_gateway(tmp_path, mosquitto, seed=3, registry=root) as (lab, sub):
        await wait(lambda: len(sub.json("/reading")) >= 40)
        # A sample container too heavy for BAL-02's process limits (210 g): out of tolerance.
        lab.sbi.place(15.0)
        await wait(lambda: any(e.get("type") == "out_of_tolerance" for e in sub.json("/event")))
        lab.sbi.remove(15.0)
        await wait(lambda: any(e.get("type") == "back_in_tolerance" for e in sub.json("/event")))
        await lab.balance.stop()  # BAL-01 unplugged
        await wait(lambda: any(e.get("type") == "equipment_offline" for e in sub.json("/event")))
    readings = sub.json("/reading")
    now = datetime.now(UTC)
    seqs = [r["seq"] for r in readings]
    assert len(set(seqs)) == len(seqs), "seq is unique"
    for r in readings:
        assert set(r) == FIELDS
        assert r["ts"].endswith("Z")
        if r["quality"] == "bad":
            continue
        corrector = registry.corrector(r["equipment"], r["channel"], now)
        expected = corrector.correct(np.array([r["raw"]]))
        assert r["value"] == pytest.approx(float(expected.value[0]), rel=1e-12)
        assert r["U"] == pytest.approx(float(expected.U[0]), rel=1e-12)
        assert r["certificate"] == corrector.certificate
    by_eq = {r["equipment"]: r for r in readings}
    assert set(by_eq) == {"BAL-01", "BAL-02", "PC-01", "PT-101", "PT-102"}
    assert by_eq["BAL-02"]["calibration"] == registry.state("BAL-02", now).status
    # Retained statuses: one per equipment and the gateway's own, offline after a clean stop.
    status_topics = {t for t in sub.topics() if t.endswith("/status")}
    assert "calgate/lab-t/gateway/edge-test/status" in status_topics
    assert {f"calgate/lab-t/{eq}/status" for eq in by_eq} <= status_topics
    gw_status = sub.json("gateway/edge-test/status")
    assert gw_status[-1]["state"] == "offline"
    bal01 = sub.json("BAL-01/status")
    assert bal01[-1]["connection"] == "offline"
    events = sub.json("/event")
    types = [e["type"] for e in events]
    assert types.count("out_of_tolerance") == 1  # a transition, not every reading
    ev = next(e for e in events if e["type"] == "out_of_tolerance")
    assert ev["equipment"] == "BAL-02"
    assert ev["channel"] == "weight"
    assert ev["value"] > 210.0
    # The broken chain of the example registry is announced once, at start.
    broken = [e for e in events if e["type"] == "traceability_broken"]
    assert {e["equipment"] for e in broken} == {
        eq for eq in by_eq if registry.state(eq, now).status == "untraceable"
    }


async def test_transmitters_that_go_away_and_come_back_are_polled_again(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Modbus TCP polls run from timer callbacks; a lost connection hands back to the
    supervisor's task (offline, backoff, reconnect), then polling from callbacks resumes."""
    async with lab_gateway(tmp_path, mosquitto, seed=5) as (lab, sub):

        def pt101() -> list[dict[str, object]]:
            return [r for r in sub.json("/reading") if r["equipment"] == "PT-101"]

        def events(kind: str, eq: str) -> list[dict[str, object]]:
            return [e for e in sub.json("/event") if e["type"] == kind and e["equipment"] == eq]

        await wait(lambda: len(pt101()) >= 10)
        await lab.transmitters.stop()
        await wait(lambda: len(events("equipment_offline", "PT-101")) == 1)
        before = len(pt101())
        await asyncio.sleep(0.5)
        assert len(pt101()) == before  # nothing invented while it is away
        await lab.transmitters.start()
        await wait(lambda: len(events("equipment_online", "PT-101")) == 1)
        await wait(lambda: len(pt101()) >= before + 10)
    again = pt101()[before:]
    assert all(r["quality"] == "good" for r in again)
    seqs = [r["seq"] for r in sub.json("/reading")]
    assert len(set(seqs)) == len(seqs)
    assert len(events("equipment_offline", "PT-101")) == 1  # once per transition


async def test_status_shows_what_mqtt_carried_in_one_shape(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """/status's last reading of a channel is the MQTT payload with its seq (it said
    null), and every time the gateway writes is RFC 3339 with Z (some said +00:00)."""
    listen = f"127.0.0.1:{free_port()}"
    async with lab_gateway(tmp_path, mosquitto, seed=7, http=listen) as (_, sub):
        await wait(lambda: {r["equipment"] for r in sub.json("/reading")} >= {"BAL-01", "PT-101"})
        _, body = await asyncio.to_thread(http_get, f"http://{listen}/status")
        status = json.loads(body)
        lasts = [
            ch["last"]
            for eq in status["equipment"].values()
            for ch in eq["channels"].values()
            if ch["last"] is not None
        ]
        assert lasts
        for last in lasts:
            assert isinstance(last["seq"], int)
            await wait(lambda last=last: last["seq"] in {r["seq"] for r in sub.json("/reading")})
            published = {r["seq"]: r for r in sub.json("/reading")}
            assert published[last["seq"]] == last
        await wait(lambda: bool(sub.json("/status")))
    stamps = [s[k] for s in sub.json("/status") for k in ("ts", "started") if k in s]
    stamps += [r["ts"] for r in sub.json("/reading")]
    assert stamps
    assert all(RFC3339_Z.fullmatch(t) for t in stamps), [t for t in stamps if "+" in t][:3]


async def test_the_console_lists_the_events_of_the_start(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The registry the gateway applied at start (registry_loaded, emitted before the first
    poll) is among the console's recent events, as it is on MQTT (it was missing: the
    console began listening after it)."""
    listen = f"127.0.0.1:{free_port()}"
    async with lab_gateway(tmp_path, mosquitto, seed=7, http=listen) as (_, sub):
        await wait(lambda: any(e["type"] == "registry_loaded" for e in sub.json("/event")))
        _, body = await asyncio.to_thread(http_get, f"http://{listen}/api/events")
        rows = json.loads(body)["events"]
        assert [e for e in rows if e["type"] == "registry_loaded"], rows
