"""The durable outbox: every Measurement and Event is committed to SQLite before it is sent.

ARCHITECTURE.md §3 "Outbox". One table of rows, ``id`` = ``seq``: each row holds what each
sink sends, serialised once at :meth:`Outbox.add` by :mod:`gateway.wire` — the MQTT topic
and JSON payload, and the InfluxDB line (time = acquisition, ns). One cursor per sink (the highest seq below
which everything is acked) lives in a second table.

The hot path is cheap because everything is batched: ``add`` encodes and buffers; one
transaction commits up to ``commit_rows`` rows, at most ``commit_interval_s`` after the
first (WAL, ``synchronous=NORMAL``: a commit is a ``write()``, not an fsync, and it
survives kill -9). Only committed rows are handed to sinks, from an in-memory tail of
recent rows (a sink that fell behind reads SQLite instead). Acks may come out of order
(MQTT PUBACKs); a cursor advances over the handed-out rows that are all acked, and
cursors are persisted at most every ``cursor_interval_s`` (with a batch of rows, or on
their own) — after a crash a sink resumes at its cursor and may send those rows again
(at-least-once; ``seq`` lets consumers de-duplicate). ``seq`` never goes back: after a
restart it continues past the rows stored, the cursors and, when rows were deleted, the
``next_seq`` written with the deletion.

The outbox is bounded by bytes and by age: over a bound, the oldest rows go (sent or
not), are counted, and a ``data_dropped`` Event enters the outbox. While rows keep going
(a long outage) the drops are one episode: at most one event a second, each covering the
whole episode so far (``oldest_seq``..``newest_seq``, ``count``), so the newest event,
the one the bound keeps, tells everything even when the earlier ones were dropped in
turn. The episode ends when every sink has delivered its last event. Rows acked by every
sink are deleted in the background, and the WAL is checkpointed in a worker thread, so
the event loop never waits for an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from gateway.errors import OutboxError
from gateway.model import Event, Measurement
from gateway.settings import OutboxSettings
from gateway.wire import Encoder, dumps, event_line, measurement_line

__all__ = [
    "DROP_EQUIPMENT",
    "KIND_EVENT",
    "KIND_MEASUREMENT",
    "Outbox",
    "OutboxStats",
    "Row",
]

log = logging.getLogger(__name__)

KIND_MEASUREMENT = 0
KIND_EVENT = 1
#: The ``equipment`` of the outbox's own events (``data_dropped``).
DROP_EQUIPMENT = "gateway"

_ROW_OVERHEAD = 40  # bytes per row beyond its blobs, for the byte bound
_MAX_PENDING = 200_000  # rows buffered while SQLite refuses commits (disk full...)
_RETRY_S = 1.0  # between commit attempts while SQLite refuses them
_CHECKPOINT_BYTES = 4 * 1024 * 1024  # written since the last checkpoint: run one
_DELETE_CHUNK = 2_000  # delivered rows deleted per step (~2-3 ms; the loop runs between)
_DROP_REPORT_S = 1.0  # at most one data_dropped event a second while rows keep being dropped


class Row(NamedTuple):
    """One committed outbox row, as the sinks see it."""

    seq: int
    t: float  # wall-clock time it was added (s since the epoch), for age and lag
    kind: int
    equipment: str
    topic: str
    payload: bytes  # MQTT JSON
    line: bytes  # InfluxDB line protocol


_tuple_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: dict[str, int]  # rows not yet acked, per sink
    lag_s: dict[str, float]  # age of the oldest unacked row, per sink
    dropped: int  # rows dropped by the bounds since start
    committed: int  # rows committed since start
    pending: int  # rows added, not yet committed
    rows_bytes: int  # bytes of the rows kept (the bounded quantity)
    db_bytes: int  # database + WAL file sizes


# --------------------------------------------------------------------------- the outbox


class _SinkCursor:
    """One sink's place in the outbox.

    ``acked`` is the cursor: every row up to it is acked. Rows handed out since (up to
    ``fetched``) wait in ``inflight``, oldest first; acks that came out of order wait in
    ``early`` until the rows before them are acked too. ``persisted`` is the cursor as
    SQLite has it (-1: never stored). ``wake`` wakes the sink's :meth:`Outbox.fetch`.
    """

    __slots__ = ("acked", "early", "fetched", "inflight", "persisted", "wake")

    def __init__(self, acked: int, persisted: int) -> None:
        self.acked = acked
        self.fetched = acked
        self.persisted = persisted
        self.inflight: deque[int] = deque()
        self.early: set[int] = set()
        self.wake = asyncio.Event()

    def advance(self) -> bool:
        """Move ``acked`` over the handed-out rows that are all acked; True when it moved."""
        q, early = self.inflight, self.early
        moved = False
        while q and q[0] in early:
            self.acked = q.popleft()
            early.discard(self.acked)
            moved = True
        if not q and early:
            early.clear()  # acks of rows no longer handed out (stale)
        return moved

    def skip_to(self, seq: int) -> None:
        """Rows up to ``seq`` are gone (dropped by a bound): the cursor passes them."""
        self.acked = seq
        if self.fetched < seq:
            self.fetched = seq
        q = self.inflight
        while q and q[0] <= seq:
            q.popleft()
        if self.early:
            self.early = {s for s in self.early if s > seq}

    def rewind(self) -> None:
        """Forget what was handed out and not acked; wake the sink to fetch it again."""
        self.fetched = self.acked
        self.inflight.clear()
        self.early.clear()
        self.wake.set()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    kind INTEGER NOT NULL,
    equipment TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    line BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_INSERT = (
    "INSERT INTO rows (id, t, kind, equipment, topic, payload, line, size) VALUES (?,?,?,?,?,?,?,?)"
)
_SELECT = "SELECT id, t, kind, equipment, topic, payload, line FROM rows"


class Outbox:
    """The SQLite outbox of one gateway; all methods are called from the event loop's thread.

    ``sinks`` names the sinks that read it (``"mqtt"``, ``"influx"``); each has its own
    cursor. ``site`` and ``topic_prefix`` go into every topic and line when a row is added.
    Start :meth:`run` as a task (bounds by age, deletes delivered rows, checkpoints), and
    :meth:`close` after the sinks have stopped.
    """

    def __init__(
        self,
        path: Path | str,
        settings: OutboxSettings | None = None,
        *,
        sinks: Sequence[str] = ("mqtt", "influx"),
        site: str = "lab",
        topic_prefix: str = "calgate",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.settings = settings or OutboxSettings()
        self.sinks: tuple[str, ...] = tuple(sinks)
        self.site = site
        self.topic_prefix = topic_prefix
        self._clock = clock
        self._base = f"{topic_prefix}/{site}/"
        self._encoder = Encoder(site, topic_prefix)

        self._pending: list[Row] = []
        self._tail: list[Row] = []
        self._commit_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() runs on
        self._commit_due = math.inf  # loop time the scheduled commit fires
        self._rows_due = False  # buffered rows have a commit scheduled (see add)
        self._cursors: dict[str, _SinkCursor] = {}
        self._cursors_dirty = False
        self._cursors_due = 0.0  # time.monotonic() by which dirty cursors are committed
        self._dropped = 0
        # the drop episode not yet delivered everywhere: [oldest, newest, count], the reason
        # of its latest drop, the seq of its latest event (0: none yet), when that was added
        self._episode: list[int] | None = None
        self._episode_reason = ""
        self._episode_event = 0
        self._reported_at = -math.inf
        self._report_handle: asyncio.TimerHandle | None = None
        self._committed = 0
        self._closed = False
        self._checkpointing = False
        self._written = 0  # bytes of rows written (added or deleted) since the last checkpoint
        self._commit_failures = 0
        self._commit_error = ""  # the last commit's error while commits fail

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = self._connect()
            self._load()
        except sqlite3.Error as exc:
            hint = ""
            if "not a database" in str(exc) or "malformed" in str(exc):
                # never replaced silently: its rows may still be read by SQLite's .recover
                hint = (
                    "; the file is damaged: move it aside (keep it for recovery) to start "
                    "with an empty outbox, whose seq starts again at 1"
                )
            raise OutboxError(f"cannot open outbox {self.path}: {exc}{hint}") from exc

    # ------------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        # 16 KiB pages for a new database (an existing one keeps its own): a batch of
        # ~600-byte rows writes a quarter as many WAL frames (bench/README.md)
        con.execute("PRAGMA page_size=16384")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        # run() checkpoints in a worker thread when the WAL passes 4 MiB; SQLite's own
        # checkpoint (in the committing thread) is only a safety net, at ~40 MiB
        page = int(con.execute("PRAGMA page_size").fetchone()[0])
        con.execute(f"PRAGMA wal_autocheckpoint={40 * 2**20 // page}")
        # 1 MiB of page cache (SQLite's default is 2 MiB): rows are appended and deleted
        # at the ends of the table, and the sinks read recent rows from memory
        con.execute("PRAGMA cache_size=-1024")
        con.execute("PRAGMA journal_size_limit=67108864")  # a reset WAL shrinks to 64 MiB
        con.executescript(_SCHEMA)
        return con

    def _load(self) -> None:
        con = self._con
        stored: dict[str, int] = dict(con.execute("SELECT sink, seq FROM cursors"))
        self._next: int = _stored_next(con, stored.values())
        self._committed_seq = self._next - 1
        first = con.execute("SELECT coalesce(min(id), 0) FROM rows").fetchone()[0]
        for sink in self.sinks:
            # A new sink starts at the oldest row kept: it gets the backlog.
            cur = stored.get(sink, max(int(first) - 1, 0))
            self._cursors[sink] = _SinkCursor(cur, stored.get(sink, -1))
        self._cursors_dirty = any(c.persisted != c.acked for c in self._cursors.values())
        self._bytes = int(con.execute("SELECT coalesce(sum(size), 0) FROM rows").fetchone()[0])

    # ------------------------------------------------------------------ adding

    @property
    def next_seq(self) -> int:
        """The seq the next record added gets (rows are numbered in the order added)."""
        return self._next

    def add(self, records: Iterable[Measurement | Event]) -> None:
        """Encode and buffer records; they are committed within ``commit_interval_s``.

        Never blocks on I/O beyond one batched commit; call from the event loop (or, with
        no loop running, call :meth:`commit` yourself).
        """
        if self._closed:
            raise OutboxError("outbox is closed")
        self._encode(records)
        if len(self._pending) >= self.settings.commit_rows and not self._commit_failures:
            self._commit(cursors=False)
        elif self._pending and not self._rows_due:
            # then a commit comes within commit_interval_s: no timer check per add
            self._rows_due = self._schedule_commit(self.settings.commit_interval_s)

    def _encode(self, records: Iterable[Measurement | Event]) -> None:
        # no local aliases of bound methods: made on every call, they cost more than they
        # save for the usual one-value poll
        now = self._clock()
        pending = self._pending
        base = self._base
        seq = self._next
        try:
            for rec in records:
                if type(rec) is Measurement:
                    topic, payload, line = self._encoder.measurement(rec, seq)
                    eq = rec.reading.equipment
                    # Row(...) without NamedTuple's Python-level __new__
                    pending.append(
                        _tuple_new(Row, (seq, now, KIND_MEASUREMENT, eq, topic, payload, line))
                    )
                elif isinstance(rec, Event):
                    pending.append(
                        Row(
                            seq,
                            now,
                            KIND_EVENT,
                            rec.equipment,
                            f"{base}{rec.equipment}/event",
                            dumps(rec.payload(seq)).encode(),
                            event_line(rec, seq, self.site).encode(),
                        )
                    )
                elif isinstance(rec, Measurement):  # a subclass: the generic path
                    pending.append(
                        Row(
                            seq,
                            now,
                            KIND_MEASUREMENT,
                            rec.equipment,
                            f"{base}{rec.equipment}/{rec.channel}/reading",
                            dumps(rec.payload(seq)).encode(),
                            measurement_line(rec, seq, self.site).encode(),
                        )
                    )
                else:
                    raise TypeError(f"outbox takes Measurement or Event, not {type(rec).__name__}")
                seq += 1
        finally:
            self._next = seq

    def _event_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop to schedule on, None without one."""
        loop = self._loop  # kept by run(): get_running_loop() is a getpid() call in 3.11
        if loop is None or loop.is_closed():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
        return loop

    def _schedule_commit(self, delay_s: float) -> bool:
        """A commit within ``delay_s`` (or sooner, if one is due sooner); False with no loop."""
        loop = self._event_loop()
        if loop is None:
            return False  # no loop: the caller commits
        if self._commit_failures:
            delay_s = max(delay_s, _RETRY_S)  # SQLite is failing: retry, do not hammer
        due = loop.time() + delay_s
        if self._commit_handle is not None:
            if self._commit_due <= due:
                return True
            self._commit_handle.cancel()
        self._commit_due = due
        self._commit_handle = loop.call_at(due, self._commit_soon)
        return True

    def _commit_soon(self) -> None:
        self._commit_handle = None
        self._commit_due = math.inf
        self._commit(cursors=False)

    def commit(self) -> int:
        """Commit buffered rows and cursors now, in one transaction; return the row count.

        On a SQLite error (disk full, I/O error) the rows stay buffered and the commit is
        retried later; buffered rows beyond a bound are dropped and counted.
        """
        return self._commit(cursors=True)

    def _commit(self, *, cursors: bool) -> int:
        """:meth:`commit`; moved cursors go with it when ``cursors`` or when they are due
        (``cursor_interval_s`` after they moved): two of a commit's pages (table and key)
        that every batch would otherwise write again."""
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
            self._commit_due = math.inf
        if self._closed:
            return 0
        self._rows_due = False
        rows = self._pending
        dirty = self._cursors_dirty
        if dirty and not cursors and time.monotonic() + 0.001 < self._cursors_due:
            dirty = False
            self._schedule_commit(self._cursors_due - time.monotonic())
        if not rows and not dirty:
            return 0
        self._pending = []
        con = self._con
        size = 0
        positions = self._positions()
        try:
            con.execute("BEGIN")
            if rows:
                # exact tuples (sqlite3 binds a NamedTuple's items more slowly), unpacked
                params: list[tuple[Any, ...]] = []
                append = params.append
                for seq, t, kind, eq, topic, payload, line in rows:
                    n = len(payload) + len(line) + len(topic) + len(eq) + _ROW_OVERHEAD
                    size += n
                    append((seq, t, kind, eq, topic, payload, line, n))
                con.executemany(_INSERT, params)
            if dirty:
                con.executemany(
                    "INSERT OR REPLACE INTO cursors (sink, seq) VALUES (?, ?)", positions.items()
                )
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            self._commit_failed(rows, exc)
            return 0
        self._commit_failures = 0
        if dirty:
            self._persisted(positions)
        if not rows:
            return 0
        self._bytes += size
        self._written += size
        self._committed += len(rows)
        self._committed_seq = rows[-1].seq
        tail = self._tail
        if tail and tail[-1].seq + 1 != rows[0].seq:
            tail.clear()  # keep the tail contiguous (rows were lost in between)
        tail.extend(rows)
        limit = self.settings.tail_rows
        if len(tail) > 2 * limit + 1000:
            del tail[: len(tail) - limit]
        for c in self._cursors.values():
            c.wake.set()
        if self._bytes > self.settings.max_bytes:
            self._drop_for_bytes()
        return len(rows)

    def _commit_failed(self, rows: list[Row], exc: sqlite3.Error) -> None:
        self._commit_failures += 1
        self._commit_error = str(exc)
        if self._commit_failures == 1 or self._commit_failures % 100 == 0:
            log.error("outbox commit failed (%d rows kept in memory): %s", len(rows), exc)
        rows.extend(self._pending)
        self._pending = rows
        excess = len(rows) - _MAX_PENDING
        if excess > 0:
            lost = rows[:excess]
            del rows[:excess]
            self._dropped += excess
            self._note_drop(lost[0].seq, lost[-1].seq, excess, "commit_failed")
        self._schedule_commit(_RETRY_S)

    # ------------------------------------------------------------------ delivering

    def fetch_nowait(self, sink: str, limit: int) -> list[Row]:
        """Up to ``limit`` committed rows after those already handed to ``sink``."""
        c = self._cursors[sink]
        pos = c.fetched
        if pos >= self._committed_seq:
            return []
        tail = self._tail
        if tail and tail[0].seq <= pos + 1:
            i = pos + 1 - tail[0].seq
            rows = tail[i : i + limit]
        else:
            rows = [
                Row(*r)
                for r in self._con.execute(
                    f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?", (pos, limit)
                )
            ]
        if rows:
            first, last = rows[0].seq, rows[-1].seq
            c.fetched = last
            if last - first == len(rows) - 1:  # contiguous (the usual): no list of seqs
                c.inflight.extend(range(first, last + 1))
            else:
                c.inflight.extend([r.seq for r in rows])
        return rows

    async def fetch(self, sink: str, limit: int, timeout_s: float | None = None) -> list[Row]:
        """Like :meth:`fetch_nowait`; when there is nothing new, wait for the next commit
        (or :meth:`wake`, or ``timeout_s``) once, then return what there is (maybe ``[]``)."""
        rows = self.fetch_nowait(sink, limit)
        if rows or self._closed:
            return rows
        wake = self._cursors[sink].wake
        wake.clear()
        if timeout_s is None:
            await wake.wait()
        else:
            try:
                async with asyncio.timeout(timeout_s):
                    await wake.wait()
            except TimeoutError:
                pass
        return self.fetch_nowait(sink, limit)

    def wake(self, sink: str) -> None:
        """Wake ``sink``'s pending :meth:`fetch` (a sink's own state changed)."""
        self._cursors[sink].wake.set()

    def ack_one(self, sink: str, seq: int) -> None:
        """``seq`` was delivered by ``sink`` (a PUBACK; may come out of order)."""
        c = self._cursors[sink]
        q = c.inflight
        if q and q[0] == seq:
            q.popleft()
            c.acked = seq
            if q and c.early:
                c.advance()
            self._cursor_moved()
        elif seq > c.acked:
            c.early.add(seq)
            if q and q[0] in c.early:
                c.advance()
                self._cursor_moved()

    def ack(self, sink: str, seqs: Iterable[int]) -> None:
        """Several rows delivered by ``sink`` (a 2xx for a batch)."""
        c = self._cursors[sink]
        c.early.update(seqs)
        if c.advance():
            self._cursor_moved()

    def _cursor_moved(self) -> None:
        if not self._cursors_dirty:
            self._cursors_dirty = True
            self._cursors_due = time.monotonic() + self.settings.cursor_interval_s
            self._schedule_commit(self.settings.cursor_interval_s)

    def rewind(self, sink: str) -> None:
        """Forget what ``sink`` was handed but did not ack: the next fetch starts after
        its cursor (after a reconnect, everything not acked is sent again)."""
        self._cursors[sink].rewind()

    def cursor(self, sink: str) -> int:
        return self._cursors[sink].acked

    def depth(self, sink: str) -> int:
        """Committed rows ``sink`` has not acked yet (plus those still buffered)."""
        return max(self._next - 1 - self._cursors[sink].acked, 0)

    def _positions(self) -> dict[str, int]:
        return {sink: c.acked for sink, c in self._cursors.items()}

    def _persisted(self, positions: dict[str, int]) -> None:
        """``positions`` (of :meth:`_positions`) are stored now."""
        for sink, seq in positions.items():
            self._cursors[sink].persisted = seq
        self._cursors_dirty = False

    def _slowest(self) -> int:
        """The lowest cursor: every row up to it is acked by every sink."""
        return min(c.acked for c in self._cursors.values())

    @property
    def last_seq(self) -> int:
        """The seq of the last row added (committed or not)."""
        return self._next - 1

    @property
    def committed_seq(self) -> int:
        return self._committed_seq

    # ------------------------------------------------------------------ bounds

    def _note_drop(self, oldest: int, newest: int, count: int, reason: str) -> None:
        """Rows ``oldest``..``newest`` (``count`` of them unsent) were dropped: add them to
        the episode and report it now, or within a second of the last report."""
        ep, event = self._episode, self._episode_event
        if event and oldest <= event <= newest:
            event = self._episode_event = 0  # the last report went in turn: still open
        if ep is not None and event and self._slowest() >= event:
            ep = None  # every sink delivered the last report: a new episode
        if ep is None:
            self._episode = [oldest, newest, count]
        else:
            ep[0], ep[1], ep[2] = min(ep[0], oldest), max(ep[1], newest), ep[2] + count
        self._episode_reason = reason
        wait_s = self._reported_at + _DROP_REPORT_S - time.monotonic()
        if wait_s <= 0:
            self._report_drops()
        elif self._report_handle is None:
            loop = self._event_loop()
            if loop is None:
                self._report_drops()
            else:
                self._report_handle = loop.call_later(wait_s, self._report_drops)

    def _report_drops(self) -> None:
        """The data_dropped event of the episode so far (and its log line)."""
        self._report_handle = None
        ep = self._episode
        if ep is None or self._closed:
            return
        oldest, newest, count = ep
        reason = self._episode_reason
        log.warning(
            "outbox: dropped %d undelivered rows (seq %d..%d): %s", count, oldest, newest, reason
        )
        self._reported_at = time.monotonic()
        self._episode_event = self._next
        self._encode(
            [
                Event(
                    type="data_dropped",
                    severity="warning",
                    equipment=DROP_EQUIPMENT,
                    message=f"outbox dropped {count} undelivered rows ({reason})",
                    t_wall=datetime.now(UTC),
                    detail={
                        "count": count,
                        "oldest_seq": oldest,
                        "newest_seq": newest,
                        "reason": reason,
                    },
                )
            ]
        )
        self._schedule_commit(self.settings.commit_interval_s)

    def _delete_upto(self, upto: int, *, reason: str | None) -> None:
        """Delete every stored row with ``id <= upto``; count the unsent ones as dropped."""
        unsent_from = self._slowest() + 1 if self.sinks else upto + 1
        con = self._con
        n_unsent, first_unsent = 0, 0
        if reason is not None and unsent_from <= upto:
            n_unsent, first_unsent = con.execute(
                "SELECT count(*), coalesce(min(id), 0) FROM rows WHERE id >= ? AND id <= ?",
                (unsent_from, upto),
            ).fetchone()
        freed = con.execute(
            "SELECT coalesce(sum(size), 0) FROM rows WHERE id <= ?", (upto,)
        ).fetchone()[0]
        try:
            con.execute("BEGIN")
            con.execute("DELETE FROM rows WHERE id <= ?", (upto,))
            for c in self._cursors.values():
                if c.acked < upto:
                    c.skip_to(upto)
            positions = self._positions()
            con.executemany(
                "INSERT OR REPLACE INTO cursors (sink, seq) VALUES (?, ?)", positions.items()
            )
            # seq goes on after the rows deleted (and with no sink, no cursor says so)
            con.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?)",
                (max(upto, self._committed_seq) + 1,),
            )
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            log.error("outbox: cannot delete old rows: %s", exc)
            return
        self._persisted(positions)
        self._bytes -= int(freed)
        self._written += int(freed)  # a delete rewrites the pages it empties
        tail = self._tail
        if tail and tail[0].seq <= upto:
            del tail[: min(upto - tail[0].seq + 1, len(tail))]
        if n_unsent and reason is not None:
            self._dropped += int(n_unsent)
            self._note_drop(int(first_unsent), upto, int(n_unsent), reason)

    def _drop_for_bytes(self) -> None:
        # Rows every sink has acked go first (no loss), then the oldest unsent ones.
        self._delete_delivered()
        limit = self.settings.max_bytes
        if self._bytes <= limit:
            return
        target = self._bytes - (limit - limit // 200)  # 0.5 % below: short, frequent drops
        freed, upto, pos = 0, 0, 0
        con = self._con
        while freed < target:
            chunk = con.execute(
                "SELECT id, size FROM rows WHERE id > ? ORDER BY id LIMIT 2000", (pos,)
            ).fetchall()
            if not chunk:
                break
            for rid, size in chunk:
                freed += size
                upto = rid
                if freed >= target:
                    break
            pos = chunk[-1][0]
        if upto:
            self._delete_upto(upto, reason="max_bytes")

    def _drop_for_age(self) -> None:
        cutoff = self._clock() - self.settings.max_age_s
        con = self._con
        oldest = con.execute("SELECT t FROM rows ORDER BY id LIMIT 1").fetchone()
        if oldest is None or oldest[0] >= cutoff:
            return  # the usual: nothing that old (no scan of 2,000 rows every second)
        upto, pos = 0, 0
        while True:
            chunk = con.execute(
                "SELECT id, t FROM rows WHERE id > ? ORDER BY id LIMIT 2000", (pos,)
            ).fetchall()
            old = [rid for rid, t in chunk if t < cutoff]
            if old:
                upto = old[-1]
            if len(old) < len(chunk) or not chunk:
                break
            pos = chunk[-1][0]
        if upto:
            self._delete_upto(upto, reason="max_age")

    def _delete_delivered(self, limit: int | None = None) -> bool:
        """Delete rows every sink has acked (at most ``limit`` of them: a long catch-up
        is deleted in several short steps). True when delivered rows remain."""
        done = self._slowest() if self.sinks else self._committed_seq
        first = self._con.execute("SELECT min(id) FROM rows").fetchone()[0]
        more = False
        if first is not None and first <= done:
            if limit is not None and done > first + limit - 1:
                done, more = first + limit - 1, True
            self._delete_upto(done, reason=None)
        tail = self._tail
        if tail and tail[0].seq <= done:
            del tail[: min(done - tail[0].seq + 1, len(tail))]
        excess = len(tail) - self.settings.tail_rows
        if excess > 0:
            del tail[:excess]
        return more

    def maintain(self) -> bool:
        """One round of upkeep: age bound, delete delivered rows (one step), trim the
        tail. True when more delivered rows wait (:meth:`delete_step`)."""
        if self._closed:
            return False
        try:
            self._drop_for_age()
            more = self._delete_delivered(limit=_DELETE_CHUNK)
            if self._bytes > self.settings.max_bytes:
                self._drop_for_bytes()
        except sqlite3.Error as exc:
            log.error("outbox upkeep failed: %s", exc)
            return False
        return more

    def delete_step(self) -> bool:
        """Delete up to ``_DELETE_CHUNK`` more delivered rows; True when more wait."""
        if self._closed:
            return False
        try:
            return self._delete_delivered(limit=_DELETE_CHUNK)
        except sqlite3.Error as exc:
            log.error("outbox upkeep failed: %s", exc)
            return False

    async def run(self) -> None:
        """Upkeep every ``maintenance_interval_s`` until cancelled; checkpoints the WAL
        in a worker thread when it grows."""
        loop = self._loop = asyncio.get_running_loop()
        tick_s = min(0.25, self.settings.maintenance_interval_s)
        next_upkeep = loop.time() + self.settings.maintenance_interval_s
        while not self._closed:
            await asyncio.sleep(tick_s)
            if loop.time() >= next_upkeep:
                next_upkeep = loop.time() + self.settings.maintenance_interval_s
                # delivered rows go in short steps, polls in between (at 20,000 rows/s
                # one long DELETE a second stalled the loop for tens of ms)
                more = self.maintain()
                for _ in range(1000):
                    if not more:
                        break
                    await asyncio.sleep(0)
                    more = self.delete_step()
            # often enough that SQLite's own checkpoint (on the loop) never has to run.
            # Counted in bytes written, not by the WAL's size: a checkpointed WAL keeps its
            # size (SQLite writes it again from the start), so the size would ask for a
            # checkpoint, a connection and three fsyncs every tick.
            if self._written >= _CHECKPOINT_BYTES:
                await self.checkpoint()

    async def checkpoint(self) -> None:
        """Copy the WAL into the database, in a thread (fsyncs never block the loop)."""
        if self._checkpointing or self._closed:
            return
        self._written = 0
        self._checkpointing = True
        try:
            await asyncio.to_thread(self._checkpoint_blocking)
        finally:
            self._checkpointing = False

    def _checkpoint_blocking(self) -> None:
        con = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("outbox checkpoint failed: %s", exc)
        finally:
            con.close()

    # ------------------------------------------------------------------ status

    def stats(self) -> OutboxStats:
        now = self._clock()
        depth: dict[str, int] = {}
        lag: dict[str, float] = {}
        for sink in self.sinks:
            cur = self._cursors[sink].acked
            depth[sink] = max(self._committed_seq - cur, 0) + len(self._pending)
            t = self._row_time_after(cur)
            lag[sink] = max(now - t, 0.0) if t is not None else 0.0
        db = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                db += os.stat(f"{self.path}{suffix}").st_size
        return OutboxStats(
            depth=depth,
            lag_s=lag,
            dropped=self._dropped,
            committed=self._committed,
            pending=len(self._pending),
            rows_bytes=self._bytes,
            db_bytes=db,
        )

    def _row_time_after(self, seq: int) -> float | None:
        tail = self._tail
        if tail and tail[0].seq <= seq + 1 <= tail[-1].seq:
            return tail[seq + 1 - tail[0].seq].t
        if seq < self._committed_seq and not self._closed:
            row = self._con.execute(
                "SELECT t FROM rows WHERE id > ? ORDER BY id LIMIT 1", (seq,)
            ).fetchone()
            if row is not None:
                return float(row[0])
        if self._pending:
            return self._pending[0].t
        return None

    @property
    def failing(self) -> str | None:
        """Why commits fail, once they have failed twice in a row (a retry included:
        about a second; a full disk, an I/O error), else None."""
        if self._commit_failures < 2:
            return None
        return f"{self._commit_error} ({len(self._pending)} rows kept in memory)"

    @property
    def dropped(self) -> int:
        return self._dropped

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Commit what is buffered, persist cursors, and close the database."""
        if self._closed:
            return
        if self._report_handle is not None:  # drops not reported yet: report them now
            self._report_handle.cancel()
            self._report_drops()
        self._cursors_dirty = True
        self.commit()
        self._closed = True
        for c in self._cursors.values():
            c.wake.set()
        try:
            self._con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("outbox checkpoint at close failed: %s", exc)
        self._con.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stored_next(con: sqlite3.Connection, cursors: Iterable[int]) -> int:
    """The seq the next row gets, by what the file holds: past its newest row, its stored
    ``next_seq`` (written when rows are deleted) and every sink's cursor."""
    max_id = con.execute("SELECT coalesce(max(id), 0) FROM rows").fetchone()[0]
    row = con.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    return max(int(max_id) + 1, int(row[0]) if row else 1, *(q + 1 for q in cursors))


def committed_seq_in(path: Path) -> int:
    """The highest seq committed to the outbox file at ``path``, read from the file (for a
    process watching another one's outbox: a test, the soak bench)."""
    con = sqlite3.connect(path)
    try:
        return _stored_next(con, [q for (q,) in con.execute("SELECT seq FROM cursors")]) - 1
    finally:
        con.close()
