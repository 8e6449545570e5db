"""The lab console's JSON API over real HTTP: board, coverage, due dates, chains, series,
events, the server-sent stream, the token, and read-only.

The console reads a real Monitor fed with Measurements that the real Pipeline corrected
through the example registry; expected figures are computed here from the registry's
records (certificates, dates, standards), not with the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr, ValidationError

from calibration import Certificate, Registry
from drivers.base import Reading
from gateway.config import Config, load_config
from gateway.console import Console
from gateway.demo import example_registry, lab_toml
from gateway.metrics import Metrics
from gateway.model import Event
from gateway.monitor import Monitor
from gateway.pipeline import Pipeline
from gateway.status import HttpSettings, StatusServer

pytestmark = pytest.mark.integration

TODAY = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
INSTRUMENTS = ["BAL-01", "BAL-02", "PC-01", "PT-101", "PT-102", "UTM-01"]
RAW = {"BAL-01": 100.0, "BAL-02": 200.0, "PC-01": 1000.0, "PT-101": 1000.4, "PT-102": 999.0,
       "UTM-01": 20.0}  # fmt: skip
UNITS = {"BAL-01": "g", "BAL-02": "g", "PC-01": "mbar", "PT-101": "mbar", "PT-102": "mbar",
         "UTM-01": "kN"}  # fmt: skip


def lab_file(tmp: Path, http: str = "127.0.0.1:0", **kw: Any) -> Path:
    """The demo lab's config (endpoints never dialled: the console reads, nothing polls)."""
    ep: dict[str, dict[str, str]] = {
        eq: {"tcp": "socket://127.0.0.1:9", "opcua": "opc.tcp://127.0.0.1:9", "unit": "1"}
        for eq in INSTRUMENTS
    }
    ep["PT-101"]["tcp"] = ep["PT-102"]["tcp"] = "tcp://127.0.0.1:9"
    path = tmp / "calgate.toml"
    path.write_text(
        lab_toml(ep, registry=example_registry(), state_dir=tmp / "state", http=http, **kw)
    )
    return path


def lab_config(tmp: Path) -> Config:
    return load_config(lab_file(tmp))


@dataclass
class Source:
    """What the console reads of a gateway: its config, monitor, registry and clock."""

    config: Config
    registry: Registry
    now: datetime = TODAY
    monitor: Monitor = field(init=False)
    pipeline: Pipeline = field(init=False)
    problems: list[str] = field(default_factory=list)  # what /healthz would say

    def __post_init__(self) -> None:
        self.monitor = Monitor(clock=self.clock)
        self.pipeline = Pipeline(self.registry, clock=self.clock)

    @property
    def clock(self) -> Callable[[], datetime]:
        return lambda: self.now

    def health(self) -> tuple[bool, list[str]]:
        return (not self.problems, list(self.problems))

    def poll(self, equipment: str, raw: float, *, t: datetime | None = None) -> list[Event]:
        """One poll's reading through the pipeline and the monitor, as the gateway does."""
        ch = self.registry.require(equipment).channel_names[0]
        t = t or self.now
        r = Reading(equipment=equipment, channel=ch, raw=raw, unit=UNITS[equipment],
                    t_wall=t, t_mono=t.timestamp(), flags=frozenset({"stable"}))  # fmt: skip
        events = self.monitor.answered(equipment)
        ms = self.pipeline.process([r])
        return events + self.monitor.measurements(ms, lambda e, c: _limits(self.registry, e, c))


def _limits(reg: Registry, eq: str, ch: str) -> Any:
    c = reg.require(eq).channel(ch)
    return c.limits if c is not None else None


def serving(console: Console, token: SecretStr | None = None) -> StatusServer:
    """The gateway's HTTP server on a free loopback port, with the console."""
    return StatusServer("127.0.0.1:0", status=dict, health=lambda: (True, []),
                        metrics=Metrics(), console=console, token=token)  # fmt: skip


@pytest.fixture
def registry() -> Registry:
    return Registry.load(example_registry())


