"""A small MQTT 3.1.1 broker on asyncio, for ``calgate demo`` on a machine without mosquitto.

It is enough for the demo and for watching it with any MQTT client (``mosquitto_sub``,
paho, MQTT Explorer): CONNECT / CONNACK (3.1.1 and 3.1), SUBSCRIBE / UNSUBSCRIBE with
``+`` and ``#`` wildcards, PUBLISH at QoS 0, 1 and 2 in (QoS 2 is completed with
PUBREC / PUBREL / PUBCOMP and delivered once), QoS 0 and 1 out (subscriptions are
granted at most QoS 1), retained messages, last will on an abrupt disconnect or a
keep-alive timeout, persistent sessions (``clean_session = false``: subscriptions and
QoS 1 messages kept while offline, unacknowledged ones resent with DUP), PINGREQ and
DISCONNECT. MQTT 5 clients are refused with a v5 CONNACK "unsupported protocol
version" (0x84), so their error is clear. No TLS, no bridges, no ``$SYS``; optional
username/password check. It is not a production broker: use mosquitto for that.

``amqtt`` (the maintained pure-Python broker) was evaluated and works with paho 2.2, but
pulls in ~20 packages (typer, rich, psutil, websockets, argon2-cffi, PyYAML, …) and costs
~100 ms to import, for a demo convenience; this module has no dependency.

    broker = EmbeddedBroker()           # 127.0.0.1, a free port
    await broker.start()
    print(broker.port)
    ...
    await broker.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.mqtt_packets import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    ProtocolError,
    Reader,
    packet,
    string,
)

__all__ = ["EmbeddedBroker", "topic_matches"]

log = logging.getLogger(__name__)

# CONNACK return codes (3.1.1)
_ACCEPTED, _BAD_VERSION, _BAD_CLIENT_ID, _BAD_AUTH = 0x00, 0x01, 0x02, 0x04

_OFFLINE_QUEUE_MAX = 10_000
_WRITE_BUFFER_MAX = 16 * 1024 * 1024  # a subscriber this far behind is dropped


@dataclass(slots=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass(eq=False)
class _Session:
    client_id: str
    clean: bool
    subscriptions: dict[str, int] = field(default_factory=dict)
    offline: deque[_Message] = field(default_factory=lambda: deque(maxlen=_OFFLINE_QUEUE_MAX))
    inflight: dict[int, _Message] = field(default_factory=dict)
    qos2_received: set[int] = field(default_factory=set)
    conn: _Conn | None = None
    _ids: itertools.cycle[int] = field(default_factory=lambda: itertools.cycle(range(1, 65536)))

    def next_id(self) -> int:
        for pid in self._ids:
            if pid not in self.inflight:
                return pid
        raise AssertionError("unreachable")


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    session: _Session
    keepalive_s: int
    will: _Message | None
    closed: bool = False


def _valid_filter(flt: str) -> bool:
    if not flt or "\0" in flt:
        return False
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(flt: str, topic: str) -> bool:
    """Whether a topic filter (with ``+`` / ``#``) matches a topic name (MQTT 3.1.1 §4.7)."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f_levels = flt.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


class EmbeddedBroker:
    """A minimal MQTT 3.1.1 broker; see the module docstring for what it does."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        users: Mapping[str, str] | None = None,
        max_packet_bytes: int = 1024 * 1024,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self._port = port
        self.users = dict(users) if users is not None else None
        self.max_packet_bytes = max_packet_bytes
        self.connect_timeout_s = connect_timeout_s
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, _Message] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._anon = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen; afterwards :attr:`port` is the bound port."""
        if self._server is not None:
            return
        self._closing = False
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("embedded MQTT broker on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close every connection (wills are not sent)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        # Closing the transports ends every handler's read; cancelling a stream handler
        # instead makes Python 3.11's asyncio log a spurious error.
        for writer in list(self._writers):
            writer.close()
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=5.0)
            for task in pending:
                task.cancel()
        await server.wait_closed()
        self._sessions.clear()
        self.port = None
        log.info("embedded MQTT broker stopped")

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def clients(self) -> list[str]:
        """Client ids connected now."""
        return [s.client_id for s in self._sessions.values() if s.conn is not None]

    @property
    def retained(self) -> dict[str, bytes]:
        """Retained payloads by topic."""
        return {t: m.payload for t, m in self._retained.items()}

    # -- connection handling -----------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        conn: _Conn | None = None
        clean_exit = False
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                kind, _flags, body = await self._readpacket(reader)
            if kind != CONNECT:
                raise ProtocolError(f"first packet is type {kind}, not CONNECT")
            conn = self._connect(writer, body)
            if conn is None:
                await writer.drain()
                return
            await writer.drain()
            clean_exit = await self._serve(conn, reader)
        except ProtocolError as exc:
            log.info("MQTT client %s: protocol error: %s", peer, exc)
        except TimeoutError:
            log.info("MQTT client %s: timed out", peer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            log.debug("MQTT client %s: connection lost", peer)
        finally:
            if conn is not None:
                self._drop(conn, send_will=not clean_exit)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._writers.discard(writer)
            self._handlers.discard(task)

    async def _readpacket(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        first = (await reader.readexactly(1))[0]
        length = 0
        for i in range(4):
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                break
        else:
            raise ProtocolError("malformed remaining length")
        if length > self.max_packet_bytes:
            raise ProtocolError(f"packet of {length} bytes exceeds {self.max_packet_bytes}")
        body = await reader.readexactly(length) if length else b""
        return first >> 4, first & 0x0F, body

    def _connect(self, writer: asyncio.StreamWriter, body: bytes) -> _Conn | None:
        r = Reader(body)
        proto = r.string()
        level = r.u8()
        if level == 5:
            # MQTT 5 CONNACK: flags, reason 0x84 "unsupported protocol version", no properties
            writer.write(packet(CONNACK, 0, b"\x00\x84\x00"))
            log.info("refused an MQTT 5 client: this broker speaks MQTT 3.1.1")
            return None
        if (proto, level) not in (("MQTT", 4), ("MQIsdp", 3)):
            writer.write(packet(CONNACK, 0, bytes([0, _BAD_VERSION])))
            return None
        flags = r.u8()
        if flags & 0x01:
            raise ProtocolError("reserved CONNECT flag set")
        keepalive = r.u16()
        clean = bool(flags & 0x02)
        client_id = r.string()
        will = None
        if flags & 0x04:
            will_topic = r.string()
            will_payload = r.binary()
            will_qos = (flags >> 3) & 0x03
            if will_qos > 2 or not will_topic or any(c in will_topic for c in "+#"):
                raise ProtocolError("invalid will")
            will = _Message(will_topic, will_payload, will_qos, bool(flags & 0x20))
        elif flags & 0x38:
            raise ProtocolError("will flags without a will")
        username = r.string() if flags & 0x80 else None
        password = r.binary() if flags & 0x40 else None
        if self.users is not None and (
            username is None
            or username not in self.users
            or password != self.users[username].encode()
        ):
            writer.write(packet(CONNACK, 0, bytes([0, _BAD_AUTH])))
            return None
        if not client_id:
            if not clean:
                writer.write(packet(CONNACK, 0, bytes([0, _BAD_CLIENT_ID])))
                return None
            client_id = f"calgate-anon-{next(self._anon)}"
        session = self._sessions.get(client_id)
        if session is not None and session.conn is not None:
            log.info("MQTT client %s connected again: closing its old connection", client_id)
            old = session.conn
            self._drop(old, send_will=True)
            old.writer.close()
        present = session is not None and not clean and not session.clean
        if session is None or clean or session.clean:
            session = _Session(client_id, clean)
            self._sessions[client_id] = session
        conn = _Conn(writer, session, keepalive, will)
        session.conn = conn
        writer.write(packet(CONNACK, 0, bytes([1 if present else 0, _ACCEPTED])))
        if present:
            for pid, msg in list(session.inflight.items()):
                self._write_publish(conn, msg, pid, dup=True)
            while session.offline:
                self._deliver(session, session.offline.popleft())
        log.debug("MQTT client %s connected (clean=%s)", client_id, clean)
        return conn

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader) -> bool:
        """Serve packets until DISCONNECT (True) or the connection ends (raises)."""
        timeout = conn.keepalive_s * 1.5 if conn.keepalive_s else None
        while not conn.closed:
            async with asyncio.timeout(timeout):
                kind, flags, body = await self._readpacket(reader)
            if kind == PUBLISH:
                self._on_publish(conn, flags, body)
            elif kind == PUBACK:
                conn.session.inflight.pop(Reader(body).u16(), None)
            elif kind == PUBREL:
                pid = Reader(body).u16()
                conn.session.qos2_received.discard(pid)
                conn.writer.write(packet(PUBCOMP, 0, struct.pack("!H", pid)))
            elif kind in (PUBREC, PUBCOMP):
                pass  # we never send QoS 2
            elif kind == SUBSCRIBE:
                self._on_subscribe(conn, flags, body)
            elif kind == UNSUBSCRIBE:
                r = Reader(body)
                pid = r.u16()
                while not r.at_end():
                    conn.session.subscriptions.pop(r.string(), None)
                conn.writer.write(packet(UNSUBACK, 0, struct.pack("!H", pid)))
            elif kind == PINGREQ:
                conn.writer.write(packet(PINGRESP, 0, b""))
            elif kind == DISCONNECT:
                conn.will = None
                return True
            else:
                raise ProtocolError(f"unexpected packet type {kind}")
            await conn.writer.drain()
        return False

    def _drop(self, conn: _Conn, *, send_will: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        session = conn.session
        if session.conn is conn:
            session.conn = None
            if session.clean and self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]
        if send_will and conn.will is not None and not self._closing:
            log.debug("MQTT client %s gone: publishing its will", session.client_id)
            self._publish(conn.will)
        conn.will = None

    # -- publish / subscribe -----------------------------------------------------

    def _on_publish(self, conn: _Conn, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3")
        r = Reader(body)
        topic = r.string()
        if not topic or any(c in topic for c in "+#\0"):
            raise ProtocolError(f"invalid topic name {topic!r}")
        pid = r.u16() if qos else 0
        msg = _Message(topic, r.rest(), qos, bool(flags & 0x01))
        if qos == 2:
            if pid not in conn.session.qos2_received:
                conn.session.qos2_received.add(pid)
                self._publish(msg)
            conn.writer.write(packet(PUBREC, 0, struct.pack("!H", pid)))
            return
        self._publish(msg)
        if qos == 1:
            conn.writer.write(packet(PUBACK, 0, struct.pack("!H", pid)))

    def _publish(self, msg: _Message) -> None:
        if msg.retain:
            if msg.payload:
                self._retained[msg.topic] = msg
            else:
                self._retained.pop(msg.topic, None)
        for session in list(self._sessions.values()):
            granted = -1
            for flt, qos in session.subscriptions.items():
                if qos > granted and topic_matches(flt, msg.topic):
                    granted = qos
            if granted >= 0:
                self._deliver(session, _Message(msg.topic, msg.payload, min(msg.qos, granted)))

    def _deliver(self, session: _Session, msg: _Message) -> None:
        conn = session.conn
        if conn is None or conn.closed:
            if not session.clean and msg.qos > 0:
                session.offline.append(msg)
            return
        pid = 0
        if msg.qos:
            pid = session.next_id()
            session.inflight[pid] = msg
        self._write_publish(conn, msg, pid)

    def _write_publish(self, conn: _Conn, msg: _Message, pid: int, *, dup: bool = False) -> None:
        transport = conn.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > _WRITE_BUFFER_MAX:
            log.warning("MQTT client %s too slow: disconnecting it", conn.session.client_id)
            conn.writer.close()
            return
        flags = (0x08 if dup else 0) | msg.qos << 1 | (0x01 if msg.retain else 0)
        head = string(msg.topic) + (struct.pack("!H", pid) if msg.qos else b"")
        conn.writer.write(packet(PUBLISH, flags, head + msg.payload))

    def _on_subscribe(self, conn: _Conn, flags: int, body: bytes) -> None:
        if flags != 0x02:
            raise ProtocolError("SUBSCRIBE flags must be 0010")
        r = Reader(body)
        pid = r.u16()
        granted: list[int] = []
        new: list[tuple[str, int]] = []
        while not r.at_end():
            flt = r.string()
            qos = r.u8()
            if qos & 0xFC:
                raise ProtocolError("invalid requested QoS")
            if _valid_filter(flt):
                g = min(qos, 1)
                conn.session.subscriptions[flt] = g
                granted.append(g)
                new.append((flt, g))
            else:
                granted.append(0x80)
        if not granted:
            raise ProtocolError("SUBSCRIBE without topic filters")
        conn.writer.write(packet(SUBACK, 0, struct.pack("!H", pid) + bytes(granted)))
        for flt, g in new:
            for msg in list(self._retained.values()):
                if topic_matches(flt, msg.topic):
                    out = _Message(msg.topic, msg.payload, min(msg.qos, g), retain=True)
                    pid_out = 0
                    if out.qos:
                        pid_out = conn.session.next_id()
                        conn.session.inflight[pid_out] = out
                    self._write_publish(conn, out, pid_out)
