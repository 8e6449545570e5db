"""Outages: the broker and the database cut mid-run, the gateway killed with SIGKILL.

After recovery every sequence number arrives in InfluxDB exactly once and on MQTT at
least once: the outbox commits before sending, sinks resume at their cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest
from helpers import wait_for_async
from labconfig import committed_seq, start_calgate_run
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


async def test_broker_and_database_outages_and_sigkill_lose_nothing_committed(
    tmp_path: Path, own_mosquitto: Mosquitto, own_influxd: InfluxV1
) -> None:
    own_influxd.create_database("calgate")
    own_mosquitto.persistence = True  # the broker keeps sessions and queues across its restart
    own_mosquitto.restart()
    state = tmp_path / "state"
    log = tmp_path / "gateway.log"
    async with Lab(fixed_ports=False, opcua=False, seed=5) as lab:
        config = tmp_path / "calgate.toml"
        config.write_text(
            lab_toml(
                lab.endpoints(),
                registry=example_registry(),
                state_dir=state,
                mqtt_url=own_mosquitto.url,
                interval_s=0.05,
                site="lab-x",
                gateway_id="edge-x",
                influx={
                    "api": "v1",
                    "url": own_influxd.url,
                    "database": "calgate",
                    "flush_interval_s": "0.2",
                },
                only={"PT-101", "PT-102", "PC-01"},
                gateway_extra={"backoff_min_s": 0.05, "backoff_max_s": 0.3},
            )
        )
        config.write_text(
            config.read_text().replace('flush_interval_s = "0.2"', "flush_interval_s = 0.2")
        )
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
            with contextlib.suppress(TimeoutError):
                await wait_for_async(
                    lambda: (
                        {m["seq"] for m in sub.json("/reading") + sub.json("/event")}
                        >= set(range(1, last + 1))
                    ),
                    timeout_s=10,
                    what="every seq on MQTT",
                )
    expected = set(range(1, last + 1))
    mqtt_seqs = [m["seq"] for m in sub.json("/reading") + sub.json("/event")]
    missing = sorted(expected - set(mqtt_seqs))
    assert not missing, f"{len(missing)} seqs never arrived on MQTT: {missing[:20]}..{missing[-5:]}"
    assert set(mqtt_seqs) == expected  # at least once: duplicates allowed, gaps not
    rows = own_influxd.rows("SELECT seq FROM reading", "calgate") + own_influxd.rows(
        "SELECT seq FROM event", "calgate"
    )
    influx_seqs = [int(r["seq"]) for r in rows]  # type: ignore[call-overload]
    assert sorted(influx_seqs) == sorted(expected), "exactly once per series and time"
