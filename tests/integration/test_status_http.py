"""The HTTP status server, over real HTTP on a free loopback port."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import math
import socket
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError
from servers import VictoriaMetrics

from gateway.metrics import Metrics
from gateway.status import HealthChecks, HttpSettings, ListenError, StatusServer, parse_listen

pytestmark = pytest.mark.integration


class FakeGateway:
    """Just the state the callables read; the server is what is under test."""

    def __init__(self) -> None:
        self.started = False
        self.outbox_writable = True
        self.beat_age_s = 0.0
        self.metrics = Metrics()
        self.checks = HealthChecks()
        self.checks.add("service", lambda: None if self.started else "not started")
        self.checks.add("outbox", lambda: self.outbox_writable or "outbox not writable")
        self.checks.add("scheduler", lambda: None if self.beat_age_s < 10 else "poll loop stalled")

    def status(self) -> dict[str, Any]:
        return {
            "gateway": {"id": "edge-01", "started": dt.datetime(2026, 11, 27, tzinfo=dt.UTC)},
            "equipment": {"BAL-01": {"connection": "online", "last": math.nan}},
        }


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeGateway, StatusServer]]:
    gw = FakeGateway()
    server = StatusServer("127.0.0.1:0", status=gw.status, health=gw.checks, metrics=gw.metrics)
    await server.start()
    try:
        yield gw, server
    finally:
        await server.stop()


async def test_binds_a_free_port_and_reports_it(served: tuple[FakeGateway, StatusServer]) -> None:
    _, server = served
    assert server.port is not None
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass


async def test_healthz_503_with_reasons_then_200(
    served: tuple[FakeGateway, StatusServer],
) -> None:
    gw, server = served
    gw.outbox_writable = False
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 503
            body = await r.json()
        assert body["status"] == "unhealthy"
        assert body["reasons"] == ["service: not started", "outbox: outbox not writable"]

        gw.started = True
        gw.outbox_writable = True
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            assert await r.json() == {"status": "ok"}

        gw.beat_age_s = 60.0
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 503
            assert (await r.json())["reasons"] == ["scheduler: poll loop stalled"]


async def test_a_raising_health_check_is_unhealthy_not_a_crash(
    served: tuple[FakeGateway, StatusServer],
) -> None:
    gw, server = served
    gw.started = True

    def broken() -> bool:
        raise OSError("disk gone")

    gw.checks.add("disk", broken)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as r:
        assert r.status == 503
        assert (await r.json())["reasons"] == ["disk: check failed: OSError: disk gone"]


async def test_status_is_the_providers_json(served: tuple[FakeGateway, StatusServer]) -> None:
    _, server = served
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/status") as r:
        assert r.status == 200
        body = await r.json()
    assert body == {
        "gateway": {"id": "edge-01", "started": "2026-11-27 00:00:00+00:00"},
        "equipment": {"BAL-01": {"connection": "online", "last": None}},
    }


async def test_async_status_provider_and_a_raising_one() -> None:
    calls = 0

    async def status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("registry reloading")
        await asyncio.sleep(0)
        return {"ok": True}

    server = StatusServer(
        "127.0.0.1:0", status=status, health=lambda: (True, []), metrics=Metrics()
    )
    async with server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/status") as r:
            assert r.status == 200
            assert await r.json() == {"ok": True}
        async with http.get(f"{server.url}/status") as r:
            assert r.status == 500
            assert await r.json() == {"error": "RuntimeError: registry reloading"}
        # the server is still serving after the error
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200


async def test_metrics_exposition(served: tuple[FakeGateway, StatusServer]) -> None:
    gw, server = served
    gw.metrics.observe_poll("BAL-01", 0.05, [("mass", "good")])
    depth = {"mqtt": 0}
    gw.metrics.on_scrape(lambda: gw.metrics.outbox_depth.set("mqtt", value=depth["mqtt"]))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = await r.text()
        assert 'calgate_polls_total{equipment="BAL-01"} 1.0' in text
        assert (
            'calgate_readings_total{equipment="BAL-01",channel="mass",quality="good"} 1.0' in text
        )
        assert 'calgate_poll_latency_seconds_bucket{equipment="BAL-01",le="0.05"} 1' in text
        assert 'calgate_outbox_depth{sink="mqtt"} 0' in text
        depth["mqtt"] = 42  # pulled at scrape time
        async with http.get(f"{server.url}/metrics") as r:
            assert 'calgate_outbox_depth{sink="mqtt"} 42' in await r.text()


async def test_metrics_are_gzipped_when_asked_and_large(
    served: tuple[FakeGateway, StatusServer],
) -> None:
    gw, server = served
    for i in range(50):
        gw.metrics.observe_poll(f"EQ-{i:03d}", 0.01, [("p", "good")])
    url = f"{server.url}/metrics"

    def fetch() -> tuple[str | None, bytes]:
        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.headers.get("Content-Encoding"), resp.read()

    encoding, raw = await asyncio.to_thread(fetch)
    assert encoding == "gzip"
    assert 'calgate_polls_total{equipment="EQ-049"} 1.0' in gzip.decompress(raw).decode()


async def test_unknown_path_is_404(served: tuple[FakeGateway, StatusServer]) -> None:
    _, server = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/nope") as r:
            assert r.status == 404
        async with http.get(f"{server.url}/") as r:
            assert (await r.json())["endpoints"] == ["/healthz", "/status", "/metrics"]


async def test_stop_closes_the_port_and_restart_works() -> None:
    server = StatusServer("127.0.0.1:0", status=dict, health=lambda: (True, []), metrics=Metrics())
    await server.start()
    port = server.port
    assert port is not None
    await server.stop()
    assert server.port is None
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=2),
    ):
        pass
    await server.stop()  # stopping twice is harmless


async def test_port_in_use_is_a_listen_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = StatusServer(
            f"127.0.0.1:{port}", status=dict, health=lambda: (True, []), metrics=Metrics()
        )
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
            await server.start()
        assert server.port is None


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_listen() -> None:
    server = StatusServer("[::1]:0", status=dict, health=lambda: (True, []), metrics=Metrics())
    async with server, aiohttp.ClientSession() as http:
        assert server.url.startswith("http://[::1]:")
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8470", ("127.0.0.1", 8470)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:9000", ("localhost", 9000)),
        ("[::1]:8470", ("::1", 8470)),
        (" 127.0.0.1:8470 ", ("127.0.0.1", 8470)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("8470", "expected host:port"),
        (":8470", "expected host:port"),
        ("127.0.0.1:", "port must be"),
        ("127.0.0.1:70000", "port must be"),
        ("127.0.0.1:http", "port must be"),
        ("::1:8470", "IPv6 host goes in brackets"),
        ("[::1]8470", r"expected \[ipv6\]:port"),
        ("[nothost]:80", "not an IPv6 address"),
    ],
)
def test_http_settings_refuse_bad_listen(listen: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HttpSettings(listen=listen)


def test_http_settings_defaults_frozen_and_strict() -> None:
    s = HttpSettings()
    assert (s.listen, s.enabled, s.host, s.port) == ("127.0.0.1:8470", True, "127.0.0.1", 8470)
    with pytest.raises(ValidationError):
        s.listen = "127.0.0.1:1"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        HttpSettings.model_validate({"listen": "127.0.0.1:1", "port": 1})
    assert HttpSettings.model_validate({"enabled": False}).enabled is False
    assert json.loads(s.model_dump_json()) == {
        "listen": "127.0.0.1:8470", "enabled": True,
        "token_env": None, "token_file": None, "token_credential": None,
        "health_max_sink_lag_s": 10.0, "health_max_down_fraction": 0.5,
    }  # fmt: skip


async def test_a_real_prometheus_consumer_ingests_the_exposition(
    victoria: VictoriaMetrics, unique_name: str
) -> None:
    """victoria-metrics parses our /metrics text (its Prometheus import) series by series."""
    metrics = Metrics()
    eq = f"BAL-{unique_name}"
    for latency in (0.003, 0.02, 0.02):
        metrics.observe_poll(eq, latency, [("mass", "good")])
    metrics.observe_failure(eq, "timeout")
    metrics.set_calibration(eq, "due_soon", 12.5)
    server = StatusServer("127.0.0.1:0", status=dict, health=lambda: (True, []), metrics=metrics)
    async with server, aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as r:
        text = await r.text()
    status, body = await asyncio.to_thread(
        victoria.http, "/api/v1/import/prometheus", text.encode(), method="POST"
    )
    assert status == 204, body

    def values(match: str) -> dict[str, float]:
        series = victoria.export_until(match, bool)
        return {
            ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items()) if k != "__name__"): s[
                "values"
            ][-1]
            for s in series
        }

    sel = f'{{equipment="{eq}"}}'
    assert values(f"calgate_polls_total{sel}") == {f"equipment={eq}": 4}
    assert values(f"calgate_poll_errors_total{sel}") == {f"equipment={eq},kind=timeout": 1}
    assert values(f'calgate_poll_latency_seconds_bucket{{equipment="{eq}",le="0.025"}}') == {
        f"equipment={eq},le=0.025": 3
    }
    assert values(f'calgate_calibration_status{{equipment="{eq}",status="due_soon"}}') == {
        f"equipment={eq},status=due_soon": 1
    }
    assert values(f"calgate_calibration_days_until_due{sel}") == {f"equipment={eq}": 12.5}
