"""Measurements and Events for the tests, with every field a payload carries set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.base import Reading
from gateway.model import Event, Measurement

__all__ = ["T0", "event", "meas"]

T0 = datetime(2026, 11, 27, 18, 38, 8, 123456, tzinfo=UTC)


def meas(i: int = 0, **kw: Any) -> Measurement:
    reading = Reading(
        equipment=kw.pop("equipment", "PT-101"),
        channel=kw.pop("channel", "pressure"),
        raw=kw.pop("raw", 100.0 + i),
        unit=kw.pop("raw_unit", "kPa"),
        t_wall=kw.pop("t_wall", T0 + timedelta(seconds=i)),
        t_mono=float(i),
        flags=kw.pop("flags", frozenset()),
        quality=kw.get("quality", "good"),
    )
    base: dict[str, Any] = {
        "value": 100.5 + i,
        "unit": "kPa",
        "u": 0.012,
        "U": 0.024,
        "k": 2.0,
        "calibration": "valid",
        "certificate": "DKD-K-1/2026",
        "conformity": "pass",
        "quantity": "pressure",
    }
    base.update(kw)
    return Measurement(reading=reading, **base)


def event(i: int = 0, **kw: Any) -> Event:
    base: dict[str, Any] = {
        "type": "out_of_tolerance",
        "severity": "warning",
        "equipment": "PT-101",
        "message": f"reading {i} above limit",
        "t_wall": T0 + timedelta(seconds=i),
        "channel": "pressure",
        "detail": {"limit": 200.0, "value": 201.5},
    }
    base.update(kw)
    return Event(**base)
