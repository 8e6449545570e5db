"""Transitions → Events: out of tolerance and back, calibration status, connection, device errors.

Events fire on transitions only. A value hovering at a limit does not flood: once out of
tolerance, a channel is back in only when its value is inside the limits by a hysteresis
margin (the reading's expanded uncertainty, at least ``hysteresis_fraction`` of the span
between the limits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from gateway.model import Event, Measurement, Severity
from gateway.wire import rfc3339

if TYPE_CHECKING:
    from calibration import CalibrationState, Limits

    #: Process limits as the registry gives them, or a (low, high) pair.
    AnyLimits = Limits | tuple[float | None, float | None] | None

__all__ = ["EquipmentState", "Monitor"]

_OUT = frozenset({"fail", "conditional_fail"})

CALIBRATION_EVENTS: dict[str, tuple[str, Severity]] = {
    "none": ("calibration_missing", "warning"),
    "due_soon": ("calibration_due_soon", "warning"),
    "expired": ("calibration_expired", "critical"),
    "untraceable": ("traceability_broken", "critical"),
    "suspect": ("calibration_suspect", "critical"),
}


@dataclass
class ChannelState:
    out_of_tolerance: bool = False
    last: Measurement | None = None
    last_seq: int | None = None  # the outbox seq of ``last`` (what MQTT carried)
    last_oot: datetime | None = None


@dataclass
class EquipmentState:
    """What is known of one equipment now: for /status, MQTT status, and transitions."""

    id: str
    connection: str = "unknown"  # unknown | online | offline
    last_error: str | None = None
    device_error: str | None = None
    calibration: str = "none"
    certificate: str | None = None
    due: date | None = None
    chain: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    conforms: bool | None = None
    channels: dict[str, ChannelState] = field(default_factory=dict)
    last_oot: dict[str, Any] | None = None
    polls: int = 0
    errors: int = 0
    oot_version: int = 0  # bumped on every out-of/back-in-tolerance transition
    calibration_checked: bool = False  # the registry was asked (``calibration`` is not a default)
    # bumped on every change of what the retained status shows (connection, calibration,
    # tolerance): the gateway re-publishes the status when it moved, not after every poll
    version: int = 0

    def summary(self) -> dict[str, Any]:
        """The retained MQTT status payload and the /status entry of this equipment."""
        return {
            "equipment": self.id,
            "connection": self.connection,
            "last_error": self.last_error,
            "calibration": self.calibration,
            "certificate": self.certificate,
            "due": self.due.isoformat() if self.due else None,
            "chain": list(self.chain),
            "reasons": list(self.reasons),
            "instrument_conforms": self.conforms,
            "last_oot": self.last_oot,
            "channels": {
                name: {
                    "out_of_tolerance": st.out_of_tolerance,
                    "last": st.last.payload(0) | {"seq": st.last_seq} if st.last else None,
                }
                for name, st in self.channels.items()
            },
        }


class Monitor:
    """Keeps :class:`EquipmentState` per equipment and returns the Events of each change."""

    def __init__(
        self,
        *,
        hysteresis_fraction: float = 0.01,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.hysteresis_fraction = hysteresis_fraction
        self._clock = clock or (lambda: datetime.now(UTC))
        self.states: dict[str, EquipmentState] = {}

    def state(self, equipment: str) -> EquipmentState:
        st = self.states.get(equipment)
        if st is None:
            st = self.states[equipment] = EquipmentState(equipment)
        return st

    def forget(self, equipment: str) -> None:
        self.states.pop(equipment, None)

    # -- readings ---------------------------------------------------------------------

    def measurements(
        self,
        ms: Sequence[Measurement],
        limits: Callable[[str, str], AnyLimits],
        first_seq: int | None = None,
    ) -> list[Event]:
        """Record each channel's last Measurement (``first_seq``: the outbox seq the first
        of ``ms`` gets, the others following) and return the tolerance transitions."""
        events: list[Event] = []
        seq = first_seq
        equipment: str | None = None
        channels: dict[str, ChannelState] = {}
        st = None
        for m in ms:
            r = m.reading
            if r.equipment != equipment:  # a poll's readings share their equipment
                equipment = r.equipment
                st = self.state(equipment)
                channels = st.channels
            assert st is not None
            ch = channels.get(r.channel)
            if ch is None:
                ch = channels[r.channel] = ChannelState()
            ch.last = m
            ch.last_seq = seq
            if seq is not None:
                seq += 1
            conformity = m.conformity
            if conformity == "pass" and not ch.out_of_tolerance:
                continue  # the usual: in tolerance, and it was
            if conformity is None or m.quality == "bad" or not math.isfinite(m.value):
                continue
            if not ch.out_of_tolerance and m.conformity in _OUT:
                ch.out_of_tolerance = True
                ch.last_oot = m.t_wall
                st.oot_version += 1
                st.version += 1
                lo, hi = _limits(limits(m.equipment, m.channel))
                ev = _tolerance_event(m, "out_of_tolerance", "warning", lo, hi,
                                      f"outside [{lo}, {hi}] ({m.conformity})")  # fmt: skip
                st.last_oot = {"channel": m.channel, "ts": rfc3339(m.t_wall), **ev.detail}
                events.append(ev)
            elif ch.out_of_tolerance and m.conformity == "pass":
                lo, hi = _limits(limits(m.equipment, m.channel))
                if self._inside(m, lo, hi):
                    ch.out_of_tolerance = False
                    st.oot_version += 1
                    st.version += 1
                    events.append(
                        _tolerance_event(
                            m, "back_in_tolerance", "info", lo, hi, f"back inside [{lo}, {hi}]"
                        )
                    )
        return events

    def _inside(self, m: Measurement, lo: float | None, hi: float | None) -> bool:
        margin = m.U or 0.0
        if lo is not None and hi is not None:
            margin = max(margin, self.hysteresis_fraction * (hi - lo))
        return (lo is None or m.value >= lo + margin) and (hi is None or m.value <= hi - margin)

    # -- connection -------------------------------------------------------------------

    def answered(self, equipment: str) -> list[Event]:
        """A good poll: :meth:`online`, and the device error cleared (:meth:`device_ok`)."""
        st = self.states.get(equipment)
        if st is None or st.connection != "online" or st.device_error is not None:
            events = self.online(equipment)
            self.device_ok(equipment)
            return events
        st.polls += 1  # the usual: online already, nothing to report
        return []

    def online(self, equipment: str) -> list[Event]:
        st = self.state(equipment)
        st.polls += 1
        was = st.connection
        st.connection = "online"
        st.last_error = None
        if was != "online":
            st.version += 1
        if was == "offline":
            return [
                Event(
                    type="equipment_online",
                    severity="info",
                    equipment=equipment,
                    t_wall=self._clock(),
                    message=f"{equipment} answers again",
                )
            ]
        return []

    def offline(self, equipment: str, error: BaseException) -> list[Event]:
        st = self.state(equipment)
        st.errors += 1
        st.last_error = str(error)
        if st.connection == "offline":
            return []
        st.connection = "offline"
        st.version += 1
        return [
            Event(
                type="equipment_offline",
                severity="critical",
                equipment=equipment,
                t_wall=self._clock(),
                message=f"{equipment} does not answer: {_reason(equipment, error)}",
                detail={"error": type(error).__name__},
            )
        ]

    def device_error(self, equipment: str, error: BaseException, code: object) -> list[Event]:
        """The instrument answered with an error: one event per new error code."""
        st = self.state(equipment)
        st.errors += 1
        st.last_error = str(error)
        key = str(code)
        if st.device_error == key:
            return []
        st.device_error = key
        return [
            Event(
                type="device_error",
                severity="warning",
                equipment=equipment,
                t_wall=self._clock(),
                message=f"{equipment} reports an error: {_reason(equipment, error)}",
                detail={"code": code if isinstance(code, int | str) else key},
            )
        ]

    def frame_error(self, equipment: str, error: BaseException) -> None:
        st = self.state(equipment)
        st.errors += 1
        st.last_error = str(error)

    def device_ok(self, equipment: str) -> None:
        self.state(equipment).device_error = None

    # -- calibration ------------------------------------------------------------------

    def calibration(self, equipment: str, cal_state: CalibrationState) -> list[Event]:
        """Update from a registry CalibrationState; an event when the status changes."""
        st = self.state(equipment)
        old = st.calibration
        first, st.calibration_checked = not st.calibration_checked, True
        shown = (st.calibration, st.certificate, st.due, st.chain, st.reasons, st.conforms)
        st.calibration = cal_state.status
        st.certificate = cal_state.certificate
        st.due = cal_state.due
        st.chain = tuple(cal_state.chain)
        st.reasons = tuple(cal_state.reasons)
        st.conforms = cal_state.conforms
        if shown != (st.calibration, st.certificate, st.due, st.chain, st.reasons, st.conforms):
            st.version += 1
        new = cal_state.status
        if (new == old and not first) or new not in CALIBRATION_EVENTS:
            return []
        etype, severity = CALIBRATION_EVENTS[new]
        reasons = "; ".join(cal_state.reasons) or new
        return [
            Event(
                type=etype,
                severity=severity,
                equipment=equipment,
                t_wall=self._clock(),
                message=f"{equipment}: calibration {new}: {reasons}",
                detail={
                    "status": new,
                    "previous": old,
                    "certificate": cal_state.certificate,
                    "due": cal_state.due.isoformat() if cal_state.due else None,
                    "reasons": list(cal_state.reasons),
                    "chain": list(cal_state.chain),
                },
            )
        ]


def _tolerance_event(
    m: Measurement, etype: str, severity: Severity, lo: float | None, hi: float | None, text: str
) -> Event:
    """An out-of/back-in-tolerance Event of a measurement against its limits."""
    return Event(
        type=etype,
        severity=severity,
        equipment=m.equipment,
        channel=m.channel,
        t_wall=m.t_wall,
        message=f"{m.channel} = {m.value:.6g} {m.unit} {text}",
        detail={
            "value": m.value,
            "U": m.U,
            "unit": m.unit,
            "low": lo,
            "high": hi,
            "conformity": m.conformity,
            "certificate": m.certificate,
        },
    )


def _limits(lim: AnyLimits) -> tuple[float | None, float | None]:
    if lim is None:
        return None, None
    if isinstance(lim, tuple):
        return lim[0], lim[1]
    return lim.low, lim.high


def _reason(equipment: str, error: BaseException) -> str:
    """The error's text without a leading ``<equipment>: `` (drivers prefix it)."""
    text = str(error)
    return text.removeprefix(f"{equipment}: ")
