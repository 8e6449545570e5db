"""Serial-line drivers end to end against their simulators, over a real pty and over TCP.

Each driver (MT-SICS, Sartorius SBI, SCPI pressure) talks to its simulator through the
real transport: pyserial on the slave side of a pty, or ``socket://`` over loopback.
Faults are armed on the simulator; the driver must turn each into its typed error and
recover on a later poll.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import free_port, wait_for_async

from drivers.base import Buses, Reading
from drivers.errors import ConnectError, DeviceError, DeviceTimeout, FrameError
from drivers.mt_sics import MtSics, MtSicsConfig
from drivers.sbi import Sbi, SbiConfig
from drivers.scpi import ScpiPressure, ScpiPressureConfig
from drivers.serial_io import SerialInstrument
from simulators.faults import Fault
from simulators.mt_sics import MtSicsSim
from simulators.physics import Manifold
from simulators.pressure_controller import PressureControllerSim
from simulators.sbi import SbiSim
from simulators.serial_server import LineServer, SerialSimulator

pytestmark = pytest.mark.integration

TRANSPORTS = ["pty", "tcp"]


@dataclass
class Kind:
    """How to build one instrument kind's simulator and driver."""

    name: str
    sim: Callable[[], SerialSimulator]
    driver: Callable[..., SerialInstrument]
    error_code: object  # what a DEVICE_ERROR fault gives as DeviceError.code


def _mt_driver(port: str, **kw: Any) -> SerialInstrument:
    return MtSics(MtSicsConfig(id="BAL-01", driver="mt-sics", port=port, **kw))


def _sbi_driver(port: str, **kw: Any) -> SerialInstrument:
    return Sbi(SbiConfig(id="BAL-02", driver="sartorius-sbi", port=port, **kw))


def _scpi_driver(port: str, **kw: Any) -> SerialInstrument:
    return ScpiPressure(ScpiPressureConfig(id="PC-01", driver="scpi-pressure", port=port, **kw))


KINDS = {
    "mt-sics": Kind("mt-sics", lambda: MtSicsSim(tau_s=0.02, seed=1), _mt_driver, "EL"),
    "sbi": Kind("sbi", lambda: SbiSim(tau_s=0.02, seed=2), _sbi_driver, 101),
    "scpi": Kind("scpi", lambda: PressureControllerSim(seed=3), _scpi_driver, -310),
}


async def _ok(driver: SerialInstrument) -> list[Reading]:
    readings = await driver.poll()
    assert len(readings) == 1
    assert readings[0].equipment == driver.equipment
    return readings


async def _eventually_ok(driver: SerialInstrument) -> None:
    async def check() -> bool:
        await _ok(driver)
        return True

    await wait_for_async(check, timeout_s=10, what=f"{driver.equipment} to poll again")


# -- every kind, both transports: basic poll and every fault ----------------------------


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[request.param]


