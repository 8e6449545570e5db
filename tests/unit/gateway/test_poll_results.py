"""What becomes of a poll's result (gateway/poll_results.py), through a real outbox.

A good poll's readings are committed as Measurements, counted and mark the equipment
up; a connection failure is one ``equipment_offline`` event (not one per failed poll)
and marks it down; the first good poll after it is one ``equipment_online``; a device
error is one event per new code; a garbled frame is counted, no event. Every event
reaches the outbox and each listener once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from drivers.base import Reading
from drivers.errors import ConnectError, DeviceError, DeviceTimeout, FrameError
from gateway.metrics import Metrics
from gateway.model import Event
from gateway.monitor import Monitor
from gateway.outbox import KIND_EVENT, KIND_MEASUREMENT, Outbox
from gateway.pipeline import Pipeline
from gateway.poll_results import PollResults

T0 = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def reading(raw: float) -> Reading:
    return Reading(
        equipment="PT-101", channel="pressure", raw=raw, unit="mbar", t_wall=T0, t_mono=0.0
    )


def test_poll_results_reach_the_outbox_the_metrics_and_the_listeners(tmp_path: Path) -> None:
    results = PollResults(Pipeline(None), Monitor(clock=lambda: T0), Metrics())
    outbox = results.outbox = Outbox(tmp_path / "outbox.sqlite", sinks=("mqtt",), site="lab")
    heard: list[Event] = []
    results.listeners.append(heard.extend)
    m = results.metrics

    results.readings("PT-101", [reading(1013.25)], 0.002)
    results.failure("PT-101", ConnectError("refused"))
    results.failure("PT-101", DeviceTimeout("no reply"))  # still offline: no second event
    assert m.equipment_up.value("PT-101") == 0.0
    results.readings("PT-101", [reading(1013.5)], 0.003)
    assert m.equipment_up.value("PT-101") == 1.0
    results.failure("PT-101", DeviceError("EL", code="EL"))
    results.failure("PT-101", DeviceError("EL", code="EL"))  # the same code: no second event
    results.failure("PT-101", FrameError("garbled"))
    results.missed("PT-101", 3)

    outbox.commit()
    rows = outbox.fetch_nowait("mqtt", 100)
    values = [json.loads(r.payload)["value"] for r in rows if r.kind == KIND_MEASUREMENT]
    assert values == [1013.25, 1013.5]  # no registry: the raw value, calibration none
    events = [json.loads(r.payload)["type"] for r in rows if r.kind == KIND_EVENT]
    assert events == ["equipment_offline", "equipment_online", "device_error"]
    assert [e.type for e in heard] == events
    assert m.polls.value("PT-101") == 7
    assert m.poll_errors.value("PT-101", "connect") == 1
    assert m.poll_errors.value("PT-101", "timeout") == 1
    assert m.poll_errors.value("PT-101", "device") == 2
    assert m.poll_errors.value("PT-101", "frame") == 1
    assert m.readings.value("PT-101", "pressure", "good") == 2
    assert m.missed_deadlines.value("PT-101") == 3
    outbox.close()
