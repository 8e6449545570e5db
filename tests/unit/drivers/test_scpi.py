"""SCPI pressure controller parsers against captured replies (tests/frames/scpi.toml)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.errors import FrameError
from drivers.scpi import (
    ScpiPressure,
    ScpiPressureConfig,
    normalise_unit,
    parse_error,
    parse_idn,
    parse_in_limits,
    parse_pressure,
    parse_unit,
)

FRAMES = tomllib.loads((Path(__file__).parents[2] / "frames" / "scpi.toml").read_text())


def _cases(table: str) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in FRAMES[table]]


def _frame(case: dict[str, Any]) -> bytes:
    return str(case["frame"]).encode("latin-1")


@pytest.mark.parametrize("case", _cases("pressure"))
def test_pressure_frames(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(FrameError) as info:
            parse_pressure(_frame(case), unit="mbar")
        assert info.value.frame == _frame(case)
        return
    reading = parse_pressure(_frame(case), unit="mbar", equipment="PC-01")
    assert (reading.equipment, reading.channel, reading.unit) == ("PC-01", "pressure", "mbar")
    assert reading.flags == frozenset(case["flags"])
    assert reading.quality == case["quality"]
    if math.isnan(case["raw"]):
        assert math.isnan(reading.raw)
    else:
        assert reading.raw == pytest.approx(case["raw"])


@pytest.mark.parametrize("case", _cases("in_limits"))
def test_in_limits_frames(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(FrameError):
            parse_in_limits(_frame(case))
        return
    assert parse_in_limits(_frame(case)) is case["value"]


@pytest.mark.parametrize("case", _cases("unit"))
def test_unit_frames(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(FrameError):
            parse_unit(_frame(case))
        return
    assert parse_unit(_frame(case)) == case["value"]


@pytest.mark.parametrize("case", _cases("error"))
def test_error_queue_frames(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(FrameError):
            parse_error(_frame(case))
        return
    assert parse_error(_frame(case)) == (case["code"], case["message"])


@pytest.mark.parametrize("case", _cases("idn"))
def test_idn_frames(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(FrameError):
            parse_idn(_frame(case))
        return
    idn = parse_idn(_frame(case))
    assert (idn.maker, idn.model, idn.serial, idn.firmware) == (
        case["maker"],
        case["model"],
        case["serial"],
        case["firmware"],
    )


@pytest.mark.parametrize(("text", "unit"), [("MBAR", "mbar"), ("psi", "psi"), ("KPA", "kPa")])
def test_normalise_unit(text: str, unit: str) -> None:
    assert normalise_unit(text) == unit


def test_config_defaults() -> None:
    cfg = ScpiPressureConfig.model_validate(
        {"id": "PC-01", "driver": "scpi-pressure", "port": "socket://10.0.0.5:4001"}
    )
    assert (cfg.baudrate, cfg.bytesize, cfg.parity, cfg.stopbits) == (9600, 8, "N", 1)
    assert cfg.unit is None
    assert cfg.in_limits is True
    assert cfg.bus_key() == "socket://10.0.0.5:4001"
    assert ScpiPressure(cfg).channel == "pressure"
    assert ScpiPressure.terminator == b"\n"


def test_config_refuses_wrong_driver_kind() -> None:
    with pytest.raises(ValidationError, match="driver"):
        ScpiPressureConfig.model_validate(
            {"id": "PC-01", "driver": "mt-sics", "port": "/dev/ttyS0"}
        )
