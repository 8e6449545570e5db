"""Modbus driver, pure parts: decoding, config validation, request planning, reply parsing.

Expected register values are computed here with ``struct`` from the definitions in
docs/internals/protocols.md, independently of the driver's byte permutations.
"""

from __future__ import annotations

import math
import struct

import pytest
from pydantic import ValidationError

from drivers import DRIVERS
from drivers.errors import DeviceError, FrameError
from drivers.modbus import (
    ChannelDecoder,
    ModbusChannel,
    ModbusConfig,
    ModbusDriver,
    RequestGroup,
    RtuTransport,
    TcpTransport,
    decode_registers,
    parse_url,
    plan_requests,
)
from drivers.modbus_tcp import exception_message, parse_read_pdu, split_adus

CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}


def words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def expected_registers(kind: str, value: float, order: str) -> list[int]:
    """Registers per the definitions: ABCD big-endian; DCBA little-endian; CDAB the
    big-endian registers reversed; BADC the little-endian registers reversed."""
    code = CODES[kind]
    big = words(struct.pack(">" + code, value))
    little = words(struct.pack("<" + code, value))
    return {
        "ABCD": big,
        "AB": big,
        "DCBA": little,
        "BA": little,
        "CDAB": big[::-1],
        "BADC": little[::-1],
    }[order]


# --------------------------------------------------------------------------- docs/internals/protocols.md


@pytest.mark.parametrize(
    ("order", "registers"),
    [
        ("ABCD", [0x47F1, 0x2000]),
        ("CDAB", [0x2000, 0x47F1]),
        ("BADC", [0xF147, 0x0020]),
        ("DCBA", [0x0020, 0xF147]),
    ],
)
def test_metrology_float32_examples(order: str, registers: list[int]) -> None:
    assert struct.pack(">f", 123456.0) == bytes.fromhex("47F12000")
    assert expected_registers("float32", 123456.0, order) == registers
    assert decode_registers(registers, "float32", order) == 123456.0  # type: ignore[arg-type]


VALUES: dict[str, list[float]] = {
    "int16": [0, 1, -1, 12345, -12345, 32767, -32768],
    "uint16": [0, 1, 255, 256, 54321, 65535],
    "int32": [0, -1, 123456789, -123456789, 2**31 - 1, -(2**31), 0x01020304],
    "uint32": [0, 1, 3123456789, 2**32 - 1, 0x01020304],
    "float32": [0.0, -0.0, 1.5, -98765.5, 123456.0, 1013.25, 3.4028234663852886e38, 1e-45],
    "float64": [0.0, 1.0e300, -9876.54321, 1013.25, math.pi, 5e-324],
}
ORDERS_32 = ["ABCD", "CDAB", "BADC", "DCBA"]


def cases() -> list[tuple[str, str, float]]:
    out = []
    for kind, values in VALUES.items():
        orders = ["AB", "BA", "ABCD"] if kind.endswith("16") else ORDERS_32
        out += [(kind, order, value) for order in orders for value in values]
    return out


@pytest.mark.parametrize(("kind", "order", "value"), cases())
def test_decode_every_type_and_word_order(kind: str, order: str, value: float) -> None:
    registers = expected_registers(kind, value, order)
    got = decode_registers(registers, kind, order)  # type: ignore[arg-type]
    if kind == "float32":
        assert got == struct.unpack(">f", struct.pack(">f", value))[0]
    else:
        assert got == value
    assert math.copysign(1, got) == math.copysign(1, value)


@pytest.mark.parametrize("order", ORDERS_32)
def test_float64_orders_are_distinct_layouts(order: str) -> None:
    registers = expected_registers("float64", 123456.789, order)
    decoded = {o: decode_registers(registers, "float64", o) for o in ORDERS_32}  # type: ignore[arg-type]
    assert decoded[order] == 123456.789
    assert [o for o, v in decoded.items() if v == 123456.789] == [order]


