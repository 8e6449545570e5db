"""kill -9 in the middle of a stream: every committed row and cursor survives, and
delivery resumes after the cursor (at-least-once)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.outbox import Outbox
from gateway.settings import OutboxSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, sys, time
from datetime import UTC, datetime
sys.path.insert(0, {root!r})
from drivers.base import Reading
from gateway.model import Measurement
from gateway.outbox import Outbox
from gateway.settings import OutboxSettings

def meas(i):
    r = Reading(equipment=f"PT-{{i % 7}}", channel="pressure", raw=100.0 + i, unit="kPa",
                t_wall=datetime.now(UTC), t_mono=time.monotonic())
    return Measurement(reading=r, value=100.5 + i, unit="kPa", u=0.01, U=0.02, k=2.0,
                       calibration="valid", certificate="C-1", conformity="pass")

async def main():
    ob = Outbox({db!r}, OutboxSettings(commit_interval_s=0.001, cursor_interval_s=0.002),
                sinks=("mqtt", "influx"), site="lab")
    i = 0
    while True:
        ob.add([meas(i + k) for k in range(20)])
        i += 20
        await asyncio.sleep(0.0005)
        rows = ob.fetch_nowait("mqtt", 15)      # a live sink acking (out of order)
        for r in reversed(rows):
            ob.ack_one("mqtt", r.seq)
        # what is known durable now: committed rows, persisted cursor
        print(ob.committed_seq, ob._cursors["mqtt"].persisted, flush=True)

asyncio.run(main())
"""


def test_kill_9_loses_no_committed_row_and_no_cursor(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT), db=str(db))],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert proc.stdout is not None
    committed = cursor = 0
    try:
        for line in proc.stdout:
            committed, cursor = map(int, line.split())
            if committed >= 6000 and cursor > 1000:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: it never stops adding
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    assert committed >= 6000, "the child did not get far enough"

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = [r[0] for r in con.execute("SELECT id FROM rows ORDER BY id")]
    con.close()
    # every row reported committed is there (and maybe a few more committed since)
    assert ids[:committed] == list(range(1, committed + 1))
    assert ids == list(range(1, len(ids) + 1))

    ob = Outbox(db, OutboxSettings(), sinks=("mqtt", "influx"), site="lab")
    try:
        assert cursor <= ob.cursor("mqtt") <= len(ids)
        assert ob.cursor("influx") == 0
        # delivery resumes after the cursor, oldest first; nothing acked is lost
        resumed = ob.fetch_nowait("mqtt", 100_000)
        assert [r.seq for r in resumed] == list(range(ob.cursor("mqtt") + 1, len(ids) + 1))
        assert [r.seq for r in ob.fetch_nowait("influx", 100_000)] == ids
        for r in resumed:
            payload = json.loads(r.payload)
            assert payload["seq"] == r.seq
            assert f"seq={r.seq}i".encode() in r.line
        # the next row continues the sequence
        assert ob.last_seq == len(ids)
    finally:
        ob.close()
