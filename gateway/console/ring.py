"""The console's memory of the last minutes: one bounded ring of samples per channel.

The poll path is not touched: :meth:`Recorder.sample` runs on the console's own timer
(every ``sample_s``) and copies each channel's latest Measurement — the one the monitor
already keeps (``ChannelState.last``) — into that channel's ring when it is a new one
(another acquisition time) and at least ~``step_s`` (1 s) after the last one kept; the
ring keeps numbers, never the Measurement.
A channel polled faster than once a second is thus plotted about once a second; one
polled slower shows every reading. Each ring is three ``array('d')`` (time, value, U)
bounded to ``window_s / max(step_s, interval_s)`` samples per channel (24 bytes each:
7 KiB per channel for 5 minutes once full).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.model import Measurement
    from gateway.monitor import EquipmentState

__all__ = ["Recorder", "Ring"]

Sample = tuple[float, float, float]  # (epoch seconds, value, U); NaN where there is none


class Ring:
    """A bounded ring of (t, value, U) samples, oldest overwritten first.

    The arrays grow to ``capacity`` as samples come (memory follows what is held), then
    each new sample overwrites the oldest.
    """

    __slots__ = ("_U", "_i", "_n", "_t", "_v", "capacity", "last_mono", "written")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a ring holds at least one sample")
        self.capacity = capacity
        self._t = array("d")
        self._v = array("d")
        self._U = array("d")
        self._i = 0  # the next slot written, once full
        self._n = 0  # samples held
        self.written = 0  # samples ever appended
        self.last_mono = -math.inf  # acquisition (monotonic) of the last Measurement copied in

    def __len__(self) -> int:
        return self._n

    def append(self, t: float, value: float, big_u: float) -> None:
        self.written += 1
        if self._n < self.capacity:  # still filling: in order, from slot 0
            self._t.append(t)
            self._v.append(value)
            self._U.append(big_u)
            self._n += 1
            self._i = self._n % self.capacity
            return
        i = self._i
        self._t[i] = t
        self._v[i] = value
        self._U[i] = big_u
        self._i = (i + 1) % self.capacity

    def samples(self, since: float = -math.inf) -> list[Sample]:
        """The samples held, oldest first; only those taken after ``since``."""
        return [s for s in self.tail(self._n) if s[0] > since]

    def tail(self, n: int) -> list[Sample]:
        """The last ``n`` samples (at most those held), oldest first."""
        n = max(0, min(n, self._n))
        cap = self.capacity
        start = (self._i - n) % cap
        out: list[Sample] = []
        for j in range(n):
            k = (start + j) % cap
            out.append((self._t[k], self._v[k], self._U[k]))
        return out


def _sample_of(m: Measurement) -> Sample:
    big_u = m.U
    return (
        m.reading.t_wall.timestamp(),
        m.value,
        big_u if big_u is not None else math.nan,
    )


class Recorder:
    """The rings of every channel, filled from the monitor's states by :meth:`sample`."""

    def __init__(self, *, window_s: float, sample_s: float, step_s: float = 1.0) -> None:
        self.window_s = window_s
        self.sample_s = sample_s
        self.step_s = max(step_s, sample_s)
        # a new acquisition this much after the last one kept is kept: each reading of
        # an instrument polled every step_s or slower, about one per step_s of a faster one
        self._min_gap_s = 0.75 * self.step_s
        self.rings: dict[tuple[str, str], Ring] = {}
        self._interval_s: dict[str, float] = {}

    def set_intervals(self, intervals_s: Mapping[str, float]) -> None:
        """Each equipment's poll interval (sizes its rings); rings of others are dropped."""
        self._interval_s = dict(intervals_s)
        for key in [k for k in self.rings if k[0] not in self._interval_s]:
            del self.rings[key]

    def _capacity(self, equipment: str) -> int:
        step = max(self.step_s, self._interval_s.get(equipment, self.step_s))
        return max(2, math.ceil(self.window_s / step) + 1)

    def sample(self, states: Mapping[str, EquipmentState]) -> int:
        """Copy every channel's latest Measurement in, when new; returns how many were."""
        added = 0
        rings = self.rings
        gap = self._min_gap_s
        for eq_id, st in states.items():
            for name, ch in st.channels.items():
                m = ch.last
                if m is None:
                    continue
                ring = rings.get((eq_id, name))
                if ring is None:
                    ring = rings[(eq_id, name)] = Ring(self._capacity(eq_id))
                t_mono = m.reading.t_mono
                if t_mono - ring.last_mono < gap:
                    continue  # the one copied last time, or too soon after it
                ring.last_mono = t_mono
                ring.append(*_sample_of(m))
                added += 1
        return added

    def series(self, equipment: str, channel: str, since: float = -math.inf) -> list[Sample]:
        ring = self.rings.get((equipment, channel))
        return [] if ring is None else ring.samples(since)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.rings)
