"""The gateway's record types: ``Measurement`` (a corrected Reading) and ``Event``.

Their wire forms are contracts (ARCHITECTURE.md 4.3 and 4.4) whose home is
:mod:`gateway.wire`: :meth:`Measurement.payload` and :meth:`Event.payload` give the MQTT
JSON objects, with ``seq`` the outbox row id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from drivers.base import Quality, Reading, record
from gateway.wire import event_payload, measurement_payload, rfc3339

if TYPE_CHECKING:
    from calibration import CalStatus

__all__ = ["CalStatus", "Event", "Measurement", "Severity", "rfc3339"]

Severity = Literal["info", "warning", "critical"]


_new = object.__new__


@record
class Measurement:
    """A Reading kept whole, plus its correction, uncertainty, status and conformity.

    Like :class:`~drivers.base.Reading` a :func:`~drivers.base.record`: immutable by
    contract and to mypy, not frozen at run time (the hot path builds one per value);
    never assign to a field, use :func:`dataclasses.replace`.
    """

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
        return measurement_payload(self, seq)


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
        """The MQTT payload of ARCHITECTURE.md 4.3 (``detail`` after the common fields)."""
        return event_payload(self, seq)


def __getattr__(name: str) -> Any:
    """``CalStatus`` is the calibration engine's (:data:`calibration.CalStatus`), imported
    when asked for: loading the model does not load the engine."""
    if name == "CalStatus":
        from calibration import CalStatus

        return CalStatus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