@pytest.fixture
async def served(tmp_path: Path, registry: Registry) -> AsyncIterator[tuple[Source, Console, str]]:
    src = Source(lab_config(tmp_path), registry)
    for eq in INSTRUMENTS:
        src.monitor.calibration(eq, registry.state(eq, TODAY))
    console = Console(src, sample_s=0.05, push_s=0.1)
    server = serving(console)
    await server.start()
    try:
        yield src, console, server.url
    finally:
        await server.stop()


async def get(url: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, **kw) as r:
        body = await r.read()
        if r.content_type == "application/json":
            return r.status, json.loads(body)
        return r.status, body.decode()


# -- coverage, computed by hand from the records ------------------------------------------------


def in_force(reg: Registry, item: str, channel: str | None, day: date) -> Certificate | None:
    certs = [c for c in reg.certificates(item) if c.calibrated <= day]
    if channel is not None:
        certs = [c for c in certs if c.channel == channel]
    return max(certs, key=lambda c: (c.calibrated, c.number), default=None)


def reaches_nmi(reg: Registry, cert: Certificate) -> bool:
    """Every standard's certificate in force on ``cert``'s calibration day, up to an NMI."""
    if cert.nmi:
        return True
    if not cert.standards:
        return False
    for std in cert.standards:
        cited = cert.standard_certificates.get(std)
        s = reg.certificate(cited) if cited else in_force(reg, std, None, cert.calibrated)
        if s is None or not (s.calibrated <= cert.calibrated <= s.due):
            return False
        if not reaches_nmi(reg, s):
            return False
    return True


def by_hand(reg: Registry, day: date) -> tuple[list[str], list[str]]:
    """(active instruments, those whose every channel is traceable on ``day``)."""
    active, ok = [], []
    for eq_id in reg.equipment_ids():
        eq = reg.require(eq_id)
        if eq.role != "instrument" or eq.status != "active":
            continue
        active.append(eq_id)
        certs = [in_force(reg, eq_id, ch.name, day) for ch in eq.channels]
        if all(c is not None and day <= c.due and reaches_nmi(reg, c) for c in certs):
            ok.append(eq_id)
    return active, ok


@pytest.mark.parametrize(
    ("day", "not_traceable"),
    [
        (
            date(2026, 12, 3),
            {"BAL-02": "untraceable"},
        ),  # the broken chain; PT-102 due soon is in date
        (date(2028, 1, 5), {"BAL-02": "untraceable", "PT-102": "expired"}),
        (date(2028, 3, 11), {"BAL-02": "expired", "PT-102": "expired"}),
    ],
)
async def test_coverage_figure_against_the_records(
    served: tuple[Source, Console, str],
    registry: Registry,
    day: date,
    not_traceable: dict[str, str],
) -> None:
    src, _, url = served
    src.now = datetime(day.year, day.month, day.day, 9, 0, tzinfo=UTC)
    active, ok = by_hand(registry, day)
    assert sorted(active) == INSTRUMENTS  # the standards are links, not counted
    assert set(active) - set(ok) == set(not_traceable)
    status, doc = await get(f"{url}/api/coverage")
    assert status == 200
    assert doc["on"] == day.isoformat()
    assert doc["instruments"] == {"total": 6, "traceable": len(ok), "share": len(ok) / 6}
    assert doc["channels"] == {"total": 6, "traceable": len(ok), "share": len(ok) / 6}
    gaps = {g["item"]: g for g in doc["not_traceable"]}
    assert {k: g["status"] for k, g in gaps.items()} == not_traceable
    assert all(g["reasons"] for g in gaps.values())  # and why
    if "untraceable" in not_traceable.values():
        assert "MCS-2023-0220 was not in force" in " ".join(gaps["BAL-02"]["reasons"])


# -- the board ------------------------------------------------------------------------------


def decimals_for(big_u: float) -> int:
    """Decimal places of U at two significant digits (GUM 7.2.6), by hand."""
    return 1 - math.floor(math.log10(big_u))


