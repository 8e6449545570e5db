"""Simulators → gateway → InfluxDB: v1 on influxd, the v2 API on victoria-metrics.

The same rows reach MQTT and the database: for every seq the tags (site, equipment,
channel, quantity, unit), the fields and the time (the acquisition time, the MQTT
``ts``) agree, and the values and uncertainties are what the registry's correction gives.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for_async
from labconfig import committed_seq, every_seq_arrives, judging_registry
from mqttsub import Subscriber
from rude_http import RudePeer
from servers import InfluxV1, Mosquitto, VictoriaMetrics

from calibration import Registry
from gateway.demo import example_registry, lab_toml
from gateway.service import Gateway, load_everything
from simulators.lab import Lab

pytestmark = pytest.mark.e2e

EQUIPMENT = {"BAL-01", "BAL-02", "PC-01", "PT-101", "PT-102"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_BASE = {"ts", "seq", "type", "severity", "equipment", "channel", "message"}


def ns(ts: str) -> int:
    """An RFC 3339 ``ts`` of a payload as Unix nanoseconds (exact, no float)."""
    t = datetime.fromisoformat(ts)
    return (t - EPOCH) // timedelta(microseconds=1) * 1000


@dataclass
class Run:
    site: str
    readings: dict[int, dict[str, Any]]  # seq -> MQTT payload
    events: dict[int, dict[str, Any]]
    registry: Registry
    at: datetime


async def run_lab(
    tmp_path: Path, mosquitto: Mosquitto, site: str, influx: Mapping[str, str]
) -> Run:
    """Poll the lab (no OPC UA) through a gateway publishing to MQTT and InfluxDB;
    push BAL-02 out of its process limits and back, so events flow too; stop cleanly
    (the sinks flush). Returns what arrived on MQTT."""
    root = judging_registry(tmp_path)  # BAL-02 judged although untraceable
    registry = Registry.load(root)
    async with Lab(fixed_ports=False, opcua=False, seed=11) as lab:
        path = tmp_path / "calgate.toml"
        path.write_text(
            lab_toml(
                lab.endpoints(),
                registry=root,
                state_dir=tmp_path / "state",
                mqtt_url=mosquitto.url,
                influx=influx,
                interval_s=0.1,
                site=site,
                gateway_id="edge-influx",
            )
        )
        config, reg = load_everything(path)
        with Subscriber(mosquitto.port, f"calgate/{site}/#") as sub:
            gw = Gateway(config, reg)
            await gw.start()
            try:

                def per_equipment() -> dict[str, int]:
                    out: dict[str, int] = {}
                    for r in sub.json("/reading"):
                        out[r["equipment"]] = out.get(r["equipment"], 0) + 1
                    return out

                await wait_for_async(
                    lambda: (
                        set(per_equipment()) == EQUIPMENT and min(per_equipment().values()) >= 5
                    ),
                    timeout_s=20,
                    what="readings of every equipment",
                )
                lab.sbi.place(15.0)  # 215 g on BAL-02: above its 210 g limit
                await wait_for_async(
                    lambda: any(e["type"] == "out_of_tolerance" for e in sub.json("/event")),
                    timeout_s=20,
                    what="out_of_tolerance",
                )
                lab.sbi.remove(15.0)
                await wait_for_async(
                    lambda: any(e["type"] == "back_in_tolerance" for e in sub.json("/event")),
                    timeout_s=20,
                    what="back_in_tolerance",
                )
            finally:
                await gw.stop()
                at = datetime.now(UTC)
            committed = gw.outbox.stats().committed if gw.outbox is not None else 0
            await wait_for_async(
                lambda: len(sub.json("/reading")) + len(sub.json("/event")) >= committed,
                timeout_s=10,
                what="every committed row on MQTT",
            )
    readings = {r["seq"]: r for r in sub.json("/reading")}
    events = {e["seq"]: e for e in sub.json("/event")}
    assert readings
    assert events
    return Run(site, readings, events, registry, at)


def check_against_registry(run: Run) -> None:
    """Each MQTT reading is the registry's correction of its raw value."""
    for r in run.readings.values():
        corrector = run.registry.corrector(r["equipment"], r["channel"], run.at)
        assert r["certificate"] == corrector.certificate
        if r["quality"] == "bad":
            continue
        res = corrector.correct(np.array([r["raw"]]))
        assert r["value"] == pytest.approx(float(res.value[0]), rel=1e-12)
        assert r["u"] == pytest.approx(float(res.u[0]), rel=1e-12)
        assert r["U"] == pytest.approx(float(res.U[0]), rel=1e-12)
        assert r["k"] == corrector.k
        assert r["conformity"] == corrector.judge(res.value, res.U)[0]
        state = run.registry.state(r["equipment"], run.at)
        assert r["calibration"] == state.status