@pytest.fixture
async def sim(kind: Kind) -> AsyncIterator[SerialSimulator]:
    async with kind.sim() as s:
        yield s


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_poll_over_each_transport(kind: Kind, sim: SerialSimulator, transport: str) -> None:
    port = sim.endpoints()[transport]
    assert port.startswith("socket://") if transport == "tcp" else port.startswith("/")
    async with kind.driver(port) as driver:
        for _ in range(3):
            (reading,) = await _ok(driver)
            assert math.isfinite(reading.raw)
            assert reading.quality in ("good", "uncertain")
        assert len(driver.recent_frames) >= 3
        assert driver.transport.connects == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_reply_times_out_then_recovers(
    kind: Kind, sim: SerialSimulator, transport: str
) -> None:
    async with kind.driver(sim.endpoints()[transport], timeout_s=0.5) as driver:
        await _ok(driver)
        sim.faults.arm(Fault.NO_REPLY, count=1)
        with pytest.raises(DeviceTimeout) as info:
            await driver.poll()
        assert info.value.equipment == driver.equipment
        # the command as a person reads it (the message is an event's, on the console)
        assert re.search(r"no reply to (SI|ESC P|:SENS:PRES\?) within 0.5 s", str(info.value))
        await _ok(driver)
        assert driver.transport.connects == 1  # a timeout keeps the link


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_garbage_is_a_frame_error(kind: Kind, sim: SerialSimulator, transport: str) -> None:
    async with kind.driver(sim.endpoints()[transport], timeout_s=1.0) as driver:
        await _ok(driver)
        sim.faults.arm(Fault.GARBAGE, count=1)
        with pytest.raises(FrameError) as info:
            await driver.poll()
        assert info.value.equipment == driver.equipment
        assert any(b"\xfe" in f or b"\x80" in f or b"\x9f" in f for f in driver.recent_frames)
        await _ok(driver)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_slow_reply_times_out_when_the_timeout_is_shorter(
    kind: Kind, sim: SerialSimulator, transport: str
) -> None:
    sim.faults.slow_s = 1.0
    async with kind.driver(sim.endpoints()[transport], timeout_s=0.4) as driver:
        await _ok(driver)
        sim.faults.arm(Fault.SLOW, count=1)
        with pytest.raises(DeviceTimeout):
            await driver.poll()
        # the late reply is stale input for a later command: polling recovers
        await _eventually_ok(driver)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_slow_reply_succeeds_within_a_longer_timeout(
    kind: Kind, sim: SerialSimulator, transport: str
) -> None:
    sim.faults.slow_s = 0.2
    async with kind.driver(sim.endpoints()[transport], timeout_s=3.0) as driver:
        await _ok(driver)
        sim.faults.arm(Fault.SLOW)  # every reply is late
        (reading,) = await _ok(driver)
        assert math.isfinite(reading.raw)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_disconnect_then_a_later_poll_reconnects(
    kind: Kind, sim: SerialSimulator, transport: str
) -> None:
    async with kind.driver(sim.endpoints()[transport], timeout_s=1.0) as driver:
        await _ok(driver)
        sim.faults.arm(Fault.DISCONNECT, count=1)
        with pytest.raises(ConnectError) as info:
            await driver.poll()
        assert info.value.equipment == driver.equipment
        assert not driver.transport.connected
        await _ok(driver)
        assert driver.transport.connects == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_device_error_reply(kind: Kind, sim: SerialSimulator, transport: str) -> None:
    async with kind.driver(sim.endpoints()[transport], timeout_s=1.0) as driver:
        await _ok(driver)
        sim.faults.arm(Fault.DEVICE_ERROR, count=1)
        with pytest.raises(DeviceError) as info:
            await driver.poll()
        assert info.value.code == kind.error_code
        assert info.value.equipment == driver.equipment
        await _ok(driver)


# -- transport failures without a simulator fault ------------------------------------------


async def test_missing_device_is_a_connect_error(tmp_path: Any) -> None:
    driver = _mt_driver(str(tmp_path / "ttyUSB9"), timeout_s=0.5)
    with pytest.raises(ConnectError):
        await driver.open()
    with pytest.raises(ConnectError):
        await driver.poll()
    await driver.close()


async def test_refused_socket_is_a_connect_error_and_reconnects_when_the_server_comes() -> None:
    port = free_port()
    driver = _mt_driver(f"socket://127.0.0.1:{port}", timeout_s=1.0)
    with pytest.raises(ConnectError):
        await driver.poll()
    async with MtSicsSim(port=port, pty=False, tau_s=0.01, seed=4):
        await _ok(driver)
    with pytest.raises(ConnectError):  # the server went away
        await driver.poll()
    await driver.close()


async def test_babbling_device_without_terminator_is_a_frame_error() -> None:
    done = asyncio.Event()

    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()
            writer.write(b"S" * 5000)
            await writer.drain()
            await reader.read()  # hold the line until the client leaves
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with _mt_driver(f"socket://127.0.0.1:{port}", timeout_s=2.0) as driver:
            with pytest.raises(FrameError, match="no terminator"):
                await driver.poll()
        await asyncio.wait_for(done.wait(), timeout=5)
    finally:
        server.close()
        await server.wait_closed()


# -- balance physics through the drivers ----------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_mt_sics_dynamic_after_a_load_change_then_stable(transport: str) -> None:
    sim = MtSicsSim(tau_s=0.15, resolution=0.01, seed=5)
    async with sim, _mt_driver(sim.endpoints()[transport]) as driver:
        (empty,) = await _ok(driver)
        assert empty.flags == {"stable"}
        assert empty.raw == pytest.approx(0.0, abs=0.02)
        sim.place(100.0)
        (moving,) = await _ok(driver)
        assert moving.flags == {"dynamic"}
        assert moving.quality == "uncertain"
        assert moving.raw < 99.0

        async def stable() -> bool:
            (r,) = await _ok(driver)
            return r.flags == {"stable"}

        await wait_for_async(stable, timeout_s=10, what="a stable weight")
        (settled,) = await _ok(driver)
        assert settled.raw == pytest.approx(100.0, abs=0.02)
        assert (settled.unit, settled.quality, settled.channel) == ("g", "good", "weight")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_mt_sics_overload_and_underload(transport: str) -> None:
    sim = MtSicsSim(capacity=220.0, tau_s=0.01, seed=6)
    async with sim, _mt_driver(sim.endpoints()[transport]) as driver:
        sim.set_load(250.0)

        async def flagged(flag: str) -> bool:
            (r,) = await _ok(driver)
            return flag in r.flags

        await wait_for_async(lambda: flagged("overload"), timeout_s=10, what="overload")
        (over,) = await _ok(driver)
        assert math.isnan(over.raw)
        assert (over.quality, over.unit) == ("bad", "g")
        sim.set_load(-50.0)  # the pan lifted off
        await wait_for_async(lambda: flagged("underload"), timeout_s=10, what="underload")


