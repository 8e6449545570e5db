"""The MQTT 3.1.1 codec of the sink and the embedded broker (§1.5.3, §2.2.3, §3.3)."""

from __future__ import annotations

import pytest

from gateway.mqtt_packets import (
    PUBACK,
    PUBLISH_QOS1,
    ProtocolError,
    Reader,
    fixed_header,
    packet,
    string,
    topic_name,
)

# MQTT 3.1.1 Table 2.4, "Size of Remaining Length field": the bounds of each size
SPEC = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("length", "encoded"), SPEC)
def test_remaining_length_as_the_standard_encodes_it(length: int, encoded: bytes) -> None:
    assert fixed_header(PUBLISH_QOS1, length) == b"\x32" + encoded  # PUBLISH, QoS 1


def test_topic_is_a_length_prefixed_utf8_string() -> None:
    assert topic_name("calgate/lab-a/PT-101/p/reading") == b"\x00\x1ecalgate/lab-a/PT-101/p/reading"
    assert topic_name("µ") == b"\x00\x02\xc2\xb5"


@pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "x" * 65_536])
def test_invalid_publish_topics_are_refused(topic: str) -> None:
    with pytest.raises(ValueError, match="invalid publish topic"):
        topic_name(topic)


def test_a_packet_read_back_field_by_field() -> None:
    body = string("calgate/lab/x") + (7).to_bytes(2, "big") + b"payload"
    pkt = packet(PUBACK, 0, (513).to_bytes(2, "big"))
    assert pkt == b"\x40\x02\x02\x01"  # §3.4: PUBACK, remaining length 2, packet id
    r = Reader(body)
    assert (r.string(), r.u16(), r.rest(), r.at_end()) == ("calgate/lab/x", 7, b"payload", True)
    with pytest.raises(ProtocolError, match="too short"):
        r.u8()
    with pytest.raises(ProtocolError, match="runs past"):
        Reader(b"\x00\x09abc").string()
    with pytest.raises(ProtocolError, match="UTF-8"):
        Reader(b"\x00\x01\xff").string()
