"""Sartorius SBI frame parser against captured frames (tests/frames/sbi.toml), and the config."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.errors import DeviceError, FrameError
from drivers.sbi import Sbi, SbiConfig, parse_frame

FRAMES = tomllib.loads((Path(__file__).parents[2] / "frames" / "sbi.toml").read_text())


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in FRAMES["frame"]])
def test_sbi_frames(case: dict[str, Any]) -> None:
    frame = str(case["frame"]).encode("latin-1")
    if "error" in case:
        kind = {"FrameError": FrameError, "DeviceError": DeviceError}[case["error"]]
        with pytest.raises(kind) as info:
            parse_frame(frame, equipment="BAL-02")
        if "code" in case:
            assert isinstance(info.value, DeviceError)
            assert info.value.code == case["code"]
        return
    reading = parse_frame(frame, equipment="BAL-02", unit="g")
    assert reading.equipment == "BAL-02"
    assert reading.channel == "weight"
    assert reading.unit == case["unit"]
    assert reading.flags == frozenset(case["flags"])
    assert reading.quality == case["quality"]
    if math.isnan(case["raw"]):
        assert math.isnan(reading.raw)
    else:
        assert reading.raw == pytest.approx(case["raw"], abs=1e-12)


def test_unstable_frame_takes_the_configured_unit() -> None:
    reading = parse_frame(b"+   123.50    \r\n", unit="kg")
    assert (reading.unit, reading.quality) == ("kg", "uncertain")


def test_config_defaults_are_1200_7o1() -> None:
    cfg = SbiConfig.model_validate(
        {"id": "BAL-02", "driver": "sartorius-sbi", "port": "/dev/ttyS0"}
    )
    assert (cfg.baudrate, cfg.bytesize, cfg.parity, cfg.stopbits) == (1200, 7, "O", 1)
    assert cfg.bus_key() == "/dev/ttyS0"
    assert Sbi(cfg).channel == "weight"


def test_config_settings_are_configurable() -> None:
    cfg = SbiConfig.model_validate(
        {
            "id": "BAL-02",
            "driver": "sartorius-sbi",
            "port": "socket://127.0.0.1:4001",
            "baudrate": 9600,
            "bytesize": 8,
            "parity": "N",
            "stopbits": 2,
            "unit": "kg",
        }
    )
    assert (cfg.baudrate, cfg.bytesize, cfg.parity, cfg.stopbits, cfg.unit) == (
        9600,
        8,
        "N",
        2,
        "kg",
    )


def test_config_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="handshake"):
        SbiConfig.model_validate(
            {"id": "B", "driver": "sartorius-sbi", "port": "/dev/ttyS0", "handshake": "xon"}
        )