async def test_the_board_says_what_healthz_says(served: tuple[Source, Console, str]) -> None:
    """A wall screen must not look well while nothing is delivered: the board carries the
    gateway's health and its problems, as /healthz gives them."""
    src, _, url = served
    _, doc = await get(f"{url}/api/board")
    assert doc["health"] == {"healthy": True, "problems": []}
    src.problems = ["sink mqtt: not connected for 13 s (connection refused)"]
    _, doc = await get(f"{url}/api/board")
    assert doc["health"] == {"healthy": False, "problems": src.problems}


async def test_board_has_every_equipment_with_value_u_rounded_and_status(
    served: tuple[Source, Console, str],
) -> None:
    src, _, url = served
    for eq in INSTRUMENTS:
        src.poll(eq, RAW[eq])
    status, doc = await get(f"{url}/api/board")
    assert status == 200
    rows = {r["id"]: r for r in doc["equipment"]}
    assert list(rows) == INSTRUMENTS  # config order
    assert rows["BAL-02"]["calibration"] == "untraceable"
    assert rows["PT-102"]["calibration"] == "due_soon"
    assert rows["PT-102"]["days_to_due"] == (date(2027, 12, 31) - TODAY.date()).days
    assert rows["PT-102"]["certificate"] == "PCL-2025-1201"
    assert rows["BAL-01"]["chain"] == ["MCS-2026-1022", "MCS-2025-0610", "PTB-1.41-2024-0312"]
    for eq, row in rows.items():
        assert row["connection"] == "online"
        (ch,) = row["channels"]
        value, big_u = ch["value"], ch["U"]
        assert big_u > 0
        assert ch["k"] == 2.0
        d = decimals_for(big_u)
        assert len(ch["U_text"].replace(".", "").lstrip("0")) == 2, ch["U_text"]
        assert Decimal(ch["U_text"]) == round(Decimal(repr(big_u)), d) or ch["U_text"] == str(
            round(Decimal(repr(big_u)), d).next_plus()  # rounded up (EA-4/02: not >5 % down)
        )
        assert ch["value_text"] == f"{Decimal(repr(value)).quantize(Decimal(1).scaleb(-d))}"
        assert ch["unit"] == src.registry.require(eq).channels[0].unit
        assert ch["quality"] in ("good", "uncertain")
    assert rows["BAL-02"]["channels"][0]["quality"] == "uncertain"  # untraceable: in doubt
    assert rows["PT-101"]["channels"][0]["limits"] == {"low": 950.0, "high": 1100.0}


async def test_equipment_that_never_answered_is_listed_without_values(
    served: tuple[Source, Console, str],
) -> None:
    _, _, url = served
    _, doc = await get(f"{url}/api/board")
    row = doc["equipment"][0]
    assert row["connection"] == "unknown"
    assert row["channels"][0]["name"] == "weight"
    assert row["channels"][0]["value"] is None


# -- due dates, chains ----------------------------------------------------------------------


