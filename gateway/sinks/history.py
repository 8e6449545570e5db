"""A local SQLite history of measurements and events, with retention.

The demo's time-series store where no InfluxDB is configured or installed: it reads its
own outbox cursor like any sink, keeps ``retention_s`` of data, and answers the few
queries the live table and ``/status`` need. A lab that wants dashboards configures
``[influxdb]`` instead.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.errors import SinkError
from gateway.outbox import KIND_EVENT, Outbox, Row
from gateway.sinks.base import Sink

__all__ = ["HistorySink"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reading (
    seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, t REAL NOT NULL, equipment TEXT NOT NULL,
    channel TEXT NOT NULL, raw REAL, value REAL, u REAL, U_expanded REAL, k REAL, unit TEXT,
    quality TEXT, calibration TEXT, certificate TEXT, conformity TEXT
);
CREATE INDEX IF NOT EXISTS reading_eq ON reading (equipment, channel, seq);
CREATE TABLE IF NOT EXISTS event (
    seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, t REAL NOT NULL, type TEXT, severity TEXT,
    equipment TEXT, channel TEXT, message TEXT, detail TEXT
);
"""


class HistorySink(Sink):
    """Writes the outbox's ``history`` cursor into ``path`` (SQLite), keeping ``retention_s``."""

    def __init__(
        self,
        outbox: Outbox,
        path: Path | str,
        *,
        retention_s: float = 24 * 3600.0,
        name: str = "history",
        batch_size: int = 2000,
    ) -> None:
        super().__init__(
            outbox, name, batch_size=batch_size, backoff_min_s=0.5, backoff_max_s=10.0,
            flush_timeout_s=5.0,
        )  # fmt: skip
        self.path = Path(path)
        self.retention_s = retention_s
        self._con: sqlite3.Connection | None = None
        self._last_prune = 0.0

    async def connect(self) -> None:
        try:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SinkError(f"history {self.path}: {exc}") from exc
        self._con = con

    async def deliver(self, rows: list[Row]) -> None:
        con = self._con
        if con is None:
            raise SinkError("history is closed")
        readings: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        for row in rows:
            p = json.loads(row.payload)
            if row.kind == KIND_EVENT:
                detail = {k: v for k, v in p.items() if k not in _EVENT_COLUMNS}
                events.append((p["seq"], p["ts"], row.t, p["type"], p["severity"], p["equipment"],
                               p.get("channel"), p["message"], json.dumps(detail)))  # fmt: skip
            else:
                readings.append((p["seq"], p["ts"], row.t, p["equipment"], p["channel"], p["raw"],
                                 p["value"], p["u"], p["U"], p["k"], p["unit"], p["quality"],
                                 p["calibration"], p["certificate"], p["conformity"]))  # fmt: skip
        try:
            con.execute("BEGIN")
            con.executemany(
                "INSERT OR REPLACE INTO reading VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", readings
            )
            con.executemany("INSERT OR REPLACE INTO event VALUES (?,?,?,?,?,?,?,?,?)", events)
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SinkError(f"history {self.path}: {exc}") from exc
        self.outbox.ack(self.name, (r.seq for r in rows))
        self.delivered += len(rows)
        now = time.time()
        if now - self._last_prune > 60.0:
            self._last_prune = now
            cut = now - self.retention_s
            con.execute("DELETE FROM reading WHERE t < ?", (cut,))
            con.execute("DELETE FROM event WHERE t < ?", (cut,))

    async def close(self, *, clean: bool) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()

    # -- queries (the demo's table and /status) -----------------------------------------

    def summary(self) -> dict[str, Any]:
        """Rows kept and the time span, per equipment channel."""
        if not self.path.exists():
            return {}
        with sqlite3.connect(self.path) as con:
            rows = con.execute(
                "SELECT equipment, channel, count(*), min(ts), max(ts) FROM reading "
                "GROUP BY equipment, channel"
            ).fetchall()
            n_events = con.execute("SELECT count(*) FROM event").fetchone()[0]
        return {
            "path": str(self.path),
            "retention_s": self.retention_s,
            "events": n_events,
            "series": [
                {"equipment": e, "channel": c, "rows": n, "first": a, "last": b}
                for e, c, n, a, b in rows
            ],
        }


_EVENT_COLUMNS = frozenset({"seq", "ts", "type", "severity", "equipment", "channel", "message"})
