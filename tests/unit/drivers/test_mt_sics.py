"""MT-SICS parsers against captured replies (tests/frames/mt_sics.toml), and the config."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers import DRIVERS, load_all
from drivers.errors import DeviceError, FrameError
from drivers.mt_sics import (
    MtSics,
    MtSicsConfig,
    parse_identity,
    parse_tare,
    parse_weight,
    parse_zero,
    split_i2,
)

FRAMES = tomllib.loads((Path(__file__).parents[2] / "frames" / "mt_sics.toml").read_text())


def _cases(table: str) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in FRAMES[table]]


def _frame(case: dict[str, Any]) -> bytes:
    return str(case["frame"]).encode("latin-1")


def _expect_error(case: dict[str, Any]) -> pytest.RaisesExc[Exception]:
    kind = {"FrameError": FrameError, "DeviceError": DeviceError}[case["error"]]
    return pytest.raises(kind)


@pytest.mark.parametrize("case", _cases("weight"))
def test_weight_frames(case: dict[str, Any]) -> None:
    frame = _frame(case)
    if "error" in case:
        with _expect_error(case) as info:
            parse_weight(frame, equipment="BAL-01")
        if "code" in case:
            assert isinstance(info.value, DeviceError)
            assert info.value.code == case["code"]
        else:
            assert isinstance(info.value, FrameError)
            assert info.value.frame == frame
        return
    reading = parse_weight(frame, equipment="BAL-01", channel="mass")
    assert reading.equipment == "BAL-01"
    assert reading.channel == "mass"
    assert reading.unit == case["unit"]
    assert reading.flags == frozenset(case["flags"])
    assert reading.quality == case["quality"]
    if math.isnan(case["raw"]):
        assert math.isnan(reading.raw)
    else:
        assert reading.raw == pytest.approx(case["raw"], abs=1e-12)
    assert reading.t_wall.tzinfo is not None


def test_overload_uses_the_last_known_unit() -> None:
    reading = parse_weight(b"S +\r\n", unit="kg")
    assert reading.unit == "kg"
    assert math.isnan(reading.raw)


@pytest.mark.parametrize("case", _cases("zero"))
def test_zero_frames(case: dict[str, Any]) -> None:
    if "error" in case:
        with _expect_error(case) as info:
            parse_zero(_frame(case))
        if "code" in case:
            assert getattr(info.value, "code", None) == case["code"]
        return
    assert parse_zero(_frame(case)) is None


@pytest.mark.parametrize("case", _cases("tare"))
def test_tare_frames(case: dict[str, Any]) -> None:
    if "error" in case:
        with _expect_error(case) as info:
            parse_tare(_frame(case))
        if "code" in case:
            assert getattr(info.value, "code", None) == case["code"]
        return
    assert parse_tare(_frame(case)) == (pytest.approx(case["raw"]), case["unit"])


@pytest.mark.parametrize("case", _cases("identity"))
def test_identity_frames(case: dict[str, Any]) -> None:
    if "error" in case:
        with _expect_error(case) as info:
            parse_identity(_frame(case), case["command"])
        if "code" in case:
            assert getattr(info.value, "code", None) == case["code"]
        return
    assert parse_identity(_frame(case), case["command"]) == case["text"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("XS205DU 220.0000 g", ("XS205DU", 220.0, "g")),
        ("WKC 204 C 210.0090 g", ("WKC 204 C", 210.009, "g")),
        ("ICS425 60 kg", ("ICS425", 60.0, "kg")),
        ("just a model", ("just a model", None, None)),
    ],
)
def test_split_i2(text: str, expected: tuple[str, float | None, str | None]) -> None:
    assert split_i2(text) == expected


def test_config_defaults_and_bus_key() -> None:
    cfg = MtSicsConfig.model_validate({"id": "BAL-01", "driver": "mt-sics", "port": "/dev/ttyUSB0"})
    assert (cfg.baudrate, cfg.bytesize, cfg.parity, cfg.stopbits) == (9600, 8, "N", 1)
    assert cfg.command == "SI"
    assert cfg.gap_s == 0.0
    assert cfg.channel is None
    assert cfg.bus_key() == "/dev/ttyUSB0"
    assert MtSics(cfg).channel == "weight"
    assert MtSics(cfg.model_copy(update={"channel": "mass"})).channel == "mass"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("parity", "X"),
        ("bytesize", 9),
        ("stopbits", 3),
        ("command", "SIR"),
        ("baudrate", 0),
        ("port", ""),
        ("driver", "sartorius-sbi"),
        ("typo_field", 1),
    ],
)
def test_config_refuses_bad_values(field: str, value: object) -> None:
    data: dict[str, object] = {"id": "BAL-01", "driver": "mt-sics", "port": "/dev/ttyUSB0"}
    data[field] = value
    with pytest.raises(ValidationError) as info:
        MtSicsConfig.model_validate(data)
    assert field in str(info.value)


def test_config_is_frozen() -> None:
    cfg = MtSicsConfig(id="B", driver="mt-sics", port="/dev/ttyS0")
    with pytest.raises(ValidationError):
        cfg.port = "/dev/ttyS1"  # type: ignore[misc]


def test_registered_kinds() -> None:
    drivers = load_all()
    assert DRIVERS is drivers
    assert drivers["mt-sics"] is MtSics
    assert {"mt-sics", "sartorius-sbi", "scpi-pressure"} <= drivers.keys()


@pytest.mark.parametrize(
    "port",
    [
        "socket://127.0.0.1",
        "socket://:4001",
        "socket://host:notaport",
        "rfc2217://h:1",
        "socket://h:1/x",
    ],
)
def test_config_refuses_malformed_ports(port: str) -> None:
    with pytest.raises(ValidationError, match="port"):
        MtSicsConfig(id="B", port=port)


@pytest.mark.parametrize(
    "port", ["/dev/ttyUSB0", "COM3", "socket://192.0.2.7:4001", "socket://[::1]:4001"]
)
def test_config_accepts_devices_and_socket_urls(port: str) -> None:
    assert MtSicsConfig(id="B", port=port).bus_key() == port
