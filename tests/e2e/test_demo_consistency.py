"""The demo lab is metrologically consistent: corrected values agree with the reference.

The simulated lab (real Modbus TCP, SCPI and MT-SICS/SBI over TCP, OPC UA) is polled by
the gateway into a real mosquitto, with the example registry. The pressure controller is
commanded to setpoints over its own SCPI connection, the balances are loaded and the
testing machine holds forces. At each point every corrected value must agree with the
reference within its expanded uncertainty, |y − y_ref| ≤ √(U² + U_ref²):

- the reference is the simulator's set value (the manifold's setpoint, the load on the
  pan, the force held), with U_ref = 0; and, for the transmitters, also the controller
  PC-01 on the same manifold (the lab's reference there), with its own U;
- the readings carry the simulators' noise, so the test computes from the simulators'
  noise how many of a point's readings a k = 2 interval lets fall outside (none where
  U is many noise deviations wide, as for the balances and the pressure channels; a
  few where the noise is most of U, as for the testing machine), and requires the mean
  of the readings to agree within U as well.
"""

from __future__ import annotations

import math
from collections.abc import Set
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest
from helpers import wait_for_async
from labconfig import lab_gateway
from mqttsub import Subscriber
from servers import Mosquitto

from drivers.scpi import ScpiPressure, ScpiPressureConfig
from simulators.lab import Lab

pytestmark = pytest.mark.e2e

# One point per step: the controller's setpoint, the load on both balances, the force.
SETPOINTS_MBAR = (1000.0, 1950.0, 50.0, 500.0)
LOADS_G = (100.0, 210.0, 10.0, 150.0)
FORCES_KN = (20.0, 90.0, 10.0, 50.0)
EQUIPMENT = frozenset({"PC-01", "PT-101", "PT-102", "BAL-01", "BAL-02", "UTM-01"})
PER_POINT = 8  # readings of each instrument at each point
FALSE_ALARM = 1e-6  # accepted probability that the noise alone fails a point


def allowed_outside(n: int, p: float) -> int:
    """The fewest readings m such that more than m of n fall outside U with probability
    at most FALSE_ALARM, when each does so with probability p (binomial tail)."""
    tail = 1.0
    for m in range(n + 1):
        tail -= math.comb(n, m) * p**m * (1.0 - p) ** (n - m)
        if tail <= FALSE_ALARM:
            return m
    return n


def p_outside(half_width: float, sigma: float, slack: float) -> float:
    """P(|noise + at most ``slack``| > half_width) for normal noise of deviation sigma."""
    margin = half_width - slack
    return 1.0 if margin <= 0 else math.erfc(margin / (sigma * math.sqrt(2.0)))


def check_agreement(
    what: str,
    rows: list[dict[str, Any]],
    ref: float,
    u_ref: float,
    sigma: float,
    slack: float,
) -> None:
    """Every row agrees with ``ref`` within √(U² + u_ref²) (up to what the noise allows),
    and so does their mean."""
    distinct = {r["raw"]: r for r in rows}.values()  # an OPC UA value polled twice is one
    outside = [r for r in distinct if abs(r["value"] - ref) > math.hypot(r["U"], u_ref)]
    p = max(p_outside(math.hypot(r["U"], u_ref), sigma, slack) for r in distinct)
    allowed = allowed_outside(len(distinct), p)
    detail = [(r["raw"], r["value"], r["U"]) for r in outside]
    assert len(outside) <= allowed, (
        f"{what}: {len(outside)} outside U (allowed {allowed}): {detail}"
    )
    mean = fmean(r["value"] for r in rows)
    assert abs(mean - ref) <= math.hypot(min(r["U"] for r in rows), u_ref), (what, mean, ref)


