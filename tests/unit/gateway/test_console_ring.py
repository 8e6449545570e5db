"""The console's rings: bounded, oldest overwritten, filled only with new Measurements."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from drivers.base import Reading
from gateway.console.ring import Recorder, Ring
from gateway.model import Measurement
from gateway.monitor import Monitor


def test_ring_keeps_the_last_capacity_samples_oldest_first() -> None:
    ring = Ring(3)
    assert ring.tail(5) == []
    assert len(ring) == 0
    for i in range(5):
        ring.append(float(i), 10.0 * i, 0.1)
    assert len(ring) == 3
    assert ring.written == 5
    assert ring.samples() == [(2.0, 20.0, 0.1), (3.0, 30.0, 0.1), (4.0, 40.0, 0.1)]
    assert ring.tail(2) == [(3.0, 30.0, 0.1), (4.0, 40.0, 0.1)]
    assert ring.samples(since=3.0) == [(4.0, 40.0, 0.1)]
    with pytest.raises(ValueError, match="at least one"):
        Ring(0)


def measurement(eq: str, value: float, t: float, big_u: float | None = 0.2) -> Measurement:
    r = Reading(equipment=eq, channel="p", raw=value, unit="mbar",
                t_wall=datetime.fromtimestamp(t, UTC), t_mono=t)  # fmt: skip
    return Measurement(reading=r, value=value, unit="mbar", U=big_u, k=2.0)


def test_recorder_copies_each_new_measurement_once_sized_by_interval() -> None:
    mon = Monitor()
    rec = Recorder(window_s=10.0, sample_s=0.5)
    rec.set_intervals({"FAST": 0.1, "SLOW": 2.0})
    t = 1_800_000_000.0
    for i in range(30):
        mon.measurements([measurement("FAST", float(i), t + i), measurement("SLOW", -i, t + i)],
                         lambda e, c: None)  # fmt: skip
        assert rec.sample(mon.states) == 2
        assert rec.sample(mon.states) == 0  # the same ones: nothing new
    assert rec.rings[("FAST", "p")].capacity == 11  # 10 s at one sample a second
    assert rec.rings[("SLOW", "p")].capacity == 6  # 10 s at its 2 s polls
    assert [s[1] for s in rec.series("FAST", "p")] == [float(i) for i in range(19, 30)]
    mon.measurements([measurement("FAST", math.nan, t + 31, None)], lambda e, c: None)
    rec.sample(mon.states)
    last = rec.series("FAST", "p")[-1]
    assert math.isnan(last[1])
    assert math.isnan(last[2])
    rec.set_intervals({"FAST": 0.1})  # SLOW left the config
    assert rec.series("SLOW", "p") == []
    assert list(rec) == [("FAST", "p")]


def test_a_fast_channel_is_kept_about_once_a_second() -> None:
    mon = Monitor()
    rec = Recorder(window_s=60.0, sample_s=0.5)
    rec.set_intervals({"FAST": 0.1})
    t = 1_800_000_000.0
    for i in range(100):  # 10 s of 10 Hz polls, the console's timer every 0.5 s
        mon.measurements([measurement("FAST", float(i), t + i / 10)], lambda e, c: None)
        if i % 5 == 0:
            rec.sample(mon.states)
    times = [s[0] - t for s in rec.series("FAST", "p")]
    assert times == pytest.approx([float(k) for k in range(10)])
