"""InfluxDB sink against real servers: InfluxDB 1.x (api v1), victoria-metrics (api v2),
outages, and an HTTP peer that answers 429 / 413 / 400."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import email.utils
import json
import math
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from certs import make_certs
from helpers import free_port, running_sink, wait_for_async
from rude_http import RudePeer
from servers import InfluxV1, VictoriaMetrics

from drivers.base import Reading
from gateway.model import Event, Measurement
from gateway.outbox import KIND_EVENT, Outbox
from gateway.settings import InfluxSettings, OutboxSettings
from gateway.sinks import InfluxSink

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)


def meas(i: int, equipment: str = "PT-101", **kw: Any) -> Measurement:
    r = Reading(
        equipment=equipment,
        channel=kw.pop("channel", "pressure"),
        raw=kw.pop("raw", 100.0 + i / 8),
        unit="kPa",
        t_wall=NOW + dt.timedelta(milliseconds=10 * i, microseconds=123),
        t_mono=float(i),
    )
    base: dict[str, Any] = {
        "value": 100.125 + i / 8,
        "unit": "kPa",
        "u": 0.0125,
        "U": 0.025,
        "k": 2.0,
        "calibration": "valid",
        "certificate": "DKD-K-1/2026",
        "conformity": "pass",
        "quantity": "pressure",
    }
    base.update(kw)
    return Measurement(reading=r, **base)


def ns(t: dt.datetime) -> int:
    d = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (d.days * 86400 + d.seconds) * 10**9 + d.microseconds * 1000


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(
        tmp_path / "outbox.sqlite",
        OutboxSettings(commit_interval_s=0.002),
        sinks=("influx",),
        site="lab-a",
    )
    yield ob
    ob.close()


def v1(url: str, db: str, **kw: Any) -> InfluxSettings:
    base: dict[str, Any] = {
        "api": "v1",
        "url": url,
        "database": db,
        "flush_interval_s": 0.02,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.3,
    }
    base.update(kw)
    return InfluxSettings(**base)


def v2(url: str, bucket: str, **kw: Any) -> InfluxSettings:
    base: dict[str, Any] = {
        "api": "v2",
        "url": url,
        "org": "lab",
        "bucket": bucket,
        "flush_interval_s": 0.02,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.3,
    }
    base.update(kw)
    return InfluxSettings(**base)


# --------------------------------------------------------------------------- v1


async def test_v1_writes_the_schema_of_4_4(
    influxd: InfluxV1, outbox: Outbox, unique_name: str
) -> None:
    influxd.create_database(unique_name)
    ms = [meas(i) for i in range(30)]
    nan = meas(
        30,
        raw=math.nan,
        value=math.nan,
        u=None,
        U=None,
        k=None,
        quality="bad",
        certificate=None,
        conformity=None,
    )
    odd = meas(31, equipment="WS 1,a=b", certificate='say "hi"')
    ev = Event(
        type="out_of_tolerance",
        severity="warning",
        equipment="PT-101",
        channel="pressure",
        message='101.2 kPa > "high" 101.0',
        t_wall=NOW,
        detail={"limit": 101.0},
    )
    sink = InfluxSink(v1(influxd.url, unique_name), outbox)
    async with running_sink(sink):
        outbox.add([*ms, nan, odd, ev])
        await wait_for_async(lambda: outbox.cursor("influx") == 33, what="acked")
    rows = influxd.rows("SELECT * FROM reading GROUP BY *", unique_name)
    by_seq = {r["seq"]: r for r in rows}
    assert sorted(by_seq) == list(range(1, 33))
    for seq, m in enumerate(ms, start=1):
        assert by_seq[seq] == {
            "time": ns(m.t_wall),
            "site": "lab-a",
            "equipment": "PT-101",
            "channel": "pressure",
            "quantity": "pressure",
            "unit": "kPa",
            "raw": m.reading.raw,
            "value": m.value,
            "u": m.u,
            "U": m.U,
            "k": m.k,
            "quality": "good",
            "flags": "",
            "calibration": "valid",
            "certificate": "DKD-K-1/2026",
            "conformity": "pass",
            "seq": seq,
        }
    r31 = by_seq[31]
    assert (r31["raw"], r31["value"], r31["u"], r31["quality"], r31["certificate"]) == (
        None,
        None,
        None,
        "bad",
        None,
    )
    assert by_seq[32]["equipment"] == "WS 1,a=b"
    assert by_seq[32]["certificate"] == 'say "hi"'
    (erow,) = influxd.rows("SELECT * FROM event GROUP BY *", unique_name)
    assert erow["time"] == ns(NOW)
    assert (erow["site"], erow["equipment"], erow["type"], erow["severity"]) == (
        "lab-a",
        "PT-101",
        "out_of_tolerance",
        "warning",
    )
    assert erow["channel"] == "pressure"
    assert erow["message"] == '101.2 kPa > "high" 101.0'
    assert erow["seq"] == 33
    assert json.loads(str(erow["detail"])) == {"limit": 101.0}
    assert sink.rejected == 0


@pytest.fixture
def own_influxd(tmp_path: Path) -> Iterator[InfluxV1]:
    d = tmp_path / "influxd"
    d.mkdir()
    server = InfluxV1(d)
    server.start()
    yield server
    server.stop()


async def test_v1_outage_catches_up_oldest_first_exactly_once(
    own_influxd: InfluxV1, outbox: Outbox
) -> None:
    own_influxd.create_database("lab")
    sink = InfluxSink(v1(own_influxd.url, "lab", batch_size=100), outbox)
    n = 0
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(200)])
        n = 200
        await wait_for_async(lambda: outbox.cursor("influx") == n, what="first rows")
        await asyncio.to_thread(own_influxd.stop)
        for _ in range(10):
            outbox.add([meas(n + i) for i in range(100)])
            n += 100
            await asyncio.sleep(0.01)
        await wait_for_async(lambda: sink.failures >= 2, what="writes failing")
        assert outbox.cursor("influx") < n
        await asyncio.to_thread(own_influxd.start)
        await wait_for_async(lambda: outbox.cursor("influx") == n, timeout_s=30, what="catch-up")
    rows = own_influxd.rows("SELECT seq, value FROM reading", "lab")
    assert [r["seq"] for r in rows] == list(range(1, n + 1))  # by time: oldest first, once
    assert len({r["time"] for r in rows}) == n


# --------------------------------------------------------------------------- v2


async def test_v2_write_api_on_victoria_metrics(
    victoria: VictoriaMetrics, outbox: Outbox, unique_name: str
) -> None:
    eq = f"PT-{unique_name}"
    ms = [meas(i, equipment=eq) for i in range(20)]
    sink = InfluxSink(v2(victoria.url, unique_name), outbox)
    async with running_sink(sink):
        outbox.add(ms)
        await wait_for_async(lambda: outbox.cursor("influx") == 20, what="acked")
    labels = {
        "site": "lab-a",
        "equipment": eq,
        "channel": "pressure",
        "quantity": "pressure",
        "unit": "kPa",
    }
    for field, get in [
        ("raw", lambda m: m.reading.raw),
        ("value", lambda m: m.value),
        ("U", lambda m: m.U),
        ("seq", lambda m: float(ms.index(m) + 1)),
    ]:
        series = victoria.export_until(
            f'reading_{field}{{equipment="{eq}"}}', lambda s: sum(len(x["values"]) for x in s) >= 20
        )
        assert len(series) == 1
        (s,) = series
        assert {k: v for k, v in s["metric"].items() if k != "__name__"} == labels
        assert s["values"] == [get(m) for m in ms]
        assert s["timestamps"] == [ns(m.t_wall) // 1_000_000 for m in ms]


@pytest.fixture
def own_victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    d = tmp_path / "vm"
    d.mkdir()
    server = VictoriaMetrics(d)
    server.start()
    yield server
    server.stop()


async def test_v2_outage_catches_up(own_victoria: VictoriaMetrics, outbox: Outbox) -> None:
    sink = InfluxSink(v2(own_victoria.url, "lab", batch_size=50), outbox)
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(100)])
        await wait_for_async(lambda: outbox.cursor("influx") == 100, what="first rows")
        await asyncio.to_thread(own_victoria.stop)
        outbox.add([meas(100 + i) for i in range(300)])
        await wait_for_async(lambda: sink.failures >= 2, what="writes failing")
        await asyncio.to_thread(own_victoria.start)
        await wait_for_async(lambda: outbox.cursor("influx") == 400, timeout_s=30, what="catch-up")
    (s,) = own_victoria.export_until(
        'reading_seq{equipment="PT-101"}', lambda s: bool(s) and len(s[0]["values"]) >= 400
    )
    assert s["values"] == [float(i) for i in range(1, 401)]


# --------------------------------------------------------------------------- HTTP answers


class Peer:
    """A small HTTP server speaking the write APIs, scripted per request."""

    def __init__(self, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.requests: list[tuple[float, str, list[str]]] = []  # (time, path, lines)
        self.seen: list[web.Request] = []  # query and headers of each request
        self.answers: list[web.Response] = []  # next answers; then 204
        self.max_lines: int | None = None  # 413 beyond
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        lines = (await request.read()).decode().split("\n")
        self.seen.append(request)
        self.requests.append((time.monotonic(), request.path, lines))
        if self.max_lines is not None and len(lines) > self.max_lines:
            return web.Response(status=413, text="request entity too large")
        if self.answers:
            return self.answers.pop(0)
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/write", self.handle)
        app.router.add_post("/api/v2/write", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        ctx = None
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.tls[1]), str(self.tls[2]))
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def seqs(self) -> list[int]:
        out = []
        for _, _, lines in self.requests:
            for line in lines:
                out.append(int(line.split("seq=")[1].split("i")[0]))
        return out


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    await p.start()
    yield p
    await p.stop()


def settings_for(api: str, url: str, **kw: Any) -> InfluxSettings:
    return v1(url, "lab", **kw) if api == "v1" else v2(url, "lab", **kw)


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_waits_as_long_as_retry_after_says(
    peer: Peer, outbox: Outbox, api: str, form: str
) -> None:
    delay = 1.0
    if form == "seconds":
        header = "1"
    else:  # an HTTP date has whole seconds: at least one full second ahead
        header = email.utils.formatdate(time.time() + 2, usegmt=True)
        delay = 1.0
    peer.answers = [web.Response(status=429, headers={"Retry-After": header}, text="slow down")]
    sink = InfluxSink(settings_for(api, peer.url, backoff_max_s=0.05), outbox)
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(5)])
        await wait_for_async(lambda: outbox.cursor("influx") == 5, what="written after 429")
    assert len(peer.requests) == 2
    assert peer.requests[1][0] - peer.requests[0][0] >= delay * 0.95
    assert peer.requests[0][2] == peer.requests[1][2]  # the same batch again
    assert peer.seqs() == [1, 2, 3, 4, 5] * 2


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_503_is_retried(peer: Peer, outbox: Outbox, api: str) -> None:
    peer.answers = [web.Response(status=503, text="busy"), web.Response(status=500, text="oops")]
    sink = InfluxSink(settings_for(api, peer.url), outbox)
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(3)])
        await wait_for_async(lambda: outbox.cursor("influx") == 3, what="written after 5xx")
    assert len(peer.requests) == 3
    assert sink.failures == 2
    assert sink.rejected == 0


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_413_splits_the_batch(peer: Peer, outbox: Outbox, api: str) -> None:
    peer.max_lines = 30
    sink = InfluxSink(settings_for(api, peer.url, batch_size=100, flush_interval_s=0.5), outbox)
    outbox.add([meas(i) for i in range(100)])
    outbox.commit()
    async with running_sink(sink):
        await wait_for_async(lambda: outbox.cursor("influx") == 100, what="all written")
    accepted = [lines for _, _, lines in peer.requests if len(lines) <= 30]
    assert sorted(int(x.split("seq=")[1].split("i")[0]) for ls in accepted for x in ls) == list(
        range(1, 101)
    )
    assert len(peer.requests[0][2]) == 100
    assert sink.splits >= 3
    assert sink.rejected == 0


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_400_rejects_the_batch_and_says_so(peer: Peer, outbox: Outbox, api: str) -> None:
    peer.answers = [web.Response(status=400, text='{"error":"partial write: unable to parse"}')]
    sink = InfluxSink(settings_for(api, peer.url), outbox)
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(4)])
        # the rejected batch is acked (not retried); the event is written next
        await wait_for_async(lambda: outbox.cursor("influx") == 5, what="rejected + event")
    assert sink.rejected == 4
    assert len(peer.requests) == 2
    (event_line,) = peer.requests[1][2]
    assert event_line.startswith(
        "event,equipment=gateway,severity=critical,site=lab-a,type=sink_rejected "
    )
    outbox.rewind("influx")
    with sqlite_rows(outbox) as rows:
        (ev,) = [json.loads(r.payload) for r in rows if r.kind == KIND_EVENT]
    assert ev["type"] == "sink_rejected"
    assert ev["severity"] == "critical"
    assert ev["status"] == 400
    assert "unable to parse" in ev["body"]
    assert (ev["count"], ev["first_seq"], ev["last_seq"]) == (4, 1, 4)


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize(
    "script", [["slow"], ["reset_body"], ["reset_reply"], ["slow", "reset_body", "reset_reply"]]
)
async def test_a_slow_or_resetting_server_is_retried_until_every_row_is_written(
    outbox: Outbox, api: str, script: list[str]
) -> None:
    """A reply later than timeout_s, a reset while the body is read, a reset halfway
    through the status line: each a failed write, retried on a new connection, and every
    row written (a slow server that wrote before the client gave up writes it twice:
    at least once, the same points, which InfluxDB keeps once)."""
    async with RudePeer(script, slow_s=0.6) as peer:
        sink = InfluxSink(settings_for(api, peer.url, timeout_s=0.3), outbox)
        async with running_sink(sink):
            outbox.add([meas(i) for i in range(50)])
            await wait_for_async(lambda: outbox.cursor("influx") == 50, what="all written")
        assert set(peer.written) == set(range(1, 51))
        assert sink.failures == len(script)
        assert sink.rejected == 0
        assert peer.connections == len(script) + 1


@contextlib.contextmanager
def sqlite_rows(outbox: Outbox) -> Iterator[list[Any]]:
    """Every row still in the outbox, read straight from SQLite."""
    import sqlite3

    con = sqlite3.connect(outbox.path)
    try:
        yield [
            type("R", (), {"kind": k, "payload": p})
            for k, p in con.execute("SELECT kind, payload FROM rows ORDER BY id")
        ]
    finally:
        con.close()


async def test_unreachable_server_is_retried_with_backoff(outbox: Outbox) -> None:
    sink = InfluxSink(v1(f"http://127.0.0.1:{free_port()}", "lab"), outbox)
    async with running_sink(sink):
        outbox.add([meas(0)])
        await wait_for_async(lambda: sink.failures >= 3, what="failures")
        assert outbox.cursor("influx") == 0
        assert sink.last_error is not None


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_https_with_a_private_ca(tmp_path: Path, outbox: Outbox, api: str) -> None:
    certs = make_certs(tmp_path)
    peer = Peer(tls=certs)
    await peer.start()
    try:
        refused = InfluxSink(settings_for(api, peer.url), outbox)  # system CAs only
        async with running_sink(refused):
            outbox.add([meas(i) for i in range(3)])
            await wait_for_async(lambda: refused.failures >= 1, what="certificate refused")
        assert "certificate" in (refused.last_error or "").lower()
        assert peer.requests == []
        sink = InfluxSink(settings_for(api, peer.url, ca_file=certs[0]), outbox)
        async with running_sink(sink):
            await wait_for_async(lambda: outbox.cursor("influx") == 3, what="written over TLS")
        assert peer.seqs() == [1, 2, 3]
    finally:
        await peer.stop()


async def test_rows_are_batched_by_size_and_by_interval(peer: Peer, outbox: Outbox) -> None:
    sink = InfluxSink(v1(peer.url, "lab", batch_size=50, flush_interval_s=0.3), outbox)
    async with running_sink(sink):
        await wait_for_async(lambda: sink.connected, what="running")
        for k in range(5):  # five polls, 10 ms apart: one write
            outbox.add([meas(k * 4 + i) for i in range(4)])
            await asyncio.sleep(0.01)
        await wait_for_async(lambda: outbox.cursor("influx") == 20, what="first batch")
        outbox.add([meas(100 + i) for i in range(120)])  # a backlog: full batches
        await wait_for_async(lambda: outbox.cursor("influx") == 140, what="backlog")
    sizes = [len(lines) for _, _, lines in peer.requests]
    assert sizes[0] == 20
    assert sizes[1:] == [50, 50, 20]
    assert peer.seqs() == list(range(1, 141))


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_each_api_is_addressed_and_authenticated_as_its_servers_expect(
    peer: Peer, outbox: Outbox, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v2: POST /api/v2/write?org&bucket&precision=ns with ``Authorization: Token``
    (InfluxDB 2.x API reference); v1: POST /write?db&rp&precision=ns with basic auth."""
    monkeypatch.setenv("T_INFLUX_SECRET", "s3cr3t")
    if api == "v2":
        settings = v2(peer.url, "metrology", token_env="T_INFLUX_SECRET")
    else:
        settings = v1(
            peer.url,
            "calgate",
            retention_policy="autogen",
            username="edge",
            password_env="T_INFLUX_SECRET",
        )
    sink = InfluxSink(settings, outbox)
    async with running_sink(sink):
        outbox.add([meas(i) for i in range(3)])
        await wait_for_async(lambda: outbox.cursor("influx") == 3, what="acked")
    req = peer.seen[0]
    assert req.method == "POST"
    assert req.content_type == "text/plain"
    if api == "v2":
        assert req.path == "/api/v2/write"
        assert dict(req.query) == {"org": "lab", "bucket": "metrology", "precision": "ns"}
        assert req.headers["Authorization"] == "Token s3cr3t"
    else:
        assert req.path == "/write"
        assert dict(req.query) == {"db": "calgate", "rp": "autogen", "precision": "ns"}
        user_pw = base64.b64decode(req.headers["Authorization"].removeprefix("Basic "))
        assert user_pw == b"edge:s3cr3t"
    assert peer.seqs() == [1, 2, 3]
