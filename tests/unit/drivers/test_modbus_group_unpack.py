"""ModbusDriver decodes a request group with one struct: the same values as channel by channel."""

from __future__ import annotations

import math
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus import WIDTH, ModbusConfig, ModbusDriver

ORDERS_32 = ("ABCD", "CDAB", "BADC", "DCBA")
ORDERS_16 = ("AB", "BA")


@st.composite
def layouts(draw: st.DrawFn) -> list[dict[str, object]]:
    channels: list[dict[str, object]] = []
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(sorted(WIDTH)))
        order = draw(st.sampled_from(ORDERS_16 if WIDTH[kind] == 1 else ORDERS_32))
        channels.append(
            {
                "name": f"c{i}",
                "register": draw(st.sampled_from(["input", "holding"])),
                "address": draw(st.integers(0, 40)),
                "type": kind,
                "word_order": order,
            }
        )
    return channels


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=300, deadline=None)
@given(layouts(), st.binary(min_size=2 * 125, max_size=2 * 125))
def test_group_struct_equals_channel_by_channel(
    channels: list[dict[str, object]], payload: bytes
) -> None:
    driver = ModbusDriver(ModbusConfig(id="X", url="tcp://127.0.0.1:1", channels=channels))  # type: ignore[arg-type]
    datas = [payload[: 2 * group.count] for group in driver.groups]
    expected = [d.decode(datas[d.group]) for d in driver.decoders]
    got = driver._decode(datas)
    assert len(got) == len(expected)
    assert all(same(g, e) for g, e in zip(got, expected, strict=True))


def test_contiguous_block_uses_one_struct_per_group() -> None:
    channels = [
        {"name": f"p{j}", "register": "input", "address": 200 + j, "type": "int16"}
        for j in range(50)
    ] + [{"name": "f", "register": "input", "address": 0, "type": "float32"}]
    driver = ModbusDriver(ModbusConfig(id="X", url="tcp://127.0.0.1:1", channels=channels))  # type: ignore[arg-type]
    assert driver._unpackers is not None
    assert len(driver._unpackers) == 2
    block = struct.pack(">50h", *range(-25, 25))
    head = struct.pack(">f", 1013.25)
    datas = [block if g.address == 200 else head for g in driver.groups]
    assert driver._decode(datas) == [*range(-25, 25), 1013.25]


def test_permuted_word_order_falls_back_to_channel_by_channel() -> None:
    channels = [
        {"name": "a", "register": "input", "address": 0, "type": "float32", "word_order": "CDAB"},
        {"name": "b", "register": "input", "address": 2, "type": "int16"},
    ]
    driver = ModbusDriver(ModbusConfig(id="X", url="tcp://127.0.0.1:1", channels=channels))  # type: ignore[arg-type]
    assert driver._unpackers is None
    data = bytes([0x20, 0x00, 0x47, 0xF1, 0x00, 0x07])  # 123456.0 in CDAB, then 7
    assert driver._decode([data]) == [123456.0, 7]