async def test_mt_sics_stable_command_zero_tare_identify() -> None:
    async with MtSicsSim(tau_s=0.05, model="XS205DU", serial="B021002593", seed=7) as sim:
        port = sim.endpoints()["pty"]
        async with _mt_driver(port, command="S", timeout_s=5.0, channel="mass") as driver:
            ident = await driver.identify()  # type: ignore[attr-defined]
            assert (ident.model, ident.capacity, ident.unit, ident.serial) == (
                "XS205DU",
                220.0,
                "g",
                "B021002593",
            )
            await driver.zero()  # type: ignore[attr-defined]
            sim.place(50.0)
            (reading,) = await _ok(driver)  # "S" waits for the balance to settle
            assert reading.flags == {"stable"}
            assert reading.channel == "mass"
            assert reading.raw == pytest.approx(50.0, abs=0.02)
            tare = await driver.tare()  # type: ignore[attr-defined]
            assert tare == pytest.approx(50.0, abs=0.02)
            (net,) = await _ok(driver)
            assert net.raw == pytest.approx(0.0, abs=0.02)
            with pytest.raises(DeviceError) as info:
                await driver.zero()  # type: ignore[attr-defined]  # 50 g: outside the zero range
            assert info.value.code == "+"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sbi_unstable_then_stable_with_id_code_and_tare(transport: str) -> None:
    sim = SbiSim(tau_s=0.1, id_code="N", seed=8)
    async with sim, _sbi_driver(sim.endpoints()[transport]) as driver:
        await _ok(driver)
        assert len(driver.recent_frames[-1]) == 22
        sim.place(80.0)
        (moving,) = await _ok(driver)
        assert moving.flags == {"dynamic"}
        assert moving.quality == "uncertain"

        async def stable() -> bool:
            (r,) = await _ok(driver)
            return r.flags == {"stable"}

        await wait_for_async(stable, timeout_s=10, what="a stable SBI frame")
        (settled,) = await _ok(driver)
        assert settled.raw == pytest.approx(80.0, abs=0.02)
        await driver.tare()  # type: ignore[attr-defined]
        (net,) = await _ok(driver)
        assert net.raw == pytest.approx(0.0, abs=0.02)
        sim.remove()  # the tare stays: the net weight goes negative

        async def negative() -> bool:
            (r,) = await _ok(driver)
            return r.flags == {"stable"} and r.raw == pytest.approx(-80.0, abs=0.02)

        await wait_for_async(negative, timeout_s=10, what="a stable negative net weight")
        await driver.zero()  # type: ignore[attr-defined]  # ESC V clears the tare
        (zeroed,) = await _ok(driver)
        assert zeroed.raw == pytest.approx(0.0, abs=0.02)
        sim.set_load(500.0)

        async def over() -> bool:
            (r,) = await _ok(driver)
            return "overload" in r.flags and r.quality == "bad"

        await wait_for_async(over, timeout_s=10, what="an SBI overload frame")


async def test_sbi_16_character_frames_over_a_7o1_pty() -> None:
    async with SbiSim(tau_s=0.01, seed=9) as sim:
        port = sim.endpoints()["pty"]
        async with _sbi_driver(port, baudrate=1200, bytesize=7, parity="O") as driver:
            sim.place(12.34)

            async def stable() -> bool:
                (r,) = await _ok(driver)
                return r.flags == {"stable"}

            await wait_for_async(stable, timeout_s=10, what="a stable SBI frame")
            assert len(driver.recent_frames[-1]) == 16
            (reading,) = await _ok(driver)
            assert reading.raw == pytest.approx(12.34, abs=0.02)


