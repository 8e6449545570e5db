"""A small, fast metrics registry with Prometheus text exposition (format 0.0.4).

Hot-path cost is what matters here: the gateway counts every poll and every reading. A
labelled child is a slotted object with one float, cached per label tuple, so
``metrics.polls.inc("BAL-01")`` is one dict lookup and one float add (no lock, no string
work). Values are rendered only when ``/metrics`` is scraped. Gauges that mirror other
components' state (outbox depth, sink lag) are pulled at scrape time, through
:meth:`Gauge.set_function` on a child or :meth:`Metrics.on_scrape` hooks.

Update metrics from the event loop's thread only (the gateway is single-threaded): a
counter add is not atomic across threads.

Not ``prometheus_client``: its updates take a lock and cost several times as much per
call (bench/README.md), and this module needs no dependency.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

from calibration import CALIBRATION_STATUSES  # one series each in calgate_calibration_status

if TYPE_CHECKING:
    from gateway.outbox import OutboxStats
    from gateway.sinks.base import Sink

__all__ = [
    "CALIBRATION_STATUSES",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS_S",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Metric",
    "Metrics",
    "MetricsRegistry",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


#: Poll latency buckets: a Modbus TCP poll is ~1 ms, a serial balance ~50-500 ms.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _fmt(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:  # NaN
        return "NaN"
    return repr(float(v))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_str(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_value(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class CounterChild:
    """One labelled series of a counter: ``inc()`` adds; it never goes down."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    """One labelled series of a gauge: set directly, or read from a function at scrape."""

    __slots__ = ("fn", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.fn: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set_function(self, fn: Callable[[], float] | None) -> None:
        """Read the value from ``fn`` at each scrape (``None`` goes back to ``set``)."""
        self.fn = fn

    def get(self) -> float:
        fn = self.fn
        return float(fn()) if fn is not None else self.value


class HistogramChild:
    """One labelled series of a histogram: per-bucket counts, sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


class Metric(Generic[C]):
    """A named family of series, one child per tuple of label values."""

    kind: ClassVar[str]

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} of {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names of {name}: {labelnames}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        """The child of these label values (created on first use, then cached).

        Keep the child when a series is updated in a loop: ``child.inc()`` is the cheapest
        update there is.
        """
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(
                    f"{self.name} takes labels {self.labelnames}, got {len(values)} value(s)"
                )
            child = self._children[tuple(str(v) for v in values)] = self._new_child()
        return child

    def remove(self, *values: str) -> None:
        """Forget one series (an equipment removed on reload)."""
        self._children.pop(values, None)

    def remove_matching(self, label: str, value: str) -> None:
        """Forget every series whose ``label`` is ``value``."""
        i = self.labelnames.index(label)
        for key in [k for k in self._children if k[i] == value]:
            del self._children[key]

    def clear(self) -> None:
        self._children.clear()

    def series(self) -> dict[tuple[str, ...], C]:
        """A copy of the children by label values (for tests and /status)."""
        return dict(self._children)

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        self._render_samples(out)

    def _render_samples(self, out: list[str]) -> None:
        raise NotImplementedError


class Counter(Metric[CounterChild]):
    """A monotonically increasing count (name it ``..._total``)."""

    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series of these label values."""
        child = self._children.get(labels)
        if child is None:
            child = self.labels(*labels)
        child.value += amount

    def value(self, *labels: str) -> float:
        child = self._children.get(labels)
        return child.value if child is not None else 0.0

    def _render_samples(self, out: list[str]) -> None:
        names = self.labelnames
        for values, child in list(self._children.items()):
            out.append(f"{self.name}{_label_str(names, values)} {_fmt(child.value)}")


class Gauge(Metric[GaugeChild]):
    """A value that goes up and down, set directly or pulled at scrape time."""

    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, *labels: str, value: float) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self.labels(*labels)
        child.value = value

    def value(self, *labels: str) -> float:
        child = self._children.get(labels)
        return child.get() if child is not None else 0.0

    def _render_samples(self, out: list[str]) -> None:
        names = self.labelnames
        for values, child in list(self._children.items()):
            try:
                v = child.get()
            except Exception:
                log.warning("gauge function of %s%s failed", self.name, values, exc_info=True)
                continue
            out.append(f"{self.name}{_label_str(names, values)} {_fmt(v)}")


class Histogram(Metric[HistogramChild]):
    """Observations counted into cumulative ``le`` buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved in histograms")
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and non-empty: {buckets}")
        super().__init__(name, help, labelnames)
        self.bounds = bounds
        self._le = tuple(f'le="{_fmt(b)}"' for b in (*bounds, math.inf))

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, *labels: str, value: float) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self.labels(*labels)
        child.observe(value)

    def _render_samples(self, out: list[str]) -> None:
        names = self.labelnames
        for values, child in list(self._children.items()):
            acc = 0
            for le, n in zip(self._le, child.counts, strict=True):
                acc += n
                out.append(f"{self.name}_bucket{_label_str(names, values, le)} {acc}")
            labels = _label_str(names, values)
            out.append(f"{self.name}_sum{labels} {_fmt(child.sum)}")
            out.append(f"{self.name}_count{labels} {child.count}")


