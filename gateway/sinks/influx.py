"""InfluxDB sink (ARCHITECTURE.md 4.4): outbox lines out in batches, acked on 2xx only.

Both APIs are one aiohttp POST of the rows' pre-built line protocol, joined (nothing is
re-encoded here): ``api = "v2"`` to ``/api/v2/write?org=…&bucket=…&precision=ns`` with
``Authorization: Token …`` (InfluxDB 2.x/3.x, 1.8+, victoria-metrics and other servers of
that API); ``api = "v1"`` to ``/write?db=…&rp=…&precision=ns`` with basic auth (InfluxDB
1.x). influxdb-client's async client does the same v2 POST over the same aiohttp, but its
import costs megabytes of the gateway's memory budget (bench/README.md); the write
endpoint is all the sink uses.

A batch is ``batch_size`` rows, or what came within ``flush_interval_s``. Answers:

- 2xx: the rows are acked;
- 429, 503 and other 5xx, network errors, timeouts: retried after a backoff, at least as
  long as the ``Retry-After`` header asks (seconds or an HTTP date);
- 413: the batch is split in halves and each is written (recursively);
- any other 4xx (a bad line, 401, unknown database): the batch is rejected — acked, so it
  is not retried forever — and a ``sink_rejected`` Event (critical, with the status and
  the start of the body) enters the outbox, at most one a minute per sink.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import ssl
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway.errors import SinkError
from gateway.model import Event
from gateway.outbox import DROP_EQUIPMENT, Outbox, Row
from gateway.settings import InfluxSettings
from gateway.sinks.base import Sink

__all__ = [
    "InfluxSink",
    "auth_headers",
    "parse_retry_after",
    "post_lines",
    "session",
    "write_endpoint",
]

log = logging.getLogger(__name__)

_MAX_RETRY_AFTER_S = 600.0
_REJECT_EVENT_INTERVAL_S = 60.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        delay = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when.timestamp() - (time.time() if now is None else now)
    if delay != delay:  # NaN
        return None
    return min(max(delay, 0.0), _MAX_RETRY_AFTER_S)


def auth_headers(s: InfluxSettings) -> dict[str, str]:
    """``Authorization`` for the API: ``Token …`` (v2) or HTTP basic (v1, RFC 7617)."""
    if s.api == "v2":
        if s.token is not None:
            return {"Authorization": f"Token {s.token.get_secret_value()}"}
        return {}
    if s.username:
        pw = s.password.get_secret_value() if s.password is not None else ""
        user_pw = base64.b64encode(f"{s.username}:{pw}".encode()).decode()
        return {"Authorization": f"Basic {user_pw}"}
    return {}


def write_endpoint(s: InfluxSettings) -> tuple[str, dict[str, str]]:
    """The write URL and its query parameters (precision ns) for the configured API."""
    base = s.url.rstrip("/")
    if s.api == "v2":
        return f"{base}/api/v2/write", {
            "org": s.org or "",
            "bucket": s.bucket or "",
            "precision": "ns",
        }
    params = {"db": s.database or "", "precision": "ns"}
    if s.retention_policy:
        params["rp"] = s.retention_policy
    return f"{base}/write", params


async def post_lines(
    http: aiohttp.ClientSession, url: str, params: dict[str, str], body: bytes
) -> tuple[int, Any, bytes]:
    """(status, headers, body) of one write of line protocol to ``url``; aiohttp's
    exceptions (and a timeout) pass to the caller, which says what failed."""
    async with http.post(
        url, params=params, data=body, headers={"Content-Type": "text/plain; charset=utf-8"}
    ) as resp:
        return resp.status, resp.headers, await resp.read()


def session(s: InfluxSettings) -> aiohttp.ClientSession:
    """An aiohttp session with the API's credentials, the timeout and the TLS settings
    (a private CA, or no verification) of ``[influxdb]``."""
    connector = None
    if s.url.startswith("https:"):
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if not s.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        connector = aiohttp.TCPConnector(ssl=ctx)
    return aiohttp.ClientSession(
        headers=auth_headers(s),
        timeout=aiohttp.ClientTimeout(total=s.timeout_s),
        connector=connector,
    )


class InfluxSink(Sink):
    """Writes the outbox's ``influx`` cursor to InfluxDB (v2 or v1 API)."""

    def __init__(self, settings: InfluxSettings, outbox: Outbox, *, name: str = "influx") -> None:
        super().__init__(
            outbox,
            name,
            batch_size=settings.batch_size,
            backoff_min_s=settings.backoff_min_s,
            backoff_max_s=settings.backoff_max_s,
            flush_timeout_s=settings.flush_timeout_s,
        )
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._url = ""
        self._params: dict[str, str] = {}
        self.rejected = 0  # rows rejected by the server (4xx)
        self.splits = 0  # 413 answers
        self.writes = 0  # successful requests
        self._last_reject_event = -float("inf")
        self._rejects_unreported = 0

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        s = self.settings
        self._url, self._params = write_endpoint(s)
        self._session = session(s)

    async def close(self, *, clean: bool) -> None:
        try:
            if self._session is not None:
                await self._session.close()
        except Exception as exc:  # closing never raises
            log.debug("influx sink: close: %s", exc)
        finally:
            self._session = None

    # ------------------------------------------------------------------ batching

    async def collect(self, rows: list[Row]) -> list[Row]:
        s = self.settings
        if len(rows) >= s.batch_size or s.flush_interval_s <= 0 or self._stopping:
            return rows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.flush_interval_s
        while len(rows) < s.batch_size and not self._stopping:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            rows.extend(await self.outbox.fetch(self.name, s.batch_size - len(rows), remaining))
        return rows

    # ------------------------------------------------------------------ delivery

    async def deliver(self, rows: list[Row]) -> None:
        status, headers, body = await self._post(b"\n".join([r.line for r in rows]))
        if 200 <= status < 300:
            self.writes += 1
            self.delivered += len(rows)
            self.outbox.ack(self.name, [r.seq for r in rows])
            return
        excerpt = body[:300].decode("utf-8", "replace").strip()
        if status == 413 and len(rows) > 1:
            self.splits += 1
            half = len(rows) // 2
            log.info("influx sink: 413 for %d rows; writing halves", len(rows))
            await self.deliver(rows[:half])
            await self.deliver(rows[half:])
            return
        if status == 429 or status >= 500:
            self.retry_after_s = parse_retry_after(headers.get("Retry-After"))
            raise SinkError(f"HTTP {status}: {excerpt}")
        self._reject(rows, status, excerpt)

    def _reject(self, rows: list[Row], status: int, excerpt: str) -> None:
        self.rejected += len(rows)
        self.outbox.ack(self.name, [r.seq for r in rows])
        log.error(
            "influx sink: HTTP %d rejected %d rows (seq %d..%d): %s",
            status,
            len(rows),
            rows[0].seq,
            rows[-1].seq,
            excerpt,
        )
        self._rejects_unreported += len(rows)
        now = time.monotonic()
        if now - self._last_reject_event < _REJECT_EVENT_INTERVAL_S:
            return  # at most one event a minute: a rejected event must not loop
        self._last_reject_event = now
        count, self._rejects_unreported = self._rejects_unreported, 0
        self.outbox.add(
            [
                Event(
                    type="sink_rejected",
                    severity="critical",
                    equipment=DROP_EQUIPMENT,
                    message=f"InfluxDB rejected {count} rows with HTTP {status}",
                    t_wall=datetime.now(UTC),
                    detail={
                        "sink": self.name,
                        "status": status,
                        "body": excerpt,
                        "count": count,
                        "first_seq": rows[0].seq,
                        "last_seq": rows[-1].seq,
                    },
                )
            ]
        )

    async def _post(self, body: bytes) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one write; network trouble raises SinkError."""
        if self._session is None:
            raise SinkError("not connected")
        try:
            return await post_lines(self._session, self._url, self._params, body)
        except aiohttp.ClientError as exc:
            raise SinkError(f"{self.settings.url}: {type(exc).__name__}: {exc}") from exc
