"""The demo's local history: what the outbox commits lands in SQLite, queryable, with retention."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.base import Reading
from gateway.model import Event, Measurement
from gateway.outbox import Outbox
from gateway.sinks.history import HistorySink

T0 = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)


def meas(i: int) -> Measurement:
    r = Reading(equipment="PT-101", channel="pressure", raw=1000.0 + i, unit="mbar",
                t_wall=T0 + timedelta(seconds=i), t_mono=float(i))  # fmt: skip
    return Measurement(reading=r, value=999.5 + i, unit="mbar", u=0.18, U=0.36, k=2.0,
                       calibration="valid", certificate="PCL-2026-0906", conformity="pass")  # fmt: skip


async def test_history_keeps_every_reading_and_event_with_u_and_U(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", sinks=("history",), site="s")
    sink = HistorySink(outbox, tmp_path / "history.sqlite")
    task = asyncio.create_task(sink.run())
    outbox.add([meas(i) for i in range(5)])
    outbox.add([Event(type="out_of_tolerance", severity="warning", equipment="PT-101",
                      channel="pressure", message="high", t_wall=T0, detail={"value": 1.0})])  # fmt: skip
    outbox.commit()
    for _ in range(200):
        if outbox.depth("history") == 0:
            break
        await asyncio.sleep(0.01)
    await sink.stop()
    await task
    outbox.close()
    con = sqlite3.connect(tmp_path / "history.sqlite")
    rows = con.execute(
        "SELECT seq, raw, value, u, U_expanded, certificate FROM reading ORDER BY seq"
    ).fetchall()
    assert rows == [(i + 1, 1000.0 + i, 999.5 + i, 0.18, 0.36, "PCL-2026-0906") for i in range(5)]
    ev = con.execute("SELECT seq, type, equipment, detail FROM event").fetchall()
    assert ev == [(6, "out_of_tolerance", "PT-101", '{"value": 1.0}')]
    summary = sink.summary()
    assert summary["series"][0]["rows"] == 5
    assert summary["events"] == 1


async def test_history_drops_what_is_older_than_its_retention(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", sinks=("history",), site="s")
    sink = HistorySink(outbox, tmp_path / "history.sqlite", retention_s=0.0)
    task = asyncio.create_task(sink.run())
    outbox.add([meas(i) for i in range(3)])
    outbox.commit()
    for _ in range(200):
        if outbox.depth("history") == 0:
            break
        await asyncio.sleep(0.01)
    await sink.stop()
    await task
    outbox.close()
    con = sqlite3.connect(tmp_path / "history.sqlite")
    assert con.execute("SELECT count(*) FROM reading").fetchone() == (0,)