def test_decoder_reads_at_its_offset_in_a_group() -> None:
    data = struct.pack(">HH", 0xDEAD, 0xBEEF)
    data += bytes(
        b for w in expected_registers("float32", 123456.0, "BADC") for b in w.to_bytes(2, "big")
    )
    data += struct.pack(">H", 0xFFFF)
    decoder = ChannelDecoder(name="p", type="float32", word_order="BADC", byte_offset=4)
    assert decoder.decode(data) == 123456.0
    direct = ChannelDecoder(name="p", type="int16", word_order="AB", byte_offset=8)
    assert direct.decode(data) == -1


def test_decode_registers_checks_the_count() -> None:
    with pytest.raises(ValueError, match="2 registers"):
        decode_registers([1], "float32", "ABCD")


# --------------------------------------------------------------------------- quality, scale


def data_of(kind: str, value: float, order: str = "ABCD") -> bytes:
    return b"".join(w.to_bytes(2, "big") for w in expected_registers(kind, value, order))


@pytest.mark.parametrize("kind", ["float32", "float64"])
@pytest.mark.parametrize("order", ORDERS_32)
def test_nan_and_inf_are_bad_readings(kind: str, order: str) -> None:
    decoder = ChannelDecoder(name="p", type=kind, word_order=order, scale=2.0, offset=5.0)  # type: ignore[arg-type]
    value, flags, quality = decoder.value(data_of(kind, math.nan, order))
    assert math.isnan(value)
    assert (flags, quality) == (frozenset({"nan"}), "bad")
    assert decoder.value(data_of(kind, math.inf, order)) == (
        math.inf,
        frozenset({"overflow"}),
        "bad",
    )
    assert decoder.value(data_of(kind, -math.inf, order)) == (
        -math.inf,
        frozenset({"underflow"}),
        "bad",
    )
    assert decoder.value(data_of(kind, 10.0, order)) == (25.0, frozenset(), "good")


def test_scale_and_offset_apply_to_integers() -> None:
    decoder = ChannelDecoder(name="p", type="int16", word_order="AB", scale=0.1, offset=-1.0)
    value, flags, quality = decoder.value(data_of("int16", -12345, "AB"))
    assert value == pytest.approx(-1235.5)
    assert isinstance(value, float)
    assert (flags, quality) == (frozenset(), "good")
    scaled = ChannelDecoder(name="p", type="uint32", word_order="CDAB", scale=0.001)
    assert scaled.value(data_of("uint32", 1013250, "CDAB"))[0] == pytest.approx(1013.25)


# --------------------------------------------------------------------------- config


def config(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "PT-101",
        "driver": "modbus",
        "url": "tcp://192.0.2.10:502",
        "unit": 1,
        "channels": [{"name": "pressure", "register": "input", "address": 0, "type": "float32"}],
    }
    base.update(overrides)
    return base


