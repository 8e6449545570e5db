"""MQTT 3.1.1 packets as bytes, without I/O: the one codec of the MQTT sink's own PUBLISH
packets and PUBACK parsing (:mod:`gateway.sinks.mqtt`) and of the embedded broker
(:mod:`gateway.embedded_broker`).

Section numbers are those of the OASIS standard "MQTT Version 3.1.1" (2014).
"""

from __future__ import annotations

import struct

__all__ = [
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "PINGREQ",
    "PINGRESP",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBLISH_QOS1",
    "PUBREC",
    "PUBREL",
    "SUBACK",
    "SUBSCRIBE",
    "UNSUBACK",
    "UNSUBSCRIBE",
    "ProtocolError",
    "Reader",
    "fixed_header",
    "packet",
    "string",
    "topic_name",
]

# Control packet types (§2.2.1)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

#: The first byte of a PUBLISH at QoS 1, no DUP, no RETAIN (§3.3.1).
PUBLISH_QOS1 = PUBLISH << 4 | 0b0010


class ProtocolError(ValueError):
    """Bytes that are not the packet they should be (the peer broke the protocol)."""


def fixed_header(first: int, remaining: int) -> bytes:
    """The fixed header: the first byte and the remaining length as a variable byte
    integer (§2.2.3; one or two bytes for the packets the gateway sends)."""
    if remaining < 0x80:
        return bytes((first, remaining))
    if remaining < 0x4000:
        return bytes((first, (remaining & 0x7F) | 0x80, remaining >> 7))
    out = bytearray((first,))
    while True:
        byte, remaining = remaining & 0x7F, remaining >> 7
        out.append(byte | 0x80 if remaining else byte)
        if not remaining:
            return bytes(out)


def packet(kind: int, flags: int, body: bytes) -> bytes:
    """A whole packet of type ``kind`` with the fixed header's ``flags`` (§2.2.2)."""
    return fixed_header(kind << 4 | flags, len(body)) + body


def string(s: str) -> bytes:
    """A UTF-8 encoded string, prefixed with its length in two bytes (§1.5.3)."""
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def topic_name(topic: str) -> bytes:
    """A PUBLISH topic name as :func:`string` writes it; ValueError for what no topic name
    may be: empty, a wildcard in it, longer than 65,535 bytes (§4.7)."""
    raw = topic.encode()
    if not raw or b"+" in raw or b"#" in raw or len(raw) > 0xFFFF:
        raise ValueError(f"invalid publish topic {topic!r}")
    return len(raw).to_bytes(2, "big") + raw


class Reader:
    """The fields of one packet's body, in order; :class:`ProtocolError` past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos + 1 > len(self.data):
            raise ProtocolError("packet too short")
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolError("packet too short")
        (v,) = struct.unpack_from("!H", self.data, self.pos)
        self.pos += 2
        return int(v)

    def binary(self) -> bytes:
        n = self.u16()
        if self.pos + n > len(self.data):
            raise ProtocolError("string runs past the packet")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def string(self) -> str:
        try:
            return self.binary().decode()
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def at_end(self) -> bool:
        return self.pos >= len(self.data)
