"""The gateway's HTTP status server: ``/healthz``, ``/status`` and ``/metrics``.

``GET /healthz``  200 ``{"status": "ok"}`` when healthy, else 503
                  ``{"status": "unhealthy", "reasons": [...]}`` (from the ``health`` callable)
``GET /status``   the JSON document of the ``status`` callable
``GET /metrics``  Prometheus text exposition, ``text/plain; version=0.0.4``

The server only reads: every answer comes from callables the service passes in, so it
holds no state of its own. Binding ``127.0.0.1:0`` picks a free port (:attr:`StatusServer.port`).
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, field_validator

from gateway.errors import CalgateError
from gateway.metrics import CONTENT_TYPE, MetricsRegistry
from gateway.wire import json_safe

__all__ = [
    "HealthChecks",
    "HttpSettings",
    "ListenError",
    "StatusServer",
    "parse_listen",
]

log = logging.getLogger(__name__)

StatusProvider = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
HealthProvider = Callable[[], tuple[bool, list[str]]]


class ListenError(CalgateError, OSError):
    """The status server could not listen on its address (in use, not local, no permission)."""


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` → (host, port); IPv6 hosts in brackets: ``[::1]:8470``.

    Raises ValueError with a message fit for a config error.
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [ipv6]:port, got {value!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in {value!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected host:port, e.g. 127.0.0.1:8470, got {value!r}")
        if ":" in host:
            raise ValueError(f"an IPv6 host goes in brackets, e.g. [::1]:8470, got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port_text!r} in {value!r}")
    return host, int(port_text)


class HttpSettings(BaseModel):
    """The ``[http]`` table of calgate.toml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: str = "127.0.0.1:8470"
    enabled: bool = True

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        parse_listen(v)
        return v.strip()

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class HealthChecks:
    """Named checks composed into the ``health`` callable of :class:`StatusServer`.

    A check returns ``None`` or ``True`` when healthy, ``False`` or a reason (a string)
    when not; one that raises is unhealthy with the exception as its reason::

        checks = HealthChecks()
        checks.add("service", lambda: None if gw.started else "not started")
        checks.add("scheduler", lambda: gw.loop_beat_age_s() < 10 or "poll loop stalled")
        StatusServer(listen, status=gw.status, health=checks, metrics=gw.metrics)
    """

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool | str | None]] = {}

    def add(self, name: str, check: Callable[[], bool | str | None]) -> None:
        self._checks[name] = check

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    def __call__(self) -> tuple[bool, list[str]]:
        reasons: list[str] = []
        for name, check in list(self._checks.items()):
            try:
                res = check()
            except Exception as exc:
                reasons.append(f"{name}: check failed: {type(exc).__name__}: {exc}")
                continue
            if res is None or res is True:
                continue
            reasons.append(f"{name}: {res}" if isinstance(res, str) else f"{name}: unhealthy")
        return not reasons, reasons


def _json(data: Any, status: int = 200) -> web.Response:
    body = json.dumps(data, default=str, indent=1, ensure_ascii=False, allow_nan=False)
    return web.Response(
        text=body + "\n", status=status, content_type="application/json", charset="utf-8"
    )


class StatusServer:
    """The aiohttp server of ``/healthz``, ``/status`` and ``/metrics``.

    ``status`` may be a plain or an async callable returning a JSON-able mapping
    (datetimes and other objects are given as ``str``; NaN as ``null``).
    """

    def __init__(
        self,
        listen: str,
        status: StatusProvider,
        health: HealthProvider,
        metrics: MetricsRegistry,
    ) -> None:
        self.host, self._port = parse_listen(listen)
        self._status = status
        self._health = health
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the status server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._handle_health)
        app.router.add_get("/status", self._handle_status)
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/", self._handle_index)
        return app

    async def start(self) -> None:
        """Listen; afterwards :attr:`port` is the bound port. Raises :class:`ListenError`."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(
                exc.errno, f"HTTP status server cannot listen on {self.host}:{self._port}: {exc}"
            ) from exc
        self._runner = runner
        addr = runner.addresses[0]
        self.port = int(addr[1])
        log.info("HTTP status server on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("HTTP status server stopped")
        self.port = None

    async def __aenter__(self) -> StatusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle_index(self, request: web.Request) -> web.Response:
        return _json({"endpoints": ["/healthz", "/status", "/metrics"]})

    async def _handle_health(self, request: web.Request) -> web.Response:
        try:
            ok, reasons = self._health()
        except Exception as exc:
            log.exception("health check raised")
            ok, reasons = False, [f"health check raised {type(exc).__name__}: {exc}"]
        if ok:
            return _json({"status": "ok"})
        return _json({"status": "unhealthy", "reasons": list(reasons)}, status=503)

    async def _handle_status(self, request: web.Request) -> web.Response:
        try:
            res = self._status()
            data = await res if inspect.isawaitable(res) else res
            return _json(json_safe(data))
        except Exception as exc:
            log.exception("status provider raised")
            return _json({"error": f"{type(exc).__name__}: {exc}"}, status=500)

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        try:
            body = self.metrics.render().encode()
        except Exception as exc:
            log.exception("metrics rendering raised")
            return web.Response(text=f"metrics failed: {exc}\n", status=500)
        resp = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
        if len(body) > 4096 and "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression(web.ContentCoding.gzip)
        return resp
