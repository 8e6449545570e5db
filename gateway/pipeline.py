"""Readings → Measurements: correction through the registry, status and conformity.

The registry snapshot is immutable; the pipeline keeps one :class:`ChannelPlan` per
equipment channel (its Corrector, unit factor and calibration state), built when first
needed and rebuilt when the UTC date changes or a new snapshot is swapped in.

A registry channel without a certificate in force (calibration ``none``) is published
as read: the raw value, in the channel's unit, with no uncertainty, quality
``uncertain``, flag ``uncalibrated``, and no conformity decision (``indeterminate``
when the channel has limits).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from calibration.conformity import INDETERMINATE, withheld
from drivers.base import Quality, Reading
from gateway.model import Measurement

if TYPE_CHECKING:
    from calibration import CalStatus, Channel, Corrector, Registry

__all__ = ["ChannelPlan", "Pipeline", "beyond_span", "judge_of", "unit_factor"]

log = logging.getLogger(__name__)

# Calibration states under which a corrected value cannot be trusted as "good".
DOUBTFUL: frozenset[str] = frozenset({"expired", "untraceable", "suspect"})
_OUT_OF_RANGE = frozenset({"out_of_range"})
_UNCALIBRATED = frozenset({"uncalibrated"})
_isfinite = math.isfinite
_channel = attrgetter("channel")


@lru_cache(maxsize=256)
def unit_factor(src: str, dst: str) -> float | None:
    """Multiplicative factor from ``src`` to ``dst`` units, or None when incompatible."""
    if src == dst or not src or not dst:
        return 1.0
    from calibration.units import factor

    try:
        return float(factor(src, dst))
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    equipment: str
    channel: str
    corrector: Corrector | None  # None without a registry
    unit: str | None  # the registry channel's unit (None: keep the instrument's)
    quantity: str | None
    calibration: CalStatus
    certificate: str | None
    built_on: date
    # judge(value, U) when the corrector judges conformity: calibration.conformity.decider
    # of its limits and rule (Corrector.judge_one's decision, the rule settled once)
    judge: Callable[[float, float], str | None] | None = None
    # a registry channel without a certificate in force: published as read (corrector None)
    uncalibrated: bool = False


def judge_of(
    channel: Channel, corrector: Corrector, status: str
) -> Callable[[float, float], str | None] | None:
    """The conformity decision of a channel's corrected values, ``f(value, U)``; None when
    the channel has no limits. Under an untraceable chain every value is ``indeterminate``
    (a decision on it is not a decision) unless the channel sets ``judge_untraceable``.
    A value outside the calibrated span is judged by :func:`beyond_span`."""
    from calibration.conformity import decider

    if status == "untraceable" and not channel.judge_untraceable:
        return withheld()
    limits = corrector.limits
    if limits is None:
        return None
    return decider(limits[0], limits[1], corrector.decision_rule)


def beyond_span(
    corrector: Corrector, judge: Callable[[float, float], str | None] | None, raw: float
) -> str:
    """The conformity of a value outside the calibrated span (never extrapolated): the
    decision at the span's edge it lies beyond when that is ``fail`` (the value is
    further out still), else ``indeterminate``: no decision can rest on it."""
    if judge is not None:
        edge = corrector.span[0] if raw < corrector.span[0] else corrector.span[1]
        value, _, big_u, _ = corrector.correct_one(edge)
        if judge(value, big_u) == "fail":
            return "fail"
    return INDETERMINATE


class Pipeline:
    """Corrects each poll's readings. Not thread-safe: runs on the event loop."""

    def __init__(
        self, registry: Registry | None, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._registry = registry
        self._clock = clock or (lambda: datetime.now(UTC))
        self._plans: dict[tuple[str, str], ChannelPlan] = {}
        # With the wall clock, a poll only needs today's date: time.time() against the
        # next UTC midnight instead of a datetime per poll (an injected clock is asked)
        self._wall = clock is None
        self._today = date.min
        self._day_end = -math.inf  # time.time() of the next UTC midnight

    @property
    def registry(self) -> Registry | None:
        return self._registry

    def swap_registry(self, registry: Registry | None) -> None:
        """A new snapshot applies from the next reading on (atomic on the event loop)."""
        self._registry = registry
        self._plans = {}

    def plan(self, equipment: str, channel: str, at: datetime | None = None) -> ChannelPlan:
        at = at or self._clock()
        key = (equipment, channel)
        plan = self._plans.get(key)
        if plan is not None and plan.built_on == at.date():
            return plan
        plan = self._build(equipment, channel, at)
        self._plans[key] = plan
        return plan

    def _build(self, equipment: str, channel: str, at: datetime) -> ChannelPlan:
        reg = self._registry
        eq = reg.equipment(equipment) if reg is not None else None
        ch = next((c for c in eq.channels if c.name == channel), None) if eq else None
        if reg is None or ch is None:
            return ChannelPlan(equipment, channel, None, None, None, "none", None, at.date())
        corrector = reg.corrector(equipment, channel, at)
        if corrector.certificate is None:
            judge = withheld() if corrector.limits is not None else None
            return ChannelPlan(
                equipment, channel, None, ch.unit, ch.quantity, "none", None, at.date(),
                judge, uncalibrated=True,
            )  # fmt: skip
        state = reg.state(equipment, at)
        status: CalStatus = state.status
        return ChannelPlan(
            equipment,
            channel,
            corrector,
            ch.unit,
            ch.quantity,
            status,
            corrector.certificate,
            at.date(),
            judge_of(ch, corrector, status),
        )

    def process(self, readings: Sequence[Reading]) -> list[Measurement]:
        """Correct one poll's readings; the readings of one channel as one array."""
        if not readings:
            return []
        if self._wall and time.time() < self._day_end:
            at = None  # the plans' date is today's: a datetime only if a plan is built
            today = self._today
        else:
            at = self._clock()
            today = at.date()
            if self._wall:
                self._today = today
                midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
                self._day_end = (midnight + timedelta(days=1)).timestamp()
        if len(readings) == 1 or len(set(map(_channel, readings))) == len(readings):
            ms = []
            for r in readings:
                plan = self._plans.get((r.equipment, r.channel))
                if plan is None or plan.built_on != today:
                    plan = self.plan(r.equipment, r.channel, at)
                ms.append(self._one(r, plan))
            return ms
        at = at or self._clock()
        out: list[Measurement] = []
        groups: dict[tuple[str, str], list[Reading]] = {}
        for r in readings:
            groups.setdefault((r.equipment, r.channel), []).append(r)
        for (eq, ch), group in groups.items():
            out.extend(self._many(group, self.plan(eq, ch, at)))
        return out

    def _convert(self, r: Reading, plan: ChannelPlan) -> tuple[float, str, frozenset[str]]:
        """The raw value in the channel's unit (flag ``unit_mismatch`` when impossible)."""
        if plan.unit is None or r.unit == plan.unit:
            return r.raw, plan.unit or r.unit, r.flags
        factor = unit_factor(r.unit, plan.unit)
        if factor is None:
            return r.raw, r.unit, r.flags | {"unit_mismatch"}
        return r.raw * factor, plan.unit, r.flags

    def _one(self, r: Reading, plan: ChannelPlan) -> Measurement:
        unit = plan.unit
        if unit is None or r.unit == unit:  # _convert's common case, inline
            raw, unit, flags = r.raw, unit or r.unit, r.flags
        else:
            raw, unit, flags = self._convert(r, plan)
        corrector = plan.corrector
        quality: Quality = r.quality
        if "unit_mismatch" in flags:
            # a value in another quantity's unit: not usable, no certificate corrected it
            # (calibration none, whatever the channel's certificate says) and no decision
            # against the channel's limits can rest on it
            conformity = None if plan.judge is None else "indeterminate"
            return Measurement.make(
                r, raw, unit, None, None, None, "bad", flags, "none", None, conformity,
                plan.quantity,
            )  # fmt: skip
        if corrector is None:
            conformity = None
            if plan.uncalibrated:  # as read: no U, no decision
                flags = flags | _UNCALIBRATED
                if quality == "good":
                    quality = "uncertain"
                if plan.judge is not None and quality != "bad":
                    conformity = plan.judge(raw, math.nan)
            return Measurement.make(
                r, raw, unit, None, None, None, quality, flags,
                "none", None, conformity,
                plan.quantity,
            )  # fmt: skip
        calibration = plan.calibration
        if quality == "bad" or not _isfinite(raw):
            return Measurement.make(
                r, math.nan, unit, None, None, corrector.k, "bad", flags,
                calibration, plan.certificate, None, plan.quantity,
            )  # fmt: skip
        value, u, big_u, out_of_range = corrector.correct_one(raw)
        judge = plan.judge
        conformity = None if judge is None else judge(value, big_u)
        if out_of_range:
            flags = flags | _OUT_OF_RANGE
            quality = "uncertain"
            conformity = beyond_span(corrector, judge, raw)
        if quality == "good" and calibration in DOUBTFUL:
            quality = "uncertain"
        return Measurement.make(
            r, value, unit, u, big_u, corrector.k, quality, flags, calibration,
            plan.certificate, conformity, plan.quantity,
        )  # fmt: skip

    def _many(self, group: list[Reading], plan: ChannelPlan) -> list[Measurement]:
        corrector = plan.corrector
        if corrector is None or len(group) == 1:
            return [self._one(r, plan) for r in group]
        conv = [self._convert(r, plan) for r in group]
        raws = np.array([c[0] for c in conv], dtype=float)
        good = np.isfinite(raws) & np.array([r.quality != "bad" for r in group])
        res = corrector.correct(np.where(good, raws, corrector.span[0]))
        judge = plan.judge
        out: list[Measurement] = []
        for i, r in enumerate(group):
            _, unit, flags = conv[i]
            if "unit_mismatch" in flags:
                out.append(self._one(r, plan))
                continue
            if not good[i]:
                out.append(
                    Measurement(
                        reading=r,
                        value=math.nan,
                        unit=unit,
                        k=corrector.k,
                        quality="bad",
                        flags=flags,
                        calibration=plan.calibration,
                        certificate=plan.certificate,
                        quantity=plan.quantity,
                    )
                )
                continue
            quality: Quality = r.quality
            value, big_u = float(res.value[i]), float(res.U[i])
            conformity = None if judge is None else judge(value, big_u)
            if res.out_of_range[i]:
                flags = flags | _OUT_OF_RANGE
                quality = "uncertain"
                conformity = beyond_span(corrector, judge, float(raws[i]))
            if plan.calibration in DOUBTFUL and quality == "good":
                quality = "uncertain"
            out.append(
                Measurement(
                    reading=r,
                    value=value,
                    unit=unit,
                    u=float(res.u[i]),
                    U=big_u,
                    k=corrector.k,
                    quality=quality,
                    flags=flags,
                    calibration=plan.calibration,
                    certificate=plan.certificate,
                    conformity=conformity,
                    quantity=plan.quantity,
                )
            )
        return out
