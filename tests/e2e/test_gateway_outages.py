"""Outages: the broker and the database cut mid-run, the gateway killed with SIGKILL.

After recovery every sequence number arrives in InfluxDB exactly once and on MQTT at
least once: the outbox commits before sending, sinks resume at their cursors.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from helpers import free_port, wait_for_async
from labconfig import committed_seq, every_seq_arrives, http_get, start_calgate_run
from mqttsub import Subscriber
from servers import InfluxV1, Mosquitto

from gateway.demo import example_registry, lab_toml
from simulators.lab import Lab

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_influxd(tmp_path: Path) -> InfluxV1:
    server = InfluxV1(tmp_path)
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def outage_config(
    tmp_path: Path,
    lab: Lab,
    mosquitto: Mosquitto,
    influxd: InfluxV1,
    *,
    http: str | None = None,
    tail: str = "",
) -> Path:
    """calgate.toml for three transmitters at 20 Hz into both sinks (site lab-x), fast
    backoff; ``tail`` is appended (more tables). The broker is restarted with persistence,
    so the test's subscriber session and its queue live through the broker's outages."""
    influxd.create_database("calgate")
    mosquitto.persistence = True
    mosquitto.restart()
    config = tmp_path / "calgate.toml"
    text = lab_toml(
        lab.endpoints(),
        registry=example_registry(),
        state_dir=tmp_path / "state",
        mqtt_url=mosquitto.url,
        http=http,
        interval_s=0.05,
        site="lab-x",
        gateway_id="edge-x",
        influx={"api": "v1", "url": influxd.url, "database": "calgate", "flush_interval_s": "0.2"},
        only={"PT-101", "PT-102", "PC-01"},
        gateway_extra={"backoff_min_s": 0.05, "backoff_max_s": 0.3},
    )
    config.write_text(text.replace('flush_interval_s = "0.2"', "flush_interval_s = 0.2") + tail)
    return config


def influx_seqs(influxd: InfluxV1) -> list[int]:
    rows = influxd.rows("SELECT seq FROM reading", "calgate") + influxd.rows(
        "SELECT seq FROM event", "calgate"
    )
    return [int(r["seq"]) for r in rows]  # type: ignore[call-overload]


async def test_broker_and_database_outages_and_sigkill_lose_nothing_committed(
    tmp_path: Path, own_mosquitto: Mosquitto, own_influxd: InfluxV1
) -> None:
    state = tmp_path / "state"
    log = tmp_path / "gateway.log"
    async with Lab(fixed_ports=False, opcua=False, seed=5) as lab:
        config = outage_config(tmp_path, lab, own_mosquitto, own_influxd)
        with Subscriber(own_mosquitto.port, "calgate/lab-x/#", session="outage-test") as sub:
            gw = await start_calgate_run(config, log)
            try:
                n = lambda: len(sub.json("/reading"))  # noqa: E731
                await wait_for_async(lambda: n() > 30, timeout_s=30, what="first readings")
                # The broker goes away for a while, then comes back on the same port.
                own_mosquitto.stop()
                await asyncio.sleep(1.0)  # an outage of about a second, while polling goes on
                own_mosquitto.start()
                seen = n()
                await wait_for_async(
                    lambda: n() > seen + 30, timeout_s=30, what="readings after the broker's return"
                )
                # The database goes away, then comes back.
                own_influxd.stop()
                await asyncio.sleep(1.0)
                own_influxd.start()
                # The gateway is killed mid-stream, and started again.
                seen = n()
                await wait_for_async(lambda: n() > seen + 20, timeout_s=30, what="more readings")
                gw.send_signal(signal.SIGKILL)
                await gw.wait()
                gw = await start_calgate_run(config, log)
                seen = n()
                await wait_for_async(
                    lambda: n() > seen + 30, timeout_s=30, what="readings after the restart"
                )
            finally:
                if gw.returncode is None:
                    gw.send_signal(signal.SIGTERM)  # a clean stop flushes both sinks
                    await asyncio.wait_for(gw.wait(), 30)
            assert gw.returncode == 0, log.read_text()[-3000:]
            last = committed_seq(state)
            await every_seq_arrives(sub, last)
    expected = set(range(1, last + 1))
    mqtt_seqs = [m["seq"] for m in sub.json("/reading") + sub.json("/event")]
    missing = sorted(expected - set(mqtt_seqs))
    assert not missing, f"{len(missing)} seqs never arrived on MQTT: {missing[:20]}..{missing[-5:]}"
    assert set(mqtt_seqs) == expected  # at least once: duplicates allowed, gaps not
    assert sorted(influx_seqs(own_influxd)) == sorted(expected), "exactly once per series and time"


def metric(port: int, name: str) -> float:
    """The sum over the series of one metric of the gateway's /metrics."""
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    )