def expected_tags(run: Run, r: Mapping[str, Any]) -> dict[str, str]:
    eq = run.registry.equipment(r["equipment"])
    assert eq is not None
    ch = next(c for c in eq.channels if c.name == r["channel"])
    return {
        "site": run.site,
        "equipment": r["equipment"],
        "channel": r["channel"],
        "quantity": ch.quantity,
        "unit": ch.unit,
    }


# --------------------------------------------------------------------------- v1, influxd


async def test_v1_influxd_gets_every_reading_and_event_as_published(
    tmp_path: Path, mosquitto: Mosquitto, influxd: InfluxV1, unique_name: str
) -> None:
    db = unique_name
    influxd.create_database(db)
    site = f"lab-v1-{unique_name[-8:]}"
    influx = {"api": "v1", "url": influxd.url, "database": db, "flush_interval_s": "0.1"}
    run = await run_lab(tmp_path, mosquitto, site, influx)
    check_against_registry(run)

    # Every reading once, with its tags and fields; time = the acquisition time (MQTT ts).
    rows = influxd.rows("SELECT * FROM reading GROUP BY *", db)
    by_seq = {int(row["seq"]): row for row in rows}  # type: ignore[call-overload]
    assert len(by_seq) == len(rows), "one row per seq"
    assert set(by_seq) == set(run.readings)
    for seq, r in run.readings.items():
        row = by_seq[seq]
        tags = {k: row[k] for k in ("site", "equipment", "channel", "quantity", "unit")}
        assert tags == expected_tags(run, r)
        assert row["time"] == ns(r["ts"])
        for field in ("raw", "value", "u", "U", "k"):
            assert row[field] == r[field], (field, row, r)
        for field in ("quality", "calibration", "certificate", "conformity"):
            assert row[field] == r[field], (field, row, r)
    assert {str(row["equipment"]) for row in rows} == EQUIPMENT

    # Events: measurement `event`, tags site/equipment/type/severity, detail as JSON.
    erows = influxd.rows("SELECT * FROM event GROUP BY *", db)
    ev_by_seq = {int(row["seq"]): row for row in erows}  # type: ignore[call-overload]
    assert set(ev_by_seq) == set(run.events)
    for seq, e in run.events.items():
        row = ev_by_seq[seq]
        assert row["site"] == run.site
        for key in ("equipment", "type", "severity", "channel", "message"):
            assert row[key] == e[key], (key, row, e)
        assert row["time"] == ns(e["ts"])
        detail = json.loads(str(row["detail"]))
        assert detail == {k: v for k, v in e.items() if k not in EVENT_BASE}
    types = [str(row["type"]) for row in erows]
    assert types.count("out_of_tolerance") == 1
    assert types.count("back_in_tolerance") == 1
    oot = next(row for row in erows if row["type"] == "out_of_tolerance")
    assert (oot["equipment"], oot["channel"]) == ("BAL-02", "weight")
    assert json.loads(str(oot["detail"]))["value"] > 210.0
    # BAL-02's chain is broken in the example registry: announced once, at start.
    assert types.count("traceability_broken") == 1


# --------------------------------------------------------------------------- v2, victoria


def series_by_labels(series: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], Any]:
    out = {}
    for s in series:
        labels = tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__"))
        out[labels] = dict(zip(s["timestamps"], s["values"], strict=True))
    return out


