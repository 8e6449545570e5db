"""The gateway service: its life cycle, reload and health.

:class:`Gateway` wires drivers, the pipeline, the monitor, the outbox and the sinks, and
runs them as named tasks it keeps and cancels itself (not one ``asyncio.TaskGroup``: a
task that ends on a bug must not cancel its siblings). Started in this order: the outbox,
the sinks (so they flush last), the status server, one supervised task per equipment,
the calibration watch and the heartbeat (which restarts a hung equipment task). A
service task that crashes stops the gateway; an equipment task that does is reported
offline and the others poll on. What becomes of a poll's result is
:mod:`gateway.poll_results`. SIGHUP reloads config and registry; SIGTERM/SIGINT stop
cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from drivers.base import Buses, Driver
from drivers.errors import DeviceTimeout
from gateway.config import (
    Config,
    EquipmentEntry,
    check_against_registry,
    check_paths,
    never_calibrated,
    read_config,
)
from gateway.errors import ConfigError
from gateway.wire import rfc3339

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from calibration import Registry
    from gateway.model import Event
    from gateway.outbox import Outbox
    from gateway.registry_watch import RegistryRevision
    from gateway.scheduler import Supervisor
    from gateway.sinks.base import Sink
    from gateway.sinks.influx import InfluxSink
    from gateway.sinks.mqtt import MqttSink
    from gateway.status import StatusServer

__all__ = ["Gateway", "load_everything", "make_driver"]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def load_everything(path: Path | str, *, strict: bool = False) -> tuple[Config, Registry]:
    """Config and registry, cross-checked; ConfigError lists every problem of all three.

    A registry whose broken files belong only to equipment that is not configured loads
    without them (``registry.problems`` lists them, as warnings). A polled channel without
    a certificate in force is in ``config.warnings`` (published with calibration
    ``none``), or an error when ``strict`` or ``[gateway] require_calibration``."""
    from calibration import Registry

    config, errors = read_config(path)
    if config is None:
        _fail(errors)  # unreadable, or no [gateway] to find the registry with
    # with errors in some tables, the rest is still checked: every error in one run
    registry = None
    errors.extend(check_paths(config))
    if config.registry_dir.is_dir():
        # Broken registry entries of equipment this gateway does not poll (nor any
        # standard in its chains, which then shows untraceable) must not stop the lab's
        # monitoring: the sound entries load, the broken ones are in registry.problems.
        registry = Registry.load(config.registry_dir, sound_only=True)
        polled = {e.id for e in config.equipment}
        if "*" in registry.unsound or polled & registry.unsound:
            errors.extend(f"{config.registry_dir}/{e}" for e in registry.problems)
    warnings: list[str] = []
    if registry is not None:
        errors.extend(
            check_against_registry(
                config,
                registry,
                skip=registry.unsound,
                strict=strict or config.gateway.require_calibration,
                warnings=warnings,
            )
        )
    if errors:
        _fail(errors)
    assert registry is not None  # else an error says why
    return dataclasses.replace(config, warnings=tuple(warnings)), registry


def _fail(errors: list[str]) -> NoReturn:
    raise ConfigError(f"{len(errors)} configuration error(s)", errors=errors)


def make_driver(entry: EquipmentEntry, registry: Registry | None, buses: Buses) -> Driver:
    """The driver of an equipment table; a single-channel instrument's channel name
    comes from its registry equipment when the table does not name it."""
    from drivers import driver_class

    cfg = entry.driver
    if "channel" in type(cfg).model_fields and getattr(cfg, "channel", None) is None and registry:
        eq = registry.equipment(entry.id)
        if eq is not None and len(eq.channels) == 1:
            cfg = cfg.model_copy(update={"channel": eq.channels[0].name})
    cls = driver_class(cfg.driver)
    assert cls is not None, cfg.driver  # validated at load
    return cls(cfg, buses=buses)


class Gateway:
    """The running service (its supervisors' hooks are :attr:`results`).

    ``start()`` brings everything up inside the caller's loop and returns; ``stop()``
    takes it down (equipment first, sinks last so they flush). ``serve_forever()`` is
    ``calgate run``: start, wait for SIGTERM/SIGINT, reload on SIGHUP, stop.
    """

    def __init__(
        self,
        config: Config,
        registry: Registry | None,
        *,
        extra_sinks: Mapping[str, Callable[[Outbox], Sink]] | None = None,
        clock: Callable[[], datetime] | None = None,
        strict: bool = False,
    ) -> None:
        """``extra_sinks``: more sinks besides the configured ones, each made from the
        outbox and reading its own cursor, by the sink's name (the demo's local history).
        ``clock`` (aware UTC) dates calibration statuses, corrections and events; the
        default is the system clock (tests move it over due dates). ``strict``
        (``calgate run --strict``): a reload is refused while a polled channel has no
        certificate in force, as the start was."""
        from gateway.metrics import Metrics
        from gateway.monitor import Monitor
        from gateway.pipeline import Pipeline
        from gateway.poll_results import PollResults

        self.config = config
        self.strict = strict
        self.clock: Callable[[], datetime] = clock or _utcnow
        self.buses = Buses()
        # the pipeline's own default clock: it then checks the date against time.time()
        # instead of making a datetime per poll (an injected clock is asked every poll)
        self.pipeline = Pipeline(registry, clock=clock)
        self.monitor = Monitor(clock=self.clock)
        self.metrics = Metrics()
        self.results = PollResults(self.pipeline, self.monitor, self.metrics)
        self.outbox: Outbox | None = None
        self.mqtt: MqttSink | None = None
        self.influx: InfluxSink | None = None
        self._extra_factories = dict(extra_sinks or {})
        self.extra_sinks: list[Sink] = []
        self.status_server: StatusServer | None = None
        self._equipment: dict[str, tuple[asyncio.Task[None], EquipmentEntry, Supervisor]] = {}
        self._service_tasks: list[asyncio.Task[Any]] = []
        self._sink_tasks: list[asyncio.Task[None]] = []
        from gateway.scheduler import Ticker

        self._ticker = Ticker()  # the supervisors' shared timers
        self._stop: asyncio.Event | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._beat = time.monotonic()
        self._frozen = False  # gc.freeze()d after start (serve_forever)
        self._started_at = datetime.now(UTC)
        self._started_mono = time.monotonic()
        # the last events, for /status (the MQTT and InfluxDB sinks have them all)
        self.recent_events: deque[Event] = deque(maxlen=20)
        self.results.listeners.append(self.recent_events.extend)
        self.started = False
        self.registry_revision: RegistryRevision | None = None  # the registry applied
        self.last_reload: dict[str, Any] | None = None  # /status: when and what it did

    @property
    def registry(self) -> Registry | None:
        """The registry snapshot in use (the pipeline's: a reload swaps it there)."""
        return self.pipeline.registry

    # -- life cycle ---------------------------------------------------------------------

    def sink_names(self) -> list[str]:
        names = []
        if self.config.mqtt is not None:
            names.append("mqtt")
        if self.config.influxdb is not None:
            names.append("influx")
        names.extend(self._extra_factories)
        return names

    async def start(self) -> None:
        from gateway.outbox import Outbox

        cfg = self.config
        self._started_at = datetime.now(UTC)
        self._started_mono = time.monotonic()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        prefix = cfg.mqtt.topic_prefix if cfg.mqtt else "calgate"
        self.outbox = Outbox(
            cfg.state_dir / "outbox.sqlite",
            cfg.outbox,
            sinks=self.sink_names(),
            site=cfg.gateway.site,
            topic_prefix=prefix,
        )
        self.results.outbox = self.outbox
        self._spawn(self.outbox.run(), "outbox")
        await self._start_sinks()
        self._clear_retained_of_removed()
        self._register_scrape_hooks()
        console = None
        if cfg.http.enabled:  # listening before the start's own events (registry_loaded)
            from gateway.console import Console

            console = Console(self)
            self.results.listeners.append(console.record_events)
        self._registry_loaded(reload=False)
        if console is not None:
            from gateway.status import StatusServer

            self.status_server = StatusServer(
                cfg.http.listen, status=self.status, health=self.health, metrics=self.metrics,
                console=console, token=cfg.http.token,
            )  # fmt: skip
            await self.status_server.start()
        for entry in cfg.equipment:
            self._start_equipment(entry)
        self.check_calibration()
        self._spawn(self._calibration_watch(), "calibration-watch")
        self._spawn(self._heartbeat(), "heartbeat")
        self.started = True

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._service_tasks.append(task)
        task.add_done_callback(self._service_task_done)
        return task

    def _service_task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.critical("service task %s crashed: %r", task.get_name(), exc, exc_info=exc)
            if self._stop is not None:
                self._stop.set()

    async def _start_sinks(self) -> None:
        cfg = self.config
        assert self.outbox is not None
        if cfg.mqtt is not None:
            from gateway.sinks.mqtt import MqttSink

            self.mqtt = MqttSink(
                cfg.mqtt, self.outbox, site=cfg.gateway.site, gateway_id=cfg.gateway.id
            )
            self.results.mqtt = self.mqtt
            self.mqtt.publish_gateway_status(self.gateway_status())
        if cfg.influxdb is not None:
            from gateway.sinks.influx import InfluxSink

            self.influx = InfluxSink(cfg.influxdb, self.outbox)
        self.extra_sinks = [make(self.outbox) for make in self._extra_factories.values()]
        for sink in self.sinks():
            self._sink_tasks.append(asyncio.create_task(sink.run(), name=f"sink:{sink.name}"))

    def sinks(self) -> list[Sink]:
        return [s for s in (self.mqtt, self.influx) if s is not None] + self.extra_sinks

    async def stop(self) -> None:
        """Stop polling, commit what was read, let the sinks flush, close everything."""
        polled = list(self._equipment)
        for eq_id in polled:
            await self._stop_equipment(eq_id)
        self.results.publish_stopped(polled)  # before the MQTT sink says the gateway is offline
        if self.outbox is not None:
            self.outbox.commit()
        # Sinks flush what is committed (bounded), in parallel; the MQTT sink says offline.
        await asyncio.gather(*(s.stop() for s in self.sinks()), return_exceptions=True)
        for task in [*self._sink_tasks, *self._service_tasks]:
            task.cancel()
        for task in [*self._sink_tasks, *self._service_tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._sink_tasks.clear()
        self._service_tasks.clear()
        if self.status_server is not None:
            await self.status_server.stop()
        if self.outbox is not None:
            self.outbox.close()
        self.started = False

    async def serve_forever(self) -> None:
        """``calgate run``: start, notify systemd, wait for a signal, stop."""
        from gateway import sdnotify

        loop = asyncio.get_running_loop()
        # Signals during start-up are held, not fatal: a stop asked for while starting
        # stops right after; a reload asked for while starting runs once started.
        early: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, early.append, sig)
        try:
            await self.start()
        except BaseException:
            await self.stop()  # what did start (outbox, sinks) stops cleanly
            raise
        assert self._stop is not None
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(), "reload"))
        if signal.SIGTERM in early or signal.SIGINT in early:
            self._stop.set()
        elif signal.SIGHUP in early:
            self._spawn(self.reload(), "reload")
        self._freeze_heap()
        sdnotify.ready()
        sdnotify.status(f"polling {len(self._equipment)} equipment")
        watchdog = asyncio.create_task(sdnotify.watchdog_task(self.alive), name="watchdog")
        log.info("calgate %s running: %d equipment", self.config.gateway.id, len(self._equipment))
        try:
            await self._stop.wait()
        finally:
            sdnotify.stopping()
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await self.stop()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    # -- equipment ------------------------------------------------------------------------

    def _start_equipment(self, entry: EquipmentEntry) -> None:
        from gateway.scheduler import Backoff, Supervisor

        if not entry.driver.enabled:
            return
        driver = make_driver(entry, self.registry, self.buses)
        gw = self.config.gateway
        sup = Supervisor(
            driver,
            self.results,
            interval_s=entry.driver.interval_s,
            backoff=Backoff(gw.backoff_min_s, gw.backoff_max_s),
            ticker=self._ticker,
        )
        self.monitor.state(entry.id)
        self.metrics.declare_equipment(entry.id)
        task = asyncio.create_task(sup.run(), name=f"equipment:{entry.id}")
        task.add_done_callback(self._equipment_done)
        self._equipment[entry.id] = (task, entry, sup)

    def _equipment_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug in a driver: report it, keep the others going
            name = task.get_name().removeprefix("equipment:")
            log.error("equipment %s stopped on an unexpected error: %r", name, exc, exc_info=exc)
            self.results.crashed(name, exc)

    async def _stop_equipment(self, eq_id: str) -> None:
        item = self._equipment.pop(eq_id, None)
        if item is None:
            return
        task = item[0]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    # -- calibration, heartbeat, health and status ------------------------------------

    def check_calibration(self, at: datetime | None = None) -> None:
        """Re-evaluate every equipment's calibration status (the date may have passed)."""
        quiet = {
            eq_id
            for eq_id, (_, entry, _) in self._equipment.items()
            if never_calibrated(entry, self.registry)
        }
        self.results.calibration(list(self._equipment), at or self.clock(), quiet=quiet)

    async def _calibration_watch(self) -> None:
        while True:  # the interval as configured now (a reload may change it)
            await asyncio.sleep(self.config.gateway.status_interval_s)
            self.check_calibration()

    async def _heartbeat(self) -> None:
        """Once a second: prove the loop turns, and restart equipment whose driver hangs
        past its own timeouts (a driver bug must stall only that equipment, and not
        for ever)."""
        while True:
            self._beat = now = time.monotonic()
            for eq_id, (_, entry, sup) in list(self._equipment.items()):
                if sup.stalled(now):
                    log.error("%s: a poll hangs past 3 x timeout_s + 1 s; restarting it", eq_id)
                    err = DeviceTimeout("poll hung; restarted", equipment=eq_id)
                    self.results.failure(eq_id, err)
                    await self._stop_equipment(eq_id)
                    self._start_equipment(entry)
            await asyncio.sleep(1.0)

    def alive(self) -> bool:
        """For the systemd watchdog: the loop turns and the outbox commits."""
        return time.monotonic() - self._beat < 5.0 and self.outbox is not None

    def health(self) -> tuple[bool, list[str]]:
        problems = []
        if not self.started:
            problems.append("not started")
        if time.monotonic() - self._beat > 5.0:
            problems.append("event loop stalled")
        if self.outbox is not None and (why := self.outbox.failing) is not None:
            problems.append(f"outbox cannot commit: {why}")
        dead = [k for k, (t, _, sup) in self._equipment.items() if t.done() or sup.stalled()]
        if dead:
            problems.append(f"poll tasks ended or hung: {', '.join(dead)}")
        problems += self._sink_problems() + self._equipment_problems()
        return (not problems, problems)

    def _sink_problems(self) -> list[str]:
        """A sink disconnected, or behind, for longer than ``health_max_sink_lag_s``."""
        limit = self.config.http.health_max_sink_lag_s
        lag = self.outbox.stats().lag_s if self.outbox is not None else {}
        out = []
        for sink in self.sinks():
            down = sink.down_for_s()
            behind = lag.get(sink.name, 0.0)
            if down > limit:
                why = sink.last_error or "connecting"
                out.append(f"sink {sink.name}: not connected for {down:.0f} s ({why})")
            elif behind > limit:
                out.append(f"sink {sink.name}: {behind:.0f} s behind (over {limit:g} s)")
        return out

    def _equipment_problems(self) -> list[str]:
        """At least ``health_max_down_fraction`` of the polled equipment gives no readings
        (its last poll failed; one not polled yet is not counted)."""
        polled = list(self._equipment)
        down = sorted(
            eq
            for eq in polled
            if self.metrics.equipment_up.value(eq) == 0.0 and self.monitor.state(eq).errors
        )
        if polled and down and len(down) >= self.config.http.health_max_down_fraction * len(polled):
            return [f"{len(down)} of {len(polled)} equipment give no readings: {', '.join(down)}"]
        return []

    def gateway_status(self) -> dict[str, Any]:
        return {
            "state": "online",
            "gateway": self.config.gateway.id,
            "site": self.config.gateway.site,
            "equipment": sorted(e.id for e in self.config.equipment),
            "started": rfc3339(self._started_at),
            "registry": self._registry_summary(files=False),
        }

    def _registry_summary(self, *, files: bool) -> dict[str, Any] | None:
        rev = self.registry_revision
        if rev is None:
            return None
        out = rev.to_json()
        if not files:
            out.pop("files")
        return out

    def status(self) -> dict[str, Any]:
        """``GET /status``: the gateway, every equipment's state, the outbox and sinks."""
        from gateway import eventloop

        healthy, reasons = self.health()
        out: dict[str, Any] = {
            "gateway": {
                "id": self.config.gateway.id,
                "site": self.config.gateway.site,
                "version": _version(),
                "started": rfc3339(self._started_at),
                "uptime_s": round(time.monotonic() - self._started_mono, 3),
                "healthy": healthy,
                "problems": reasons,
                "event_loop": eventloop.name(asyncio.get_running_loop()),
                "registry": self._registry_summary(files=True),
                "last_reload": self.last_reload,
            },
            "equipment": {k: self.monitor.state(k).summary() for k in sorted(self._equipment)},
            "sinks": self._sinks_status(),
            "events": [_event_json(e) for e in self.recent_events],
        }
        if self.outbox is not None:
            s = self.outbox.stats()
            out["outbox"] = {
                "depth": s.depth, "lag_s": s.lag_s, "dropped": s.dropped,
                "committed": s.committed, "bytes": s.rows_bytes,
            }  # fmt: skip
        for sink in self.extra_sinks:
            summary = sink.summary()
            if summary is not None:
                out[sink.name] = summary
        return out

    def _sinks_status(self) -> dict[str, Any]:
        stats = self.outbox.stats() if self.outbox is not None else None
        return {
            s.name: {
                "connected": s.connected,
                "down_s": round(s.down_for_s(), 3),
                "lag_s": stats.lag_s.get(s.name) if stats is not None else None,
                "depth": stats.depth.get(s.name) if stats is not None else None,
                "delivered": s.delivered,
                "failures": s.failures,
                "last_error": s.last_error,
            }
            for s in self.sinks()
        }

    def _register_scrape_hooks(self) -> None:
        def delivery() -> None:
            if self.outbox is not None:
                self.metrics.observe_delivery(self.outbox.stats(), self.sinks())

        self.metrics.on_scrape(delivery)

    def _freeze_heap(self, *, collect: bool = False) -> None:
        """Move what lives as long as the service (modules, config, registry, drivers)
        out of the cyclic collector's reach (``gc.freeze``): full collections that scan it
        all stall the event loop and miss polls at high rates (bench/README.md)."""
        if collect:
            gc.unfreeze()
            gc.collect()
        gc.freeze()
        self._frozen = True

    # -- reload ---------------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: re-read config and registry; keep polling what did not change.

        A bad config or registry is refused (logged with every error) and the running
        one kept. New certificates apply from the next reading; added equipment starts,
        removed equipment stops, changed equipment restarts.
        """
        from gateway import sdnotify

        assert self._reload_lock is not None
        async with self._reload_lock:
            sdnotify.reloading()
            try:
                config, registry = load_everything(self.config.path, strict=self.strict)
            except ConfigError as exc:
                for line in exc.errors:
                    log.error("reload refused: %s", line)
                self._reload_refused(exc.errors)
                sdnotify.ready()
                return
            for line in registry.problems:  # entries of equipment not polled: left out
                log.warning("reload: registry entry left out: %s", line)
            for line in config.warnings:
                log.warning("reload: %s", line)
            self.pipeline.swap_registry(registry)
            new = {e.id: e for e in config.equipment}
            for eq_id, (_, entry, _) in list(self._equipment.items()):
                if eq_id not in new or new[eq_id].driver != entry.driver:
                    await self._stop_equipment(eq_id)
                    if eq_id not in new:
                        self._forget_equipment(eq_id)
            for name in _needs_restart(self.config, config):
                log.warning("reload: %s changed; it applies at the next restart", name)
            self.config = _replace_equipment(self.config, config)
            self._clear_retained_of_removed()  # removed ones were cleared above; remembers
            self._registry_loaded(reload=True)
            for eq_id, entry in new.items():
                if eq_id not in self._equipment:
                    self._start_equipment(entry)
            self.check_calibration()
            if self.mqtt is not None:  # the retained gateway status lists the equipment
                self.mqtt.publish_gateway_status(self.gateway_status())
            log.info("reloaded: %d equipment", len(self._equipment))
            self.last_reload = {"at": rfc3339(self.clock()), "result": "applied", "errors": []}
            if self._frozen:  # the old config and registry go; the new ones are frozen
                self._freeze_heap(collect=True)
            sdnotify.ready()

    def _reload_refused(self, errors: Sequence[str]) -> None:
        """A refused reload is told where the operator looks (MQTT, the console, /status),
        not only in the journal: the running config and registry are kept."""
        from gateway.model import Event
        from gateway.outbox import DROP_EQUIPMENT

        at = self.clock()
        self.last_reload = {"at": rfc3339(at), "result": "refused", "errors": list(errors)}
        n = len(errors)
        first = errors[0] if errors else "no error listed"
        self.results.emit(
            [
                Event(
                    type="reload_refused",
                    severity="warning",
                    equipment=DROP_EQUIPMENT,
                    message=f"reload refused, {n} error{'s' if n != 1 else ''} (the running "
                    f"config and registry are kept): {first}",
                    t_wall=at,
                    detail={"errors": list(errors)},
                )
            ]
        )

    def _registry_loaded(self, *, reload: bool) -> None:
        """``registry_loaded`` with the registry's digests (and git commit), then the events
        its changes since the registry applied last owe the readings already made, once
        (:mod:`gateway.registry_watch`; the last one is remembered in the state directory,
        so a restart after a registry change tells as a reload does)."""
        from gateway.config import configured_channels
        from gateway.registry_watch import (
            changes,
            load_memory,
            loaded_event,
            memory_of,
            revision_of,
            save_memory,
        )

        reg = self.registry
        if reg is None:
            return
        at = self.clock()
        self.registry_revision = rev = revision_of(self.config.registry_dir)
        events = [loaded_event(rev, at, reload=reload)]
        path = self.config.state_dir / "registry-memory.json"
        old = load_memory(path)
        if old is not None:
            polled = []
            for entry in self.config.equipment:
                eq = reg.equipment(entry.id)
                names = set(eq.channel_names) if eq is not None else set()
                polled += [(entry.id, ch) for ch, _ in configured_channels(entry, names)]
            events += changes(old, reg, polled, config=self.config.path, at=at)
        self.results.emit(events)
        if self.outbox is not None:
            self.outbox.commit()  # the events are kept before the memory moves on
        try:
            save_memory(path, memory_of(reg))
        except OSError as exc:
            log.error("%s: cannot keep the registry's memory: %s", path, exc)

    def _clear_retained_of_removed(self) -> None:
        """The retained statuses of equipment a previous run published and this config no
        longer has are deleted (they would say "online" for ever); the ids this config
        publishes are remembered in the state directory for the next start."""
        path = self.config.state_dir / "retained-status.json"
        ids = sorted(e.id for e in self.config.equipment)
        try:
            before = set(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            before = set()
        if self.mqtt is not None:
            for eq_id in sorted(before - set(ids)):
                log.info("%s: no longer configured; its retained status is deleted", eq_id)
                self.mqtt.clear_status(eq_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ids), encoding="utf-8")
        tmp.replace(path)

    def _forget_equipment(self, eq_id: str) -> None:
        """An equipment left the config: its state, metric series and retained status go."""
        self.results.forget(eq_id)
        log.info("%s: removed from the config; no longer polled", eq_id)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("calgate")
    except PackageNotFoundError:
        return "unknown"


def _event_json(e: Event) -> dict[str, Any]:
    """An event as /status lists it: its MQTT payload without the seq (events reach the
    listeners with their content, not their outbox row)."""
    from gateway.wire import json_safe

    payload: dict[str, Any] = json_safe(e.payload(0))
    payload.pop("seq", None)
    return payload


def _replace_equipment(old: Config, new: Config) -> Config:
    """The running config with the new equipment list and registry (sinks stay as started)."""
    from dataclasses import replace

    return replace(
        old,
        equipment=new.equipment,
        gateway=old.gateway.model_copy(
            update={
                "registry": new.gateway.registry,
                "status_interval_s": new.gateway.status_interval_s,
                "backoff_min_s": new.gateway.backoff_min_s,
                "backoff_max_s": new.gateway.backoff_max_s,
            }
        ),
    )


def _needs_restart(old: Config, new: Config) -> list[str]:
    """The settings a reload does not apply (sinks, HTTP, outbox, identity), when changed."""
    out = [f"[{name}]" for name in ("mqtt", "influxdb", "http", "outbox")
           if getattr(old, name) != getattr(new, name)]  # fmt: skip
    out += [f"gateway.{key}" for key in ("id", "site", "state_dir")
            if getattr(old.gateway, key) != getattr(new.gateway, key)]  # fmt: skip
    return out
