"""The demo's live table and ``calgate probe``: the raw reading beside the corrected value,
at its decimal place."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from drivers.base import Reading
from gateway.commands.ops import format_measurement
from gateway.live import render_table
from gateway.model import Measurement
from gateway.monitor import ChannelState, EquipmentState

T0 = datetime(2026, 12, 3, 6, 30, tzinfo=UTC)


def measurement(raw: float, value: float, U: float | None, raw_unit: str = "g") -> Measurement:
    reading = Reading(
        equipment="BAL-01", channel="weight", raw=raw, unit=raw_unit, t_wall=T0, t_mono=0.0
    )
    return Measurement(
        reading=reading, value=value, unit="g", u=None if U is None else U / 2, U=U, k=2.0
    )


def shown(raw: float, value: float, U: float | None, raw_unit: str = "g") -> tuple[str, str]:
    """(the corrected value column, the raw column) of BAL-01's row."""
    m = measurement(raw, value, U, raw_unit)
    state = EquipmentState(id="BAL-01", channels={"weight": ChannelState(last=m)})
    header, line = render_table({"BAL-01": state}, [], colour=False).splitlines()[1:3]
    value_at = header.index("corrected value")
    raw_end = header.index(" raw ") + len(" raw")
    return line[value_at : value_at + 28].strip(), line[raw_end - 12 : raw_end].strip()


def test_raw_is_shown_at_the_corrected_values_decimal_place() -> None:
    # a balance showing 100.00 g, corrected to 100.00005 g ± 0.014 g: both to 0.001 g,
    # not "100", which hides the balance's digits
    assert shown(100.0, 100.00005, 0.014) == ("100.000 ± 0.014 (k=2)", "100.000")
    # a transmitter's float32: no more digits than the value has
    assert shown(1000.3518, 1000.0018, 0.078)[1] == "1000.352"


def test_raw_without_u_or_in_another_unit_keeps_six_digits() -> None:
    assert shown(100.0, 100.0, None)[1] == "100"
    assert shown(0.1000052, 100.0052, 0.014, raw_unit="kg")[1] == "0.100005"
    assert shown(math.nan, math.nan, 0.014)[1] == "—"


def test_probe_shows_raw_the_same_way() -> None:
    line = format_measurement(measurement(100.0, 100.00005, 0.014))
    assert "100.000 ± 0.014 g k=2  raw=100.000 " in line
    assert "raw=nan " in format_measurement(measurement(math.nan, math.nan, None))