class MetricsRegistry:
    """Metrics by name, scrape hooks, and the text exposition of all of them."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric[Any]] = {}
        self._hooks: list[Callable[[], None]] = []

    def _add(self, metric: Metric[C]) -> Metric[C]:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        m = Counter(name, help, labelnames)
        self._add(m)
        return m

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        m = Gauge(name, help, labelnames)
        self._add(m)
        return m

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        m = Histogram(name, help, labelnames, buckets=buckets)
        self._add(m)
        return m

    def get(self, name: str) -> Metric[Any]:
        return self._metrics[name]

    def names(self) -> list[str]:
        return list(self._metrics)

    def on_scrape(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` before each scrape (to pull outbox stats into gauges).

        A hook that raises is logged and the scrape goes on. Returns ``hook``, so it can
        be used as a decorator; :meth:`remove_hook` takes it away.
        """
        self._hooks.append(hook)
        return hook

    def remove_hook(self, hook: Callable[[], None]) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)

    def collect(self) -> Iterator[Metric[Any]]:
        for hook in list(self._hooks):
            try:
                hook()
            except Exception:
                log.warning("metrics scrape hook %r failed", hook, exc_info=True)
        yield from list(self._metrics.values())

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        out: list[str] = []
        for metric in self.collect():
            metric.render(out)
        out.append("")
        return "\n".join(out)


class _PollSeries(NamedTuple):
    """The series :meth:`Metrics.observe_poll` updates for one equipment."""

    polls: CounterChild
    latency: HistogramChild
    up: GaugeChild
    readings: dict[tuple[str, str], CounterChild]  # by (channel, quality)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("calgate")
    except Exception:
        return "unknown"