async def test_both_sinks_down_with_a_small_outbox_drop_the_oldest_and_say_so(
    tmp_path: Path, own_mosquitto: Mosquitto, own_influxd: InfluxV1
) -> None:
    """Broker and database down together while the outbox (64 KiB: about a hundred rows)
    overflows: the oldest rows go, data_dropped events say which and how many, and every
    row not dropped reaches both sinks when they return."""
    port = free_port()
    log = tmp_path / "gateway.log"
    async with Lab(fixed_ports=False, opcua=False, seed=6) as lab:
        config = outage_config(
            tmp_path,
            lab,
            own_mosquitto,
            own_influxd,
            http=f"127.0.0.1:{port}",
            tail="\n[outbox]\nmax_bytes = 65536\n",
        )
        with Subscriber(own_mosquitto.port, "calgate/lab-x/#", session="drop-test") as sub:
            gw = await start_calgate_run(config, log)
            try:
                await wait_for_async(
                    lambda: len(sub.json("/reading")) > 30, timeout_s=30, what="first readings"
                )
                own_mosquitto.stop()
                own_influxd.stop()
                # about three outboxes' worth of rows arrive while both sinks are away
                await wait_for_async(
                    lambda: metric(port, "calgate_outbox_dropped_total") >= 300,
                    timeout_s=60,
                    what="rows dropped",
                )
                own_mosquitto.start()
                own_influxd.start()

                def told() -> bool:  # caught up, and the events count every row dropped
                    return metric(port, "calgate_outbox_depth") == 0 and sum(
                        episodes(sub).values()
                    ) == metric(port, "calgate_outbox_dropped_total")

                await wait_for_async(told, timeout_s=60, what="caught up and told")
                dropped = metric(port, "calgate_outbox_dropped_total")
            finally:
                if gw.returncode is None:
                    gw.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(gw.wait(), 30)
            assert gw.returncode == 0, log.read_text()[-3000:]
            last = committed_seq(tmp_path / "state")
            await wait_for_async(
                lambda: max(sub.seqs(), default=0) >= last, timeout_s=10, what="the last seq"
            )
    expected = set(range(1, last + 1))
    on_mqtt = sub.seqs()
    in_influx = set(influx_seqs(own_influxd))
    drops = [m for m in sub.json("/event") if m["type"] == "data_dropped"]
    lost = (expected - on_mqtt) | (expected - in_influx)
    assert lost, "nothing was dropped"
    # an episode's events are cumulative: its newest tells it all (the earlier ones may
    # have been dropped in turn); the oldest rows go, one run of seqs per episode
    newest = {d["oldest_seq"]: d for d in sorted(drops, key=lambda d: d["seq"])}
    said = set().union(*(range(d["oldest_seq"], d["newest_seq"] + 1) for d in newest.values()))
    assert lost <= said, f"lost and not said: {sorted(lost - said)[:20]}"
    assert sum(d["count"] for d in newest.values()) == len(said) == dropped
    assert {d["reason"] for d in drops} == {"max_bytes"}
    assert set(range(max(said) + 1, last + 1)) <= on_mqtt & in_influx
    # said but not lost: rows a sink had taken when the cut came, before its ack arrived
    assert len(said - lost) < 200
    # a few events a second at most, not one per handful of dropped rows
    assert len(drops) < len(said) / 10


def episodes(sub: Subscriber) -> dict[int, int]:
    """The count of each drop episode (keyed by its oldest seq) as its newest event says."""
    out: dict[int, int] = {}
    for d in sorted(sub.json("/event"), key=lambda d: d["seq"]):
        if d["type"] == "data_dropped":
            out[d["oldest_seq"]] = d["count"]
    return out
