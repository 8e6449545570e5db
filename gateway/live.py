"""The demo's live terminal table: corrected readings with U, calibration status, events."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.model import Event, Measurement
    from gateway.monitor import ChannelState, EquipmentState

__all__ = ["format_raw", "render_table"]

_COLOURS = {
    "valid": "32",
    "due_soon": "33",
    "expired": "31",
    "untraceable": "31",
    "suspect": "35",
    "none": "90",
    "online": "32",
    "offline": "31",
    "unknown": "90",
    "pass": "32",
    "fail": "31",
    "conditional_pass": "33",
    "conditional_fail": "33",
}


def _c(text: str, key: str | None, colour: bool) -> str:
    code = _COLOURS.get(key or "")
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def _value(m: Measurement | None) -> str:
    from calibration.rounding import format_value

    if m is None:
        return "—"
    if not math.isfinite(m.value):
        return "no value"
    if m.U:
        return str(format_value(m.value, m.U))
    return f"{m.value:.6g}"


def format_raw(m: Measurement) -> str:
    """A Measurement's raw reading at its corrected value's decimal place, so the two
    compare by eye (six significant digits when it has no U, is not finite or is in
    another unit than the value)."""
    from calibration.rounding import round_result

    raw = m.reading.raw
    if math.isfinite(raw) and m.U and math.isfinite(m.U) and m.U > 0 and m.reading.unit == m.unit:
        return round_result(raw, m.U)[0]
    return f"{raw:.6g}"


def render_table(
    states: Mapping[str, EquipmentState],
    events: Iterable[Event],
    *,
    colour: bool = True,
    header: str = "",
) -> str:
    """The whole screen as one string (the caller clears the terminal and prints it)."""
    width = shutil.get_terminal_size((120, 40)).columns
    rows = [
        f"{'equipment':<10} {'channel':<9} {'corrected value ± U (k)':<28} {'unit':<5} "
        f"{'raw':>12} {'quality':<9} {'calibration':<12} {'certificate':<16} {'due':<10} "
        f"{'conformity':<16} link"
    ]
    for eq_id in sorted(states):
        st = states[eq_id]
        channels: Mapping[str, ChannelState | None] = st.channels or {"—": None}
        for name in sorted(channels):
            ch = channels[name]
            m = ch.last if ch is not None else None
            k = f" (k={m.k:g})" if m is not None and m.k else ""
            raw = format_raw(m) if m is not None and math.isfinite(m.reading.raw) else "—"
            cal = st.calibration
            conf = (m.conformity if m is not None else None) or "—"
            rows.append(
                f"{eq_id:<10} {name:<9} {(_value(m) + k):<28} {(m.unit if m else ''):<5} {raw:>12} "
                f"{(m.quality if m else '—'):<9} {_c(f'{cal:<12}', cal, colour)} "
                f"{(st.certificate or '—'):<16} {(st.due.isoformat() if st.due else '—'):<10} "
                f"{_c(f'{conf:<16}', conf, colour)} {_c(st.connection, st.connection, colour)}"
            )
    out = [header, *rows, "", "recent events:"]
    ev = list(events)[-8:]
    if not ev:
        out.append("  (none yet)")
    for e in ev:
        out.append(f"  {e.t_wall:%H:%M:%S} {e.severity:<8} {e.type:<22} {e.message}"[:width])
    return "\n".join(out)
