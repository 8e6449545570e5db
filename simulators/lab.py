"""The demo lab: every simulated instrument at once, on one pressure manifold.

=========  ==================  ==========================  =========================
id         instrument          protocol                    default endpoint
=========  ==================  ==========================  =========================
BAL-01     balance 220 g       MT-SICS over TCP (and pty)  socket://127.0.0.1:47101
BAL-02     balance 220 g       Sartorius SBI (TCP, pty)    socket://127.0.0.1:47102
PC-01      pressure controller SCPI over TCP (and pty)     socket://127.0.0.1:47103
PT-101/102 pressure transm.    Modbus TCP, units 1 and 2   tcp://127.0.0.1:47502
UTM-01     testing machine     OPC UA                      opc.tcp://127.0.0.1:47840
=========  ==================  ==========================  =========================

The transmitters read the manifold that the controller drives, so a transmitter and the
controller can be compared. ``base_port=0`` picks free ports (tests, ``calgate demo``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Self

from simulators.physics import Manifold

__all__ = ["DEFAULT_PORTS", "Lab"]

DEFAULT_PORTS = {"BAL-01": 47101, "BAL-02": 47102, "PC-01": 47103, "MODBUS": 47502, "UTM-01": 47840}


class Lab:
    """Starts the lab's simulators; ``endpoints()`` maps equipment ids to their URLs."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        fixed_ports: bool = True,
        pty: bool = False,
        opcua: bool = True,
        seed: int | None = None,
    ) -> None:
        from simulators.modbus_transmitter import ModbusTransmitterSim
        from simulators.mt_sics import MtSicsSim
        from simulators.pressure_controller import PressureControllerSim
        from simulators.sbi import SbiSim

        def port(key: str) -> int:
            return DEFAULT_PORTS[key] if fixed_ports else 0

        self.manifold = Manifold(seed=seed)
        self.balance = MtSicsSim(host=host, port=port("BAL-01"), pty=pty, seed=seed)
        self.sbi = SbiSim(host=host, port=port("BAL-02"), pty=pty, seed=seed)
        self.controller = PressureControllerSim(
            manifold=self.manifold, host=host, port=port("PC-01"), pty=pty, seed=seed
        )
        self.transmitters = ModbusTransmitterSim(
            host=host,
            port=port("MODBUS"),
            units=(1, 2),
            word_order={1: "ABCD", 2: "CDAB"},
            offsets={1: 0.35, 2: -0.8},
            manifold=self.manifold,
            seed=seed,
        )
        self.machine: Any = None
        if opcua:
            from simulators.testing_machine import TestingMachineSim

            self.machine = TestingMachineSim(host=host, port=port("UTM-01"), seed=seed)
        self._started: list[Any] = []

    @property
    def parts(self) -> list[Any]:
        items: list[Any] = [self.balance, self.sbi, self.controller, self.transmitters]
        if self.machine is not None:
            items.append(self.machine)
        return items

    async def start(self) -> None:
        try:
            for part in self.parts:
                await part.start()
                self._started.append(part)
        except BaseException:
            await self.stop()
            raise
        # Something to weigh and a pressure to hold, so the demo shows corrected values.
        self.balance.place(100.0)
        self.manifold.output = True
        self.sbi.place(200.0)
        self.manifold.setpoint = 1000.0
        if self.machine is not None and hasattr(self.machine, "set_force"):
            self.machine.set_force(20.0)

    async def stop(self) -> None:
        while self._started:
            part = self._started.pop()
            with contextlib.suppress(Exception):
                await part.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def endpoints(self) -> dict[str, dict[str, str]]:
        out = {
            "BAL-01": self.balance.endpoints(),
            "BAL-02": self.sbi.endpoints(),
            "PC-01": self.controller.endpoints(),
            "PT-101": self.transmitters.endpoints() | {"unit": "1"},
            "PT-102": self.transmitters.endpoints() | {"unit": "2"},
        }
        if self.machine is not None:
            out["UTM-01"] = self.machine.endpoints()
        return out