async def test_due_dates_every_certificate_in_force_sorted_with_csv(
    served: tuple[Source, Console, str], registry: Registry
) -> None:
    src, _, url = served
    src.now = datetime(2027, 11, 1, tzinfo=UTC)
    day = src.now.date()
    expected = sorted(
        (c.due, c.number)
        for eq in registry.equipment_ids()
        for ch in registry.require(eq).channels
        if (c := in_force(registry, eq, ch.name, day)) is not None
    )
    _, doc = await get(f"{url}/api/due")
    certs = doc["certificates"]
    assert [(date.fromisoformat(c["due"]), c["number"]) for c in certs] == expected
    pt102 = next(c for c in certs if c["item"] == "PT-102")
    assert (pt102["days_left"], pt102["status"], pt102["highlight"]) == (60, "due_soon", True)
    # and REF-W1's, 151 days out but due_soon by its due_soon_days = 180 (NMI slots)
    assert [(c["number"], c["status"]) for c in certs if c["highlight"]] == [
        ("PCL-2025-1201", "due_soon"), ("PTB-1.41-2024-0312", "due_soon"),
    ]  # fmt: skip
    status, text = await get(f"{url}/api/due.csv")
    assert status == 200
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["number"] for r in table] == [n for _, n in expected]
    assert table[0]["days_left"] == "60"
    assert table[0]["status"] == "due_soon"
    # a year earlier PT-102 is already due_soon by its due_soon_days (420): highlighted too,
    # though 416 days out (the panel highlighted nothing on the demo's day)
    src.now = datetime(2026, 11, 10, tzinfo=UTC)
    _, doc = await get(f"{url}/api/due")
    pt102 = next(c for c in doc["certificates"] if c["item"] == "PT-102")
    assert (pt102["days_left"], pt102["status"], pt102["highlight"]) == (416, "due_soon", True)
    assert [c["number"] for c in doc["certificates"] if c["highlight"]] == ["PCL-2025-1201"]


async def test_chain_of_the_broken_balance_shows_the_expired_link(
    served: tuple[Source, Console, str],
) -> None:
    _, _, url = served
    status, doc = await get(f"{url}/api/chain/BAL-02")
    assert status == 200
    (root,) = doc["trees"]
    assert (root["number"], root["status"]) == ("MCS-2026-0310", "untraceable")
    (ws,) = root["standards"]
    assert (ws["number"], ws["item"], ws["status"]) == ("MCS-2023-0220", "WS-F1", "expired")
    (ref,) = ws["standards"]
    assert ref["nmi"] is True
    assert ref["number"] == "PTB-1.41-2020-0207"
    assert (await get(f"{url}/api/chain/NOPE"))[0] == 404


# -- series, events -------------------------------------------------------------------------


async def test_series_holds_the_sampled_values_with_u(served: tuple[Source, Console, str]) -> None:
    src, console, url = served
    t0 = TODAY.timestamp()
    for i in range(3):
        src.poll("PT-101", 1000.0 + i, t=datetime.fromtimestamp(t0 + i, UTC))
        console.sample()
    console.sample()  # nothing new: nothing added
    _, doc = await get(f"{url}/api/series", params={"equipment": "PT-101", "channel": "pressure"})
    pts = doc["points"]
    assert [p[0] for p in pts] == [round(t0 + i, 3) for i in range(3)]
    m = src.monitor.state("PT-101").channels["pressure"].last
    assert m is not None
    assert pts[-1][1:] == [m.value, m.U]
    assert doc["limits"] == {"low": 950.0, "high": 1100.0}
    assert doc["unit"] == "mbar"
    assert (await get(f"{url}/api/series", params={"equipment": "X", "channel": "y"}))[0] == 404


async def test_events_newest_first_and_filtered(served: tuple[Source, Console, str]) -> None:
    src, console, url = served
    console.record_events(src.poll("PT-101", 1000.0))
    console.record_events(src.poll("PT-101", 1200.0))  # above 1100 mbar: out of tolerance
    console.record_events(src.monitor.offline("BAL-01", ConnectionError("no answer")))
    _, doc = await get(f"{url}/api/events")
    assert [e["type"] for e in doc["events"]] == ["equipment_offline", "out_of_tolerance"]
    assert doc["events"][0]["n"] > doc["events"][1]["n"]
    _, doc = await get(f"{url}/api/events", params={"equipment": "PT-101"})
    assert [e["type"] for e in doc["events"]] == ["out_of_tolerance"]
    assert doc["events"][0]["high"] == 1100.0
    _, doc = await get(f"{url}/api/events", params={"type": "equipment_offline"})
    assert [e["equipment"] for e in doc["events"]] == ["BAL-01"]


# -- the stream -------------------------------------------------------------------------------