class Metrics(MetricsRegistry):
    """The gateway's metrics, one attribute per family (labels in brackets).

    - ``polls``: ``calgate_polls_total`` counter [equipment]
    - ``poll_errors``: ``calgate_poll_errors_total`` counter [equipment, kind]
    - ``poll_latency``: ``calgate_poll_latency_seconds`` histogram [equipment]
    - ``missed_deadlines``: ``calgate_missed_deadlines_total`` counter [equipment]
    - ``readings``: ``calgate_readings_total`` counter [equipment, channel, quality]
    - ``outbox_depth``: ``calgate_outbox_depth`` gauge [sink]
    - ``outbox_dropped``: ``calgate_outbox_dropped_total`` counter []
    - ``sink_lag``: ``calgate_sink_lag_seconds`` gauge [sink]
    - ``sink_sent``: ``calgate_sink_sent_total`` counter [sink]
    - ``sink_errors``: ``calgate_sink_errors_total`` counter [sink]
    - ``equipment_up``: ``calgate_equipment_up`` gauge [equipment]
    - ``calibration_status``: ``calgate_calibration_status`` gauge [equipment, status],
      one-hot through :meth:`set_calibration`
    - ``calibration_days_until_due``: ``calgate_calibration_days_until_due`` gauge [equipment]
    - ``build_info``: ``calgate_build_info`` gauge [version, python], always 1
    - ``start_time``: ``calgate_start_time_seconds`` gauge []
    - ``process_cpu`` / ``process_rss``: ``process_cpu_seconds_total``,
      ``process_resident_memory_bytes``, read at scrape time
    """

    def __init__(self, *, version: str | None = None) -> None:
        super().__init__()
        self.polls = self.counter(
            "calgate_polls_total", "Polls attempted, per equipment.", ["equipment"]
        )
        self.poll_errors = self.counter(
            "calgate_poll_errors_total",
            "Failed polls, per equipment and kind of error (connect, timeout, frame, device).",
            ["equipment", "kind"],
        )
        self.poll_latency = self.histogram(
            "calgate_poll_latency_seconds",
            "Time from sending a poll to having its readings.",
            ["equipment"],
        )
        self.missed_deadlines = self.counter(
            "calgate_missed_deadlines_total",
            "Poll deadlines skipped because the previous poll overran.",
            ["equipment"],
        )
        self.readings = self.counter(
            "calgate_readings_total",
            "Readings acquired, per equipment, channel and quality.",
            ["equipment", "channel", "quality"],
        )
        self.outbox_depth = self.gauge(
            "calgate_outbox_depth", "Rows in the outbox not yet delivered to a sink.", ["sink"]
        )
        self.outbox_dropped = self.counter(
            "calgate_outbox_dropped_total",
            "Rows the bounded outbox dropped (oldest first) before delivery.",
        )
        self.sink_lag = self.gauge(
            "calgate_sink_lag_seconds",
            "Age of the oldest undelivered row of a sink (0 when caught up).",
            ["sink"],
        )
        self.sink_sent = self.counter(
            "calgate_sink_sent_total", "Rows delivered and acknowledged, per sink.", ["sink"]
        )
        self.sink_errors = self.counter(
            "calgate_sink_errors_total", "Failed deliveries (batches), per sink.", ["sink"]
        )
        self.equipment_up = self.gauge(
            "calgate_equipment_up", "1 when the equipment's last poll succeeded.", ["equipment"]
        )
        self.calibration_status = self.gauge(
            "calgate_calibration_status",
            "1 for the equipment's current calibration status, 0 for the others.",
            ["equipment", "status"],
        )
        self.calibration_days_until_due = self.gauge(
            "calgate_calibration_days_until_due",
            "Days until the certificate in force is due (negative when expired).",
            ["equipment"],
        )
        self.build_info = self.gauge(
            "calgate_build_info", "Always 1; the labels tell the build.", ["version", "python"]
        )
        self.build_info.labels(version or _version(), platform.python_version()).set(1.0)
        self.start_time = self.gauge(
            "calgate_start_time_seconds", "Start time of the gateway, Unix epoch seconds."
        )
        self.start_time.labels().set(time.time())
        self.process_cpu = self.counter(
            "process_cpu_seconds_total", "User and system CPU time of this process."
        )
        self.process_rss = self.gauge(
            "process_resident_memory_bytes", "Resident memory of this process."
        )
        self.on_scrape(self._process_stats)
        self._poll_series: dict[str, _PollSeries] = {}  # observe_poll's, per equipment

    def _process_stats(self) -> None:
        t = os.times()
        self.process_cpu.labels().value = t.user + t.system
        try:
            with open("/proc/self/statm", "rb") as f:
                rss_pages = int(f.read().split()[1])
            self.process_rss.labels().set(float(rss_pages * os.sysconf("SC_PAGE_SIZE")))
        except (OSError, ValueError, IndexError):
            pass

    def set_calibration(
        self, equipment: str, status: str, days_until_due: float | None = None
    ) -> None:
        """Mark ``status`` 1 and every other status 0; set days until due (if known)."""
        for s in CALIBRATION_STATUSES:
            self.calibration_status.labels(equipment, s).value = 1.0 if s == status else 0.0
        if status not in CALIBRATION_STATUSES:
            self.calibration_status.labels(equipment, status).value = 1.0
        if days_until_due is None:
            self.calibration_days_until_due.remove(equipment)
        else:
            self.calibration_days_until_due.labels(equipment).value = float(days_until_due)

    def forget_equipment(self, equipment: str) -> None:
        """Drop every series of an equipment (it left the config on reload)."""
        self._poll_series.pop(equipment, None)
        for metric in (
            self.polls,
            self.poll_errors,
            self.poll_latency,
            self.missed_deadlines,
            self.readings,
            self.equipment_up,
            self.calibration_status,
            self.calibration_days_until_due,
        ):
            metric.remove_matching("equipment", equipment)

    def observe_poll(
        self, equipment: str, latency_s: float, readings: Iterable[tuple[str, str]] = ()
    ) -> None:
        """One successful poll: count it, its latency, ``(channel, quality)`` of each
        reading, and mark the equipment up. Called for every poll, so the equipment's
        series are looked up once and kept (:meth:`forget_equipment` drops them)."""
        children = self._poll_series.get(equipment)
        if children is None:
            children = self._poll_series[equipment] = _PollSeries(
                self.polls.labels(equipment),
                self.poll_latency.labels(equipment),
                self.equipment_up.labels(equipment),
                {},
            )
        polls, latency, up, by_reading = children
        polls.value += 1.0
        latency.observe(latency_s)
        up.value = 1.0
        for key in readings:
            child = by_reading.get(key)
            if child is None:
                child = by_reading[key] = self.readings.labels(equipment, *key)
            child.value += 1.0

    def observe_delivery(self, stats: OutboxStats, sinks: Iterable[Sink]) -> None:
        """The outbox's depth, sink lag and drops, and each sink's delivered and failed
        counts (a scrape hook: the outbox and sinks keep their own numbers)."""
        for sink, depth in stats.depth.items():
            self.outbox_depth.set(sink, value=float(depth))
        for sink, lag in stats.lag_s.items():
            self.sink_lag.set(sink, value=float(lag))
        self.outbox_dropped.labels().value = float(stats.dropped)
        for s in sinks:
            self.sink_sent.labels(s.name).value = float(s.delivered)
            self.sink_errors.labels(s.name).value = float(s.failures)

    def observe_failure(self, equipment: str, kind: str) -> None:
        """One failed poll of this kind (connect, timeout, frame, device, ...): the
        equipment is down until a poll succeeds (an instrument that answers every poll
        with an exception gives no data either)."""
        self.polls.inc(equipment)
        self.poll_errors.inc(equipment, kind)
        self.equipment_up.set(equipment, value=0.0)

    def declare_equipment(self, equipment: str) -> None:
        """An equipment starts: its ``calgate_equipment_up`` series exists from now (0
        until a poll succeeds), so an alert on ``up == 0`` fires for one that never did."""
        self.equipment_up.labels(equipment)