async def collect(
    sub: Subscriber, since: datetime, equipment: Set[str]
) -> dict[str, list[dict[str, Any]]]:
    """PER_POINT readings of each equipment acquired after ``since``."""

    def fresh() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {eq: [] for eq in equipment}
        for r in sub.json("/reading"):
            if r["equipment"] in out and datetime.fromisoformat(r["ts"]) > since:
                out[r["equipment"]].append(r)
        return out

    await wait_for_async(
        lambda: all(len(v) >= PER_POINT for v in fresh().values()),
        timeout_s=20,
        what=f"{PER_POINT} readings of each instrument",
    )
    return {eq: rows[:PER_POINT] for eq, rows in fresh().items()}


def check_point(
    lab: Lab, rows: dict[str, list[dict[str, Any]]], setpoint: float, load: float, force: float
) -> None:
    """The agreement at one point, each reference being what the simulator was set to."""
    for eq, eq_rows in rows.items():
        for r in eq_rows:
            assert r["quality"] != "bad", (eq, r)
            assert "out_of_range" not in r["flags"], (eq, r)

    # Pressure: the manifold's setpoint is the truth; each reader of the manifold draws
    # its own noise. PC-01 displays three decimals; a float32 register carries 2⁻²⁴ of
    # the value.
    sigma = lab.manifold.noise
    pc = rows["PC-01"]
    check_agreement(f"PC-01 @ {setpoint}", pc, setpoint, 0.0, sigma, 0.0005)
    pc_mean, pc_u = fmean(r["value"] for r in pc), max(r["U"] for r in pc)
    float32 = setpoint * 2.0**-24
    for eq in ("PT-101", "PT-102"):
        pt = rows[eq]
        check_agreement(f"{eq} @ {setpoint}", pt, setpoint, 0.0, sigma, float32)
        # ... and the controller on the same manifold, as the lab compares them
        sigma_diff = sigma * math.sqrt(1.0 + 1.0 / len(pc))
        check_agreement(
            f"{eq} vs PC-01 @ {setpoint}", pt, pc_mean, pc_u, sigma_diff, 0.0005 + float32
        )
        # the certificate removes the transmitter's offset: better than the raw reading
        raw_error = fmean(r["raw"] for r in pt) - setpoint
        assert abs(raw_error) > 5 * abs(fmean(r["value"] for r in pt) - setpoint), eq

    # Balances: the load on the pan is the truth. The display rounds to d, and the test
    # loads' conventional masses differ from nominal by at most 0.3 mg.
    for eq, cell in (("BAL-01", lab.balance.balance), ("BAL-02", lab.sbi.balance)):
        check_agreement(
            f"{eq} @ {load} g", rows[eq], load, 0.0, cell.load.noise, cell.d / 2 + 0.0003
        )

    # Testing machine: the force held is the truth (Double values, no rounding).
    check_agreement(f"UTM-01 @ {force} kN", rows["UTM-01"], force, 0.0, lab.machine.noise_kn, 0.0)


async def test_corrected_values_agree_with_the_reference_within_u(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with lab_gateway(tmp_path, mosquitto, seed=14, opcua=True) as (lab, sub):
        # A fast pump and quick pans: the test spends its time measuring, not waiting
        # (how fast a value settles is no error a certificate describes).
        lab.manifold.slew_per_s = 20_000.0
        cells = (lab.balance.balance, lab.sbi.balance)
        for cell in cells:
            cell.load.tau_s = 0.03

        def settled() -> bool:
            return lab.manifold.in_limits(0.0) and all(c.load.settled_within(1e-6) for c in cells)

        port = lab.controller.endpoints()["tcp"]
        config = ScpiPressureConfig(id="PC-01", driver="scpi-pressure", port=port)
        async with ScpiPressure(config) as controller:  # a second SCPI client
            await controller.set_output(True)
            for setpoint, load, force in zip(SETPOINTS_MBAR, LOADS_G, FORCES_KN, strict=True):
                await controller.set_setpoint(setpoint)
                assert await controller.setpoint() == pytest.approx(setpoint)
                for cell in cells:
                    cell.set_load(load)
                lab.machine.set_force(force)
                await wait_for_async(settled, what="manifold and pans settled")
                await lab.machine.next_update(2)  # the held force is on the node
                rows = await collect(sub, datetime.now(UTC), EQUIPMENT)
                check_point(lab, rows, setpoint, load, force)