# -- the pressure controller --------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_scpi_setpoint_slews_the_manifold(transport: str) -> None:
    manifold = Manifold(ambient=1013.25, slew_per_s=400.0, noise=0.01, seed=10)
    sim = PressureControllerSim(manifold=manifold, in_limits_tolerance=0.5)
    async with sim, _scpi_driver(sim.endpoints()[transport]) as driver:
        assert isinstance(driver, ScpiPressure)
        ident = await driver.identify()
        assert ident.model == "PACE5000-SIM"
        (start,) = await _ok(driver)
        assert start.unit == "mbar"
        assert start.raw == pytest.approx(1013.25, abs=0.1)

        await driver.set_setpoint(1500.0)
        assert await driver.setpoint() == pytest.approx(1500.0)
        await driver.set_output(True)
        seen: list[Reading] = []

        async def arrived() -> bool:
            (r,) = await _ok(driver)
            seen.append(r)
            return "in_limits" in r.flags

        await wait_for_async(arrived, timeout_s=10, what="the setpoint")
        # the flag comes from the query just after :SENS:PRES?, so the flagged reading may
        # lag; once in limits the pressure stays at the setpoint
        (settled,) = await _ok(driver)
        assert settled.raw == pytest.approx(1500.0, abs=0.5)
        assert "in_limits" in settled.flags
        rising = [r for r in seen if "not_in_limits" in r.flags]
        assert rising, "the pressure was read while it slewed"
        assert all(1013.0 < r.raw < 1500.0 for r in rising)
        values = [r.raw for r in seen]
        assert all(b >= a - 0.1 for a, b in itertools.pairwise(values))
        # the same Manifold is what a transmitter on the manifold would read
        assert manifold.true_pressure() == pytest.approx(1500.0)

        await driver.set_output(False)  # vent: back toward ambient

        async def vented() -> bool:
            (r,) = await _ok(driver)
            return abs(r.raw - 1013.25) < 0.5

        await wait_for_async(vented, timeout_s=10, what="the manifold to vent")


async def test_scpi_out_of_range_setpoint_is_a_device_error() -> None:
    sim = PressureControllerSim(range_max=2000.0, seed=11)
    async with sim, _scpi_driver(sim.endpoints()["tcp"]) as driver:
        assert isinstance(driver, ScpiPressure)
        with pytest.raises(DeviceError) as info:
            await driver.set_setpoint(5000.0)
        assert info.value.code == -222
        await driver.set_setpoint(1200.0)  # the queue was emptied: no stale error
        assert sim.manifold.setpoint == pytest.approx(1200.0)


async def test_scpi_unit_from_the_controller_and_from_config() -> None:
    async with PressureControllerSim(unit="KPA", seed=12) as sim:
        async with _scpi_driver(sim.endpoints()["pty"], in_limits=False) as asked:
            (r,) = await _ok(asked)
            assert r.unit == "kPa"
            assert r.raw == pytest.approx(101.325, abs=0.01)
            assert r.flags == frozenset()
        async with _scpi_driver(sim.endpoints()["tcp"], unit="kPa", channel="p_ref") as told:
            (r,) = await _ok(told)
            assert (r.unit, r.channel) == ("kPa", "p_ref")


# -- two instruments on one line ------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_shared_line_serialises_and_a_silent_neighbour_does_not_stall(
    transport: str,
) -> None:
    balance = MtSicsSim(tau_s=0.01, seed=13)
    controller = PressureControllerSim(seed=14)
    commands: list[bytes] = []

    class Recording(LineServer):
        async def _respond(self, device: Any, command: bytes) -> bytes | None:
            commands.append(command)
            return await super()._respond(device, command)

    async with Recording([balance, controller]) as line:
        port = line.endpoints()[transport]
        buses = Buses()
        bal = MtSics(
            MtSicsConfig(id="BAL-01", driver="mt-sics", port=port, timeout_s=0.5), buses=buses
        )
        pc = ScpiPressure(
            ScpiPressureConfig(
                id="PC-01", driver="scpi-pressure", port=port, unit="mbar", timeout_s=0.5
            ),
            buses=buses,
        )
        async with bal, pc:
            assert bal.bus is pc.bus
            assert bal.transport is pc.transport

            # both alive: every round gives both readings, and the controller's two
            # commands of one poll are never split by the balance's
            for _ in range(5):
                results = await asyncio.gather(bal.poll(), pc.poll())
                assert all(len(r) == 1 for r in results)
            for i, cmd in enumerate(commands):
                if cmd == b":SENS:PRES?":
                    assert commands[i + 1] == b":SENS:PRES:INL?"

            # the balance goes silent: it times out each round, the controller still reads
            balance.faults.arm(Fault.NO_REPLY)
            rounds = 4
            outcomes = [
                await asyncio.gather(bal.poll(), pc.poll(), return_exceptions=True)
                for _ in range(rounds)
            ]
            assert all(isinstance(o[0], DeviceTimeout) for o in outcomes)
            assert all(isinstance(o[1], list) and len(o[1]) == 1 for o in outcomes)
            assert bal.transport.connects == 1

            balance.faults.clear()
            await _eventually_ok(bal)

        assert bal.bus.users == 0
        assert bal.bus.resource is None


