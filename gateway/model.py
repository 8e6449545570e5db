"""The gateway's frozen types: ``Measurement`` (a corrected Reading) and ``Event``.

Their wire forms are contracts (ARCHITECTURE.md 4.3 and 4.4): :meth:`Measurement.payload`
and :meth:`Event.payload` give the MQTT JSON objects, with ``seq`` the outbox row id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from drivers.base import Quality, Reading, record

__all__ = ["CalStatus", "Event", "Measurement", "Severity", "rfc3339"]

CalStatus = Literal["valid", "due_soon", "expired", "untraceable", "suspect", "none"]
Severity = Literal["info", "warning", "critical"]


def rfc3339(t: datetime) -> str:
    """RFC 3339 in UTC with microseconds: ``2026-11-27T18:38:08.123456Z``."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)  # an aware time in another zone, or a naive one (taken as local)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(x: float | None) -> float | None:
    """JSON has no NaN/inf: a non-finite number travels as null."""
    if x is None or not math.isfinite(x):
        return None
    return x


_new = object.__new__


@record
class Measurement:
    """A Reading kept whole, plus its correction, uncertainty, status and conformity."""

    reading: Reading
    value: float
    unit: str
    u: float | None = None
    U: float | None = None
    k: float | None = None
    quality: Quality = "good"
    flags: frozenset[str] = frozenset()
    calibration: CalStatus = "none"
    certificate: str | None = None
    conformity: str | None = None
    quantity: str | None = None

    @staticmethod
    def make(
        reading: Reading,
        value: float,
        unit: str,
        u: float | None,
        U: float | None,
        k: float | None,
        quality: Quality,
        flags: frozenset[str],
        calibration: CalStatus,
        certificate: str | None,
        conformity: str | None,
        quantity: str | None,
    ) -> Measurement:
        """The Measurement the keyword constructor builds, from positional arguments, for
        the pipeline's hot path (a keyword call costs twice the object)."""
        m: Any = _new(Measurement)
        m.reading = reading
        m.value = value
        m.unit = unit
        m.u = u
        m.U = U
        m.k = k
        m.quality = quality
        m.flags = flags
        m.calibration = calibration
        m.certificate = certificate
        m.conformity = conformity
        m.quantity = quantity
        return m  # type: ignore[no-any-return]

    @property
    def equipment(self) -> str:
        return self.reading.equipment

    @property
    def channel(self) -> str:
        return self.reading.channel

    @property
    def t_wall(self) -> datetime:
        return self.reading.t_wall

    def payload(self, seq: int) -> dict[str, Any]:
        """The MQTT payload of ARCHITECTURE.md 4.3 (``raw`` in instrument units)."""
        return {
            "ts": rfc3339(self.reading.t_wall),
            "seq": seq,
            "equipment": self.reading.equipment,
            "channel": self.reading.channel,
            "raw": _num(self.reading.raw),
            "value": _num(self.value),
            "unit": self.unit,
            "u": _num(self.u),
            "U": _num(self.U),
            "k": self.k,
            "quality": self.quality,
            "flags": sorted(self.flags),
            "calibration": self.calibration,
            "certificate": self.certificate,
            "conformity": self.conformity,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A transition worth telling: out of tolerance, calibration expired, offline..."""

    type: str
    severity: Severity
    equipment: str
    message: str
    t_wall: datetime
    channel: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def payload(self, seq: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": rfc3339(self.t_wall),
            "seq": seq,
            "type": self.type,
            "severity": self.severity,
            "equipment": self.equipment,
            "channel": self.channel,
            "message": self.message,
        }
        for key, value in self.detail.items():
            out.setdefault(key, value)
        return out
