"""MQTT sink against a real mosquitto: topics and payloads of 4.3, retained status and
last will, a broker restart mid-stream, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from certs import make_certs
from helpers import running_sink, wait_for, wait_for_async
from paho.mqtt.enums import CallbackAPIVersion
from servers import Mosquitto

from drivers.base import Reading
from gateway.model import Event, Measurement
from gateway.outbox import Outbox
from gateway.settings import MqttSettings, OutboxSettings
from gateway.sinks import MqttSink

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 27, 12, 0, 0, 250000, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[2]


def meas(i: int, equipment: str = "PT-101", channel: str = "pressure") -> Measurement:
    r = Reading(
        equipment=equipment,
        channel=channel,
        raw=100.0 + i / 8,
        unit="kPa",
        t_wall=T0 + dt.timedelta(milliseconds=i),
        t_mono=float(i),
        flags=frozenset({"stable"}),
    )
    return Measurement(
        reading=r,
        value=100.125 + i / 8,
        unit="kPa",
        u=0.0125,
        U=0.025,
        k=2.0,
        calibration="valid",
        certificate="DKD-K-1/2026",
        conformity="pass",
        quantity="pressure",
    )


class Subscriber:
    """A real MQTT client on its own thread, recording every message of ``topic``."""

    def __init__(
        self,
        url: str,
        topic: str,
        *,
        ca: Path | None = None,
        client_id: str = "",
        clean_session: bool = True,
    ) -> None:
        self.topic = topic
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
        )
        if ca is not None:
            c.tls_set(ca_certs=str(ca))
        c.reconnect_delay_set(0.05, 0.5)
        c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        host, port = url.split("://")[1].split(":")
        self.client = c
        c.connect(host, int(port), 30)
        c.loop_start()
        assert self.subscribed.wait(10), "subscription not confirmed"

    def _on_message(self, c: Any, u: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def received(self, suffix: str = "") -> list[paho.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def payloads(self, suffix: str = "") -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.received(suffix)]

    def seqs(self) -> set[int]:
        return {p["seq"] for p in self.payloads("/reading")}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribe() -> Iterator[Any]:
    subs: list[Subscriber] = []

    def make(url: str, topic: str, **kw: Any) -> Subscriber:
        s = Subscriber(url, topic, **kw)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(
        tmp_path / "outbox.sqlite",
        OutboxSettings(commit_interval_s=0.002),
        sinks=("mqtt",),
        site="lab-a",
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
    )
    yield ob
    ob.close()


def make_sink(url: str, outbox: Outbox, **kw: Any) -> MqttSink:
    settings = MqttSettings(
        url=url,
        topic_prefix=outbox.topic_prefix,
        backoff_min_s=kw.pop("backoff_min_s", 0.05),
        backoff_max_s=kw.pop("backoff_max_s", 0.5),
        **kw,
    )
    return MqttSink(settings, outbox, site="lab-a", gateway_id="edge-01")


async def test_measurements_and_events_arrive_per_contract(
    mosquitto: Mosquitto, outbox: Outbox, subscribe: Any
) -> None:
    prefix = outbox.topic_prefix
    sub = subscribe(mosquitto.url, f"{prefix}/#")
    sink = make_sink(mosquitto.url, outbox)
    ms = [meas(i) for i in range(40)] + [meas(i, "BAL-01", "mass") for i in range(10)]
    ev = Event(
        type="out_of_tolerance",
        severity="warning",
        equipment="PT-101",
        channel="pressure",
        message="101.2 kPa above the high limit 101.0 kPa",
        t_wall=T0,
        detail={"limit": 101.0, "value": 101.2},
    )
    async with running_sink(sink):
        outbox.add(ms)
        outbox.add([ev])
        await wait_for_async(
            lambda: len(sub.seqs()) == 50 and sub.received("/event"), what="all rows"
        )
        await wait_for_async(lambda: outbox.cursor("mqtt") == 51, what="every PUBACK acked")
    readings = sub.received("/reading")
    by_seq = {json.loads(m.payload)["seq"]: m for m in readings}
    for seq, m in enumerate(ms, start=1):
        msg = by_seq[seq]
        assert msg.topic == f"{prefix}/lab-a/{m.equipment}/{m.channel}/reading"
        assert json.loads(msg.payload) == m.payload(seq)
        assert msg.qos == 1
        assert not msg.retain
    (evmsg,) = sub.received("/event")
    assert evmsg.topic == f"{prefix}/lab-a/PT-101/event"
    assert json.loads(evmsg.payload) == ev.payload(51)
    assert not evmsg.retain
    assert sink.failures == 0


async def test_status_is_retained_republished_and_offline_after_a_clean_stop(
    mosquitto: Mosquitto, outbox: Outbox, subscribe: Any
) -> None:
    prefix = outbox.topic_prefix
    sink = make_sink(mosquitto.url, outbox)
    sink.publish_status("PT-101", {"connection": "offline"})  # before connecting: kept
    async with running_sink(sink):
        await wait_for_async(lambda: sink.connected, what="connected")
        sink.publish_status("PT-101", {"connection": "online", "calibration": "valid"})
        sink.publish_gateway_status({"version": "0.1.0"})
        outbox.add([meas(0)])
        await wait_for_async(lambda: outbox.cursor("mqtt") == 1, what="delivery")
        # a subscriber that comes later sees the latest retained status
        late = subscribe(mosquitto.url, f"{prefix}/lab-a/+/status")
        gw = subscribe(mosquitto.url, f"{prefix}/lab-a/gateway/edge-01/status")
        await wait_for_async(
            lambda: (
                late.payloads("/PT-101/status")
                and late.payloads("/PT-101/status")[-1].get("connection") == "online"
                and gw.payloads()
                and gw.payloads()[-1].get("version") == "0.1.0"
            ),
            what="retained status",
        )
        status = late.received("/PT-101/status")[-1]
        assert status.retain
        assert json.loads(status.payload) == {"connection": "online", "calibration": "valid"}
        online = gw.payloads()[-1]
        assert online["state"] == "online"
        assert online["gateway"] == "edge-01"
        assert online["site"] == "lab-a"
        sink.publish_status("OLD-1", {"connection": "online"})
        await wait_for_async(lambda: bool(late.received("/OLD-1/status")), what="OLD-1")
        sink.clear_status("OLD-1")  # deleted: a new subscriber gets no retained status
        await wait_for_async(
            lambda: late.received("/OLD-1/status")[-1].payload == b"", what="clear"
        )
        fresh = subscribe(mosquitto.url, f"{prefix}/lab-a/+/status")
        await wait_for_async(lambda: bool(fresh.received("/PT-101/status")), what="retained")
        assert fresh.received("/OLD-1/status") == []
    await wait_for_async(lambda: gw.payloads()[-1] == {"state": "offline"}, what="offline")
    # and it stays retained
    again = subscribe(mosquitto.url, f"{prefix}/lab-a/gateway/edge-01/status")
    await wait_for_async(
        lambda: again.payloads() == [{"state": "offline"}], what="retained offline"
    )
    assert again.received()[0].retain


CHILD = """
import asyncio, sys
sys.path.insert(0, {root!r})
from gateway.outbox import Outbox
from gateway.settings import MqttSettings
from gateway.sinks import MqttSink

