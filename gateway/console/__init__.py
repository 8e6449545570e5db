"""The lab console: a live page at ``/`` of the gateway's HTTP server, and its JSON API.

The page (``static/``: one HTML file, its script and style, and the vendored uPlot) reads
the ``/api/...`` documents (README "Lab console" gives their shapes) and then follows
``/api/stream``, server-sent events pushed by the gateway at most once per ``push_s``.

Cost to the poll path: none. The console's own timer copies each channel's latest
Measurement into a bounded ring (:mod:`gateway.console.ring`) every ``sample_s``; events
reach it through the gateway's event listeners (a deque append per event). Only while a
page is connected is an update built — once per ``push_s`` whatever the number of
pages — and written to each of them; a page that falls behind is told to ``resync``
(read the documents again) instead of the gateway queueing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from gateway.console import views
from gateway.console.ring import Recorder
from gateway.wire import finite, rfc3339

if TYPE_CHECKING:
    from calibration import Registry
    from calibration.overview import Coverage, DueEntry
    from gateway.config import Config
    from gateway.model import Event
    from gateway.monitor import Monitor

__all__ = ["Console", "ConsoleSource"]

log = logging.getLogger(__name__)

STATIC = Path(str(files("gateway.console") / "static"))


class ConsoleSource(Protocol):
    """What the console reads of the running gateway (:class:`gateway.service.Gateway`)."""

    @property
    def config(self) -> Config: ...
    @property
    def monitor(self) -> Monitor: ...
    @property
    def registry(self) -> Registry | None: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...
    def health(self) -> tuple[bool, list[str]]: ...


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=_dumps(data), status=status, content_type="application/json", charset="utf-8"
    )


def _health(src: ConsoleSource) -> dict[str, Any]:
    """What /healthz says, for the page's header: a wall screen must not look well while
    nothing is delivered."""
    healthy, problems = src.health()
    return {"healthy": healthy, "problems": problems}


def _point(t: float, v: float, big_u: float) -> list[float | None]:
    return [round(t, 3), finite(v), finite(big_u)]


class Console:
    """The console of one gateway: routes for :class:`gateway.status.StatusServer`, the
    sampling/push task (:meth:`start`, :meth:`stop`) and the event listener
    (:meth:`record_events`)."""

    def __init__(
        self,
        source: ConsoleSource,
        *,
        window_s: float = 300.0,
        sample_s: float = 0.5,
        push_s: float = 1.0,
        max_events: int = 500,
    ) -> None:
        self.source = source
        self.recorder = Recorder(window_s=window_s, sample_s=sample_s)
        self.sample_s = sample_s
        self.push_s = push_s
        self.events: deque[tuple[int, Event]] = deque(maxlen=max_events)
        self._event_count = 0
        self._since: dict[str, datetime] = {}  # connection changed at
        self._connection: dict[str, str] = {}
        self._config: object = None  # the config the rings were sized for
        self._task: asyncio.Task[None] | None = None
        self._clients = 0
        self._version = 0
        self._latest: bytes = b""
        self._next: asyncio.Future[None] | None = None
        self._closing = False
        self._marks: dict[tuple[str, str], int] = {}  # ring.written at the last push
        self._pushed_events = 0
        self._registry: object = None
        self._generation = 0
        self._cache: dict[str, tuple[tuple[int, str], Any]] = {}

    # -- feeding ------------------------------------------------------------------------

    def record_events(self, events: Iterable[Event]) -> None:
        """An event listener of the gateway: keeps the recent events, numbered."""
        for e in events:
            self._event_count += 1
            self.events.append((self._event_count, e))

    def sample(self) -> None:
        """One tick of the console's timer: the rings, connection times, reload checks."""
        src = self.source
        cfg = src.config
        if cfg is not self._config:
            self._config = cfg
            self.recorder.set_intervals({e.id: e.driver.interval_s for e in cfg.equipment})
        self._check_registry()  # and a reloaded-away snapshot is not kept alive here
        states = src.monitor.states
        self.recorder.sample(states)
        now: datetime | None = None
        for eq_id, st in states.items():
            if self._connection.get(eq_id) != st.connection:
                self._connection[eq_id] = st.connection
                now = now or src.clock()
                self._since[eq_id] = now

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._next = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name="console")

    async def stop(self) -> None:
        """Stop the timer and end every open stream (so the server stops at once)."""
        self._closing = True
        self._wake()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_push = loop.time()
        while True:
            try:
                self.sample()
                if self._clients and loop.time() >= next_push:
                    next_push = loop.time() + self.push_s
                    self._publish()
            except Exception:  # a bug here must not end the console (nor the gateway)
                log.exception("console update failed")
            await asyncio.sleep(self.sample_s)

    # -- documents ----------------------------------------------------------------------

    def _registry_token(self) -> str:
        """What the page compares to know coverage, due dates and chains changed."""
        generation, day = self._today_key()
        return f"{generation}-{day}"

    def _today_key(self) -> tuple[int, str]:
        """Changes with the registry snapshot and the UTC day (what coverage depends on)."""
        self._check_registry()
        return self._generation, self.source.clock().date().isoformat()

    def _check_registry(self) -> None:
        reg = self.source.registry
        if reg is not self._registry:
            self._registry = reg
            self._generation += 1
            self._cache.clear()

    def _cached(self, name: str, build: Callable[[Registry, datetime], Any]) -> Any:
        key = self._today_key()
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        reg = self.source.registry
        value = None if reg is None else build(reg, self.source.clock())
        self._cache[name] = (key, value)
        return value

    def coverage(self) -> Coverage | None:
        from calibration.overview import coverage

        return self._cached("coverage", coverage)  # type: ignore[no-any-return]

    def due(self) -> list[DueEntry]:
        from calibration.overview import due_dates

        return self._cached("due", due_dates) or []

    def board_json(self) -> dict[str, Any]:
        src = self.source
        now = src.clock()
        return {
            "gateway": {"id": src.config.gateway.id, "site": src.config.gateway.site},
            "now": rfc3339(now),
            "registry": self._registry_token(),
            "health": _health(src),
            "equipment": views.board(
                src.config.equipment, src.monitor.states, src.registry, now.date(), self._since
            ),
        }

    def events_json(
        self, *, equipment: str | None = None, type_: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """The recent events, newest first, filtered by equipment and type."""
        out = []
        for n, e in reversed(self.events):
            if (equipment and e.equipment != equipment) or (type_ and e.type != type_):
                continue
            out.append(views.event_json(n, e))
            if len(out) >= limit:
                break
        return out

    def series_json(self, equipment: str, channel: str) -> dict[str, Any] | None:
        reg = self.source.registry
        eq = reg.equipment(equipment) if reg is not None else None
        ch = eq.channel(channel) if eq is not None else None
        if (equipment, channel) not in self.recorder.rings and ch is None:
            return None
        lim = ch.limits if ch is not None else None
        return {
            "equipment": equipment,
            "channel": channel,
            "unit": ch.unit if ch is not None else None,
            "limits": None if lim is None else {"low": lim.low, "high": lim.high},
            "sample_s": self.sample_s,
            "window_s": self.recorder.window_s,
            "points": [_point(*s) for s in self.recorder.series(equipment, channel)],
        }

    # -- push -----------------------------------------------------------------------------

    def _new_points(self) -> dict[str, list[list[float | None]]]:
        out: dict[str, list[list[float | None]]] = {}
        for key, ring in self.recorder.rings.items():
            prev = self._marks.get(key, 0)
            if ring.written > prev:
                out[f"{key[0]}/{key[1]}"] = [_point(*s) for s in ring.tail(ring.written - prev)]
                self._marks[key] = ring.written
        return out

    def _baseline(self) -> None:
        """A first page connects: points from now on (older ones it reads from /api/series)."""
        self._marks = {k: r.written for k, r in self.recorder.rings.items()}
        self._pushed_events = self._event_count

    def _publish(self) -> None:
        fresh = self._event_count - self._pushed_events
        new_events = (
            [views.event_json(n, e) for n, e in list(self.events)[-fresh:]] if fresh else []
        )
        self._pushed_events = self._event_count
        doc = self.board_json() | {"events": new_events, "points": self._new_points()}
        self._version += 1
        self._latest = f"id: {self._version}\nevent: update\ndata: {_dumps(doc)}\n\n".encode()
        self._wake()

    def _wake(self) -> None:
        fut, self._next = self._next, None
        if fut is not None and not fut.done():
            fut.set_result(None)
        if not self._closing:
            with contextlib.suppress(RuntimeError):  # no running loop: stopped
                self._next = asyncio.get_running_loop().create_future()

    # -- routes ---------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self._index)
        r.add_static("/static/", STATIC, append_version=False)
        r.add_get("/api/board", self._board)
        r.add_get("/api/coverage", self._coverage)
        r.add_get("/api/due", self._due)
        r.add_get("/api/due.csv", self._due_csv)
        r.add_get("/api/chain/{equipment}", self._chain)
        r.add_get("/api/series", self._series)
        r.add_get("/api/events", self._events)
        r.add_get("/api/stream", self._stream)

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def _board(self, request: web.Request) -> web.Response:
        return _json(self.board_json())

    async def _coverage(self, request: web.Request) -> web.Response:
        cov = self.coverage()
        if cov is None:
            return _json({"error": "no registry"}, status=404)
        return _json(cov.to_json() | {"registry": self._registry_token()})

    async def _due(self, request: web.Request) -> web.Response:
        return _json(views.due_json(self.due(), self.source.clock().date()))

    async def _due_csv(self, request: web.Request) -> web.Response:
        day = self.source.clock().date().isoformat()
        return web.Response(
            text=views.due_csv(self.due()),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="calgate-due-{day}.csv"'},
        )

    async def _chain(self, request: web.Request) -> web.Response:
        eq_id = request.match_info["equipment"]
        reg = self.source.registry
        if reg is None or reg.equipment(eq_id) is None:
            return _json({"error": f"unknown equipment {eq_id!r}"}, status=404)
        return _json(views.chains(reg, eq_id, self.source.clock()))

    async def _series(self, request: web.Request) -> web.Response:
        q = request.query
        eq_id, channel = q.get("equipment", ""), q.get("channel", "")
        doc = self.series_json(eq_id, channel)
        if doc is None:
            return _json({"error": f"no channel {channel!r} of {eq_id!r}"}, status=404)
        return _json(doc)

    async def _events(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = max(1, min(int(q.get("limit", "200")), self.events.maxlen or 500))
        except ValueError:
            return _json({"error": "limit: not an integer"}, status=400)
        found = self.events_json(
            equipment=q.get("equipment") or None, type_=q.get("type") or None, limit=limit
        )
        return _json({"events": found})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        if self._clients == 0:
            self._baseline()
        self._clients += 1
        try:
            await resp.write(f"retry: 2000\nevent: hello\ndata: {self._version}\n\n".encode())
            seen = self._version
            while not self._closing:
                if self._version == seen:
                    fut = self._next
                    if fut is None:
                        break
                    await asyncio.wait((fut,))  # not the future itself: others share it
                    continue
                if self._version > seen + 1:  # it fell behind: it reads the documents again
                    await resp.write(b"event: resync\ndata: {}\n\n")
                seen = self._version
                await resp.write(self._latest)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self._clients -= 1
        return resp
