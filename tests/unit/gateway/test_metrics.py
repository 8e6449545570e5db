"""The metrics registry and its Prometheus text exposition."""

from __future__ import annotations

import math
import re

import pytest

from gateway.metrics import CALIBRATION_STATUSES, Metrics, MetricsRegistry

# One sample line of the text format 0.0.4: name, optional {labels}, value.
SAMPLE_RE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? (?P<value>\S+)$'
)
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[tuple[str, frozenset[tuple[str, str]]], float], dict[str, str]]:
    """Samples by (name, labels) and TYPE by family; fails on any malformed line."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"malformed sample line: {line!r}"
        labels = frozenset(LABEL_RE.findall(m["labels"] or ""))
        key = (m["name"], labels)
        assert key not in samples, f"duplicate series {key}"
        samples[key] = float(m["value"])
    return samples, types


def L(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


def test_required_families_are_exposed_with_their_types() -> None:
    m = Metrics(version="9.9.9")
    _, types = parse(m.render())
    assert types == {
        "calgate_polls_total": "counter",
        "calgate_poll_errors_total": "counter",
        "calgate_poll_latency_seconds": "histogram",
        "calgate_missed_deadlines_total": "counter",
        "calgate_readings_total": "counter",
        "calgate_outbox_depth": "gauge",
        "calgate_outbox_dropped_total": "counter",
        "calgate_sink_lag_seconds": "gauge",
        "calgate_sink_sent_total": "counter",
        "calgate_sink_errors_total": "counter",
        "calgate_equipment_up": "gauge",
        "calgate_calibration_status": "gauge",
        "calgate_calibration_days_until_due": "gauge",
        "calgate_build_info": "gauge",
        "calgate_start_time_seconds": "gauge",
        "process_cpu_seconds_total": "counter",
        "process_resident_memory_bytes": "gauge",
    }
    samples, _ = parse(m.render())
    build = [k for k in samples if k[0] == "calgate_build_info"]
    assert len(build) == 1
    assert ("version", "9.9.9") in build[0][1]
    assert samples[build[0]] == 1.0
    assert samples[("process_resident_memory_bytes", L())] > 0


def test_counters_count_per_label_set() -> None:
    m = Metrics()
    for _ in range(3):
        m.polls.inc("BAL-01")
    m.polls.inc("PT-101", amount=2)
    child = m.readings.labels("BAL-01", "mass", "good")
    child.inc()
    child.inc()
    m.readings.inc("BAL-01", "mass", "bad")
    m.poll_errors.inc("PT-101", "timeout")
    m.outbox_dropped.inc(amount=5)
    samples, _ = parse(m.render())
    assert samples[("calgate_polls_total", L(equipment="BAL-01"))] == 3
    assert samples[("calgate_polls_total", L(equipment="PT-101"))] == 2
    assert (
        samples[("calgate_readings_total", L(equipment="BAL-01", channel="mass", quality="good"))]
        == 2
    )
    assert (
        samples[("calgate_readings_total", L(equipment="BAL-01", channel="mass", quality="bad"))]
        == 1
    )
    assert samples[("calgate_poll_errors_total", L(equipment="PT-101", kind="timeout"))] == 1
    assert samples[("calgate_outbox_dropped_total", L())] == 5
    assert m.polls.value("BAL-01") == 3
    assert m.polls.value("nobody") == 0


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    m = Metrics()
    for v in (0.0005, 0.001, 0.003, 0.2, 20.0):
        m.poll_latency.observe("BAL-01", value=v)
    samples, _ = parse(m.render())

    def bucket(le: str) -> float:
        return samples[("calgate_poll_latency_seconds_bucket", L(equipment="BAL-01", le=le))]

    assert bucket("0.001") == 2  # le is inclusive: 0.001 falls in the 0.001 bucket
    assert bucket("0.0025") == 2
    assert bucket("0.005") == 3
    assert bucket("0.25") == 4
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    assert samples[("calgate_poll_latency_seconds_count", L(equipment="BAL-01"))] == 5
    assert math.isclose(
        samples[("calgate_poll_latency_seconds_sum", L(equipment="BAL-01"))], 20.2045
    )
    les = [
        float(dict(k[1])["le"]) for k in samples if k[0] == "calgate_poll_latency_seconds_bucket"
    ]
    assert les == sorted(les)


def test_observe_poll_and_failure_helpers() -> None:
    m = Metrics()
    m.observe_poll("PT-101", 0.002, [("pressure", "good"), ("temperature", "uncertain")])
    assert m.equipment_up.value("PT-101") == 1.0
    # every failed poll is down (the help says "last poll succeeded"): a garbled frame
    # or a device error gives no data, and an instrument that answers only with
    # exceptions must trip an up == 0 alert
    for kind in ("frame", "device", "connect"):
        m.observe_poll("PT-101", 0.002)
        m.observe_failure("PT-101", kind)
        assert m.equipment_up.value("PT-101") == 0.0, kind
    assert m.polls.value("PT-101") == 7
    assert m.readings.value("PT-101", "temperature", "uncertain") == 1
    assert m.poll_errors.value("PT-101", "connect") == 1


def test_calibration_status_is_one_hot_and_forget_equipment_drops_series() -> None:
    m = Metrics()
    m.set_calibration("BAL-01", "due_soon", 12)
    m.set_calibration("BAL-01", "expired", -3)
    m.observe_poll("BAL-01", 0.1, [("mass", "good")])
    m.observe_poll("PT-101", 0.1, [("pressure", "good")])
    samples, _ = parse(m.render())
    status = {
        dict(k[1])["status"]: v
        for k, v in samples.items()
        if k[0] == "calgate_calibration_status" and ("equipment", "BAL-01") in k[1]
    }
    assert status == {s: (1.0 if s == "expired" else 0.0) for s in CALIBRATION_STATUSES}
    assert samples[("calgate_calibration_days_until_due", L(equipment="BAL-01"))] == -3

    m.forget_equipment("BAL-01")
    samples, _ = parse(m.render())
    assert not [k for k in samples if ("equipment", "BAL-01") in k[1]]
    assert samples[("calgate_polls_total", L(equipment="PT-101"))] == 1

    # an equipment that comes back (a reload adds it again) is counted from zero
    m.observe_poll("BAL-01", 0.1, [("mass", "good")])
    samples, _ = parse(m.render())
    assert samples[("calgate_polls_total", L(equipment="BAL-01"))] == 1
    assert (
        samples[("calgate_readings_total", L(equipment="BAL-01", channel="mass", quality="good"))]
        == 1
    )
    assert samples[("calgate_equipment_up", L(equipment="BAL-01"))] == 1


def test_scrape_time_functions_and_hooks() -> None:
    m = Metrics()
    depth = {"mqtt": 7, "influxdb": 0}
    calls = 0

    def pull() -> None:
        nonlocal calls
        calls += 1
        for sink, n in depth.items():
            m.outbox_depth.set(sink, value=n)

    m.on_scrape(pull)
    m.sink_lag.labels("mqtt").set_function(lambda: 1.5)
    assert calls == 0  # nothing is pulled until a scrape
    samples, _ = parse(m.render())
    assert calls == 1
    assert samples[("calgate_outbox_depth", L(sink="mqtt"))] == 7
    assert samples[("calgate_sink_lag_seconds", L(sink="mqtt"))] == 1.5
    depth["mqtt"] = 0
    samples, _ = parse(m.render())
    assert samples[("calgate_outbox_depth", L(sink="mqtt"))] == 0


def test_failing_hook_or_function_does_not_break_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()

    def broken() -> None:
        raise RuntimeError("outbox closed")

    m.on_scrape(broken)
    m.sink_lag.labels("influxdb").set_function(lambda: 1 / 0)
    m.polls.inc("BAL-01")
    samples, _ = parse(m.render())
    assert samples[("calgate_polls_total", L(equipment="BAL-01"))] == 1
    assert ("calgate_sink_lag_seconds", L(sink="influxdb")) not in samples
    assert "outbox closed" in caplog.text or "scrape hook" in caplog.text
    m.remove_hook(broken)


def test_label_values_are_escaped() -> None:
    r = MetricsRegistry()
    c = r.counter("x_total", "help with \\ and\nnewline", ["name"])
    c.inc('we"ird\\va\nlue')
    text = r.render()
    assert "# HELP x_total help with \\\\ and\\nnewline" in text
    samples, _ = parse(text)
    ((key, value),) = samples.items()
    assert dict(key[1])["name"] == 'we\\"ird\\\\va\\nlue'
    assert value == 1


def test_special_float_values() -> None:
    r = MetricsRegistry()
    g = r.gauge("g", "a gauge", ["k"])
    g.set("a", value=math.inf)
    g.set("b", value=-math.inf)
    g.set("c", value=math.nan)
    text = r.render()
    assert 'g{k="a"} +Inf' in text
    assert 'g{k="b"} -Inf' in text
    assert 'g{k="c"} NaN' in text


def test_misuse_is_refused() -> None:
    r = MetricsRegistry()
    r.counter("a_total", "a", ["x"])
    with pytest.raises(ValueError, match="already registered"):
        r.counter("a_total", "a again")
    with pytest.raises(ValueError, match="invalid metric name"):
        r.gauge("bad-name", "dash")
    with pytest.raises(ValueError, match="invalid label name"):
        r.gauge("ok", "x", ["bad-label"])
    with pytest.raises(ValueError, match="reserved"):
        r.histogram("h", "x", ["le"])
    with pytest.raises(ValueError, match="increasing"):
        r.histogram("h2", "x", buckets=[1.0, 0.5])
    c = r.get("a_total")
    with pytest.raises(ValueError, match="takes labels"):
        c.labels("one", "two")


def test_every_calibration_status_of_the_contract_has_its_series() -> None:
    # ARCHITECTURE 4.3: the statuses a Measurement's `calibration` takes, one type for the
    # engine, the payload and the metrics
    import calibration
    import gateway.model

    contract = ("valid", "due_soon", "expired", "untraceable", "suspect", "none")
    assert contract == calibration.CALIBRATION_STATUSES
    assert gateway.model.CalStatus is calibration.CalStatus
    m = Metrics()
    m.set_calibration("PT-101", "suspect")
    got = {k[1]: v.get() for k, v in m.calibration_status.series().items() if k[0] == "PT-101"}
    assert got == {s: float(s == "suspect") for s in contract}


def test_the_up_series_exists_from_the_start() -> None:
    m = Metrics()
    m.declare_equipment("PT-101")
    samples, _ = parse(m.render())
    assert samples[("calgate_equipment_up", frozenset({("equipment", "PT-101")}))] == 0.0
    m.observe_poll("PT-101", 0.002)
    m.declare_equipment("PT-101")  # a restart of its poll task keeps what it shows
    assert m.equipment_up.value("PT-101") == 1.0