async def main():
    ob = Outbox({db!r}, sinks=("mqtt",), site="lab-a", topic_prefix={prefix!r})
    sink = MqttSink(MqttSettings(url={url!r}, topic_prefix={prefix!r}, keepalive_s=5), ob,
                    site="lab-a", gateway_id="edge-01")
    await sink.run()

asyncio.run(main())
"""


def test_last_will_marks_the_gateway_offline_when_it_dies(
    mosquitto: Mosquitto, tmp_path: Path, subscribe: Any
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    gw = subscribe(mosquitto.url, f"{prefix}/lab-a/gateway/edge-01/status")
    script = CHILD.format(
        root=str(ROOT), db=str(tmp_path / "ob.sqlite"), prefix=prefix, url=mosquitto.url
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        wait_for(
            lambda: bool(gw.payloads()) and gw.payloads()[-1]["state"] == "online",
            timeout_s=20,
            what="gateway online",
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: gw.payloads()[-1] == {"state": "offline"}, what="the will")
        later = subscribe(mosquitto.url, f"{prefix}/lab-a/gateway/edge-01/status")
        wait_for(lambda: later.payloads() == [{"state": "offline"}], what="retained will")
        assert later.received()[0].retain
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, outbox: Outbox, subscribe: Any
) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.workdir.mkdir()
    broker.start()
    try:
        prefix = outbox.topic_prefix
        # a persistent session: the broker queues for it while it is away
        sub = subscribe(broker.url, f"{prefix}/#", client_id=f"sub-{prefix}", clean_session=False)
        sink = make_sink(broker.url, outbox)
        n = 0
        async with running_sink(sink):
            for _ in range(20):
                outbox.add([meas(n + i) for i in range(25)])
                n += 25
                await asyncio.sleep(0.005)
            await asyncio.to_thread(broker.stop)
            await wait_for_async(lambda: not sink.connected, what="sink notices")
            for _ in range(20):  # the outage: rows pile up in the outbox
                outbox.add([meas(n + i) for i in range(25)])
                n += 25
                await asyncio.sleep(0.005)
            assert outbox.depth("mqtt") > 0
            await asyncio.to_thread(broker.start)
            await wait_for_async(lambda: outbox.cursor("mqtt") == n, timeout_s=30, what="catch-up")
            await wait_for_async(
                lambda: sub.seqs() == set(range(1, n + 1)), timeout_s=30, what="every seq"
            )
        assert sink.connects >= 2
        assert sink.failures >= 1
    finally:
        broker.stop()


async def test_the_inflight_window_is_bounded(
    mosquitto: Mosquitto, outbox: Outbox, subscribe: Any
) -> None:
    sub = subscribe(mosquitto.url, f"{outbox.topic_prefix}/#")
    sink = make_sink(mosquitto.url, outbox, max_inflight=10, batch_size=4)
    inflight: list[int] = []
    full = 0
    deliver, window = sink.deliver, sink.window

    async def recording_deliver(rows: list[Any]) -> None:
        await deliver(rows)
        inflight.append(sink.inflight)

    def recording_window() -> int:
        nonlocal full
        room = window()
        full += room <= 0
        return room

    sink.deliver = recording_deliver  # type: ignore[method-assign]
    sink.window = recording_window  # type: ignore[method-assign]
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(500)])  # all at once: far more than the window
        await wait_for_async(lambda: outbox.cursor("mqtt") == 500, what="all acked")
        await wait_for_async(lambda: len(sub.seqs()) == 500, what="all received")
    assert max(inflight) <= 10
    assert full > 0, "the sink waited for PUBACKs with a full window"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    d = tmp_path / "tls"
    d.mkdir()
    broker = Mosquitto(d, tls=make_certs(d))
    broker.start()
    yield broker
    broker.stop()


async def test_tls_with_a_private_ca(tls_broker: Mosquitto, outbox: Outbox, subscribe: Any) -> None:
    assert tls_broker.url.startswith("mqtts://")
    assert tls_broker.tls is not None
    ca = tls_broker.tls[0]
    sub = subscribe(tls_broker.url, f"{outbox.topic_prefix}/#", ca=ca)
    sink = make_sink(tls_broker.url, outbox, ca_file=ca)
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(20)])
        await wait_for_async(lambda: len(sub.seqs()) == 20, what="TLS delivery")
        await wait_for_async(lambda: outbox.cursor("mqtt") == 20, what="acks over TLS")


async def test_tls_refuses_an_unknown_ca(tls_broker: Mosquitto, outbox: Outbox) -> None:
    sink = make_sink(tls_broker.url, outbox)  # system CAs only: the test CA is unknown
    async with running_sink(sink):
        outbox.add([meas(0)])
        await wait_for_async(lambda: sink.failures >= 2, what="refused connects")
        assert not sink.connected
        assert "certificate" in (sink.last_error or "").lower()
    assert outbox.cursor("mqtt") == 0


async def test_tls_with_another_ca_is_refused_and_nothing_goes_in_clear(
    tls_broker: Mosquitto, outbox: Outbox, tmp_path: Path
) -> None:
    """A CA file of another CA: every connect fails certificate verification and the
    broker never sees a client; no row is acked."""
    other = tmp_path / "other-ca"
    other.mkdir()
    wrong_ca = make_certs(other)[0]
    sink = make_sink(tls_broker.url, outbox, ca_file=wrong_ca)
    async with running_sink(sink):
        outbox.add([meas(0)])
        await wait_for_async(lambda: sink.failures >= 2, what="refused connects")
        assert not sink.connected
        assert "certificate verify failed" in (sink.last_error or "").lower()
    assert outbox.cursor("mqtt") == 0
    assert "New client connected" not in tls_broker.log_tail(1_000_000)


async def test_an_mqtts_url_never_falls_back_to_plain_mqtt(outbox: Outbox, tmp_path: Path) -> None:
    """A peer on an mqtts:// URL that does not speak TLS (a wrong port, a downgrade): the
    sink sends a TLS ClientHello and never a plaintext CONNECT with its credentials."""
    received = bytearray()

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            received.extend(await reader.read(4096))
            # plaintext CONNACKs, as a broker would send: not a TLS record
            writer.write(b"\x20\x02\x00\x00" * 4)
            await writer.drain()
            received.extend(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    sink = make_sink(
        f"mqtts://127.0.0.1:{port}", outbox, username="edge", password_file=str(secret)
    )
    try:
        async with running_sink(sink):
            outbox.add([meas(0)])
            await wait_for_async(lambda: sink.failures >= 2, what="failed connects")
            assert not sink.connected
    finally:
        server.close()
        await server.wait_closed()
    assert received[:1] == b"\x16"  # a TLS handshake record
    assert b"MQTT" not in received
    assert b"s3cret" not in received
    assert outbox.cursor("mqtt") == 0


async def test_a_dead_influxdb_does_not_hold_back_mqtt(
    mosquitto: Mosquitto, tmp_path: Path, subscribe: Any
) -> None:
    from helpers import free_port

    from gateway.settings import InfluxSettings
    from gateway.sinks import InfluxSink

    prefix = f"t{uuid.uuid4().hex[:10]}"
    ob = Outbox(
        tmp_path / "both.sqlite", sinks=("mqtt", "influx"), site="lab-a", topic_prefix=prefix
    )
    try:
        sub = subscribe(mosquitto.url, f"{prefix}/#")
        mqtt = make_sink(mosquitto.url, ob)
        influx = InfluxSink(
            InfluxSettings(
                api="v1",
                url=f"http://127.0.0.1:{free_port()}",
                database="lab",
                backoff_min_s=0.05,
                backoff_max_s=0.2,
            ),
            ob,
        )
        itask = asyncio.create_task(influx.run())
        try:
            async with running_sink(mqtt):
                for k in range(10):
                    ob.add([meas(k * 30 + i) for i in range(30)])
                    await asyncio.sleep(0.01)
                await wait_for_async(lambda: ob.cursor("mqtt") == 300, what="mqtt delivered")
                await wait_for_async(lambda: len(sub.seqs()) == 300, what="mqtt received")
                await wait_for_async(lambda: influx.failures >= 2, what="influx failing")
                assert ob.cursor("influx") == 0
                assert ob.stats().depth == {"mqtt": 0, "influx": 300}
        finally:
            await influx.stop(timeout_s=0.1)
            await itask
    finally:
        ob.close()


async def test_stop_flushes_what_is_committed_then_says_offline(
    mosquitto: Mosquitto, outbox: Outbox, subscribe: Any
) -> None:
    prefix = outbox.topic_prefix
    sub = subscribe(mosquitto.url, f"{prefix}/#")
    sink = make_sink(mosquitto.url, outbox)
    task = asyncio.create_task(sink.run())
    await wait_for_async(lambda: sink.connected, what="connected")
    outbox.add([meas(i) for i in range(300)])  # not even committed yet
    await sink.stop(timeout_s=10)
    await task
    assert outbox.cursor("mqtt") == 300
    await wait_for_async(lambda: len(sub.seqs()) == 300, what="all received")
    await wait_for_async(
        lambda: sub.payloads("/gateway/edge-01/status")[-1:] == [{"state": "offline"}],
        what="offline last",
    )
    topics = [m.topic for m in sub.received()]
    last_status = max(i for i, t in enumerate(topics) if t.endswith("/edge-01/status"))
    last_reading = max(i for i, t in enumerate(topics) if t.endswith("/reading"))
    assert last_status > last_reading


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    d = tmp_path / "auth"
    d.mkdir()
    broker = Mosquitto(d, users={"edge-01": "s3cret pw"})
    broker.start()
    yield broker
    broker.stop()


async def test_username_and_password_from_a_file(
    auth_broker: Mosquitto, outbox: Outbox, tmp_path: Path
) -> None:
    pw = tmp_path / "mqtt-password"
    pw.write_text("s3cret pw\n")
    sink = make_sink(auth_broker.url, outbox, username="edge-01", password_file=str(pw))
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(5)])
        await wait_for_async(lambda: outbox.cursor("mqtt") == 5, what="delivered with auth")


async def test_a_wrong_password_is_refused_and_retried(
    auth_broker: Mosquitto, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALGATE_TEST_MQTT_PW", "wrong")
    sink = make_sink(
        auth_broker.url, outbox, username="edge-01", password_env="CALGATE_TEST_MQTT_PW"
    )
    async with running_sink(sink):
        outbox.add([meas(0)])
        await wait_for_async(lambda: sink.failures >= 2, what="refused twice")
        assert "not authori" in (sink.last_error or "").lower()
        assert "wrong" not in (sink.last_error or "")
    assert outbox.cursor("mqtt") == 0


async def test_a_cancelled_sink_closes_its_socket_and_the_will_fires(
    mosquitto: Mosquitto, outbox: Outbox, subscribe: Any
) -> None:
    gw = subscribe(mosquitto.url, f"{outbox.topic_prefix}/lab-a/gateway/edge-01/status")
    sink = make_sink(mosquitto.url, outbox)
    task = asyncio.create_task(sink.run())
    await wait_for_async(
        lambda: gw.payloads()[-1:] and gw.payloads()[-1]["state"] == "online", what="online"
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sink.connected
    assert sink._sock is None
    await wait_for_async(lambda: gw.payloads()[-1] == {"state": "offline"}, what="the will")


async def test_cancelled_while_connecting(outbox: Outbox) -> None:
    import socket as socketlib

    # a listener that never accepts: connect() hangs in the SYN backlog / CONNACK wait
    with socketlib.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        url = f"mqtt://127.0.0.1:{server.getsockname()[1]}"
        sink = make_sink(url, outbox, connect_timeout_s=30)
        task = asyncio.create_task(sink.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not sink.connected


async def test_large_payloads_and_packet_id_wraparound(
    mosquitto: Mosquitto, outbox: Outbox, subscribe: Any
) -> None:
    """Rows are written as raw PUBLISH packets: a 3-byte remaining length (an event with
    a 20 kB detail) and packet ids that wrap from 65535 to 1 reach the broker intact."""
    sub = subscribe(mosquitto.url, f"{outbox.topic_prefix}/#")
    sink = make_sink(mosquitto.url, outbox)
    big = Event(
        type="device_error",
        severity="warning",
        equipment="PT-101",
        message="long diagnostic",
        t_wall=T0,
        detail={"dump": "x" * 20_000},
    )
    async with running_sink(sink):
        await wait_for_async(lambda: sink.connected, what="connected")
        assert sink._client is not None
        sink._client._last_mid = 65_500  # the next 35 ids, then 1, 2, ...
        outbox.add([meas(i) for i in range(100)])
        outbox.add([big])
        await wait_for_async(lambda: outbox.cursor("mqtt") == 101, what="all acked")
        await wait_for_async(
            lambda: len(sub.seqs()) == 100 and sub.received("/event"), what="all received"
        )
    assert sub.seqs() == set(range(1, 101))
    (ev,) = sub.received("/event")
    assert json.loads(ev.payload) == big.payload(101)


async def test_pubacks_split_across_reads(outbox: Outbox) -> None:
    """A broker whose PUBACKs arrive a byte at a time: each is still matched to its row."""
    received: list[int] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def packet() -> tuple[int, bytes]:
            head = (await reader.readexactly(1))[0]
            length, mult = 0, 1
            while True:
                b = (await reader.readexactly(1))[0]
                length += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
            return head, await reader.readexactly(length)

        head, _ = await packet()
        assert head == 0x10  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        with (
            contextlib.closing(writer),
            contextlib.suppress(asyncio.IncompleteReadError, ConnectionError),
        ):
            while True:
                head, body = await packet()
                if head & 0xF0 != 0x30:
                    continue
                tlen = int.from_bytes(body[:2], "big")
                mid = body[2 + tlen : 4 + tlen]
                if not head & 0x01:  # not retained: a row
                    received.append(json.loads(body[4 + tlen :])["seq"])
                for byte in b"\x40\x02" + mid:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.001)

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = make_sink(f"mqtt://127.0.0.1:{port}", outbox)
    async with server, running_sink(sink):
        outbox.add([meas(i) for i in range(30)])
        await wait_for_async(lambda: outbox.cursor("mqtt") == 30, what="all acked")
    assert sorted(received) == list(range(1, 31))
    assert sink.delivered == 30
