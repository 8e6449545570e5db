"""Modbus driver against the simulated transmitters over real TCP and real RTU-over-pty."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from helpers import free_port, wait_for_async

from drivers.base import Buses, Reading
from drivers.errors import ConnectError, DeviceError, DeviceTimeout, DriverError, FrameError
from drivers.modbus import ModbusConfig, ModbusDriver, RtuLink, TcpLink
from simulators.faults import Fault
from simulators.modbus_transmitter import (
    HOLDING_PATTERN,
    INPUT_PATTERN,
    ModbusTransmitterSim,
)
from simulators.physics import Manifold

pytestmark = pytest.mark.integration

ORDERS = {1: "ABCD", 2: "CDAB", 3: "BADC", 4: "DCBA"}
OFFSETS = {1: 0.25, 2: -0.5, 3: 1.0, 4: 0.0}
AMBIENT = 1013.25
TIMEOUT_S = 0.3


@pytest.fixture
async def sim() -> AsyncIterator[ModbusTransmitterSim]:
    manifold = Manifold(ambient=AMBIENT, noise=0.0)
    async with ModbusTransmitterSim(
        tcp=True,
        rtu=True,
        units=ORDERS,
        word_order=ORDERS,
        offsets=OFFSETS,
        manifold=manifold,
        slow_s=1.0,
        seed=1,
    ) as server:
        yield server


def url(sim: ModbusTransmitterSim, transport: str) -> str:
    return sim.endpoints()[transport]


def short_order(order: str, kind: str) -> str:
    """16-bit channels of a byte-swapping device read BA (see the simulator's docs)."""
    if kind.endswith("16"):
        return "BA" if order in ("BADC", "DCBA") else "AB"
    return order


def pattern_channels(order: str) -> list[dict[str, Any]]:
    out = []
    for register, pattern in (("input", INPUT_PATTERN), ("holding", HOLDING_PATTERN)):
        for address, kind, _value in pattern:
            out.append(
                {
                    "name": f"{register}-{kind}",
                    "register": register,
                    "address": address,
                    "type": kind,
                    "word_order": short_order(order, kind),
                }
            )
    return out


def live_channels(order: str, register: str = "input") -> list[dict[str, Any]]:
    def ch(name: str, address: int, kind: str, scale: float = 1.0) -> dict[str, Any]:
        return {
            "name": f"{register}-{name}",
            "register": register,
            "address": address,
            "type": kind,
            "word_order": short_order(order, kind),
            "scale": scale,
            "unit": "mbar",
        }

    return [
        ch("pressure", 0, "float32"),
        ch("status", 2, "uint16"),
        ch("p-int16", 3, "int16", 0.1),
        ch("p-uint16", 4, "uint16", 0.1),
        ch("p-int32", 5, "int32", 0.001),
        ch("p-uint32", 7, "uint32", 0.001),
        ch("p-float64", 9, "float64"),
    ]


def make(
    sim: ModbusTransmitterSim,
    transport: str,
    unit: int,
    channels: list[dict[str, Any]] | None = None,
    *,
    buses: Buses | None = None,
    **extra: Any,
) -> ModbusDriver:
    order = ORDERS.get(unit, "ABCD")
    cfg = ModbusConfig.model_validate(
        {
            "id": f"PT-{unit}",
            "driver": "modbus",
            "url": url(sim, transport),
            "unit": unit,
            "timeout_s": TIMEOUT_S,
            "channels": channels if channels is not None else live_channels(order),
            **extra,
        }
    )
    return ModbusDriver(cfg, buses=buses)


def by_channel(readings: Iterable[Reading]) -> dict[str, Reading]:
    return {r.channel: r for r in readings}


class Poller:
    """One poll, awaited (``driver.poll()``) or through ``driver.poll_soon`` (the
    scheduler's callback path; when the driver declines, e.g. while not connected, the
    awaited poll, as the Supervisor does). ``by_callback`` counts the polls it started."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.by_callback = 0

    async def __call__(self, driver: ModbusDriver) -> list[Reading]:
        if self.how == "await":
            return await driver.poll()
        fut: asyncio.Future[list[Reading]] = asyncio.get_running_loop().create_future()

        def done(result: list[Reading] | Exception) -> None:
            assert not fut.done(), "done() called twice"
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        if not driver.poll_soon(done):
            return await driver.poll()
        self.by_callback += 1
        return await fut


@pytest.fixture(params=["await", "callback"])
def poll(request: pytest.FixtureRequest) -> Poller:
    return Poller(request.param)


TRANSPORTS = ["tcp", "rtu"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("unit", sorted(ORDERS))
async def test_every_type_word_order_and_register_kind(
    sim: ModbusTransmitterSim, transport: str, unit: int, poll: Poller
) -> None:
    order = ORDERS[unit]
    channels = pattern_channels(order) + live_channels(order) + live_channels(order, "holding")
    async with make(sim, transport, unit, channels) as driver:
        # input 0..12, input 100..111, holding 0..12, holding 100..111
        assert len(driver.groups) == 4
        before = sim.devices[unit].requests
        readings = by_channel(await poll(driver))
        assert sim.devices[unit].requests - before == 4  # one request per group per poll
    # Modbus TCP polls from callbacks (the four groups one after the other); RTU declines
    assert poll.by_callback == (transport == "tcp" and poll.how == "callback")
    assert list(readings) == [c["name"] for c in channels]
    for register, pattern in (("input", INPUT_PATTERN), ("holding", HOLDING_PATTERN)):
        for _address, kind, value in pattern:
            reading = readings[f"{register}-{kind}"]
            assert reading.quality == "good"
            assert reading.equipment == f"PT-{unit}"
            if kind == "float32":
                assert reading.raw == pytest.approx(value, rel=1e-7)
            else:
                assert reading.raw == value, (register, kind)
    pressure = AMBIENT + OFFSETS[unit]
    for register in ("input", "holding"):
        assert readings[f"{register}-pressure"].raw == pytest.approx(pressure, rel=1e-6)
        assert readings[f"{register}-pressure"].unit == "mbar"
        assert readings[f"{register}-p-float64"].raw == pytest.approx(pressure, abs=1e-9)
        assert readings[f"{register}-p-int16"].raw == pytest.approx(pressure, abs=0.051)
        assert readings[f"{register}-p-uint16"].raw == pytest.approx(pressure, abs=0.051)
        assert readings[f"{register}-p-int32"].raw == pytest.approx(pressure, abs=0.00051)
        assert readings[f"{register}-p-uint32"].raw == pytest.approx(pressure, abs=0.00051)
        assert readings[f"{register}-status"].raw == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_new_value_on_every_read(sim: ModbusTransmitterSim, transport: str) -> None:
    sim.manifold.setpoint = 2000.0
    sim.manifold.output = True  # slewing at 200 mbar/s: every read is a new value
    async with make(sim, transport, 1) as driver:
        first = by_channel(await driver.poll())["input-p-float64"].raw
        await wait_for_async(
            lambda: sim.manifold.true_pressure() > first + 0.1, what="the manifold to move"
        )
        second = by_channel(await driver.poll())["input-p-float64"].raw
    assert second > first
    assert second == pytest.approx(sim.devices[1].last_pressure)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_units_share_one_connection(
    sim: ModbusTransmitterSim, transport: str, poll: Poller
) -> None:
    buses = Buses()
    drivers = [make(sim, transport, unit, buses=buses) for unit in sorted(ORDERS)]
    connections = sim.connections
    for driver in drivers:
        await driver.open()
    bus = drivers[0].bus
    assert all(d.bus is bus for d in drivers)
    assert bus.users == len(drivers)
    link = bus.resource
    assert isinstance(link, TcpLink if transport == "tcp" else RtuLink)
    for _round in range(3):
        # from callbacks, one takes the bus and the others wait for it in poll()
        results = await asyncio.gather(*(poll(d) for d in drivers))
        for unit, readings in zip(sorted(ORDERS), results, strict=True):
            assert by_channel(readings)["input-pressure"].raw == pytest.approx(
                AMBIENT + OFFSETS[unit], rel=1e-6
            )
    assert bus.resource is link
    if transport == "tcp":
        assert isinstance(link, TcpLink)
        assert link.connects == 1
        assert sim.connections - connections == 1  # the server saw one connection
        assert sim.active_connections == 1
    else:
        assert isinstance(link, RtuLink)
        assert link.connects == 1
    for driver in drivers[:-1]:
        await driver.close()
    assert bus.resource is link  # still used by the last driver
    assert link.connected
    await drivers[-1].close()
    assert bus.resource is None
    assert not link.connected
    if transport == "tcp":
        await wait_for_async(lambda: sim.active_connections == 0, what="the server to see close")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.DEVICE_ERROR, DeviceError),
        (Fault.NO_REPLY, DeviceTimeout),
        (Fault.SLOW, DeviceTimeout),
        (Fault.GARBAGE, FrameError),
        (Fault.DISCONNECT, ConnectError),
    ],
)
async def test_faults_then_recovery(
    sim: ModbusTransmitterSim,
    transport: str,
    fault: Fault,
    error: type[DriverError],
    poll: Poller,
) -> None:
    if transport == "rtu" and fault is Fault.DISCONNECT:
        error = DeviceTimeout  # no connection on a serial line: the device falls silent
    channels = live_channels(ORDERS[2])[:1]
    async with make(sim, transport, 2, channels) as driver:
        await driver.poll()
        sim.faults[2].arm(fault, 1)
        with pytest.raises(error) as info:
            await poll(driver)
        assert info.value.equipment == "PT-2"
        if fault is Fault.DEVICE_ERROR:
            assert isinstance(info.value, DeviceError)
            assert info.value.code == 4
            assert "server device failure" in str(info.value)
        if fault is Fault.GARBAGE:
            assert isinstance(info.value, FrameError)
            assert info.value.frame
        if fault is Fault.SLOW:
            await wait_for_async(lambda: not sim._tasks, what="the late reply to be sent")
        readings = await poll(driver)  # reconnects lazily where needed
        assert readings[0].raw == pytest.approx(AMBIENT + OFFSETS[2], rel=1e-6)
        assert sim.faults[2].armed is None
        assert not driver.bus.lock.locked()  # every path gave the bus back


async def test_a_late_reply_is_not_taken_for_the_next_one(
    sim: ModbusTransmitterSim, poll: Poller
) -> None:
    """TCP: the reply to a timed-out request arrives while the next request is pending;
    its transaction id does not match, so it is dropped and the next request times out."""
    channels = live_channels(ORDERS[1])[:1]
    async with make(sim, "tcp", 1, channels, timeout_s=0.6) as driver:
        await driver.poll()
        faults = sim.faults[1]
        faults.slow_s = 1.0
        faults.arm(Fault.SLOW, 1)
        with pytest.raises(DeviceTimeout):
            await poll(driver)  # times out at 0.6 s; the reply leaves at 1.0 s
        faults.arm(Fault.NO_REPLY, 1)
        with pytest.raises(DeviceTimeout):
            await poll(driver)  # pending from 0.6 s to 1.2 s: sees the late reply
        assert not sim._tasks  # the late reply was sent during that poll
        readings = await poll(driver)
        assert readings[0].quality == "good"
    assert poll.by_callback == (3 if poll.how == "callback" else 0)


async def test_disconnect_reconnects_on_the_next_poll(sim: ModbusTransmitterSim) -> None:
    async with make(sim, "tcp", 1) as driver:
        link = driver.bus.resource
        assert isinstance(link, TcpLink)
        await driver.poll()
        sim.faults[1].arm(Fault.DISCONNECT, 1)
        with pytest.raises(ConnectError):
            await driver.poll()
        assert not link.connected
        await driver.poll()
        assert link.connects == 2


async def test_reconnect_after_the_server_restarts(sim: ModbusTransmitterSim) -> None:
    async with make(sim, "tcp", 1) as driver:
        await driver.poll()
        port = sim.port
        await sim.stop()
        with pytest.raises(ConnectError):
            await driver.poll()  # the connection was closed by the server
        with pytest.raises(ConnectError):
            await driver.poll()  # and nobody listens now: refused
        await sim.start()
        assert sim.port == port
        readings = await driver.poll()
        assert by_channel(readings)["input-pressure"].quality == "good"
        link = driver.bus.resource
        assert isinstance(link, TcpLink)
        assert link.connects == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_nan_and_inf_are_bad_readings(sim: ModbusTransmitterSim, transport: str) -> None:
    async with make(sim, transport, 3) as driver:
        for inject, flag, status in [
            (lambda: sim.set_nan(3), "nan", 1),
            (lambda: sim.set_inf(3), "overflow", 2),
            (lambda: sim.set_inf(3, negative=True), "underflow", 4),
        ]:
            inject()
            readings = by_channel(await driver.poll())
            for name in ("input-pressure", "input-p-float64"):
                assert readings[name].quality == "bad"
                assert readings[name].flags == {flag}
            assert readings["input-status"].raw == status
            if flag == "nan":
                assert math.isnan(readings["input-pressure"].raw)
            else:
                assert readings["input-pressure"].raw == (math.inf if status == 2 else -math.inf)
        sim.clear_value(3)
        readings = by_channel(await driver.poll())
        assert readings["input-pressure"].quality == "good"
        assert readings["input-pressure"].flags == frozenset()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_illegal_address_is_exception_2(sim: ModbusTransmitterSim, transport: str) -> None:
    channels = [{"name": "x", "register": "holding", "address": 50, "type": "uint16"}]
    async with make(sim, transport, 1, channels) as driver:
        with pytest.raises(DeviceError, match="illegal data address") as info:
            await driver.poll()
        assert info.value.code == 2


async def test_unknown_unit_behind_tcp_is_exception_11(sim: ModbusTransmitterSim) -> None:
    async with make(sim, "tcp", 42) as driver:
        with pytest.raises(DeviceError) as info:
            await driver.poll()
        assert info.value.code == 11


async def test_a_dead_unit_does_not_stall_a_shared_rtu_bus(sim: ModbusTransmitterSim) -> None:
    """Unit 9 is not on the line: its polls time out while units 1 and 2 keep reading."""
    buses = Buses()
    alive = [make(sim, "rtu", unit, buses=buses) for unit in (1, 2)]
    dead = make(sim, "rtu", 9, live_channels("ABCD")[:1], buses=buses)
    assert dead.bus is alive[0].bus
    assert dead.bus.gap_s == pytest.approx(3.5 * 10 / 19200)
    good: dict[str, int] = {"PT-1": 0, "PT-2": 0}
    errors: list[DriverError] = []
    timeouts = [0]
    rounds = 4
    stop = asyncio.Event()

    async def run_alive(driver: ModbusDriver) -> None:
        while not stop.is_set():
            try:
                readings = await driver.poll()
            except DriverError as exc:
                errors.append(exc)
            else:
                assert readings[0].quality == "good"
                good[driver.equipment] += 1
            await asyncio.sleep(0)

    async def run_dead() -> None:
        for _ in range(rounds):
            with pytest.raises(DeviceTimeout):
                await dead.poll()
            timeouts[0] += 1
            # every alive unit got a reading while this one waited
            await wait_for_async(
                lambda: min(good.values()) >= timeouts[0], what="readings of the live units"
            )
        stop.set()

    for driver in (*alive, dead):
        await driver.open()
    try:
        async with asyncio.TaskGroup() as tg:
            for driver in alive:
                tg.create_task(run_alive(driver), name=f"poll {driver.equipment}")
            tg.create_task(run_dead(), name="poll dead unit")
    finally:
        for driver in (*alive, dead):
            await driver.close()
    assert timeouts[0] == rounds
    assert errors == []
    assert min(good.values()) >= rounds
    assert sim.devices[1].requests >= rounds
    assert sim.devices[2].requests >= rounds


async def test_refused_and_missing_port_are_connect_errors() -> None:
    cfg = {
        "id": "PT-9",
        "driver": "modbus",
        "timeout_s": TIMEOUT_S,
        "channels": [{"name": "p", "address": 0, "type": "float32"}],
    }
    refused = ModbusDriver(
        ModbusConfig.model_validate({**cfg, "url": f"tcp://127.0.0.1:{free_port()}"})
    )
    with pytest.raises(ConnectError) as info:
        await refused.open()
    assert info.value.equipment == "PT-9"
    with pytest.raises(ConnectError):
        await refused.poll()
    await refused.close()
    missing = ModbusDriver(
        ModbusConfig.model_validate({**cfg, "url": "rtu:///dev/calgate-no-such-port"})
    )
    with pytest.raises(ConnectError, match="calgate-no-such-port"):
        await missing.poll()
    await missing.close()
    assert missing.bus.users == 0


async def test_mismatched_serial_settings_on_one_port(sim: ModbusTransmitterSim) -> None:
    buses = Buses()
    first = make(sim, "rtu", 1, buses=buses)
    other_url = url(sim, "rtu").replace("baudrate=19200", "baudrate=9600")
    cfg = first.modbus.model_copy(update={"url": other_url, "unit": 2})
    second = ModbusDriver(cfg, buses=buses)
    async with first:
        with pytest.raises(ConnectError, match="different serial settings"):
            await second.poll()
        await second.close()
        assert (await first.poll())[0].quality == "good"


async def test_rtu_port_that_goes_away_is_a_connect_error() -> None:
    async with ModbusTransmitterSim(tcp=False, rtu=True, units=(1,), seed=2) as line:
        driver = make(line, "rtu", 1)
        await driver.open()
        assert (await driver.poll())[0].quality == "good"
        await line.stop()  # the pty is closed: like an unplugged USB adapter
        with pytest.raises(ConnectError):
            await driver.poll()
        with pytest.raises(ConnectError):
            await driver.poll()  # the port cannot be reopened
        await driver.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_line_noise_is_a_frame_error(sim: ModbusTransmitterSim, transport: str) -> None:
    sim.garbage = "noise"
    async with make(sim, transport, 1, live_channels("ABCD")[:1]) as driver:
        link = driver.bus.resource
        assert isinstance(link, TcpLink | RtuLink)
        await driver.poll()
        sim.faults[1].arm(Fault.GARBAGE, 1)
        with pytest.raises(FrameError) as info:
            await driver.poll()
        assert len(info.value.frame) >= 8 if transport == "rtu" else info.value.frame
        readings = await driver.poll()
        assert readings[0].quality == "good"
        # TCP: an unframeable stream is dropped and reconnected; RTU keeps the port open
        assert link.connects == (2 if transport == "tcp" else 1)


async def test_a_busy_port_is_an_os_error(sim: ModbusTransmitterSim) -> None:
    other = ModbusTransmitterSim(port=sim.port, units=(1,))
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{sim.port}"):
        await other.start()
    await other.stop()
