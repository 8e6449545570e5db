"""The real-server fixtures serve: publish/subscribe on mosquitto, write then query the databases."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from servers import InfluxV1, Mosquitto, VictoriaMetrics

pytestmark = pytest.mark.integration


def test_mosquitto_delivers_a_qos1_publish(mosquitto: Mosquitto, unique_name: str) -> None:
    topic = f"test/{unique_name}"
    got: list[bytes] = []
    subscribed = threading.Event()
    arrived = threading.Event()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        arrived.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        pub.publish(topic, b"42.0", qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        assert arrived.wait(10)
        assert got == [b"42.0"]
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_influxd_v1_write_then_query(influxd: InfluxV1, unique_name: str) -> None:
    influxd.create_database(unique_name)
    t_ns = time.time_ns()
    status, body = influxd.http(
        f"/write?db={unique_name}&precision=ns",
        f"reading,equipment=BAL-01 value=1.5,seq=7i {t_ns}\n".encode(),
        method="POST",
    )
    assert status == 204, body
    rows = influxd.rows("SELECT value, seq FROM reading", unique_name)
    assert rows == [{"time": t_ns, "value": 1.5, "seq": 7}]


def test_victoria_metrics_serves_the_influx_v2_write_api(
    victoria: VictoriaMetrics, unique_name: str
) -> None:
    t_ns = time.time_ns()
    status, body = victoria.http(
        f"/api/v2/write?org=lab&bucket={unique_name}&precision=ns",
        f"reading,equipment=PT-{unique_name} value=2.25 {t_ns}\n".encode(),
        method="POST",
    )
    assert status == 204, body
    series = victoria.export_until(
        f'reading_value{{equipment="PT-{unique_name}"}}', lambda s: len(s) > 0
    )
    assert len(series) == 1
    assert series[0]["values"] == [2.25]
    assert series[0]["timestamps"] == [t_ns // 1_000_000]
