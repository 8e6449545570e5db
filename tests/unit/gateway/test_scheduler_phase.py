"""Supervisor(phase_s=...): the first poll at once, then on the equipment's phase."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from drivers.base import Driver, DriverConfig, Reading, now
from drivers.errors import DriverError
from gateway.scheduler import Supervisor, stagger


class _Config(DriverConfig):
    driver: str = "phase-test"


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        assert dt >= 0
        self.t += dt
        await asyncio.sleep(0)


class _Driver(Driver):
    Config: ClassVar[type[DriverConfig]] = _Config

    def __init__(self, clock: _Clock, polls: int) -> None:
        super().__init__(_Config(id="X-1", interval_s=1.0))
        self.clock = clock
        self.times: list[float] = []
        self.polls = polls
        self.done = asyncio.Event()

    async def poll(self) -> list[Reading]:
        self.times.append(self.clock.t)
        if len(self.times) >= self.polls:
            self.done.set()
        t_wall, t_mono = now()
        return [
            Reading(equipment="X-1", channel="c", raw=1.0, unit="g", t_wall=t_wall, t_mono=t_mono)
        ]


class _Hooks:
    def readings(self, equipment: str, readings: list[Reading], latency_s: float) -> None:
        pass

    def failure(self, equipment: str, error: DriverError) -> None:
        raise AssertionError(error)

    def missed(self, equipment: str, count: int) -> None:
        raise AssertionError(f"missed {count}")


@pytest.mark.parametrize(
    ("phase", "expected"),
    [(0.0, [0.0, 1.0, 2.0, 3.0]), (0.75, [0.0, 0.75, 1.75, 2.75]), (0.25, [0.0, 1.25, 2.25, 3.25])],
)
async def test_phase_moves_the_deadlines_after_the_first_poll(
    phase: float, expected: list[float]
) -> None:
    clock = _Clock()
    driver = _Driver(clock, 4)
    sup = Supervisor(
        driver, _Hooks(), interval_s=1.0, clock=clock, sleep=clock.sleep, phase_s=phase
    )
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(driver.done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [round(t - 100.0, 9) for t in driver.times[:4]] == expected


def test_stagger_is_a_stable_phase_inside_the_interval() -> None:
    phases = [stagger(f"BT-{i:04d}", 0.1) for i in range(1000)]
    assert all(0.0 <= p < 0.1 for p in phases)
    assert stagger("BT-0001", 0.1) == phases[1]
    # spread over the interval: every tenth of it holds some equipment
    assert {int(p / 0.01) for p in phases} == set(range(10))
