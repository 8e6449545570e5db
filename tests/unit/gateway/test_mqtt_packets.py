"""The PUBLISH packets the MQTT sink writes itself (MQTT 3.1.1 §2.2.3, §3.3)."""

from __future__ import annotations

import pytest

from gateway.sinks.mqtt import _fixed_header, _topic_field

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
    assert _fixed_header(length) == b"\x32" + encoded  # PUBLISH, QoS 1


def test_topic_is_a_length_prefixed_utf8_string() -> None:
    assert (
        _topic_field("calgate/lab-a/PT-101/p/reading") == b"\x00\x1ecalgate/lab-a/PT-101/p/reading"
    )
    assert _topic_field("µ") == b"\x00\x02\xc2\xb5"


@pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "x" * 65_536])
def test_invalid_publish_topics_are_refused(topic: str) -> None:
    with pytest.raises(ValueError, match="invalid publish topic"):
        _topic_field(topic)
