"""OPC UA driver against the simulated testing machine (a real asyncua server over TCP).

The plain and the secure simulator are module-scoped (an asyncua server takes about a
second to build its address space); tests that change their state put it back. Tests
that stop the server have their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers import free_port, wait_for_async
from pki import CertPair, make_pair

from drivers.base import Reading
from drivers.errors import ConnectError, DriverError, FrameError
from drivers.opcua import OpcUaConfig, OpcUaDriver
from simulators.faults import Fault
from simulators.testing_machine import APPLICATION_URI, NAMESPACE, TestingMachineSim

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT_S = 2.0  # generous: a loaded CI box still answers; the silent-server test uses less
USERS = {"operator": "s3cret-pw"}
PASSWORD_ENV = "CALGATE_TEST_OPCUA_PASSWORD"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertPair]:
    directory = tmp_path_factory.mktemp("opcua-pki")
    return {
        "server": make_pair(directory, "server", APPLICATION_URI, server=True),
        "client": make_pair(directory, "client", "urn:calgate:test:client", server=False),
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[TestingMachineSim]:
    async with TestingMachineSim(update_hz=20.0, seed=7) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def machine(sim: TestingMachineSim) -> AsyncIterator[TestingMachineSim]:
    """The shared simulator, put back to idle without faults after the test; its nodes
    hold what it wrote since (until its next update they would keep the last test's
    values, a held force with a status set: a subscription's first value is that one).
    Two updates: one under way at the reset may have written its first nodes before."""
    sim.clear()
    sim.reset()
    await sim.next_update(2)
    yield sim
    sim.clear()
    sim.reset()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_sim(pki: dict[str, CertPair]) -> AsyncIterator[TestingMachineSim]:
    async with TestingMachineSim(
        security=["None", "Basic256Sha256,Sign", "Basic256Sha256,SignAndEncrypt"],
        certificate=pki["server"].certificate,
        private_key=pki["server"].private_key,
        users=USERS,
        update_hz=20.0,
        seed=8,
    ) as server:
        yield server


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, USERS["operator"])
    return PASSWORD_ENV


def make_config(
    sim: TestingMachineSim | str, channels: list[dict[str, Any]], **extra: Any
) -> OpcUaConfig:
    url = sim if isinstance(sim, str) else sim.endpoints()["opcua"]
    return OpcUaConfig.model_validate(
        {
            "id": "UTM-01",
            "driver": "opcua",
            "url": url,
            "timeout_s": TIMEOUT_S,
            "channels": channels,
            **extra,
        }
    )


def channel(
    name: str, node: str, mode: str = "poll", unit: str = "", **extra: Any
) -> dict[str, Any]:
    return {"name": name, "node": node, "mode": mode, "unit": unit, **extra}


def asyncua_client_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of asyncua clients still alive (a closed driver must leave none)."""
    out = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "asyncua/client" in code.co_filename.replace(os.sep, "/"):
            out.append(task)
    return out


@contextlib.asynccontextmanager
async def opened(cfg: OpcUaConfig) -> AsyncIterator[OpcUaDriver]:
    driver = OpcUaDriver(cfg)
    try:
        async with driver:
            yield driver
    finally:
        await driver.close()
        await wait_for_async(
            lambda: not asyncua_client_tasks(), timeout_s=5, what="client tasks to end"
        )


async def next_batch(it: AsyncIterator[list[Reading]], timeout_s: float = 5.0) -> list[Reading]:
    async with asyncio.timeout(timeout_s):
        return await anext(it)


async def collect(
    it: AsyncIterator[list[Reading]], until: Any, timeout_s: float = 5.0
) -> list[Reading]:
    """Readings from a subscription until ``until(readings)`` is true."""
    seen: list[Reading] = []
    async with asyncio.timeout(timeout_s):
        while not until(seen):
            seen.extend(await anext(it))
    return seen


# ---------------------------------------------------------------------------- polling


async def test_namespace_and_nodes(machine: TestingMachineSim) -> None:
    assert machine.namespace_index == 2
    assert machine.nodeid("Force") == "ns=2;s=Machine/Force"
    assert machine.endpoints()["opcua"] == f"opc.tcp://127.0.0.1:{machine.port}"


async def test_poll_reads_every_poll_channel_in_one_request(machine: TestingMachineSim) -> None:
    cfg = make_config(
        machine,
        [
            channel("force", machine.nodeid("Force"), unit="kN"),
            channel("extension", f"nsu={NAMESPACE};s=Machine/Extension", unit="mm"),
            channel("temperature", "/2:Machine/2:Temperature", unit="°C"),
            channel("force-sub", machine.nodeid("Force"), mode="subscribe"),
        ],
    )
    machine.set_force(25.0)
    await machine.next_update()
    async with opened(cfg) as driver:
        before = len(machine.read_requests)
        readings = await driver.poll()
        assert machine.read_requests[before:] == [3]  # one Read request, three nodes
    assert [r.channel for r in readings] == ["force", "extension", "temperature"]
    assert [r.unit for r in readings] == ["kN", "mm", "°C"]
    assert all(r.quality == "good" and r.equipment == "UTM-01" for r in readings)
    force, extension, temperature = (r.raw for r in readings)
    assert abs(force - 25.0) < 0.2  # held force with 0.02 kN noise
    assert extension == 0.0
    assert 22.5 < temperature < 23.5
    # one SourceTimestamp per update tick: all three come from the same tick or neighbours
    # the simulator stamps each update tick once: the three come from one or two ticks
    assert max(r.t_wall for r in readings) - min(r.t_wall for r in readings) <= timedelta(
        seconds=0.2
    )
    assert all(r.t_wall.tzinfo is not None for r in readings)


async def test_source_timestamps_advance(machine: TestingMachineSim) -> None:
    cfg = make_config(machine, [channel("force", machine.nodeid("Force"))])
    async with opened(cfg) as driver:
        first = (await driver.poll())[0]
        await machine.next_update(2)
        second = (await driver.poll())[0]
    assert second.t_wall > first.t_wall
    assert second.t_mono > first.t_mono


async def test_a_tensile_test_runs_and_breaks(machine: TestingMachineSim) -> None:
    machine.crosshead_mm_s = 10.0  # break at 15 mm within 1.5 s
    try:
        cfg = make_config(
            machine,
            [
                channel("force", machine.nodeid("Force"), unit="kN"),
                channel("extension", machine.nodeid("Extension"), unit="mm"),
            ],
        )
        async with opened(cfg) as driver:
            machine.start_test()
            peak = 0.0
            last_extension = -1.0

            async def broke() -> bool:
                nonlocal peak, last_extension
                force, extension = await driver.poll()
                assert extension.raw >= last_extension  # the crosshead only moves forward
                last_extension = extension.raw
                peak = max(peak, force.raw)
                return machine.state == "finished"

            await wait_for_async(broke, timeout_s=10, what="the specimen to break")
            await machine.next_update(2)
            force, extension = await driver.poll()
    finally:
        machine.crosshead_mm_s = 2.0
    assert 50.0 < peak < 56.0  # tensile strength 55 kN, with noise
    assert abs(force.raw) < 0.2  # broken: no load
    assert extension.raw == pytest.approx(15.0)


async def test_physics_curve(machine: TestingMachineSim) -> None:
    assert machine.force_at(0.0) == 0.0
    assert machine.force_at(1.0) == pytest.approx(20.0)  # elastic: 20 kN/mm
    assert machine.force_at(2.0) == pytest.approx(40.0)  # yield
    assert machine.force_at(12.0) == pytest.approx(55.0)  # tensile strength
    assert machine.force_at(14.99) < 55.0
    assert machine.force_at(15.0) == 0.0  # broken
    forces = [machine.force_at(x / 10) for x in range(121)]
    assert forces == sorted(forces)  # rises monotonically to the tensile strength


# ---------------------------------------------------------------------------- status codes


async def test_bad_status_gives_bad_nan_and_keeps_other_channels(
    machine: TestingMachineSim,
) -> None:
    cfg = make_config(
        machine,
        [
            channel("force", machine.nodeid("Force")),
            channel("extension", machine.nodeid("Extension")),
        ],
    )
    async with opened(cfg) as driver:
        machine.faults.arm(Fault.DEVICE_ERROR)

        async def bad() -> bool:
            return (await driver.poll())[0].quality == "bad"

        await wait_for_async(bad, timeout_s=5, what="BadSensorFailure")
        force, extension = await driver.poll()
        assert math.isnan(force.raw)
        assert force.flags == {"BadSensorFailure"}
        assert extension.quality == "good"
        machine.faults.clear()

        async def good() -> bool:
            return (await driver.poll())[0].quality == "good"

        await wait_for_async(good, timeout_s=5, what="the sensor to recover")


async def test_uncertain_status(machine: TestingMachineSim) -> None:
    cfg = make_config(machine, [channel("force", machine.nodeid("Force"))])
    machine.set_force(10.0)
    await machine.next_update()
    async with opened(cfg) as driver:
        machine.set_status("Force", "UncertainLastUsableValue")

        async def uncertain() -> bool:
            return (await driver.poll())[0].quality == "uncertain"

        await wait_for_async(uncertain, timeout_s=5, what="an uncertain value")
        (force,) = await driver.poll()
        assert force.flags == {"UncertainLastUsableValue"}
        assert abs(force.raw - 10.0) < 0.2  # an uncertain value keeps its number


async def test_non_numeric_value_is_a_frame_error(machine: TestingMachineSim) -> None:
    cfg = make_config(
        machine,
        [channel("force", machine.nodeid("Force")), channel("state", machine.nodeid("TestState"))],
    )
    async with opened(cfg) as driver:
        with pytest.raises(
            FrameError, match=r"channel state \(ns=2;s=Machine/TestState\): not a number"
        ):
            await driver.poll()
        assert driver.connected  # a FrameError keeps the connection


async def test_unknown_node_is_bad(machine: TestingMachineSim) -> None:
    cfg = make_config(machine, [channel("force", "ns=2;s=Machine/Nope")])
    async with opened(cfg) as driver:
        (reading,) = await driver.poll()
    assert reading.quality == "bad"
    assert reading.flags == {"BadNodeIdUnknown"}


async def test_unknown_namespace_or_path_is_a_connect_error(machine: TestingMachineSim) -> None:
    for node, message in (
        ("nsu=urn:nowhere;s=Machine/Force", "no namespace 'urn:nowhere'"),
        ("/2:Machine/2:Nope", "browse path /2:Machine/2:Nope not found"),
    ):
        driver = OpcUaDriver(make_config(machine, [channel("force", node)]))
        with pytest.raises(ConnectError, match=message) as info:
            await driver.open()
        assert info.value.equipment == "UTM-01"
        await driver.close()
    assert not asyncua_client_tasks()


# ---------------------------------------------------------------------------- subscriptions


async def test_subscription_delivers_data_changes(machine: TestingMachineSim) -> None:
    cfg = make_config(
        machine,
        [
            channel(
                "force",
                machine.nodeid("Force"),
                mode="subscribe",
                unit="kN",
                sampling_interval_ms=50,
            ),
            channel("extension", machine.nodeid("Extension"), mode="subscribe", unit="mm"),
            channel("temperature", machine.nodeid("Temperature")),
        ],
    )
    async with opened(cfg) as driver:
        assert driver.subscribes()
        machine.start_test()
        it = driver.subscribe()
        try:
            seen = await collect(
                it,
                lambda rs: sum(1 for r in rs if r.channel == "force" and r.raw > 5.0) >= 3,
                timeout_s=10,
            )
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        polled = await driver.poll()  # poll channels only
    assert [r.channel for r in polled] == ["temperature"]
    assert {r.channel for r in seen} == {"force", "extension"}
    forces = [r for r in seen if r.channel == "force"]
    assert all(r.unit == "kN" and r.quality == "good" for r in forces)
    times = [r.t_wall for r in forces]
    assert times == sorted(times)
    assert len(set(times)) == len(times)  # one notification per source update
    extensions = [r.raw for r in seen if r.channel == "extension"]
    assert extensions == sorted(extensions)


async def test_subscription_reports_status_codes(machine: TestingMachineSim) -> None:
    cfg = make_config(machine, [channel("force", machine.nodeid("Force"), mode="subscribe")])
    async with opened(cfg) as driver:
        it = driver.subscribe()
        try:
            await next_batch(it)
            machine.set_status("Force", "UncertainSensorNotAccurate")
            seen = await collect(it, lambda rs: any(r.quality == "uncertain" for r in rs))
            assert "UncertainSensorNotAccurate" in seen[-1].flags
            machine.set_status("Force", None)
            machine.faults.arm(Fault.DEVICE_ERROR)
            seen = await collect(it, lambda rs: any(r.quality == "bad" for r in rs))
            bad = next(r for r in seen if r.quality == "bad")
            assert math.isnan(bad.raw)
            assert bad.flags == {"BadSensorFailure"}
            machine.faults.arm(Fault.GARBAGE)
            seen = await collect(it, lambda rs: any("non_numeric" in r.flags for r in rs))
            assert next(r for r in seen if "non_numeric" in r.flags).quality == "bad"
            machine.faults.clear()
            await collect(it, lambda rs: any(r.quality == "good" for r in rs))
        finally:
            await it.aclose()  # type: ignore[attr-defined]


async def test_a_driver_without_subscribe_channels(machine: TestingMachineSim) -> None:
    cfg = make_config(machine, [channel("force", machine.nodeid("Force"))])
    async with opened(cfg) as driver:
        assert not driver.subscribes()
        assert [r async for r in driver.subscribe()] == []


# ---------------------------------------------------------------------------- security


async def test_security_none_refuses_a_secure_mode_the_server_lacks(
    machine: TestingMachineSim, pki: dict[str, CertPair]
) -> None:
    cfg = make_config(
        machine,
        [channel("force", machine.nodeid("Force"))],
        security="Basic256Sha256,SignAndEncrypt",
        certificate=str(pki["client"].certificate),
        private_key=str(pki["client"].private_key),
    )
    driver = OpcUaDriver(cfg)
    with pytest.raises(ConnectError, match="offers no Basic256Sha256,SignAndEncrypt endpoint"):
        await driver.poll()
    await driver.close()


@pytest.mark.parametrize("security", ["Basic256Sha256,Sign", "Basic256Sha256,SignAndEncrypt"])
@pytest.mark.parametrize("pin", [False, True])
async def test_secure_session_with_certificates_and_password(
    secure_sim: TestingMachineSim, pki: dict[str, CertPair], password: str, security: str, pin: bool
) -> None:
    cfg = make_config(
        secure_sim,
        [
            channel("force", secure_sim.nodeid("Force")),
            channel("force-sub", secure_sim.nodeid("Force"), mode="subscribe"),
        ],
        security=security,
        certificate=str(pki["client"].certificate),
        private_key=str(pki["client"].private_key),
        server_certificate=str(pki["server"].certificate) if pin else None,
        username="operator",
        password_env=password,
    )
    async with opened(cfg) as driver:
        (reading,) = await driver.poll()
        assert reading.quality == "good"
        it = driver.subscribe()
        try:
            assert (await next_batch(it))[0].channel == "force-sub"
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        session = driver._session
        assert session is not None
        policy = session.client.security_policy
        assert policy.URI.endswith("#Basic256Sha256")
        assert policy.Mode.name == security.split(",")[1]


async def test_password_from_a_file(
    secure_sim: TestingMachineSim, pki: dict[str, CertPair], tmp_path: Path
) -> None:
    secret = tmp_path / "opcua-password"
    secret.write_text(USERS["operator"] + "\n", encoding="utf-8")
    cfg = make_config(
        secure_sim,
        [channel("force", secure_sim.nodeid("Force"))],
        security="Basic256Sha256,SignAndEncrypt",
        certificate=str(pki["client"].certificate),
        private_key=str(pki["client"].private_key),
        username="operator",
        password_file=str(secret),
    )
    async with opened(cfg) as driver:
        assert (await driver.poll())[0].quality == "good"


async def test_wrong_password_is_a_clear_connect_error(
    secure_sim: TestingMachineSim, pki: dict[str, CertPair], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    cfg = make_config(
        secure_sim,
        [channel("force", secure_sim.nodeid("Force"))],
        security="Basic256Sha256,SignAndEncrypt",
        certificate=str(pki["client"].certificate),
        private_key=str(pki["client"].private_key),
        username="operator",
        password_env=PASSWORD_ENV,
    )
    rejected = secure_sim.rejected_logins
    driver = OpcUaDriver(cfg)
    with pytest.raises(ConnectError) as info:
        await driver.open()
    message = str(info.value)
    assert "BadUserAccessDenied" in message
    assert "check username 'operator' and its password" in message
    assert "not-the-password" not in message
    assert secure_sim.rejected_logins == rejected + 1
    await driver.close()
    assert not asyncua_client_tasks()


async def test_anonymous_is_refused_by_a_server_with_users(
    secure_sim: TestingMachineSim, pki: dict[str, CertPair]
) -> None:
    cfg = make_config(
        secure_sim,
        [channel("force", secure_sim.nodeid("Force"))],
        security="Basic256Sha256,Sign",
        certificate=str(pki["client"].certificate),
        private_key=str(pki["client"].private_key),
    )
    driver = OpcUaDriver(cfg)
    with pytest.raises(ConnectError, match="the server wants a username"):
        await driver.poll()
    await driver.close()


async def test_missing_password_env_and_certificate_file(
    secure_sim: TestingMachineSim,
    pki: dict[str, CertPair],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    base: dict[str, Any] = {
        "security": "Basic256Sha256,Sign",
        "certificate": str(pki["client"].certificate),
        "private_key": str(pki["client"].private_key),
        "username": "operator",
        "password_env": PASSWORD_ENV,
    }
    nodes = [channel("force", secure_sim.nodeid("Force"))]
    driver = OpcUaDriver(make_config(secure_sim, nodes, **base))
    with pytest.raises(ConnectError, match=f"{PASSWORD_ENV} is not set"):
        await driver.open()
    await driver.close()
    base["certificate"] = str(tmp_path / "missing.der")
    driver = OpcUaDriver(make_config(secure_sim, nodes, **base))
    with pytest.raises(ConnectError, match=r"missing\.der"):
        await driver.open()
    await driver.close()
    assert not asyncua_client_tasks()


# ---------------------------------------------------------------------------- connection loss


async def test_refused_and_silent_servers_are_connect_errors() -> None:
    port = free_port()  # nothing listens
    driver = OpcUaDriver(make_config(f"opc.tcp://127.0.0.1:{port}", [channel("f", "i=2258")]))
    with pytest.raises(ConnectError, match="cannot connect"):
        await driver.poll()
    await driver.close()

    connections = {"open": 0, "closed": 0}

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections["open"] += 1
        with contextlib.suppress(ConnectionError):
            await reader.read()  # accept, read the Hello, never answer, until the client closes
        connections["closed"] += 1
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        driver = OpcUaDriver(
            make_config(f"opc.tcp://127.0.0.1:{port}", [channel("f", "i=2258")], timeout_s=0.5)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectError, match="no session within"):
            await driver.poll()
        assert loop.time() - started < 20 * 0.5  # bounded by the timeout, not a hang
        # cancelled while connecting (the scheduler's hard timeout): nothing is left open
        opened_before = connections["open"]
        task = asyncio.create_task(driver.poll())
        await wait_for_async(lambda: connections["open"] > opened_before, what="the connection")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for_async(
            lambda: connections["closed"] == connections["open"], timeout_s=5, what="socket closed"
        )
        assert not asyncua_client_tasks()
        await driver.close()
    finally:
        server.close()
        await server.wait_closed()
    assert not asyncua_client_tasks()


async def test_restart_connect_error_then_reconnect_and_resubscribe() -> None:
    async with TestingMachineSim(update_hz=20.0, seed=3) as sim:
        cfg = make_config(
            sim,
            [
                channel("force", sim.nodeid("Force")),
                channel("extension", sim.nodeid("Extension"), mode="subscribe"),
            ],
        )
        sim.start_test()
        async with opened(cfg) as driver:
            assert len(await driver.poll()) == 1
            it = driver.subscribe()
            await next_batch(it)
            assert driver.connects == 1

            await sim.stop()
            with pytest.raises(ConnectError):  # the subscription ends with the connection
                await collect(it, lambda rs: False, timeout_s=10)
            with pytest.raises(ConnectError):
                await driver.poll()
            with pytest.raises(ConnectError, match="cannot connect"):  # still down
                await driver.poll()

            await sim.start()  # same port
            assert (await driver.poll())[0].quality == "good"
            assert driver.connects == 2
            it = driver.subscribe()  # what the gateway's supervisor does after its backoff
            try:
                seen = await collect(it, lambda rs: len(rs) >= 3)
            finally:
                await it.aclose()  # type: ignore[attr-defined]
            assert all(r.channel == "extension" and r.quality == "good" for r in seen)
            assert seen[-1].raw > seen[0].raw  # data flows again: the test is still running


async def test_disconnect_fault_and_restart() -> None:
    async with TestingMachineSim(update_hz=20.0, seed=4) as sim:
        cfg = make_config(sim, [channel("force", sim.nodeid("Force"))])
        async with opened(cfg) as driver:
            await driver.poll()
            sim.faults.arm(Fault.DISCONNECT, 1)
            await wait_for_async(lambda: not sim.running, timeout_s=5, what="the server to stop")

            async def refused() -> bool:
                try:
                    await driver.poll()
                except ConnectError:
                    return True
                return False

            await wait_for_async(refused, timeout_s=5, what="a ConnectError")
            await sim.restart()
            assert (await driver.poll())[0].quality == "good"


async def test_slow_fault_holds_values(machine: TestingMachineSim) -> None:
    cfg = make_config(machine, [channel("force", machine.nodeid("Force"))])
    async with opened(cfg) as driver:
        await machine.next_update()
        machine.faults.arm(Fault.SLOW)
        start = machine.updates
        first = await driver.poll()
        await asyncio.sleep(0.2)  # several update periods: the value must hold, not change
        second = await driver.poll()
        assert first[0].t_wall == second[0].t_wall
        assert first[0].raw == second[0].raw
        assert machine.updates == start
        machine.faults.clear()

        async def moved() -> bool:
            return (await driver.poll())[0].t_wall > first[0].t_wall

        await wait_for_async(moved, timeout_s=5, what="values to move again")


async def test_errors_are_driver_errors_only(machine: TestingMachineSim) -> None:
    """A closed driver refuses politely; nothing but DriverError escapes."""
    cfg = make_config(machine, [channel("force", machine.nodeid("Force"), mode="subscribe")])
    driver = OpcUaDriver(cfg)
    await driver.open()
    await driver.close()
    with pytest.raises(DriverError, match="closed"):
        await anext(driver.subscribe())


async def test_poll_and_subscribe_share_one_connection(machine: TestingMachineSim) -> None:
    """As the gateway runs them: two tasks, no open() first, one session between them."""
    cfg = make_config(
        machine,
        [
            channel("force", machine.nodeid("Force"), mode="subscribe"),
            channel("extension", machine.nodeid("Extension")),
        ],
    )
    driver = OpcUaDriver(cfg)
    got: list[Reading] = []

    async def consume() -> None:
        async for readings in driver.subscribe():
            got.extend(readings)

    try:
        task = asyncio.create_task(consume())
        polled = await asyncio.gather(driver.poll(), driver.poll())
        await wait_for_async(lambda: len(got) >= 3, timeout_s=5, what="notifications")
        assert driver.connects == 1
        assert all(len(p) == 1 and p[0].channel == "extension" for p in polled)
        assert {r.channel for r in got} == {"force"}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await driver.close()
    await wait_for_async(
        lambda: not asyncua_client_tasks(), timeout_s=5, what="client tasks to end"
    )
