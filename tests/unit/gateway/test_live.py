"""The demo's live table and ``calgate probe``: the raw reading beside the corrected value,
at its decimal place."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import UTC, datetime

from drivers.base import Reading
from gateway.commands.ops import format_measurement
from gateway.live import render_rows, render_table
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
    header, line = render_rows({"BAL-01": state}, colour=False, width=200)
    assert header.split()[:7] == ["equipment", "channel", "value", "±", "U", "(k=2)", "raw"]
    cells = re.match(r"BAL-01\s+weight\s+(.*?)\s+(\S+)\s+good\b", line)
    assert cells is not None, line
    return cells.group(1), cells.group(2)


def test_raw_is_shown_at_the_corrected_values_decimal_place() -> None:
    # a balance showing 100.00 g, corrected to 100.00005 g ± 0.014 g: both to 0.001 g,
    # not "100", which hides the balance's digits
    assert shown(100.0, 100.00005, 0.014) == ("100.000 ± 0.014 g", "100.000")
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


def test_the_table_fits_80_columns_leaving_out_the_least_needed_columns() -> None:
    """Six instruments as the demo shows them: at 80 columns certificate, due and raw go
    (in that order), the rest stays; a wide terminal shows every column."""
    states = {}
    for eq_id, ch, raw, value, U, unit, cal, conf in (
        ("BAL-02", "weight", 200.0, 200.0002, 0.019, "g", "untraceable", "indeterminate"),
        ("PT-101", "pressure", 1000.338, 999.988, 0.078, "mbar", "valid", "conditional_fail"),
    ):
        r = Reading(equipment=eq_id, channel=ch, raw=raw, unit=unit, t_wall=T0, t_mono=0.0)
        m = Measurement(
            reading=r, value=value, unit=unit, u=U / 2, U=U, k=2.0, quality="uncertain",
            calibration=cal, certificate="MCS-2026-0310", conformity=conf,  # type: ignore[arg-type]
        )  # fmt: skip
        states[eq_id] = EquipmentState(
            id=eq_id, connection="offline", calibration=cal, certificate="MCS-2026-0310",
            due=T0.date(), channels={ch: ChannelState(last=m)},
        )  # fmt: skip
    narrow = render_rows(states, colour=False, width=80)
    assert max(len(x) for x in narrow) <= 80
    assert narrow[0].split() == [
        "equipment", "channel", "value", "±", "U", "(k=2)", "quality", "calibration",
        "conformity", "link",
    ]  # fmt: skip
    assert narrow[1].split()[-4:] == ["uncert", "untraceable", "indet", "offline"]
    wide = render_rows(states, colour=False, width=200)
    for column in ("raw", "certificate", "due"):
        assert f" {column} " in wide[0]
    table = render_table(states, [], colour=False, width=80)
    assert max(len(x) for x in table.splitlines()) <= 80


def test_a_k_from_degrees_of_freedom_does_not_cost_the_conformity_column() -> None:
    """PT-101 through a certificate from `calgate calibrate` has k = 2.00018 (ν_eff), BAL-01
    k = 2: the table said "… mbar k=2.00018" in the value column, which then no longer
    fitted 80 columns with the conformity. Shown to three digits both are k = 2."""
    states = {}
    for eq_id, ch, k, unit in (
        ("BAL-01", "weight", 2.0, "g"),
        ("PT-101", "pressure", 2.00018, "mbar"),
    ):
        r = Reading(equipment=eq_id, channel=ch, raw=1000.0, unit=unit, t_wall=T0, t_mono=0.0)
        m = Measurement(
            reading=r, value=1000.0, unit=unit, u=0.044, U=0.044 * k, k=k,
            calibration="valid", certificate="PCL-1", conformity="pass",
        )  # fmt: skip
        states[eq_id] = EquipmentState(
            id=eq_id, connection="online", calibration="valid", certificate="PCL-1",
            due=T0.date(), channels={ch: ChannelState(last=m)},
        )  # fmt: skip
    header, *rows = render_rows(states, colour=False, width=80)
    assert "(k=2)" in header
    assert "conformity" in header
    assert all("k=2.0" not in row and row.split()[-2] == "pass" for row in rows), rows
    # a k that does differ at three digits (few degrees of freedom) is still shown
    m = states["PT-101"].channels["pressure"].last
    assert m is not None
    states["PT-101"].channels["pressure"] = ChannelState(last=replace(m, k=2.26))
    header, *rows = render_rows(states, colour=False, width=200)
    assert "(k=2)" not in header
    assert "k=2.26" in rows[1]
