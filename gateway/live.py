"""The demo's live terminal table: corrected readings with U, calibration status, events."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.model import Event, Measurement
    from gateway.monitor import ChannelState, EquipmentState

__all__ = ["event_line", "format_raw", "render_rows", "render_table"]

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


# Short forms, so that the essential columns fit 80 columns.
_SHORT = {
    "uncertain": "uncert",
    "indeterminate": "indet",
    "conditional_pass": "c.pass",
    "conditional_fail": "c.fail",
}

# (header, priority): the columns with the highest priority number go first when the
# table is wider than the screen (80 columns when not a terminal).
_COLUMNS: tuple[tuple[str, int], ...] = (
    ("equipment", 0),
    ("channel", 0),
    ("value ± U", 0),
    ("raw", 2),
    ("quality", 1),
    ("calibration", 0),
    ("certificate", 4),
    ("due", 3),
    ("conformity", 1),
    ("link", 0),
)
_RIGHT = frozenset({"raw"})


def _k(k: float) -> str:
    """k as the table shows it, to three significant digits: the t-factor of a large ν_eff
    (2.00018, from a certificate with degrees of freedom) is "2", as the others."""
    return f"{k:.3g}"


def _cells(
    eq_id: str, name: str, st: EquipmentState, m: Measurement | None, k_all: str | None
) -> list[tuple[str, str]]:
    """(text, colour key) of each column of one channel's row."""
    if m is None:
        value = "—"
    else:
        value = f"{_value(m)} {m.unit}".rstrip()
        if m.k and _k(m.k) != k_all:
            value += f" k={_k(m.k)}"
    raw = format_raw(m) if m is not None and math.isfinite(m.reading.raw) else "—"
    quality = m.quality if m is not None else "—"
    conf = (m.conformity if m is not None else None) or "—"
    return [
        (eq_id, ""),
        (name, ""),
        (value, ""),
        (raw, ""),
        (_SHORT.get(quality, quality), ""),
        (st.calibration, st.calibration),
        (st.certificate or "—", ""),
        (st.due.isoformat() if st.due else "—", ""),
        (_SHORT.get(conf, conf), conf),
        (st.connection, st.connection),
    ]


def render_rows(states: Mapping[str, EquipmentState], *, colour: bool, width: int) -> list[str]:
    """The column header and one line per channel, no wider than ``width``: the least
    needed columns (certificate, due, raw…) are left out until it fits."""
    lasts = [ch.last for st in states.values() for ch in st.channels.values() if ch.last]
    ks = {_k(m.k) for m in lasts if m.k}
    k_all = next(iter(ks)) if len(ks) == 1 else None
    rows: list[list[tuple[str, str]]] = []
    for eq_id in sorted(states):
        st = states[eq_id]
        channels: Mapping[str, ChannelState | None] = st.channels or {"—": None}
        for name in sorted(channels):
            ch = channels[name]
            rows.append(_cells(eq_id, name, st, ch.last if ch is not None else None, k_all))
    headers = [h for h, _ in _COLUMNS]
    if k_all is not None:
        headers[2] = f"value ± U (k={k_all})"
    widths = [max([len(h), *(len(r[i][0]) for r in rows)]) for i, h in enumerate(headers)]
    shown = list(range(len(_COLUMNS)))
    while sum(widths[i] for i in shown) + len(shown) - 1 > width:
        worst = max(shown, key=lambda i: (_COLUMNS[i][1], i))
        if _COLUMNS[worst][1] == 0:
            break  # the essential columns stay, whatever the width
        shown.remove(worst)

    def line(cells: list[tuple[str, str]]) -> str:
        parts = []
        for i in shown:
            text, key = cells[i]
            pad = f"{text:>{widths[i]}}" if _COLUMNS[i][0] in _RIGHT else f"{text:<{widths[i]}}"
            parts.append(_c(pad, key, colour) if key else pad)
        return " ".join(parts).rstrip()

    return [line([(h, "") for h in headers]), *(line(r) for r in rows)]


def event_line(e: Event, width: int | None) -> str:
    """One event, as the table lists it (cut to ``width``; whole with ``None``)."""
    return f"  {e.t_wall:%H:%M:%S} {e.severity:<8} {e.type:<22} {e.message}"[:width]


def render_table(
    states: Mapping[str, EquipmentState],
    events: Iterable[Event],
    *,
    colour: bool = True,
    header: str = "",
    width: int | None = None,
) -> str:
    """The whole screen as one string (the caller clears the terminal and prints it);
    ``width``: the terminal's by default."""
    width = width or shutil.get_terminal_size((80, 40)).columns
    out = [header, *render_rows(states, colour=colour, width=width), "", "recent events:"]
    ev = list(events)[-8:]
    if not ev:
        out.append("  (none yet)")
    out.extend(event_line(e, width) for e in ev)
    return "\n".join(out)
