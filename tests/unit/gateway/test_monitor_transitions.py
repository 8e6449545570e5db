"""Monitor: tolerance events fire on transitions only, per equipment and channel."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from drivers.base import Reading
from gateway.model import Measurement
from gateway.monitor import Monitor

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LIMITS = (9.0, 11.0)


def m(
    value: float, conformity: str | None, equipment: str = "PT-1", channel: str = "p"
) -> Measurement:
    r = Reading(equipment=equipment, channel=channel, raw=value, unit="bar", t_wall=T0, t_mono=0.0)
    quality: Any = "bad" if math.isnan(value) else "good"
    return Measurement(
        reading=r, value=value, unit="bar", U=0.1, k=2.0, quality=quality, conformity=conformity
    )


def limits(equipment: str, channel: str) -> tuple[float, float]:
    return LIMITS


def test_out_and_back_fire_once_each_per_channel() -> None:
    mon = Monitor()
    # one poll of two equipment: PT-1/p goes out, PT-2/p stays in
    events = mon.measurements([m(10.0, "pass"), m(12.0, "fail"), m(10.0, "pass", "PT-2")], limits)
    assert [(e.type, e.equipment, e.channel) for e in events] == [("out_of_tolerance", "PT-1", "p")]
    assert mon.state("PT-1").channels["p"].out_of_tolerance
    assert not mon.state("PT-2").channels["p"].out_of_tolerance
    assert mon.state("PT-2").channels["p"].last is not None
    # still out, then a NaN and a pass inside the hysteresis margin: nothing new
    assert mon.measurements([m(12.5, "fail"), m(math.nan, None), m(10.95, "pass")], limits) == []
    assert mon.state("PT-1").channels["p"].out_of_tolerance
    # well inside: back in, once
    events = mon.measurements([m(10.0, "pass"), m(10.0, "pass")], limits)
    assert [e.type for e in events] == ["back_in_tolerance"]
    assert mon.state("PT-1").oot_version == 2
    assert mon.state("PT-1").last_oot is not None


def test_channels_without_conformity_only_keep_their_last_value() -> None:
    mon = Monitor()
    assert mon.measurements([m(99.0, None, channel="a"), m(1.0, None, channel="b")], limits) == []
    st = mon.state("PT-1")
    assert set(st.channels) == {"a", "b"}
    last = st.channels["a"].last
    assert last is not None
    assert last.value == 99.0


def test_the_status_version_moves_with_what_the_status_shows_not_with_every_poll() -> None:
    """The gateway re-publishes an equipment's retained status when ``version`` moved."""
    from drivers.errors import ConnectError, DeviceError

    mon = Monitor()
    versions = []

    def seen() -> int:
        versions.append(mon.state("PT-1").version)
        return versions[-1]

    mon.answered("PT-1")  # unknown -> online
    first = seen()
    for _ in range(3):
        mon.answered("PT-1")
        mon.measurements([m(10.0, "pass")], limits)
    assert seen() == first  # ordinary polls: the status shows nothing new
    assert mon.state("PT-1").polls == 4
    mon.measurements([m(12.0, "fail")], limits)  # out of tolerance
    assert seen() > first
    mon.offline("PT-1", ConnectError("refused"))
    mon.offline("PT-1", ConnectError("refused"))  # still offline: no change
    off = seen()
    assert off == versions[-2] + 1
    events = mon.answered("PT-1")  # back: an event, and a change
    assert [e.type for e in events] == ["equipment_online"]
    assert seen() == off + 1
    mon.device_error("PT-1", DeviceError("exception 4", code=4), 4)
    mon.answered("PT-1")  # a good poll clears the device error
    assert mon.state("PT-1").device_error is None