def error_locs(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


def test_config_from_the_architecture_example() -> None:
    cfg = ModbusConfig.model_validate(
        config(
            interval_s=0.5,
            channels=[
                {
                    "name": "pressure",
                    "register": "input",
                    "address": 0,
                    "type": "float32",
                    "word_order": "CDAB",
                    "scale": 1.0,
                    "offset": 0.0,
                    "unit": "kPa",
                }
            ],
        )
    )
    assert cfg.channels[0].register_kind == "input"
    assert cfg.channels[0].word_order == "CDAB"
    assert cfg.transport == TcpTransport("192.0.2.10", 502)
    assert cfg.effective_gap_s == 0.0
    assert DRIVERS["modbus"] is ModbusDriver
    assert ModbusDriver.Config is ModbusConfig


@pytest.mark.parametrize(
    ("channel", "loc", "message"),
    [
        ({"type": "int16", "word_order": "CDAB"}, "channels.0.word_order", "one register"),
        ({"type": "uint16", "word_order": "DCBA"}, "channels.0.word_order", "AB"),
        ({"type": "float32", "word_order": "BA"}, "channels.0.word_order", "16-bit"),
        ({"type": "float32", "word_order": "WXYZ"}, "channels.0.word_order", "ABCD"),
        ({"type": "float32", "address": 65535}, "channels.0.address", "past register 65535"),
        ({"type": "float64", "address": 65533}, "channels.0.address", "past register 65535"),
        ({"type": "int16", "address": -1}, "channels.0.address", "greater than"),
        ({"type": "int16", "address": 65536}, "channels.0.address", "less than"),
        ({"type": "int64"}, "channels.0.type", "float64"),
        ({"type": "int16", "register": "coil"}, "channels.0.register", "holding"),
        ({"type": "int16", "scale": math.inf}, "channels.0.scale", "finite"),
        ({"type": "int16", "colour": "red"}, "channels.0.colour", "Extra inputs"),
    ],
)
def test_channel_errors_carry_their_path(
    channel: dict[str, object], loc: str, message: str
) -> None:
    full = {"name": "pressure", "address": 0, **channel}
    with pytest.raises(ValidationError) as info:
        ModbusConfig.model_validate(config(channels=[full]))
    assert loc in error_locs(info.value)
    assert message in str(info.value)


def test_16_bit_types_accept_ab_ba_and_the_default() -> None:
    for order in ("AB", "BA", "ABCD"):
        ch = ModbusChannel.model_validate(
            {"name": "s", "address": 2, "type": "uint16", "word_order": order}
        )
        assert ch.width == 1
    assert (
        ModbusChannel.model_validate({"name": "s", "address": 2, "type": "int16"}).word_order
        == "ABCD"
    )


def test_channel_names_must_be_unique() -> None:
    channels = [
        {"name": "p", "address": 0, "type": "float32"},
        {"name": "t", "address": 2, "type": "int16"},
        {"name": "p", "address": 4, "type": "int16"},
    ]
    with pytest.raises(ValidationError) as info:
        ModbusConfig.model_validate(config(channels=channels))
    assert error_locs(info.value) == {"channels"}
    assert "duplicate channel name 'p' (channels.0 and channels.2)" in str(info.value)


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        ModbusConfig.model_validate(
            config(
                url="udp://x",
                unit=300,
                channels=[
                    {"name": "a", "address": 0, "type": "int16", "word_order": "CDAB"},
                    {"name": "b", "address": 0, "type": "float32", "word_order": "AB"},
                ],
            )
        )
    assert error_locs(info.value) == {
        "url",
        "unit",
        "channels.0.word_order",
        "channels.1.word_order",
    }


def test_at_least_one_channel() -> None:
    with pytest.raises(ValidationError, match="at least one channel"):
        ModbusConfig.model_validate(config(channels=[]))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("udp://host:502", "scheme"),
        ("tcp://:502", "needs a host"),
        ("tcp://host:99999", "bad port"),
        ("tcp://host:502/x", "nothing after"),
        ("rtu://host/dev/ttyUSB0", "rtu:///dev"),
        ("rtu:///dev/ttyUSB0?parity=X", "parity"),
        ("rtu:///dev/ttyUSB0?baudrate=fast", "integer"),
        ("rtu:///dev/ttyUSB0?bytesize=9", "7..8"),
        ("rtu:///dev/ttyUSB0?stopbits=3", "1..2"),
        ("rtu:///dev/ttyUSB0?flow=rtscts", "unknown setting"),
        ("rtu:///dev/ttyUSB0?baudrate=9600&baudrate=19200", "twice"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModbusConfig.model_validate(config(url=url))
    assert error_locs(info.value) == {"url"}
    assert message in str(info.value)


def test_rtu_url_settings_and_default_gap() -> None:
    transport = parse_url("rtu:///dev/ttyUSB1?baudrate=19200&parity=e&bytesize=8&stopbits=1")
    assert transport == RtuTransport("/dev/ttyUSB1", 19200, "E", 8, 1)
    cfg = ModbusConfig.model_validate(config(url="rtu:///dev/ttyUSB1?baudrate=19200&parity=E"))
    # 11 bits per character (start, 8 data, parity, stop): 3.5 characters at 19200 baud
    assert cfg.effective_gap_s == pytest.approx(3.5 * 11 / 19200)
    slow = ModbusConfig.model_validate(config(url="rtu:///dev/ttyUSB1?baudrate=9600"))
    assert slow.effective_gap_s == pytest.approx(3.5 * 10 / 9600)
    fast = ModbusConfig.model_validate(config(url="rtu:///dev/ttyUSB1?baudrate=115200"))
    assert fast.effective_gap_s == pytest.approx(0.00175)
    explicit = ModbusConfig.model_validate(config(url="rtu:///dev/ttyUSB1", gap_s=0.01))
    assert explicit.effective_gap_s == 0.01


def test_rtu_unit_range() -> None:
    with pytest.raises(ValidationError, match=r"1\.\.247"):
        ModbusConfig.model_validate(config(url="rtu:///dev/ttyUSB1", unit=0))
    assert ModbusConfig.model_validate(config(unit=255)).unit == 255  # TCP gateways use 255


def test_bus_key_is_the_normalised_url() -> None:
    a = ModbusConfig.model_validate(config(url="tcp://GATEWAY.example"))
    b = ModbusConfig.model_validate(config(url="tcp://gateway.example:502", unit=7))
    assert a.bus_key() == b.bus_key() == "tcp://gateway.example:502"
    c = ModbusConfig.model_validate(config(url="tcp://[::1]:1502"))
    assert c.bus_key() == "tcp://[::1]:1502"
    d = ModbusConfig.model_validate(config(url="rtu:///dev/ttyUSB1?baudrate=9600", unit=2))
    e = ModbusConfig.model_validate(config(url="rtu:///dev/ttyUSB1?baudrate=19200", unit=3))
    assert d.bus_key() == e.bus_key() == "rtu:///dev/ttyUSB1"


def test_driver_shares_bus_by_key() -> None:
    from drivers.base import Buses

    buses = Buses()
    one = ModbusDriver(ModbusConfig.model_validate(config(unit=1)), buses=buses)
    two = ModbusDriver(ModbusConfig.model_validate(config(unit=2)), buses=buses)
    other = ModbusDriver(ModbusConfig.model_validate(config(url="tcp://192.0.2.11")), buses=buses)
    assert one.bus is two.bus
    assert one.bus is not other.bus


# --------------------------------------------------------------------------- request planning


def channel(
    name: str, address: int, kind: str = "float32", register: str = "input"
) -> ModbusChannel:
    return ModbusChannel.model_validate(
        {"name": name, "register": register, "address": address, "type": kind}
    )


def test_neighbours_share_one_request_and_keep_config_order() -> None:
    chans = [
        channel("c", 9, "float64"),
        channel("a", 0),
        channel("b", 2, "uint16"),
        channel("h", 0, register="holding"),
        channel("s", 3, "int16"),
    ]
    groups, places = plan_requests(chans, max_hole=4)
    # the hole at 4..8 (5 registers) is larger than max_hole=4: two input requests
    assert groups == [
        RequestGroup(4, 0, 4),
        RequestGroup(4, 9, 4),
        RequestGroup(3, 0, 2),
    ]
    assert places == [(1, 0), (0, 0), (0, 4), (2, 0), (0, 6)]
    groups, places = plan_requests(chans, max_hole=5)
    assert groups == [RequestGroup(4, 0, 13), RequestGroup(3, 0, 2)]
    assert places == [(0, 18), (0, 0), (0, 4), (1, 0), (0, 6)]


def test_holes_up_to_max_hole() -> None:
    chans = [channel("a", 0), channel("b", 5), channel("c", 12)]  # holes of 3 and 5
    groups, _ = plan_requests(chans, max_hole=3)
    assert groups == [RequestGroup(4, 0, 7), RequestGroup(4, 12, 2)]
    groups, _ = plan_requests(chans, max_hole=0)
    assert len(groups) == 3
    groups, _ = plan_requests(chans, max_hole=5)
    assert groups == [RequestGroup(4, 0, 14)]


def test_requests_stay_within_125_registers() -> None:
    chans = [channel(f"v{i}", 2 * i) for i in range(100)]  # 200 registers, no holes
    groups, places = plan_requests(chans)
    assert [g.count for g in groups] == [124, 76]
    assert all(g.count <= 125 for g in groups)
    assert places[61] == (0, 244)
    assert places[62] == (1, 0)
    covered = {g.address + k for g in groups for k in range(g.count)}
    assert covered == set(range(200))
    small, _ = plan_requests(chans, max_registers=10)
    assert [g.count for g in small] == [10] * 20


def test_overlapping_channels_share_registers() -> None:
    chans = [channel("f", 0), channel("hi", 0, "uint16"), channel("lo", 1, "uint16")]
    groups, places = plan_requests(chans)
    assert groups == [RequestGroup(4, 0, 2)]
    assert places == [(0, 0), (0, 0), (0, 2)]


def test_driver_plans_at_init() -> None:
    cfg = ModbusConfig.model_validate(
        config(
            channels=[
                {"name": "p", "register": "input", "address": 0, "type": "float32"},
                {"name": "q", "register": "input", "address": 2, "type": "float32"},
                {"name": "r", "register": "holding", "address": 0, "type": "float32"},
            ]
        )
    )
    driver = ModbusDriver(cfg)
    assert driver.groups == [RequestGroup(4, 0, 4), RequestGroup(3, 0, 2)]


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (1, "illegal function"),
        (2, "illegal data address"),
        (3, "illegal data value"),
        (4, "server device failure"),
        (6, "server device busy"),
        (11, "gateway target device failed to respond"),
        (0x42, "exception code 66"),
    ],
)
def test_exception_response_is_a_device_error(code: int, text: str) -> None:
    with pytest.raises(DeviceError) as info:
        parse_read_pdu(bytes([0x84, code]), 4, 2)
    assert info.value.code == code
    assert text in str(info.value)
    assert exception_message(code) == text


