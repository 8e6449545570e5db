"""The SQLite outbox: rows as encoded, batched commits, cursors, out-of-order acks, bounds."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for_async
from records import event, meas

from gateway.model import Measurement
from gateway.outbox import DROP_EQUIPMENT, KIND_EVENT, Outbox, Row
from gateway.settings import OutboxSettings
from gateway.wire import measurement_line


def settings(**kw: Any) -> OutboxSettings:
    return OutboxSettings(**kw)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite"


# --------------------------------------------------------------------------- rows as encoded

MEASUREMENTS = [
    meas(0),
    meas(1, raw=math.nan, value=math.nan, u=None, U=None, quality="bad", flags=frozenset({"nan"})),
    meas(2, raw=math.inf, flags=frozenset({"overload", "stable"}), conformity=None),
    meas(3, certificate=None, calibration="none", k=None, quantity=None),
    meas(4, unit="µm", raw_unit="µm", equipment="WS 1,a=b", channel='ch"\\1'),
    meas(5, value=1e-12, u=3.5e-15, U=7e-15, raw=-0.0),
    meas(6, k=2, value=12),  # ints where floats are expected
]


@pytest.mark.parametrize("m", MEASUREMENTS)
def test_fast_payload_equals_model_payload(db: Path, m: Measurement) -> None:
    ob = Outbox(db, sinks=("mqtt",), site="lab-a", topic_prefix="calgate")
    ob.add([m])
    ob.commit()
    (row,) = ob.fetch_nowait("mqtt", 10)
    assert json.loads(row.payload) == json.loads(
        json.dumps(m.payload(row.seq)).replace("NaN", "null")
    )
    assert list(json.loads(row.payload)) == list(m.payload(row.seq))  # same key order
    assert row.topic == f"calgate/lab-a/{m.equipment}/{m.channel}/reading"
    assert row.line.decode() == measurement_line(m, row.seq, "lab-a")
    ob.close()


def test_event_row(db: Path) -> None:
    ob = Outbox(db, sinks=("mqtt",), site="lab-a")
    e = event(1, detail={"due": datetime(2027, 1, 1, tzinfo=UTC).date(), "x": math.nan})
    ob.add([e])
    ob.commit()
    (row,) = ob.fetch_nowait("mqtt", 10)
    assert row.kind == KIND_EVENT
    assert row.topic == "calgate/lab-a/PT-101/event"
    payload = json.loads(row.payload)
    assert payload["type"] == "out_of_tolerance"
    assert payload["seq"] == row.seq
    assert payload["due"] == "2027-01-01"
    assert payload["x"] is None
    line = row.line.decode()
    assert line.startswith(
        "event,equipment=PT-101,severity=warning,site=lab-a,type=out_of_tolerance "
    )
    assert f"seq={row.seq}i" in line
    assert 'detail="{\\"due\\":\\"2027-01-01\\",\\"x\\":null}"' in line
    ob.close()


def test_add_rejects_other_types(db: Path) -> None:
    ob = Outbox(db, sinks=("mqtt",))
    with pytest.raises(TypeError):
        ob.add([object()])  # type: ignore[list-item]
    ob.add([meas(0)])
    ob.commit()
    assert [r.seq for r in ob.fetch_nowait("mqtt", 10)] == [1]
    ob.close()


# --------------------------------------------------------------------------- batching


async def test_rows_are_delivered_only_after_a_batched_commit(db: Path) -> None:
    ob = Outbox(db, settings(commit_interval_s=0.05, commit_rows=10), sinks=("mqtt",))
    ob.add([meas(i) for i in range(3)])
    assert ob.fetch_nowait("mqtt", 100) == []  # buffered, not committed
    assert ob.stats().pending == 3
    rows = await ob.fetch("mqtt", 100, timeout_s=5)  # woken by the timed commit
    assert [r.seq for r in rows] == [1, 2, 3]
    ob.add([meas(i) for i in range(10)])  # commit_rows reached: committed at once
    assert ob.stats().pending == 0
    assert [r.seq for r in ob.fetch_nowait("mqtt", 100)] == list(range(4, 14))
    assert ob.stats().committed == 13
    ob.close()


async def test_fetch_times_out_empty(db: Path) -> None:
    ob = Outbox(db, sinks=("mqtt",))
    assert await ob.fetch("mqtt", 10, timeout_s=0.01) == []
    ob.close()


def test_rows_and_cursors_survive_reopen_and_seq_keeps_growing(db: Path) -> None:
    ob = Outbox(db, sinks=("mqtt", "influx"))
    ob.add([meas(i) for i in range(5)])
    ob.commit()
    ob.ack("mqtt", [r.seq for r in ob.fetch_nowait("mqtt", 3)])
    ob.close()

    ob = Outbox(db, sinks=("mqtt", "influx"))
    assert ob.cursor("mqtt") == 3
    assert ob.cursor("influx") == 0
    assert [r.seq for r in ob.fetch_nowait("mqtt", 10)] == [4, 5]
    assert [r.seq for r in ob.fetch_nowait("influx", 10)] == [1, 2, 3, 4, 5]
    ob.ack("mqtt", [4, 5])
    ob.ack("influx", [1, 2, 3, 4, 5])
    ob.maintain()  # every sink acked everything: all rows deleted
    assert ob.stats().rows_bytes == 0
    ob.close()

    ob = Outbox(db, sinks=("mqtt", "influx"))
    ob.add([meas(0)])
    ob.commit()
    assert [r.seq for r in ob.fetch_nowait("mqtt", 10)] == [6]  # never reused
    ob.close()


def test_seq_never_goes_back_after_every_row_was_deleted_and_the_gateway_died(db: Path) -> None:
    # no sink: no cursor remembers how far seq went; the deletion itself must
    ob = Outbox(db, sinks=())
    ob.add([meas(i) for i in range(5)])
    ob.commit()
    ob.maintain()  # nothing to wait for: every row deleted
    assert ob.stats().rows_bytes == 0
    again = Outbox(db, sinks=())  # as after kill -9: the first never closed
    again.add([meas(0)])
    again.commit()
    assert again.last_seq == 6
    again.close()


def stored_cursor(db: Path, sink: str) -> int | None:
    """The cursor as a restart after kill -9 would find it."""
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
    finally:
        con.close()
    return None if row is None else int(row[0])


async def test_moved_cursors_are_committed_every_cursor_interval_not_with_every_batch(
    db: Path,
) -> None:
    ob = Outbox(db, settings(commit_rows=1, cursor_interval_s=0.3), sinks=("mqtt",))
    ob.add([meas(0)])  # commit_rows reached: committed at once
    ob.ack("mqtt", [r.seq for r in ob.fetch_nowait("mqtt", 10)])
    ob.add([meas(1)])  # a batch right after the ack: the cursor does not ride on it
    assert ob.fetch_nowait("mqtt", 10)[0].seq == 2
    assert stored_cursor(db, "mqtt") in (None, 0)
    # within cursor_interval_s it is committed on its own (a crash re-sends at most that)
    await wait_for_async(lambda: stored_cursor(db, "mqtt") == 1, timeout_s=5)
    ob.ack("mqtt", [2])
    ob.commit()  # an explicit commit takes the cursors along at once
    assert stored_cursor(db, "mqtt") == 2
    ob.close()


def test_a_new_sink_gets_the_backlog(db: Path) -> None:
    ob = Outbox(db, sinks=("mqtt",))
    ob.add([meas(i) for i in range(3)])
    ob.close()  # close commits
    ob = Outbox(db, sinks=("mqtt", "influx"))
    assert [r.seq for r in ob.fetch_nowait("influx", 10)] == [1, 2, 3]
    ob.close()


# --------------------------------------------------------------------------- acks


def test_out_of_order_acks_advance_to_the_highest_contiguous(db: Path) -> None:
    ob = Outbox(db, sinks=("mqtt",))
    ob.add([meas(i) for i in range(6)])
    ob.commit()
    assert len(ob.fetch_nowait("mqtt", 6)) == 6
    for seq in (2, 3, 5):
        ob.ack_one("mqtt", seq)
    assert ob.cursor("mqtt") == 0
    ob.ack_one("mqtt", 1)
    assert ob.cursor("mqtt") == 3
    ob.ack_one("mqtt", 6)
    assert ob.cursor("mqtt") == 3
    ob.ack_one("mqtt", 4)
    assert ob.cursor("mqtt") == 6
    ob.ack_one("mqtt", 6)  # a duplicate ack changes nothing
    assert ob.cursor("mqtt") == 6
    assert ob.stats().depth == {"mqtt": 0}
    ob.close()


def test_rewind_hands_out_unacked_rows_again(db: Path) -> None:
    ob = Outbox(db, sinks=("mqtt",))
    ob.add([meas(i) for i in range(5)])
    ob.commit()
    ob.fetch_nowait("mqtt", 5)
    ob.ack_one("mqtt", 1)
    ob.ack_one("mqtt", 3)  # out of order; lost with the connection
    ob.rewind("mqtt")
    assert [r.seq for r in ob.fetch_nowait("mqtt", 10)] == [2, 3, 4, 5]
    ob.close()


async def test_a_sink_down_for_an_hour_catches_up_oldest_first_while_the_other_stays_live(
    db: Path,
) -> None:
    # tail_rows small so catching up reads SQLite, as after a long outage
    ob = Outbox(db, settings(tail_rows=100, commit_rows=500), sinks=("mqtt", "influx"))
    n = 5000  # an hour of one instrument at ~1.4 Hz
    for start in range(0, n, 250):
        ob.add([meas(i) for i in range(start, start + 250)])
        # mqtt live: fetches and acks everything at once
        rows = await ob.fetch("mqtt", 1000, timeout_s=5)
        while rows:
            ob.ack("mqtt", [r.seq for r in rows])
            rows = ob.fetch_nowait("mqtt", 1000)
        ob.maintain()
    ob.commit()
    rows = ob.fetch_nowait("mqtt", 1000)
    ob.ack("mqtt", [r.seq for r in rows])
    assert ob.cursor("mqtt") == n
    assert ob.stats().depth == {"mqtt": 0, "influx": n}
    assert ob.stats().lag_s["influx"] >= 0
    seen: list[int] = []
    while rows := ob.fetch_nowait("influx", 700):
        seen.extend(r.seq for r in rows)
        ob.ack("influx", [r.seq for r in rows])
    assert seen == list(range(1, n + 1))
    import gateway.outbox as outbox_mod

    more, steps = ob.maintain(), 1  # upkeep deletes delivered rows in short steps
    while more:
        more, steps = ob.delete_step(), steps + 1
    assert steps == -(-n // outbox_mod._DELETE_CHUNK)
    assert ob.stats().rows_bytes == 0
    ob.close()


# --------------------------------------------------------------------------- bounds


def _dropped_events(ob: Outbox, sink: str) -> list[dict[str, Any]]:
    out = []
    for r in ob.fetch_nowait(sink, 100_000):
        p = json.loads(r.payload)
        if r.kind == KIND_EVENT and p["type"] == "data_dropped":
            assert r.equipment == DROP_EQUIPMENT
            assert r.topic == f"calgate/lab/{DROP_EQUIPMENT}/event"
            out.append(p)
    return out


def test_bound_by_bytes_drops_the_oldest_and_says_so(db: Path) -> None:
    ob = Outbox(db, settings(max_bytes=64 * 1024, commit_rows=50), sinks=("mqtt", "influx"))
    ob.add([meas(i) for i in range(1000)])  # ~700 kB: ten times the bound
    ob.commit()
    st = ob.stats()
    assert st.rows_bytes <= 64 * 1024
    assert st.dropped > 800
    rows = ob.fetch_nowait("mqtt", 100_000)
    seqs = [r.seq for r in rows if r.kind != KIND_EVENT]
    assert seqs == list(range(seqs[0], 1001))  # the newest survive, contiguous
    ob.rewind("mqtt")
    events = _dropped_events(ob, "mqtt")
    assert events, "a data_dropped event is in the outbox"
    assert sum(e["count"] for e in events) == st.dropped
    assert all(e["severity"] == "warning" and e["reason"] == "max_bytes" for e in events)
    assert events[0]["oldest_seq"] == 1
    assert max(e["newest_seq"] for e in events) == seqs[0] - 1
    ob.close()


async def test_a_long_overflow_is_one_episode_whose_newest_event_tells_it_all(db: Path) -> None:
    """Sinks away, rows added batch after batch over a small bound: each batch drops a few
    rows. One data_dropped event a second at most, each covering the episode so far, so
    the newest (the one the bound keeps) counts every row dropped; once every sink has
    delivered it, the next drop starts a new episode."""
    ob = Outbox(db, settings(max_bytes=64 * 1024, commit_rows=10), sinks=("mqtt", "influx"))
    for i in range(0, 600, 10):
        ob.add([meas(j) for j in range(i, i + 10)])
        await asyncio.sleep(0.02)  # 60 batches over about 1.2 s
    await wait_for_async(lambda: ob.stats().pending == 0, what="commits")
    await asyncio.sleep(1.1)  # the trailing report of the episode
    ob.commit()
    events = _dropped_events(ob, "mqtt")
    dropped = ob.stats().dropped
    assert 1 <= len(events) <= 3  # before: one event per batch, most of them dropped
    newest = events[-1]
    assert newest["count"] == dropped
    first_kept = min(r.seq for r in ob.fetch_nowait("influx", 100_000) if r.kind != KIND_EVENT)
    assert (newest["oldest_seq"], newest["newest_seq"]) == (1, first_kept - 1)
    # both sinks deliver everything: the episode is over, the next drop reports anew
    for sink in ("mqtt", "influx"):
        ob.rewind(sink)
        ob.ack(sink, [r.seq for r in ob.fetch_nowait(sink, 100_000)])
    await asyncio.sleep(1.1)
    ob.add([meas(j) for j in range(600, 800)])
    ob.commit()
    await asyncio.sleep(1.1)  # its own event may have gone over the bound: the trailing report
    ob.commit()
    ob.rewind("mqtt")
    again = _dropped_events(ob, "mqtt")[-1]
    assert again["oldest_seq"] > newest["newest_seq"]
    assert again["count"] == ob.stats().dropped - dropped
    ob.close()


def test_bound_by_bytes_first_removes_rows_every_sink_acked(db: Path) -> None:
    ob = Outbox(db, settings(max_bytes=64 * 1024, commit_rows=10_000), sinks=("mqtt",))
    ob.add([meas(i) for i in range(80)])
    ob.commit()
    ob.ack("mqtt", [r.seq for r in ob.fetch_nowait("mqtt", 1000)])
    ob.add([meas(i) for i in range(80)])  # over the bound only with the delivered rows
    ob.commit()
    assert ob.dropped == 0
    assert [r.seq for r in ob.fetch_nowait("mqtt", 1000)] == list(range(81, 161))
    ob.close()


def test_bound_by_age_drops_old_rows(db: Path) -> None:
    now = [1_000_000.0]
    ob = Outbox(db, settings(max_age_s=3600), sinks=("mqtt",), clock=lambda: now[0])
    ob.add([meas(i) for i in range(10)])
    now[0] += 1800
    ob.add([meas(i) for i in range(10, 15)])
    ob.commit()
    now[0] += 1801  # the first ten are older than an hour now
    assert ob.stats().lag_s["mqtt"] == pytest.approx(3601)
    ob.maintain()
    ob.commit()
    assert ob.dropped == 10
    rows = ob.fetch_nowait("mqtt", 100)
    assert [r.seq for r in rows if r.kind != KIND_EVENT] == list(range(11, 16))
    (ev,) = [json.loads(r.payload) for r in rows if r.kind == KIND_EVENT]
    assert ev["type"] == "data_dropped"
    assert (ev["count"], ev["oldest_seq"], ev["newest_seq"], ev["reason"]) == (10, 1, 10, "max_age")
    ob.close()


def test_in_flight_rows_that_are_dropped_do_not_block_the_cursor(db: Path) -> None:
    ob = Outbox(db, settings(max_bytes=64 * 1024, commit_rows=10_000), sinks=("mqtt",))
    ob.add([meas(i) for i in range(50)])
    ob.commit()
    ob.fetch_nowait("mqtt", 50)  # in flight, never acked
    ob.add([meas(i) for i in range(200)])
    ob.commit()  # drops the in-flight rows
    rows = ob.fetch_nowait("mqtt", 1000)
    ob.ack("mqtt", [r.seq for r in rows])
    assert ob.cursor("mqtt") == rows[-1].seq
    ob.close()


def test_stats(db: Path) -> None:
    now = [100.0]
    ob = Outbox(db, sinks=("mqtt", "influx"), clock=lambda: now[0])
    ob.add([meas(i) for i in range(4)])
    ob.commit()
    now[0] = 110.0
    ob.ack("mqtt", [r.seq for r in ob.fetch_nowait("mqtt", 10)])
    st = ob.stats()
    assert st.depth == {"mqtt": 0, "influx": 4}
    assert st.lag_s == {"mqtt": 0.0, "influx": 10.0}
    assert st.committed == 4
    assert st.db_bytes > 0
    assert st.rows_bytes > 4 * 300
    ob.close()


async def test_run_deletes_delivered_rows_in_the_background(db: Path) -> None:
    ob = Outbox(db, settings(maintenance_interval_s=0.01), sinks=("mqtt",))
    task = asyncio.create_task(ob.run())
    ob.add([meas(i) for i in range(10)])
    rows = await ob.fetch("mqtt", 100, timeout_s=5)
    ob.ack("mqtt", [r.seq for r in rows])
    await wait_for_async(lambda: ob.stats().rows_bytes == 0, what="delivered rows deleted")
    await ob.checkpoint()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ob.close()


async def test_the_wal_is_checkpointed_after_4_mib_written_not_on_every_tick(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpointed WAL keeps its file size: judged by that size, upkeep checkpointed on
    # every tick (a connection and three fsyncs, four times a second).
    ob = Outbox(db, settings(maintenance_interval_s=0.01), sinks=("mqtt",))
    checkpoints = []
    blocking = ob._checkpoint_blocking
    monkeypatch.setattr(ob, "_checkpoint_blocking", lambda: (checkpoints.append(1), blocking()))
    task = asyncio.create_task(ob.run())
    for i in range(0, 9000, 500):  # ~600 bytes a row: past 4 MiB
        ob.add([meas(j) for j in range(i, i + 500)])
    await wait_for_async(lambda: len(checkpoints) == 1, what="a checkpoint")
    ob.add([meas(9000)])
    await asyncio.sleep(0.2)  # twenty upkeep ticks with the WAL still large
    assert len(checkpoints) == 1
    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size > 4 * 1024 * 1024
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ob.close()


def test_row_is_a_tuple() -> None:
    r = Row(1, 0.0, 0, "e", "t", b"{}", b"l")
    assert r.seq == 1
    assert r.payload == b"{}"


async def test_a_full_disk_keeps_rows_in_memory_then_recovers(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.outbox as outbox_mod

    monkeypatch.setattr(outbox_mod, "_MAX_PENDING", 300)
    monkeypatch.setattr(outbox_mod, "_RETRY_S", 0.05)
    ob = Outbox(db, settings(commit_rows=100), sinks=("mqtt",))
    ob.add([meas(i) for i in range(10)])
    ob.commit()
    pages = ob._con.execute("PRAGMA page_count").fetchone()[0]
    ob._con.execute(f"PRAGMA max_page_count={pages}")  # "database or disk is full"
    for _ in range(5):
        ob.add([meas(i) for i in range(100)])  # never raises
    assert ob.commit() == 0
    st = ob.stats()
    assert st.pending == 301  # bounded: the oldest 200 dropped, a data_dropped event added
    assert st.dropped == 200
    assert [r.seq for r in ob.fetch_nowait("mqtt", 1000)] == list(range(1, 11))
    ob._con.execute("PRAGMA max_page_count=1073741823")  # space again
    await wait_for_async(lambda: ob.stats().pending == 0, what="retried commit")
    rows = ob.fetch_nowait("mqtt", 1000)
    assert [r.seq for r in rows if r.kind != KIND_EVENT] == list(range(211, 511))
    (ev,) = [json.loads(r.payload) for r in rows if r.kind == KIND_EVENT]
    assert (ev["type"], ev["reason"], ev["count"]) == ("data_dropped", "commit_failed", 200)
    assert (ev["oldest_seq"], ev["newest_seq"]) == (11, 210)
    ob.close()


def test_delivered_rows_are_deleted_in_chunks(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.outbox as outbox_mod

    monkeypatch.setattr(outbox_mod, "_DELETE_CHUNK", 100)
    ob = Outbox(db, sinks=("mqtt",))
    ob.add([meas(i) for i in range(350)])
    ob.commit()
    ob.ack("mqtt", [r.seq for r in ob.fetch_nowait("mqtt", 1000)])

    def kept() -> int:
        return int(ob._con.execute("SELECT count(*) FROM rows").fetchone()[0])

    counts = []
    for _ in range(4):
        ob.maintain()
        counts.append(kept())
    assert counts == [250, 150, 50, 0]
    assert ob.stats().rows_bytes == 0
    ob.close()
