"""The gateway's HTTP server: ``/healthz``, ``/status``, ``/metrics`` and the lab console.

``GET /healthz``  200 ``{"status": "ok"}`` when healthy, else 503
                  ``{"status": "unhealthy", "reasons": [...]}`` (from the ``health`` callable)
``GET /status``   the JSON document of the ``status`` callable
``GET /metrics``  Prometheus text exposition, ``text/plain; version=0.0.4``
``GET /``         the lab console and its ``/api/...`` (:mod:`gateway.console`), when given

The server only reads: every answer comes from callables the service passes in, so it
holds no state of its own. Binding ``127.0.0.1:0`` picks a free port (:attr:`StatusServer.port`).

With a ``token`` every request but ``/healthz`` must carry it, as ``Authorization:
Bearer <token>`` (scripts, Prometheus' ``authorization``) or as the password of HTTP basic
auth with any user name (a browser asks for it once). ``[http]`` requires a token when
``listen`` is not a loopback address; it is read from a secret, never from the TOML.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
)

from gateway.errors import CalgateError
from gateway.metrics import CONTENT_TYPE, MetricsRegistry
from gateway.settings import Settings, read_into
from gateway.wire import json_safe

if TYPE_CHECKING:
    from gateway.console import Console

__all__ = [
    "HealthChecks",
    "HttpSettings",
    "ListenError",
    "StatusServer",
    "is_loopback",
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is only reachable from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any address


class HttpSettings(Settings):
    """The ``[http]`` table of calgate.toml: where to listen, and the access token.

    Off loopback the token is required (from ``token_credential``, ``token_file`` or
    ``token_env``, tried in that order: :func:`gateway.secrets.read_secret`).
    """

    listen: str = "127.0.0.1:8470"
    enabled: bool = True
    # /healthz is 503 when a sink has been disconnected, or is behind, for longer than
    # this, or when at least this fraction of the polled equipment gives no readings
    health_max_sink_lag_s: float = Field(default=10.0, gt=0)
    health_max_down_fraction: float = Field(default=0.5, gt=0, le=1)
    token_env: str | None = None
    token_file: str | None = None
    token_credential: str | None = None

    _token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        parse_listen(v)
        return v.strip()

    def _problems(self) -> list[str]:
        problems: list[str] = []
        self._token = read_into(
            problems, self.token_env, self.token_file, self.token_credential, what="token"
        )
        if self.enabled and self._token is None and not problems and not is_loopback(self.host):
            problems.append(
                f"listen: {self.listen} is not a loopback address: the console, /status and "
                "/metrics are then only served with a token; set token_env, token_file or "
                "token_credential (or listen on 127.0.0.1)"
            )
        return problems

    @property
    def token(self) -> SecretStr | None:
        return self._token

    def access(self) -> str:
        """One line for ``check-config``: where the server listens and who may read it."""
        if not self.enabled:
            return "http: disabled"
        where = "loopback" if is_loopback(self.host) else "not loopback"
        if self._token is None:
            return f"http: {self.listen} ({where}): no token, open to local users"
        source = next(
            f"{kind} {name}"
            for kind, name in (
                ("credential", self.token_credential),
                ("file", self.token_file),
                ("environment variable", self.token_env),
            )
            if name
        )
        return (
            f"http: {self.listen} ({where}): every request but /healthz needs the token "
            f"(Authorization: Bearer, or basic auth with it as password), read from {source}"
        )

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


MAX_CONNECTIONS = 64
"""Open HTTP connections at most: a new one past it closes the oldest."""


class _BoundedSite(web.TCPSite):
    """A TCP site holding at most ``limit`` connections: the next one closes the oldest.

    A client that opens connections and never finishes a request (slowloris) would
    otherwise hold one file descriptor each, until the process has none left for its
    instruments, its outbox and the clients that ask properly; evicting the oldest
    keeps the descriptors bounded and lets a new client in.
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limit: int) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self._limit = limit
        self._live: list[Any] = []  # the RequestHandlers made, oldest first

    def _protocol(self) -> Any:
        server = self._runner.server
        assert server is not None
        handler = server()
        # handlers whose connection is gone no longer count (a new one has no transport
        # yet: it is the last in the list, and connection_made follows at once)
        live = [h for h in self._live if h.transport is not None]
        live.append(handler)
        while len(live) > self._limit:
            live.pop(0).force_close()
        self._live = live
        return handler

    async def start(self) -> None:
        # TCPSite.start, with the protocol factory above instead of the server itself
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, reuse_address=True
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
        *,
        console: Console | None = None,
        token: SecretStr | None = None,
    ) -> None:
        self.host, self._port = parse_listen(listen)
        self._status = status
        self._health = health
        self.metrics = metrics
        self.console = console
        self._token = token.get_secret_value().encode() if token is not None else None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the status server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._read_only, self._authorize])
        app.router.add_get("/healthz", self._handle_health)
        app.router.add_get("/status", self._handle_status)
        app.router.add_get("/metrics", self._handle_metrics)
        if self.console is not None:
            self.console.routes(app)
        else:
            app.router.add_get("/", self._handle_index)
        return app

    @web.middleware
    async def _read_only(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        return await handler(request)

    @web.middleware
    async def _authorize(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._token is None or request.path == "/healthz" or self._authorized(request):
            return await handler(request)
        raise web.HTTPUnauthorized(
            text="a token is required (Authorization: Bearer, or basic auth)\n",
            headers={"WWW-Authenticate": 'Basic realm="calgate", charset="UTF-8"'},
        )

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip().encode()
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(given, validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given, self._token)

    async def start(self) -> None:
        """Listen; afterwards :attr:`port` is the bound port. Raises :class:`ListenError`."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = _BoundedSite(runner, self.host, self._port, limit=MAX_CONNECTIONS)
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
        if self.console is not None:
            await self.console.start()
        log.info("HTTP status server on %s", self.url)

    async def stop(self) -> None:
        if self.console is not None:
            await self.console.stop()  # ends the open streams: the runner need not wait
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