def test_read_response_parsing() -> None:
    pdu = bytes([3, 4]) + bytes.fromhex("47F12000")
    assert parse_read_pdu(pdu, 3, 2) == bytes.fromhex("47F12000")
    for bad, match in [
        (b"", "empty"),
        (bytes([0x83]), "malformed exception"),
        (bytes([0x83, 2, 0]), "malformed exception"),
        (bytes([4, 4]) + bytes(4), "function code 4 in reply to 3"),
        (bytes([3, 2]) + bytes(2), "expected 4 register bytes"),
        (bytes([3, 4]) + bytes(3), "expected 4 register bytes"),
        (bytes([3, 4]) + bytes(6), "expected 4 register bytes"),
        (bytes([3]), "expected 4 register bytes"),
    ]:
        with pytest.raises(FrameError, match=match):
            parse_read_pdu(bad, 3, 2)


def test_mbap_framing() -> None:
    one = struct.pack(">HHHB", 7, 0, 7, 1) + bytes([3, 4]) + bytes.fromhex("47F12000")
    two = struct.pack(">HHHB", 8, 0, 3, 2) + bytes([0x83, 2])
    adus, used = split_adus(one + two + one[:5])
    assert adus == [(7, 1, bytes([3, 4, 0x47, 0xF1, 0x20, 0])), (8, 2, bytes([0x83, 2]))]
    assert used == len(one) + len(two)
    assert split_adus(one[:-1]) == ([], 0)
    with pytest.raises(FrameError, match="protocol id 1"):
        split_adus(struct.pack(">HHHB", 7, 1, 7, 1) + bytes(6))
    with pytest.raises(FrameError, match="length 1"):
        split_adus(struct.pack(">HHHB", 7, 0, 1, 1))
    with pytest.raises(FrameError, match="length 300"):
        split_adus(struct.pack(">HHHB", 7, 0, 300, 1))
