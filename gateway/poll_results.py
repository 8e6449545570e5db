"""What becomes of a poll's result: the gateway's glue between the supervisors and the rest.

:class:`PollResults` is the :class:`~gateway.scheduler.PollHooks` of every supervisor. A
poll's readings are corrected (:class:`~gateway.pipeline.Pipeline`), judged
(:class:`~gateway.monitor.Monitor`), counted (:class:`~gateway.metrics.Metrics`) and
added to the outbox; a failed poll becomes a metric, maybe a transition. Transitions are
events (added to the outbox, logged, handed to listeners such as the demo's live table),
and an equipment's retained MQTT status is published again when what it shows changed.
The calibration watch goes through the same path (:meth:`PollResults.calibration`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from drivers.base import Reading
from drivers.errors import DeviceError, DriverError, FrameError
from gateway.wire import rfc3339

if TYPE_CHECKING:
    from calibration import Limits
    from gateway.metrics import Metrics
    from gateway.model import Event
    from gateway.monitor import Monitor
    from gateway.outbox import Outbox
    from gateway.pipeline import Pipeline
    from gateway.sinks.mqtt import MqttSink

__all__ = ["EventListener", "PollResults"]

log = logging.getLogger(__name__)

#: Called with the events of one transition (or one calibration check), after the outbox.
EventListener = Callable[["list[Event]"], None]


class PollResults:
    """The supervisors' hooks: readings into the outbox, failures and transitions into
    events, metrics and the retained equipment status.

    :attr:`outbox` (and :attr:`mqtt`, when there is a broker) are set by the service once
    they exist, before the first poll.
    """

    outbox: Outbox

    def __init__(self, pipeline: Pipeline, monitor: Monitor, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.monitor = monitor
        self.metrics = metrics
        self.mqtt: MqttSink | None = None
        self.listeners: list[EventListener] = []
        self._published: dict[str, int] = {}  # EquipmentState.version last published
        self._limits_of = self._limits  # bound once: the monitor gets it on every poll

    # -- PollHooks ------------------------------------------------------------------------

    def readings(self, equipment: str, readings: list[Reading], latency_s: float) -> None:
        events = self.monitor.answered(equipment)
        ms = self.pipeline.process(readings)
        events += self.monitor.measurements(ms, self._limits_of, self.outbox.next_seq)
        self.metrics.observe_poll(
            equipment, latency_s, [(x.reading.channel, x.quality) for x in ms]
        )
        self.outbox.add(ms)
        if events:
            self.emit(events)
        self.publish_status(equipment)

    def failure(self, equipment: str, error: DriverError) -> None:
        from gateway.scheduler import classify

        kind = classify(error)
        self.metrics.observe_failure(equipment, kind)
        if kind in ("connect", "timeout"):
            events = self.monitor.offline(equipment, error)
        elif isinstance(error, DeviceError):
            # It answers, but with an error: not "online" (that takes a good reading)
            events = self.monitor.device_error(equipment, error, error.code)
        else:
            assert isinstance(error, FrameError | DriverError)
            self.monitor.frame_error(equipment, error)
            events = []
        log.debug("%s: %s", equipment, error)
        if events:
            self.emit(events)
        self.publish_status(equipment)

    def missed(self, equipment: str, count: int) -> None:
        self.metrics.missed_deadlines.inc(equipment, amount=float(count))

    # -- events, status, calibration -----------------------------------------------------

    def emit(self, events: list[Event]) -> None:
        """Events into the outbox, the log and every listener."""
        self.outbox.add(events)
        for e in events:
            log.info("event %s: %s", e.type, e.message)
        for listener in self.listeners:
            listener(events)

    def crashed(self, equipment: str, error: BaseException) -> None:
        """An equipment's supervisor ended on a bug: it is offline until restarted."""
        self.monitor.offline(equipment, error)
        self.publish_status(equipment)

    def publish_status(self, equipment: str) -> None:
        """The retained status of ``equipment``, when what it shows changed since the last."""
        st = self.monitor.state(equipment)
        if self._published.get(equipment) == st.version:
            return
        self._published[equipment] = st.version
        if self.mqtt is not None:
            self.mqtt.publish_status(equipment, self._status_payload(equipment))

    def publish_stopped(self, equipment: Iterable[str]) -> None:
        """A clean stop: each retained status says ``offline`` (nobody polls it now),
        not the last connection state, which would stay "online" for ever."""
        if self.mqtt is None:
            return
        for eq_id in equipment:
            payload = self._status_payload(eq_id)
            payload["connection"] = "offline"
            payload["last_error"] = "gateway stopped"
            self.mqtt.publish_status(eq_id, payload)

    def _status_payload(self, equipment: str) -> dict[str, Any]:
        payload = self.monitor.state(equipment).summary()
        payload.pop("channels", None)
        if self.mqtt is not None:  # whose it is: the gateway's status (and will) says if it runs
            payload["gateway"] = self.mqtt.gateway_id
        payload["ts"] = rfc3339(datetime.now(UTC))
        return payload

    def calibration(
        self, equipment: Iterable[str], at: datetime, *, quiet: Collection[str] = ()
    ) -> None:
        """Re-evaluate the calibration status of ``equipment`` at ``at`` (a due date may
        have passed, a new certificate been loaded). Equipment in ``quiet`` is never
        calibrated (listed ``uncalibrated``): no ``calibration_missing`` for it."""
        reg = self.pipeline.registry
        if reg is None:
            return
        events: list[Event] = []
        for eq_id in equipment:
            if reg.equipment(eq_id) is None:
                continue
            state = reg.state(eq_id, at)
            news = self.monitor.calibration(eq_id, state)
            if eq_id in quiet:
                news = [e for e in news if e.type != "calibration_missing"]
            events += news
            days = (state.due - at.date()).days if state.due else None
            self.metrics.set_calibration(eq_id, state.status, days)
            self.publish_status(eq_id)
        if events:
            self.emit(events)

    def forget(self, equipment: str) -> None:
        """``equipment`` left the config: its state, metric series and retained status go."""
        self.monitor.forget(equipment)
        self.metrics.forget_equipment(equipment)
        self._published.pop(equipment, None)
        if self.mqtt is not None:
            self.mqtt.clear_status(equipment)

    def _limits(self, equipment: str, channel: str) -> Limits | None:
        reg = self.pipeline.registry
        eq = reg.equipment(equipment) if reg is not None else None
        if eq is None:
            return None
        ch = next((c for c in eq.channels if c.name == channel), None)
        return ch.limits if ch is not None else None