async def test_v2_api_on_victoria_metrics_gets_every_numeric_field(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics, unique_name: str
) -> None:
    site = f"lab-v2-{unique_name[-8:]}"
    influx = {
        "api": "v2",
        "url": victoria.url,
        "org": "lab",
        "bucket": unique_name,
        "flush_interval_s": "0.1",
    }
    run = await run_lab(tmp_path, mosquitto, site, influx)
    check_against_registry(run)
    n = len(run.readings)

    def total(series: list[dict[str, Any]]) -> int:
        return sum(len(s["values"]) for s in series)

    # victoria-metrics names a numeric field `<measurement>_<field>`; time in ms.
    seq_series = victoria.export_until(f'reading_seq{{site="{site}"}}', lambda s: total(s) >= n)
    assert total(seq_series) == n
    stored = {f: series_by_labels(victoria.export(f'reading_{f}{{site="{site}"}}')) for f in
              ("raw", "value", "u", "U", "k")}  # fmt: skip
    seqs = series_by_labels(seq_series)
    seen: set[int] = set()
    for labels, points in seqs.items():
        tags = dict(labels)
        for ts_ms, seq_f in points.items():
            seq = int(seq_f)
            seen.add(seq)
            r = run.readings[seq]
            assert tags == expected_tags(run, r)
            assert ts_ms == ns(r["ts"]) // 1_000_000
            for field in ("raw", "value", "u", "U", "k"):
                # victoria-metrics keeps 12 significant digits (lossy float compression)
                got = stored[field][labels][ts_ms]
                assert got == pytest.approx(r[field], rel=1e-11, abs=0), (field, r)
    assert seen == set(run.readings)
    # A string field (quality, calibration, certificate, conformity) becomes a series of
    # zeros there: the point is kept, its text is not (read those from influxd or MQTT).
    for field in ("quality", "calibration", "certificate"):
        series = victoria.export(f'reading_{field}{{site="{site}"}}')
        assert total(series) == n
        assert {v for s in series for v in s["values"]} == {0}

    # Events: `event_seq`, labelled by site, equipment, type and severity.
    ev = victoria.export_until(f'event_seq{{site="{site}"}}', lambda s: total(s) >= len(run.events))
    got = {}
    for labels, points in series_by_labels(ev).items():
        for ts_ms, seq_f in points.items():
            got[int(seq_f)] = (dict(labels), ts_ms)
    assert set(got) == set(run.events)
    for seq, e in run.events.items():
        tags, ts_ms = got[seq]
        assert tags == {
            "site": site, "equipment": e["equipment"], "type": e["type"], "severity": e["severity"],
        }  # fmt: skip
        assert ts_ms == ns(e["ts"]) // 1_000_000


async def test_an_influxdb_that_misbehaves_holds_back_neither_mqtt_nor_polling(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The database answers late, resets mid-body, answers 500 and resets mid-reply, 16
    times in a row: MQTT gets every seq meanwhile, the instruments keep being read, and
    when the database behaves every row reaches it (at least once)."""
    script = ["slow", "reset_body", "500", "reset_reply"] * 4
    async with (
        RudePeer(script, slow_s=0.5) as peer,
        Lab(fixed_ports=False, opcua=False, seed=12) as lab,
    ):
        path = tmp_path / "calgate.toml"
        text = lab_toml(
            lab.endpoints(),
            registry=example_registry(),
            state_dir=tmp_path / "state",
            mqtt_url=mosquitto.url,
            interval_s=0.05,
            site="rude-x",
            gateway_id="edge-r",
            influx={"api": "v1", "url": peer.url, "database": "calgate"},
            only={"PT-101", "PT-102", "PC-01"},
        )
        tuning = (
            "flush_interval_s = 0.1\ntimeout_s = 0.3\nbackoff_min_s = 0.05\nbackoff_max_s = 0.2\n"
        )
        path.write_text(text.replace('database = "calgate"\n', f'database = "calgate"\n{tuning}'))
        config, reg = load_everything(path)
        with Subscriber(mosquitto.port, "calgate/rude-x/#") as sub:
            gw = Gateway(config, reg)
            await gw.start()
            try:
                await wait_for_async(lambda: not peer.script, timeout_s=60, what="16 bad answers")
                during = Counter(m["equipment"] for m in sub.json("/reading"))
                assert gw.influx is not None
                assert gw.influx.failures >= len(script)
                outbox = gw.outbox
                assert outbox is not None
                target = outbox.committed_seq
                await wait_for_async(
                    lambda: outbox.cursor("influx") >= target,
                    timeout_s=30,
                    what="the database catching up",
                )
            finally:
                await gw.stop()
            last = committed_seq(tmp_path / "state")
            assert await every_seq_arrives(sub, last)
    assert set(during) == {"PT-101", "PT-102", "PC-01"}
    assert min(during.values()) >= 10  # read all along, while the database misbehaved
    assert not [m for m in sub.json("/event") if m["type"] == "equipment_offline"]
    assert set(peer.written) == set(range(1, last + 1))
