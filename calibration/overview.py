"""What a lab's quality staff report: traceability coverage and the due dates.

Coverage (ISO/IEC 17025 6.5): the share of the lab's active instruments, and of their
channels, whose calibration chain reaches a national metrology institute unbroken and in
date on a given day. A channel is covered when the status of its certificate in force
(:func:`calibration.chain.state`) is ``valid`` or ``due_soon``; ``expired``,
``untraceable`` (a broken or NMI-less chain), ``suspect`` (a standard in the chain in
doubt) and ``none`` (no certificate) are not, and the reasons say why. An instrument is
covered when every one of its channels is. Instruments are the registry's equipment with
``role = "instrument"`` and ``status = "active"``; standards are links of the chains,
not counted.

Due dates: every certificate in force on the day (for every channel of every equipment
not retired), sorted by due date — expired ones first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from calibration.chain import state

if TYPE_CHECKING:
    from calibration.registry import Registry

__all__ = ["TRACEABLE", "ChannelTrace", "Coverage", "DueEntry", "coverage", "due_dates"]

#: The calibration statuses of a channel whose chain reaches an NMI unbroken and in date.
TRACEABLE: frozenset[str] = frozenset({"valid", "due_soon"})


def _day(at: datetime | date) -> date:
    from calibration.registry import utc_date

    return utc_date(at)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelTrace:
    """One channel's traceability on a day: its status, certificate and the reasons."""

    item: str
    channel: str
    status: str
    certificate: str | None
    due: date | None
    reasons: tuple[str, ...]

    @property
    def traceable(self) -> bool:
        return self.status in TRACEABLE

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "channel": self.channel,
            "status": self.status,
            "traceable": self.traceable,
            "certificate": self.certificate,
            "due": self.due.isoformat() if self.due else None,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Coverage:
    """The coverage figure on ``on``: counts, and every channel that is not covered."""

    on: date
    instruments: tuple[str, ...]
    instruments_traceable: tuple[str, ...]
    channels: tuple[ChannelTrace, ...]

    @property
    def channels_traceable(self) -> int:
        return sum(c.traceable for c in self.channels)

    @property
    def instrument_share(self) -> float | None:
        """Covered instruments / active instruments (None when there is none)."""
        n = len(self.instruments)
        return len(self.instruments_traceable) / n if n else None

    @property
    def channel_share(self) -> float | None:
        n = len(self.channels)
        return self.channels_traceable / n if n else None

    @property
    def not_traceable(self) -> tuple[ChannelTrace, ...]:
        return tuple(c for c in self.channels if not c.traceable)

    def to_json(self) -> dict[str, Any]:
        return {
            "on": self.on.isoformat(),
            "instruments": {
                "total": len(self.instruments),
                "traceable": len(self.instruments_traceable),
                "share": self.instrument_share,
            },
            "channels": {
                "total": len(self.channels),
                "traceable": self.channels_traceable,
                "share": self.channel_share,
            },
            "not_traceable": [c.to_json() for c in self.not_traceable],
        }


def coverage(reg: Registry, at: datetime | date) -> Coverage:
    """Traceability coverage of ``reg``'s active instruments on the UTC day of ``at``."""
    day = _day(at)
    instruments: list[str] = []
    covered: list[str] = []
    channels: list[ChannelTrace] = []
    for eq_id in reg.equipment_ids():
        eq = reg.require(eq_id)
        if eq.role != "instrument" or eq.status != "active":
            continue
        instruments.append(eq_id)
        mine = []
        for name in eq.channel_names:
            st = state(reg, eq_id, day, name)
            mine.append(
                ChannelTrace(
                    item=eq_id,
                    channel=name,
                    status=st.status,
                    certificate=st.certificate,
                    due=st.due,
                    reasons=st.reasons,
                )
            )
        channels.extend(mine)
        if all(c.traceable for c in mine):
            covered.append(eq_id)
    return Coverage(
        on=day,
        instruments=tuple(instruments),
        instruments_traceable=tuple(covered),
        channels=tuple(channels),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DueEntry:
    """A certificate in force on ``on``, with its status there and days left to its due date."""

    number: str
    item: str
    channel: str | None
    role: str
    issued_by: str
    nmi: bool
    calibrated: date
    due: date
    days_left: int
    status: str

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "item": self.item,
            "channel": self.channel,
            "role": self.role,
            "issued_by": self.issued_by,
            "nmi": self.nmi,
            "calibrated": self.calibrated.isoformat(),
            "due": self.due.isoformat(),
            "days_left": self.days_left,
            "status": self.status,
        }


def due_dates(reg: Registry, at: datetime | date) -> list[DueEntry]:
    """Every certificate in force on the day of ``at``, soonest due first (expired first)."""
    day = _day(at)
    out: list[DueEntry] = []
    for eq_id in reg.equipment_ids():
        eq = reg.require(eq_id)
        if eq.status == "retired":
            continue
        for name in eq.channel_names:
            cert = reg.in_force(eq_id, day, name)
            if cert is None:
                continue
            out.append(
                DueEntry(
                    number=cert.number,
                    item=eq_id,
                    channel=cert.channel,
                    role=eq.role,
                    issued_by=cert.issued_by,
                    nmi=cert.nmi,
                    calibrated=cert.calibrated,
                    due=cert.due,
                    days_left=(cert.due - day).days,
                    status=state(reg, eq_id, day, name).status,
                )
            )
    out.sort(key=lambda e: (e.due, e.number))
    return out