async def read_sse(resp: aiohttp.ClientResponse, want: Callable[[str, Any], bool]) -> Any:
    """Server-sent events until one satisfies ``want(event, data)``; returns its data."""
    event, data = "message", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line:
            parsed = json.loads(data) if data.startswith("{") else data
            if want(event, parsed):
                return parsed
            event, data = "message", ""
    raise AssertionError("the stream ended")


async def test_stream_pushes_one_update_to_every_page(served: tuple[Source, Console, str]) -> None:
    src, console, url = served
    async with aiohttp.ClientSession() as http:
        a = await http.get(f"{url}/api/stream")
        b = await http.get(f"{url}/api/stream")
        assert a.headers["Content-Type"] == "text/event-stream"
        await read_sse(a, lambda ev, _: ev == "hello")
        await read_sse(b, lambda ev, _: ev == "hello")
        src.poll("PT-101", 1000.0)
        console.record_events(src.poll("PT-101", 1200.0))

        def has_event(ev: str, doc: Any) -> bool:
            # a page the push left behind (a loaded machine) is told to resync instead
            return ev == "resync" or (
                ev == "update" and any(e["type"] == "out_of_tolerance" for e in doc["events"])
            )

        got_a, got_b = await asyncio.wait_for(
            asyncio.gather(read_sse(a, has_event), read_sse(b, has_event)), 10
        )
        updates = [g for g in (got_a, got_b) if g != {}]
        assert updates, "both pages were left behind"
        if len(updates) == 2:
            assert got_a == got_b  # built once, sent to both
        row = next(r for r in updates[0]["equipment"] if r["id"] == "PT-101")
        assert row["channels"][0]["out_of_tolerance"] is True
        assert "PT-101/pressure" in updates[0]["points"]
        a.close()
        b.close()


async def test_stopping_the_console_ends_the_open_streams(
    tmp_path: Path, registry: Registry
) -> None:
    """The streams end when the console stops, not when the server's shutdown timeout
    cancels them (a connected wall screen must not hold up a stop or a restart)."""
    console = Console(Source(lab_config(tmp_path), registry))
    server = serving(console)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"{server.url}/api/stream")
            await read_sse(resp, lambda ev, _: ev == "hello")
            await console.stop()  # the server still runs: only the console can end it
            rest = await asyncio.wait_for(resp.content.read(), 10)
            assert resp.content.at_eof()
            assert b"event:" not in rest
            resp.close()
    finally:
        await server.stop()


# -- read-only, the token ---------------------------------------------------------------------


async def test_nothing_but_get(served: tuple[Source, Console, str]) -> None:
    _, _, url = served
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/api/board", "/status", "/api/events"):
            async with http.post(f"{url}{path}", data=b"{}") as r:
                assert r.status == 405, path
            async with http.delete(f"{url}{path}") as r:
                assert r.status == 405, path


async def test_the_page_and_its_vendored_files_are_served(
    served: tuple[Source, Console, str],
) -> None:
    _, _, url = served
    status, html = await get(f"{url}/")
    assert status == 200
    assert "calgate lab console" in html
    for name in ("console.js", "console.css", "uPlot.iife.min.js", "uPlot.min.css"):
        status, _ = await get(f"{url}/static/{name}")
        assert status == 200, name
    assert "http://" not in html.replace("http://www.w3.org", "")  # nothing from the internet


async def test_a_token_is_required_when_given(tmp_path: Path, registry: Registry) -> None:
    console = Console(Source(lab_config(tmp_path), registry))
    server = serving(console, token=SecretStr("s3cret"))
    async with server:
        url = server.url
        for path in ("/", "/api/board", "/api/stream", "/status", "/metrics"):
            status, _ = await get(f"{url}{path}")
            assert status == 401, path
        async with aiohttp.ClientSession() as http, http.get(f"{url}/") as r:
            assert r.headers["WWW-Authenticate"].startswith("Basic")  # a browser asks
        assert (await get(f"{url}/healthz"))[0] == 200  # health probes need no token
        bearer = {"Authorization": "Bearer s3cret"}
        assert (await get(f"{url}/api/board", headers=bearer))[0] == 200
        basic = {"Authorization": "Basic " + base64.b64encode(b"anyone:s3cret").decode()}
        assert (await get(f"{url}/api/coverage", headers=basic))[0] == 200
        wrong = {"Authorization": "Bearer s3cret2"}
        assert (await get(f"{url}/api/board", headers=wrong))[0] == 401