class _Chatty:
    """A balance that sends an unsolicited extra line after each reply (a late echo)."""

    reply_terminator = b"\r\n"

    def __init__(self) -> None:
        from simulators.faults import Faults

        self.faults = Faults()
        self.count = 0

    def claims(self, command: bytes) -> bool:
        return True

    async def handle(self, command: bytes) -> bytes | None:
        self.count += 1
        return f"S S {self.count:>10.2f} g\r\nS S {999:>10.2f} g".encode()

    def device_error(self, command: bytes) -> bytes | None:
        return b"EL"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stale_input_is_discarded_before_each_command(transport: str) -> None:
    device = _Chatty()
    async with LineServer([device]) as line, _mt_driver(line.endpoints()[transport]) as driver:
        for expected in (1.0, 2.0, 3.0):
            (reading,) = await _ok(driver)
            assert reading.raw == expected  # never the unsolicited 999
            await wait_for_async(
                lambda: driver.transport.buffered > 0, timeout_s=5, what="the unsolicited line"
            )


async def test_inter_frame_gap_on_a_shared_line() -> None:
    balance = MtSicsSim(tau_s=0.01, seed=15)
    controller = PressureControllerSim(seed=16)
    arrivals: list[float] = []

    class Timed(LineServer):
        async def _respond(self, device: Any, command: bytes) -> bytes | None:
            arrivals.append(asyncio.get_running_loop().time())
            return await super()._respond(device, command)

    gap_s = 0.05
    async with Timed([balance, controller], pty=False) as line:
        port = line.endpoints()["tcp"]
        buses = Buses()
        bal = MtSics(MtSicsConfig(id="BAL-01", port=port, gap_s=gap_s), buses=buses)
        pc = ScpiPressure(
            ScpiPressureConfig(id="PC-01", port=port, gap_s=gap_s, unit="mbar", in_limits=False),
            buses=buses,
        )
        async with bal, pc:
            for _ in range(3):
                await asyncio.gather(bal.poll(), pc.poll())
    assert len(arrivals) == 6
    # the quiet time is a lower bound between transactions, whatever the load
    assert all(b - a >= gap_s * 0.95 for a, b in itertools.pairwise(arrivals))


async def test_mt_sics_frames_are_formatted_like_a_balance() -> None:
    sim = MtSicsSim(tau_s=0.01, resolution=0.001, capacity=5000.0, seed=17)
    async with sim, _mt_driver(sim.endpoints()["tcp"]) as driver:
        sim.place(1234.5678)

        async def stable() -> bool:
            (r,) = await _ok(driver)
            return r.flags == {"stable"}

        await wait_for_async(stable, timeout_s=10, what="a stable weight")
        frame = driver.recent_frames[-1]
        assert frame[:4] == b"S S "
        assert frame[4:14].lstrip() in (b"1234.567", b"1234.568", b"1234.569")  # d = 0.001
        assert frame[14:] == b" g\r\n"


# -- the simulators' life cycle (what `calgate simulate` relies on) ----------------------------


def _target(link: str) -> str:
    """Where a symlink points ("" if it is gone)."""
    try:
        return os.readlink(link)
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: MtSicsSim(**kw),
        lambda **kw: SbiSim(**kw),
        lambda **kw: PressureControllerSim(manifold=Manifold(), **kw),
    ],
    ids=["mt-sics", "sbi", "pressure-controller"],
)
async def test_simulator_life_cycle(make: Callable[..., SerialSimulator]) -> None:
    tcp_only = make(pty=False, seed=1)
    await tcp_only.start()
    (url,) = tcp_only.endpoints().values()
    assert url.startswith("socket://127.0.0.1:")
    assert not url.endswith(":0")
    await tcp_only.stop()
    assert tcp_only.endpoints() == {}

    async with make(tcp=False, seed=1) as pty_only:
        assert set(pty_only.endpoints()) == {"pty"}
        link = pty_only.endpoints()["pty"]
        assert _target(link).startswith("/dev/pts/")
    assert _target(link) == ""  # stop() removes the link and its directory

    with pytest.raises(ValueError, match="tcp, pty or both"):
        make(tcp=False, pty=False)
