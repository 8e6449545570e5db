"""The embedded MQTT broker against real paho-mqtt 2.2 clients (and raw sockets)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for_async

from gateway.embedded_broker import EmbeddedBroker, topic_matches

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Client:
    """A paho client on its own network thread, with what it received."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        clean_session: bool = True,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311,
        will: tuple[str, bytes, int, bool] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.port = port
        kwargs: dict[str, object] = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean_session
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs
        )
        if will:
            self.c.will_set(will[0], will[1], qos=will[2], retain=will[3])
        if auth:
            self.c.username_pw_set(*auth)
        self.messages: list[Got] = []
        self.connack: tuple[bool, str] | None = None
        self.subacks: list[list[int]] = []
        self.lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe

    def _on_connect(
        self, c: mqtt.Client, u: object, flags: mqtt.ConnectFlags, rc: object, p: object
    ) -> None:
        self.connack = (flags.session_present, str(rc))

    def _on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(Got(m.topic, m.payload, m.qos, bool(m.retain)))

    def _on_subscribe(
        self, c: mqtt.Client, u: object, mid: int, rcs: list[object], p: object
    ) -> None:
        self.subacks.append([int(getattr(rc, "value", rc)) for rc in rcs])  # type: ignore[call-overload]

    async def connect(self, *, expect: str = "Success") -> None:
        self.c.connect_async("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        await wait_for_async(lambda: self.connack is not None, what="CONNACK")
        assert self.connack is not None
        assert self.connack[1] == expect

    async def subscribe(self, *filters: tuple[str, int]) -> None:
        n = len(self.subacks)
        self.c.subscribe(list(filters))
        await wait_for_async(lambda: len(self.subacks) > n, what="SUBACK")

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            await wait_for_async(info.is_published, what="PUBACK")

    async def wait(self, n: int) -> list[Got]:
        await wait_for_async(lambda: len(self.messages) >= n, what=f"{n} message(s)")
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    b = EmbeddedBroker()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def topic() -> str:
    return f"calgate/test/{uuid.uuid4().hex[:8]}"


async def test_qos1_publish_subscribe(broker: EmbeddedBroker, clients: list[Client]) -> None:
    assert broker.port
    sub = Client(broker.port, "sub")
    pub = Client(broker.port, "pub")
    clients += [sub, pub]
    await sub.connect()
    await pub.connect()
    t = topic()
    await sub.subscribe((t, 1))
    assert sub.subacks[-1] == [1]
    for i in range(20):
        await pub.publish(t, f"m{i}".encode(), qos=1)
    got = await sub.wait(20)
    assert [g.payload for g in got] == [f"m{i}".encode() for i in range(20)]
    assert {(g.topic, g.qos, g.retain) for g in got} == {(t, 1, False)}
    assert sorted(broker.clients) == ["pub", "sub"]


async def test_qos_is_the_lower_of_message_and_subscription(
    broker: EmbeddedBroker, clients: list[Client]
) -> None:
    assert broker.port
    sub0, sub1, pub = Client(broker.port), Client(broker.port), Client(broker.port)
    clients += [sub0, sub1, pub]
    for c in clients:
        await c.connect()
    t = topic()
    await sub0.subscribe((t, 0))
    await sub1.subscribe((t, 2))
    assert sub1.subacks[-1] == [1]  # QoS 2 is granted as 1
    await pub.publish(t, b"q2", qos=2)  # PUBREC/PUBREL/PUBCOMP completes
    await pub.publish(t, b"q0", qos=0)
    assert [(g.payload, g.qos) for g in await sub0.wait(2)] == [(b"q2", 0), (b"q0", 0)]
    assert [(g.payload, g.qos) for g in await sub1.wait(2)] == [(b"q2", 1), (b"q0", 0)]


async def test_retained_messages(broker: EmbeddedBroker, clients: list[Client]) -> None:
    assert broker.port
    pub = Client(broker.port)
    clients.append(pub)
    await pub.connect()
    base = topic()
    await pub.publish(f"{base}/BAL-01/status", b'{"state":"online"}', qos=1, retain=True)
    await pub.publish(f"{base}/PT-101/status", b'{"state":"offline"}', qos=1, retain=True)
    await pub.publish(f"{base}/PT-101/status", b'{"state":"online"}', qos=1, retain=True)
    await pub.publish(f"{base}/gone/status", b"x", qos=1, retain=True)
    await pub.publish(f"{base}/gone/status", b"", qos=1, retain=True)  # clears it
    assert f"{base}/gone/status" not in broker.retained

    late = Client(broker.port)
    clients.append(late)
    await late.connect()
    await late.subscribe((f"{base}/+/status", 1))
    got = await late.wait(2)
    assert {(g.topic, g.payload, g.retain) for g in got} == {
        (f"{base}/BAL-01/status", b'{"state":"online"}', True),
        (f"{base}/PT-101/status", b'{"state":"online"}', True),
    }
    # a live message on the same topic is not flagged retained for an existing subscriber
    await pub.publish(f"{base}/BAL-01/status", b'{"state":"offline"}', qos=1, retain=True)
    got = await late.wait(3)
    assert (got[2].payload, got[2].retain) == (b'{"state":"offline"}', False)


async def test_wildcards(broker: EmbeddedBroker, clients: list[Client]) -> None:
    assert broker.port
    base = topic()
    plus, hash_, exact, pub = (Client(broker.port) for _ in range(4))
    clients += [plus, hash_, exact, pub]
    for c in clients:
        await c.connect()
    await plus.subscribe((f"{base}/+/measurement", 1))
    await hash_.subscribe((f"{base}/#", 1))
    await exact.subscribe((f"{base}/BAL-01/event", 1))
    await pub.publish(f"{base}/BAL-01/measurement", b"1")
    await pub.publish(f"{base}/BAL-01/event", b"2")
    await pub.publish(f"{base}/PT-101/pressure/measurement", b"3")
    await pub.publish(f"{base}", b"4")
    # the last publish is matched by '#' (parent level) only; wait for it there
    got_hash = await hash_.wait(4)
    assert [g.payload for g in got_hash] == [b"1", b"2", b"3", b"4"]
    assert [g.payload for g in await exact.wait(1)] == [b"2"]
    assert [g.payload for g in plus.messages] == [b"1"]


async def test_will_on_abrupt_disconnect_not_on_clean(
    broker: EmbeddedBroker, clients: list[Client]
) -> None:
    assert broker.port
    t = topic()
    watcher = Client(broker.port)
    clients.append(watcher)
    await watcher.connect()
    await watcher.subscribe((f"{t}/#", 1))

    polite = Client(broker.port, "polite", will=(f"{t}/polite", b"offline", 1, True))
    await polite.connect()
    polite.close()  # DISCONNECT: no will
    await wait_for_async(lambda: "polite" not in broker.clients, what="polite gone")

    rude = Client(broker.port, "rude", will=(f"{t}/rude", b'{"state":"offline"}', 1, True))
    await rude.connect()
    rude.c.loop_stop()
    sock = rude.c.socket()
    assert isinstance(sock, socket.socket)
    sock.close()  # the gateway was kill -9'd

    got = await watcher.wait(1)
    assert [(g.topic, g.payload) for g in got] == [(f"{t}/rude", b'{"state":"offline"}')]
    assert broker.retained[f"{t}/rude"] == b'{"state":"offline"}'
    assert f"{t}/polite" not in broker.retained


def _connect_packet(client_id: str, keepalive: int, will: tuple[str, bytes] | None = None) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack("!H", len(b)) + b

    flags = 0x02 | (0x04 | 0x08 if will else 0)
    body = s(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + s(client_id.encode())
    if will:
        body += s(will[0].encode()) + s(will[1])
    return bytes([0x10, len(body)]) + body


async def test_will_on_keepalive_timeout(broker: EmbeddedBroker, clients: list[Client]) -> None:
    assert broker.port
    t = topic()
    watcher = Client(broker.port)
    clients.append(watcher)
    await watcher.connect()
    await watcher.subscribe((t, 1))
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(_connect_packet("silent", 1, (t, b"timed out")))
        assert await reader.readexactly(4) == b"\x20\x02\x00\x00"
        # silent for 1.5 keep-alive periods: the broker closes and sends the will
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        assert [g.payload for g in await watcher.wait(1)] == [b"timed out"]
    finally:
        writer.close()


async def test_invalid_filter_is_refused_in_suback_not_fatal(broker: EmbeddedBroker) -> None:
    assert broker.port
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(_connect_packet("raw-sub", 60))
        assert await reader.readexactly(4) == b"\x20\x02\x00\x00"
        body = struct.pack("!H", 7)
        for flt, qos in ((b"bad/#/filter", 1), (b"a+/b", 0), (b"ok/+", 2)):
            body += struct.pack("!H", len(flt)) + flt + bytes([qos])
        writer.write(bytes([0x82, len(body)]) + body)
        assert await reader.readexactly(7) == b"\x90\x05\x00\x07\x80\x80\x01"
        writer.write(b"\xc0\x00")  # PINGREQ: still connected
        assert await reader.readexactly(2) == b"\xd0\x00"
    finally:
        writer.close()


async def test_persistent_session_keeps_qos1_messages(
    broker: EmbeddedBroker, clients: list[Client]
) -> None:
    assert broker.port
    t = topic()
    pub = Client(broker.port)
    clients.append(pub)
    await pub.connect()
    first = Client(broker.port, "durable", clean_session=False)
    await first.connect()
    assert first.connack == (False, "Success")
    await first.subscribe((t, 1))
    first.close()
    await wait_for_async(lambda: "durable" not in broker.clients, what="durable offline")
    await pub.publish(t, b"while away", qos=1)
    await pub.publish(t, b"lost at qos0", qos=0)

    again = Client(broker.port, "durable", clean_session=False)
    clients.append(again)
    await again.connect()
    assert again.connack == (True, "Success")
    assert [g.payload for g in await again.wait(1)] == [b"while away"]
    await pub.publish(t, b"live")  # the subscription survived too
    assert [g.payload for g in await again.wait(2)] == [b"while away", b"live"]


async def test_same_client_id_takes_over(broker: EmbeddedBroker, clients: list[Client]) -> None:
    assert broker.port
    a = Client(broker.port, "edge-01")
    b = Client(broker.port, "edge-01")
    clients += [a, b]
    await a.connect()
    await b.connect()
    await wait_for_async(lambda: broker.clients == ["edge-01"], what="one edge-01")


async def test_mqtt5_client_is_refused_clearly(
    broker: EmbeddedBroker, clients: list[Client]
) -> None:
    assert broker.port
    c = Client(broker.port, "v5", protocol=mqtt.MQTTv5)
    clients.append(c)
    await c.connect(expect="Unsupported protocol version")


async def test_user_check() -> None:
    async with EmbeddedBroker(users={"edge-01": "s3cret"}) as broker:
        assert broker.port
        good = Client(broker.port, auth=("edge-01", "s3cret"))
        bad = Client(broker.port, auth=("edge-01", "wrong"))
        anon = Client(broker.port)
        try:
            await good.connect()
            await bad.connect(expect="Bad user name or password")
            await anon.connect(expect="Bad user name or password")
        finally:
            for c in (good, bad, anon):
                c.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x30\x05\x00\x01a",  # PUBLISH before CONNECT
        b"\x10\xff\xff\xff\xff\x7f",  # malformed remaining length
        b"\x10\x04\x00\x02MQ",  # truncated CONNECT, then EOF
    ],
)
async def test_garbage_closes_that_connection_only(
    broker: EmbeddedBroker, clients: list[Client], garbage: bytes
) -> None:
    assert broker.port
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(garbage)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), timeout=10) == b""
    writer.close()
    ok = Client(broker.port)
    clients.append(ok)
    await ok.connect()


async def test_stop_closes_clients_and_port() -> None:
    broker = EmbeddedBroker()
    await broker.start()
    assert broker.port
    port = broker.port
    c = Client(port, "x")
    try:
        await c.connect()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_connect_packet("raw", 60))
        assert await reader.readexactly(4) == b"\x20\x02\x00\x00"
        await broker.stop()
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        c.c.loop_stop()
    await broker.stop()  # twice is harmless


@pytest.mark.parametrize(
    ("flt", "topic_name", "match"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "a/b", True),
        ("+", "/a", False),
        ("+/a", "/a", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/c", False),
    ],
)
def test_topic_matches(flt: str, topic_name: str, match: bool) -> None:
    assert topic_matches(flt, topic_name) is match