def test_off_loopback_the_token_must_come_from_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match="not a loopback address"):
        HttpSettings(listen="0.0.0.0:8470")
    with pytest.raises(ValidationError, match="secrets may not be written in the config"):
        HttpSettings.model_validate({"listen": "0.0.0.0:8470", "token": "x"})
    with pytest.raises(ValidationError, match="token: not found in environment variable"):
        HttpSettings(listen="0.0.0.0:8470", token_env="CALGATE_TEST_NO_SUCH_TOKEN")
    secret = tmp_path / "http-token"
    secret.write_text("from-file\n")
    s = HttpSettings(listen="0.0.0.0:8470", token_file=str(secret))
    assert s.token is not None
    assert s.token.get_secret_value() == "from-file"
    assert "from-file" not in repr(s)
    assert "needs the token" in s.access()
    assert f"file {secret}" in s.access()
    monkeypatch.setenv("CALGATE_TEST_HTTP_TOKEN", "from-env")
    s = HttpSettings(listen="[::]:8470", token_env="CALGATE_TEST_HTTP_TOKEN")
    assert s.token is not None
    assert s.token.get_secret_value() == "from-env"
    local = HttpSettings(listen="127.0.0.1:8470")
    assert local.token is None
    assert "loopback" in local.access()
    assert HttpSettings(listen="localhost:1").token is None  # localhost is loopback


def test_check_config_says_who_may_read_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli import main

    path = lab_file(tmp_path, "0.0.0.0:8470", only=["BAL-01"])
    body = path.read_text()
    assert main(["check-config", "-c", str(path)]) == 78
    assert "http: listen: 0.0.0.0:8470 is not a loopback address" in (capsys.readouterr().err)
    path.write_text(body.replace('listen = "0.0.0.0:8470"',
                                 'listen = "0.0.0.0:8470"\ntoken_env = "CALGATE_TEST_HTTP_TOKEN"'))  # fmt: skip
    monkeypatch.setenv("CALGATE_TEST_HTTP_TOKEN", "t")
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "http: 0.0.0.0:8470 (not loopback): every request but /healthz needs the token" in out
    assert "environment variable CALGATE_TEST_HTTP_TOKEN" in out


async def test_a_page_that_falls_behind_is_told_to_resync(
    served: tuple[Source, Console, str],
) -> None:
    _, console, url = served
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{url}/api/stream")
        await read_sse(resp, lambda ev, _: ev == "hello")
        console._publish()  # two updates before the page's writer runs again:
        console._publish()  # it gets the latest, after a resync, not a queue of both
        got = await asyncio.wait_for(read_sse(resp, lambda ev, _: ev in ("resync", "update")), 5)
        assert got == {}  # resync's data
        resp.close()


async def test_a_reloaded_registry_is_what_the_console_reports(
    served: tuple[Source, Console, str], tmp_path: Path
) -> None:
    import shutil

    src, console, url = served
    _, before = await get(f"{url}/api/coverage")
    assert before["instruments"]["total"] == 6
    copy = tmp_path / "registry"
    shutil.copytree(example_registry(), copy)
    eq = copy / "equipment" / "PT-102.toml"
    eq.write_text(eq.read_text().replace('status = "active"', 'status = "out_of_service"'))
    src.registry = Registry.load(copy)  # what a reload (SIGHUP) swaps in
    _, after = await get(f"{url}/api/coverage")
    assert after["instruments"] == {"total": 5, "traceable": 4, "share": 4 / 5}
    assert after["registry"] != before["registry"]  # the page reads the documents again
    console.sample()
    assert console._registry is src.registry  # the old snapshot is not held
