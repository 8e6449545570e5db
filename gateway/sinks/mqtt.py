"""MQTT sink (ARCHITECTURE.md 4.3): outbox rows out at QoS 1, retained status, last will.

paho-mqtt owns the session: connect (TCP or TLS, credentials, last will), CONNACK,
keep-alive, retained status messages, disconnect. It is driven from the asyncio loop, with
no network thread (a thread doubles the cost of a publish: bench/README.md): the loop
watches paho's socket (``add_reader``/``add_writer`` through paho's socket callbacks) and
calls ``loop_read``/``loop_write``; a 1 s task calls ``loop_misc`` for keep-alives.

The rows themselves — thousands a second — do not go through ``Client.publish``, which
builds a message object with a ``threading.Condition`` per message and sends each packet
with its own system call. :meth:`MqttSink.deliver` writes a batch's QoS 1 PUBLISH packets
(MQTT 3.1.1 §3.3: fixed header, topic, packet id, payload) into one buffer, numbered from
paho's own packet-id counter, and queues it on paho's output queue as one packet, so it
leaves in one ``send`` between paho's own packets. Their PUBACKs are taken from the read
buffer in runs at packet boundaries (§3.4: four bytes each) and ack the rows' seqs in the
outbox; anything else read goes to paho as before.

At most ``max_inflight`` publishes wait for their PUBACK; when the window is full the
sink waits for acks, so a slow broker holds back this sink's cursor, never the polling.
Each connection is a fresh paho client (clean session): after a reconnect everything
after the cursor is published again (at-least-once; ``seq`` de-duplicates).

Retained status messages (:meth:`MqttSink.publish_status`) are kept, latest per topic,
and published again after every reconnect. The will sets the gateway's status topic to
``{"state": "offline"}`` when the connection dies; a clean stop publishes it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Container, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import SinkError
from gateway.mqtt_packets import PUBACK, PUBLISH_QOS1, fixed_header, topic_name
from gateway.outbox import Outbox, Row
from gateway.settings import MqttSettings
from gateway.sinks.base import Sink
from gateway.wire import dumps, rfc3339

__all__ = ["MqttSink"]

log = logging.getLogger(__name__)

OFFLINE = b'{"state":"offline"}'
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux
_PUBACK_OK = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


def _abandon(connecting: asyncio.Future[Any], client: paho.Client) -> None:
    """A connect that finished after its task was cancelled: close what it opened."""
    if not connecting.cancelled() and connecting.exception() is None:
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class _TrackingContext(ssl.SSLContext):
    """An SSLContext that remembers the last socket it wrapped (to close it when paho
    fails a handshake and drops it)."""

    last_socket: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.last_socket = sock
        return sock


_PUBACK_BYTE = PUBACK << 4  # the first byte of a PUBACK (§3.4.1)

#: Every private name of ``paho.mqtt.client.Client`` that :class:`_BufferedClient` uses,
#: with what it relies on. They are paho-mqtt 2.2's (pyproject pins that version);
#: tests/unit/gateway/test_paho_internals.py fails when an upgrade changes one.
PAHO_INTERNALS: dict[str, str] = {
    "_sock_recv": "method (self, bufsize) -> bytes; raises BlockingIOError when empty",
    "_packet_queue": "method (self, command, packet, mid, qos, info=None): queue for loop_write",
    "_handle_pubackcomp": "method (self, cmd): handle the PUBACK in _in_packet",
    "_do_on_publish": "method (self, mid, reason_code, properties): complete a publish",
    "_in_packet": "dict with 'command' (0 between packets) and 'packet' (the body)",
    "_last_bytes_received": "float, time.monotonic() of the last read (keep-alive)",
    "_last_mid": "int, the last packet id given out",
    "_out_message_mutex": "lock guarding _out_messages",
    "_out_messages": "mapping of packet id -> paho's own messages in flight",
    "_protocol": "MQTTProtocolVersion of the connection",
    "_sock": "the socket, None when not connected",
}


class _BufferedClient(paho.Client):
    """A paho client with two additions for the sink's hot path.

    Reads: paho reads a packet with two or three ``recv`` calls (type, length, body): this
    client reads what the socket has at once and serves paho from that buffer, so a burst
    of PUBACKs costs one system call. :meth:`buffered` tells the reader to call
    ``loop_read`` again (no readiness event comes for bytes already read). When paho is
    about to read a new packet, the PUBACKs at the head of the buffer whose packet ids are
    in ``owned`` (the sink's publishes) are taken in one run and handed to ``on_acks``.

    Writes: :meth:`queue_publishes` queues a buffer of ready PUBLISH packets on paho's
    output queue as one packet (written in order with paho's own, by ``loop_write``).

    Both use paho's private names, every one of them listed in :data:`PAHO_INTERNALS`.
    """

    _rbuf: bytes = b""
    _rpos: int = 0
    owned: Container[int] = ()
    on_acks: Callable[[list[int]], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        take = bufsize == 1 and self.on_acks is not None and self._in_packet["command"] == 0
        while True:
            buf, pos = self._rbuf, self._rpos
            if take:
                pos = self._take_acks(buf, pos)
            if pos < len(buf):
                break
            buf = super()._sock_recv(65536)  # BlockingIOError when empty: paho's AGAIN
            if not buf:
                return buf  # EOF
            self._rbuf, self._rpos = buf, 0
            self._last_bytes_received = time.monotonic()  # paho's keep-alive clock
            if _TCP_QUICKACK is not None:
                # ACK at once: a broker with Nagle on (mosquitto's default) holds further
                # PUBACKs until its first is ACKed, and Linux delays ACKs up to 40 ms
                with contextlib.suppress(OSError, AttributeError):
                    self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[union-attr]
        out = buf[pos : pos + bufsize]
        self._rpos = pos + len(out)
        return out

    def _take_acks(self, buf: bytes, pos: int) -> int:
        """Take the run of whole PUBACKs of owned packet ids at ``pos``; the new position."""
        owned, end, mids = self.owned, len(buf) - 3, []
        while pos < end and buf[pos] == _PUBACK_BYTE and buf[pos + 1] == 2:
            mid = (buf[pos + 2] << 8) | buf[pos + 3]
            if mid not in owned:
                break  # paho's own publish (a retained status): paho handles it
            mids.append(mid)
            pos += 4
        if mids:
            self._rpos = pos
            assert self.on_acks is not None
            self.on_acks(mids)
        return pos

    def buffered(self) -> bool:
        return self._rpos < len(self._rbuf)

    def next_mid(self) -> int:
        """The packet id paho would give the next message (its counter is shared)."""
        mid = self._last_mid + 1
        return mid if mid < 65536 else 1

    def queue_publishes(self, packets: bytes, last_mid: int) -> None:
        """Queue ready PUBLISH packets numbered up to ``last_mid`` (one write, in order)."""
        self._last_mid = last_mid
        self._packet_queue(PUBLISH_QOS1, memoryview(packets), last_mid, 1)  # type: ignore[arg-type]

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        # MQTT 3.1.1 PUBACK: two bytes of message id. paho builds a ReasonCode and a
        # Properties object for each; with no properties in 3.1.1, shared ones do.
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol != MQTTProtocolVersion.MQTTv311 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        if mid in self.owned and self.on_acks is not None:
            self.on_acks([mid])  # a PUBACK split across reads
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_OK, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class MqttSink(Sink):
    """Publishes the outbox's ``mqtt`` cursor to a broker.

    ``site`` and ``gateway_id`` name the status topics; measurement and event topics were
    fixed when the rows were added to the outbox.
    """

    def __init__(
        self,
        settings: MqttSettings,
        outbox: Outbox,
        *,
        site: str,
        gateway_id: str,
        name: str = "mqtt",
    ) -> None:
        super().__init__(
            outbox,
            name,
            batch_size=settings.batch_size,
            backoff_min_s=settings.backoff_min_s,
            backoff_max_s=settings.backoff_max_s,
            flush_timeout_s=settings.flush_timeout_s,
        )
        self.settings = settings
        self.site = site
        self.gateway_id = gateway_id
        self.client_id = settings.client_id or f"calgate-{site}-{gateway_id}"
        self.status_base = f"{settings.topic_prefix}/{site}/"
        self.gateway_status_topic = f"{self.status_base}gateway/{gateway_id}/status"
        self._status: dict[str, bytes] = {}
        self._gateway_status: dict[str, Any] = {}
        self._client: _BufferedClient | None = None
        self._sock: Any = None
        self._mids: dict[int, int] = {}  # packet id -> outbox seq, in flight
        self._topics: dict[str, bytes] = {}  # topic -> its encoded field, for deliver
        self._status_mids: set[int] = set()
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost: str | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tls_context: _TrackingContext | None = None
        self._offline_mid = -1
        self._offline_acked = asyncio.Event()
        self.published = 0
        self.max_inflight = settings.max_inflight

    @property
    def inflight(self) -> int:
        """Publishes waiting for their PUBACK (at most ``max_inflight``)."""
        return len(self._mids)

    # ------------------------------------------------------------------ status topics

    def publish_status(self, equipment: str, payload: Mapping[str, Any]) -> None:
        """Retained ``{prefix}/{site}/{equipment}/status``; the latest wins and is
        published again after every reconnect."""
        self._set_status(f"{self.status_base}{equipment}/status", dumps(dict(payload)).encode())

    def clear_status(self, equipment: str) -> None:
        """Delete the retained status of an equipment that is no longer configured (an
        empty retained message; sent again after a reconnect, so a deletion asked for
        while the broker is away is not lost)."""
        self._set_status(f"{self.status_base}{equipment}/status", b"")

    def publish_gateway_status(self, payload: Mapping[str, Any]) -> None:
        """Retained ``{prefix}/{site}/gateway/{gateway_id}/status`` while online
        (``state`` defaults to ``"online"``); the will replaces it with offline."""
        self._gateway_status = dict(payload)
        self._set_status(self.gateway_status_topic, self._online_payload())

    def _online_payload(self) -> bytes:
        body: dict[str, Any] = {"state": "online", "gateway": self.gateway_id, "site": self.site}
        body.update(self._gateway_status)
        body.setdefault("ts", rfc3339(datetime.now(UTC)))
        return dumps(body).encode()

    def _set_status(self, topic: str, payload: bytes) -> None:
        self._status[topic] = payload
        if self.connected and self._client is not None:
            self._publish_retained(topic, payload)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._status_mids.add(info.mid)

    # ------------------------------------------------------------------ connection

    def _new_client(self) -> _BufferedClient:
        s = self.settings
        c = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        # The window is ours (``window()``): paho's own limit would queue messages and
        # rescan every queued message on each PUBACK (O(window) per ack), so it is off.
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        c.connect_timeout = s.connect_timeout_s
        if s.username:
            c.username_pw_set(
                s.username, s.password.get_secret_value() if s.password is not None else None
            )
        self._tls_context = None
        if s.tls:
            ctx = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
            if s.ca_file is not None:
                ctx.load_verify_locations(cafile=str(s.ca_file))
            else:
                ctx.load_default_certs()
            self._tls_context = ctx
            if s.cert_file is not None and s.key_file is not None:
                ctx.load_cert_chain(str(s.cert_file), str(s.key_file))
            if s.tls_insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            c.tls_set_context(ctx)
        c.will_set(self.gateway_status_topic, OFFLINE, qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.owned = self._mids
        c.on_acks = self._on_acks
        return c

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._lost = None
        self._mids.clear()
        self._status_mids.clear()
        self._topics.clear()
        client = self._new_client()
        self._client = client
        self._connack = loop.create_future()
        s = self.settings
        # socket, TLS handshake and the CONNECT packet: blocking, so in a thread;
        # paho has no socket callbacks yet, so nothing touches the loop from there
        connecting = asyncio.ensure_future(
            asyncio.to_thread(client.connect, s.host, s.port, s.keepalive_s)
        )
        try:
            await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # the thread cannot be stopped: close its socket when it is done
            connecting.add_done_callback(lambda f: _abandon(f, client))
            raise
        except (OSError, ssl.SSLError, ValueError) as exc:
            # paho leaves a socket open when the TLS handshake fails
            if self._tls_context is not None and self._tls_context.last_socket is not None:
                self._tls_context.last_socket.close()
            raise SinkError(f"cannot connect to {s.url}: {exc}") from exc
        sock: Any = client.socket()
        if sock is None:
            raise SinkError(f"cannot connect to {s.url}: no socket")
        self._sock = sock
        with contextlib.suppress(OSError):  # a publish must not wait for an ACK (Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        loop.add_reader(sock, self._readable)
        if client.want_write():
            client.loop_write()
        self._readable()  # TLS may already hold decrypted bytes
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                reason = await self._connack
        except TimeoutError:
            raise SinkError(f"{s.url}: no CONNACK within {s.connect_timeout_s} s") from None
        if reason.is_failure:
            raise SinkError(f"{s.url}: connection refused by the broker: {reason}")
        self._misc_task = asyncio.create_task(self._misc(client), name=f"sink:{self.name}:misc")
        # statuses first: the gateway is online, then every equipment's latest
        self._status[self.gateway_status_topic] = self._online_payload()
        for topic, payload in self._status.items():
            self._publish_retained(topic, payload)
        log.info("mqtt sink: connected to %s as %s", s.url, self.client_id)

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_read()
        sock = self._sock
        # bytes already read into the buffer (or decrypted by TLS) raise no readiness event
        while sock is not None and self._sock is sock:
            if not (client.buffered() or (isinstance(sock, ssl.SSLSocket) and sock.pending())):
                break
            client.loop_read()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and client is self._client:
            self._loop.add_writer(sock, self._writable)

    def _writable(self) -> None:
        """Write what paho has queued (a batch of rows is one buffer, one ``send``)."""
        client = self._client
        if client is not None:
            client.loop_write()

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_writer(sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
        if client is self._client:
            self._connection_lost("connection closed")

    async def _misc(self, client: paho.Client) -> None:
        while client is self._client:
            await asyncio.sleep(1.0)
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._connection_lost("keep-alive failed")
                return

    def _connection_lost(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(SinkError(f"{self.settings.url}: {why}"))
        self.outbox.wake(self.name)

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_result(reason)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if client is self._client:
            self._connection_lost(f"disconnected ({reason})")

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        seq = self._mids.pop(mid, None)
        if seq is None:
            self._status_mids.discard(mid)
            if mid == self._offline_mid:
                self._offline_acked.set()
            return
        self.outbox.ack_one(self.name, seq)
        self.delivered += 1
        if len(self._mids) == self.max_inflight - 1 or not self._mids:
            self.outbox.wake(self.name)  # the window opened, or a flush may be done

    def _on_acks(self, mids: list[int]) -> None:
        """PUBACKs of rows (packet ids in ``self._mids``): ack their seqs in the outbox."""
        inflight = self._mids
        was_full = len(inflight) >= self.max_inflight
        pop, ack, name = inflight.pop, self.outbox.ack_one, self.name
        n = len(inflight)
        for mid in mids:
            seq = pop(mid, None)
            if seq is not None:  # None: a duplicate PUBACK
                ack(name, seq)
        self.delivered += n - len(inflight)
        if was_full or not inflight:
            self.outbox.wake(self.name)  # the window opened, or a flush may be done

    # ------------------------------------------------------------------ Sink

    def window(self) -> int:
        return self.max_inflight - len(self._mids)

    def check(self) -> None:
        if self._lost is not None:
            raise SinkError(f"{self.settings.url}: {self._lost}")

    def drained(self) -> bool:
        return not self._mids and self.outbox.depth(self.name) == 0

    async def deliver(self, rows: list[Row]) -> None:
        client = self._client
        if client is None:
            raise SinkError("not connected")
        if not rows:
            return
        if self._sock is None or self._lost is not None:
            raise SinkError(f"{self.settings.url}: {self._lost or 'not connected'}")
        mids, busy, topics = self._mids, self._status_mids, self._topics
        mid = client.next_mid()
        parts: list[bytes] = []
        add = parts.extend
        for row in rows:
            topic = topics.get(row.topic)
            if topic is None:
                topic = topics[row.topic] = topic_name(row.topic)
            while mid in mids or mid in busy or mid == self._offline_mid:
                mid = mid + 1 if mid < 65535 else 1
            payload = row.payload
            head = fixed_header(PUBLISH_QOS1, len(topic) + 2 + len(payload))
            add((head, topic, mid.to_bytes(2), payload))
            mids[mid] = row.seq
            last, mid = mid, mid + 1 if mid < 65535 else 1
        client.queue_publishes(b"".join(parts), last)
        self.published += len(rows)

    async def close(self, *, clean: bool) -> None:
        client = self._client
        if client is None:
            return
        try:
            if clean and self._lost is None and self._sock is not None:
                await self._say_offline(client)
                client.disconnect()
                if client.want_write():
                    client.loop_write()
        except Exception as exc:  # closing never raises; the connection goes anyway
            log.debug("mqtt sink: unclean close: %s", exc)
        finally:
            self._client = None
            # paho closes its socket again when the client is collected: no callbacks
            client.on_socket_close = None
            client.on_socket_register_write = None
            client.on_socket_unregister_write = None
            sock = self._sock
            self._sock = None
            if sock is not None and self._loop is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._loop.remove_reader(sock)
                    self._loop.remove_writer(sock)
                with contextlib.suppress(OSError):
                    sock.close()
            if self._misc_task is not None:
                self._misc_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._misc_task
                self._misc_task = None
            self._mids.clear()
            self._status_mids.clear()

    async def _say_offline(self, client: paho.Client) -> None:
        """A clean stop: the gateway's status goes offline (the will covers crashes)."""
        self._status[self.gateway_status_topic] = OFFLINE
        info = client.publish(self.gateway_status_topic, OFFLINE, qos=1, retain=True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        self._offline_mid = info.mid
        self._offline_acked.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._offline_acked.wait()
