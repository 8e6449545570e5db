"""The console's JSON documents, built from what the gateway holds (README "Lab console").

Pure functions of the monitor's states, the registry snapshot and the config: no I/O.
Values are given in full precision (``value``, ``U``) and as shown
(``value_text ± U_text``: U to two significant digits, the value to the same decimal
place, ARCHITECTURE.md 4.2); NaN and infinities are null.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from gateway.wire import event_payload, finite, json_safe, rfc3339

if TYPE_CHECKING:
    from calibration import Channel, Registry
    from calibration.overview import DueEntry
    from gateway.config import EquipmentEntry
    from gateway.model import Event, Measurement
    from gateway.monitor import ChannelState, EquipmentState

__all__ = [
    "DUE_HIGHLIGHT_DAYS",
    "board",
    "chains",
    "due_csv",
    "due_json",
    "event_json",
    "shown",
]

#: Certificates due within this many days are highlighted in the due-dates list, and so is
#: one its item's ``due_soon_days`` already calls ``due_soon`` (the lab's own window).
DUE_HIGHLIGHT_DAYS = 90


def shown(value: float | None, big_u: float | None) -> tuple[str | None, str | None]:
    """``(value_text, U_text)`` as displayed (GUM 7.2.6); the value alone without a U."""
    from calibration.rounding import round_result

    if value is None or not math.isfinite(value):
        return None, None
    if big_u is None or not (big_u > 0.0 and math.isfinite(big_u)):
        return f"{value:.6g}", None
    return round_result(value, big_u)


def _limits(ch: Channel | None) -> dict[str, float | None] | None:
    lim = ch.limits if ch is not None else None
    return None if lim is None else {"low": lim.low, "high": lim.high}


def _channel(name: str, reg_ch: Channel | None, cs: ChannelState | None) -> dict[str, Any]:
    m: Measurement | None = cs.last if cs is not None else None
    out: dict[str, Any] = {
        "name": name,
        "quantity": reg_ch.quantity if reg_ch is not None else None,
        "unit": m.unit if m is not None else (reg_ch.unit if reg_ch is not None else None),
        "limits": _limits(reg_ch),
        "out_of_tolerance": bool(cs.out_of_tolerance) if cs is not None else False,
    }
    if m is None:
        return out | {"ts": None, "value": None, "U": None, "k": None, "value_text": None,
                      "U_text": None, "raw": None, "quality": None, "flags": [],
                      "calibration": None, "certificate": None, "conformity": None}  # fmt: skip
    value_text, u_text = shown(m.value, m.U)
    return out | {
        "ts": rfc3339(m.reading.t_wall),
        "value": finite(m.value),
        "U": finite(m.U),
        "k": m.k,
        "value_text": value_text,
        "U_text": u_text,
        "raw": finite(m.reading.raw),
        "quality": m.quality,
        "flags": sorted(m.flags),
        "calibration": m.calibration,
        "certificate": m.certificate,
        "conformity": m.conformity,
    }


def _row(
    entry: EquipmentEntry,
    st: EquipmentState | None,
    registry: Registry | None,
    today: date,
    since: datetime | None,
) -> dict[str, Any]:
    eq = registry.equipment(entry.id) if registry is not None else None
    names: list[str] = list(eq.channel_names) if eq is not None else []
    seen = st.channels if st is not None else {}
    names += [n for n in seen if n not in names]
    due = st.due if st is not None else None
    return {
        "id": entry.id,
        "description": eq.description if eq is not None else "",
        "role": eq.role if eq is not None else None,
        "driver": entry.driver.driver,
        "interval_s": entry.driver.interval_s,
        "enabled": entry.driver.enabled,
        "connection": st.connection if st is not None else "unknown",
        "since": rfc3339(since) if since is not None else None,
        "last_error": st.last_error if st is not None else None,
        "calibration": st.calibration if st is not None else "none",
        "certificate": st.certificate if st is not None else None,
        "due": due.isoformat() if due else None,
        "days_to_due": (due - today).days if due else None,
        "reasons": list(st.reasons) if st is not None else [],
        "chain": list(st.chain) if st is not None else [],
        "instrument_conforms": st.conforms if st is not None else None,
        "channels": [
            _channel(n, eq.channel(n) if eq is not None else None, seen.get(n)) for n in names
        ],
    }


def board(
    entries: Sequence[EquipmentEntry],
    states: Mapping[str, EquipmentState],
    registry: Registry | None,
    today: date,
    since: Mapping[str, datetime],
) -> list[dict[str, Any]]:
    """One row per configured equipment, in config order."""
    return [_row(e, states.get(e.id), registry, today, since.get(e.id)) for e in entries]


def event_json(n: int, e: Event) -> dict[str, Any]:
    """An event as the console lists it: its MQTT payload (:func:`gateway.wire.event_payload`)
    with ``n``, the count of events the console has seen, in place of ``seq``."""
    payload = json_safe(event_payload(e, 0))
    del payload["seq"]
    return {"n": n, **payload}


def due_json(entries: Iterable[DueEntry], on: date) -> dict[str, Any]:
    return {
        "on": on.isoformat(),
        "highlight_days": DUE_HIGHLIGHT_DAYS,
        "certificates": [
            e.to_json() | {"highlight": e.days_left <= DUE_HIGHLIGHT_DAYS or e.status == "due_soon"}
            for e in entries
        ],
    }


_CSV_FIELDS = ("due", "days_left", "status", "number", "item", "channel", "role",
               "calibrated", "issued_by", "nmi")  # fmt: skip


def _cell(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else v


def due_csv(entries: Iterable[DueEntry]) -> str:
    """The due-dates list as CSV (RFC 4180, a header line), soonest first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(_CSV_FIELDS)
    for e in entries:
        d = e.to_json()
        w.writerow([_cell(d[k]) for k in _CSV_FIELDS])
    return buf.getvalue()


def chains(registry: Registry, eq_id: str, at: datetime) -> dict[str, Any]:
    """The traceability tree of each channel of ``eq_id`` (``calgate registry chain --json``)."""
    eq = registry.require(eq_id)
    return {
        "equipment": eq_id,
        "description": eq.description,
        "trees": [registry.chain_tree(eq_id, at, name).to_json() for name in eq.channel_names],
    }
