"""A simulated universal testing machine: an asyncua OPC UA server.

Address space (namespace ``urn:calgate:sim:utm``, index 2 in a fresh server; the index
in use is :attr:`TestingMachineSim.namespace_index`), under ``Objects/Machine``:

===================== ======== ===== =======================================================
node id (string)      type     unit  value
===================== ======== ===== =======================================================
``Machine/Force``     Double   kN    load cell force
``Machine/Extension`` Double   mm    crosshead extension
``Machine/TestState`` String   -     ``idle``, ``running`` or ``finished``
``Machine/Temperature`` Double °C    ambient temperature near the specimen
===================== ======== ===== =======================================================

Physics: when a test runs (:meth:`start_test`) the crosshead moves at
``crosshead_mm_s`` and the force follows an elastic-plastic curve (linear to the yield
force, hardening to the tensile strength, necking, then the break, after which the
force falls to zero and the state becomes ``finished``). Idle, the load cell reads a
small zero-point noise; :meth:`set_force` holds a static force (with noise), as a
force calibration check does. Values are written on a background task at ``update_hz``
with the acquisition time as SourceTimestamp.

Faults (``sim.faults.arm(Fault.X, count)``), taken once per update tick:

- DEVICE_ERROR: the Force node gets ``BadSensorFailure`` and no value.
- GARBAGE: the Force node gets an array of Doubles instead of one (a non-numeric
  reading for a client that expects a scalar).
- SLOW, NO_REPLY: the tick is skipped: every value holds.
- DISCONNECT: the server stops (its port closes); :meth:`restart` brings it back on the
  same port.

:meth:`set_status` gives a node a fixed status code (``"UncertainLastUsableValue"``,
``"BadOutOfService"``...) until it is cleared with ``None``.

Security: ``security`` is ``"None"``, ``"Basic256Sha256,Sign"``,
``"Basic256Sha256,SignAndEncrypt"`` or a list of them (the endpoints offered); a secure
endpoint needs ``certificate`` and ``private_key`` files. ``users`` (name -> password)
turns on username authentication; anonymous sessions are then refused unless
``allow_anonymous`` is true. This module shares no code with ``drivers`` on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import asyncua.ua as _ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.uaerrors import UaError

from simulators.faults import Fault, Faults
from simulators.net import free_port

__all__ = ["NAMESPACE", "NODES", "STATES", "TestingMachineSim"]

log = logging.getLogger(__name__)

# asyncua annotates its API with its own wrapper classes (ua.Int16, ua.UInt32, ua.DateTime)
# where plain Python values are passed at run time; its ``ua`` module is used untyped.
ua: Any = _ua

NAMESPACE = "urn:calgate:sim:utm"
#: node id string -> (browse name, unit)
NODES: dict[str, tuple[str, str]] = {
    "Machine/Force": ("Force", "kN"),
    "Machine/Extension": ("Extension", "mm"),
    "Machine/TestState": ("TestState", ""),
    "Machine/Temperature": ("Temperature", "°C"),
}
STATES = ("idle", "running", "finished")
APPLICATION_URI = "urn:calgate:sim:utm:server"

_SECURITY: dict[str, ua.SecurityPolicyType] = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256,Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256,SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}


class _Users(UserManager):
    """Username/password authentication against a fixed table."""

    def __init__(self, users: dict[str, str], *, allow_anonymous: bool) -> None:
        self.users = dict(users)
        self.allow_anonymous = allow_anonymous
        self.rejected = 0

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            return User(role=UserRole.Anonymous) if self.allow_anonymous else None
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        self.rejected += 1
        return None


class TestingMachineSim:
    """An OPC UA server simulating a universal testing machine (see the module docs)."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        security: str | Sequence[str] = "None",
        certificate: str | Path | None = None,
        private_key: str | Path | None = None,
        users: dict[str, str] | None = None,
        allow_anonymous: bool | None = None,
        update_hz: float = 10.0,
        seed: int | None = None,
        faults: Faults | None = None,
        application_uri: str = APPLICATION_URI,
        # the specimen and the machine
        crosshead_mm_s: float = 2.0,
        stiffness_kn_mm: float = 20.0,
        yield_kn: float = 40.0,
        tensile_kn: float = 55.0,
        tensile_mm: float = 12.0,
        break_mm: float = 15.0,
        break_kn: float = 45.0,
        noise_kn: float = 0.02,
        zero_noise_kn: float = 0.002,
        temperature_c: float = 23.0,
    ) -> None:
        policies = [security] if isinstance(security, str) else list(security)
        unknown = [p for p in policies if p not in _SECURITY]
        if unknown or not policies:
            raise ValueError(f"security must be some of {', '.join(_SECURITY)}, not {unknown}")
        secure = any(p != "None" for p in policies)
        if secure and (certificate is None or private_key is None):
            raise ValueError("a secure endpoint needs certificate and private_key files")
        if update_hz <= 0:
            raise ValueError("update_hz must be positive")
        if not 0 < yield_kn / stiffness_kn_mm < tensile_mm < break_mm:
            raise ValueError("need 0 < yield extension < tensile_mm < break_mm")
        self.host = host
        self.port = port
        self.policies = policies
        self.certificate = certificate
        self.private_key = private_key
        self.users = users
        self.allow_anonymous = users is None if allow_anonymous is None else allow_anonymous
        self.update_hz = update_hz
        self.faults = faults if faults is not None else Faults()
        self.application_uri = application_uri
        self.rng = random.Random(seed)
        self.crosshead_mm_s = crosshead_mm_s
        self.stiffness_kn_mm = stiffness_kn_mm
        self.yield_kn = yield_kn
        self.tensile_kn = tensile_kn
        self.tensile_mm = tensile_mm
        self.break_mm = break_mm
        self.break_kn = break_kn
        self.noise_kn = noise_kn
        self.zero_noise_kn = zero_noise_kn
        self.temperature_c = temperature_c
        # state
        self.state = "idle"
        self.extension_mm = 0.0
        self.held_force_kn: float | None = None
        self.namespace_index = -1
        self.updates = 0
        #: nodes per Read request of each client request (a multi-node read is one entry)
        self.read_requests: list[int] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._t_start = 0.0
        self._statuses: dict[str, ua.StatusCode] = {}
        self._server: Server | None = None
        self._user_manager: _Users | None = None
        self._nodeids: dict[str, ua.NodeId] = {}
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ scripting

    def start_test(self) -> None:
        """Start a tensile test from zero extension."""
        self.held_force_kn = None
        self.extension_mm = 0.0
        self._t_start = time.monotonic()
        self.state = "running"

    def stop_test(self) -> None:
        """Stop the crosshead (the test ends as ``finished``; the force is released)."""
        if self.state == "running":
            self.state = "finished"

    def reset(self) -> None:
        """Back to idle: no specimen, no held force, zero extension."""
        self.state = "idle"
        self.extension_mm = 0.0
        self.held_force_kn = None

    def set_force(self, kn: float | None) -> None:
        """Hold a static force (with noise), as in a force calibration; ``None`` releases it."""
        self.state = "idle"
        self.extension_mm = 0.0
        self.held_force_kn = kn

    def set_status(self, node: str, status: str | None) -> None:
        """Give ``node`` (``"Force"`` or ``"Machine/Force"``) a fixed status code, or clear it."""
        key = node if node in NODES else f"Machine/{node}"
        if key not in NODES:
            raise KeyError(f"no node {node!r}; nodes: {', '.join(NODES)}")
        if status is None:
            self._statuses.pop(key, None)
            return
        code = getattr(ua.StatusCodes, status, None)
        if not isinstance(code, int):
            raise ValueError(f"unknown OPC UA status code {status!r}")
        self._statuses[key] = ua.StatusCode(code)

    def clear(self) -> None:
        """Clear every fault and status override."""
        self.faults.clear()
        self._statuses.clear()

    @property
    def rejected_logins(self) -> int:
        return self._user_manager.rejected if self._user_manager is not None else 0

    @property
    def running(self) -> bool:
        return self._running

    def endpoints(self) -> dict[str, str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {"opcua": f"opc.tcp://{host}:{self.port}"}

    def nodeid(self, name: str) -> str:
        """The node id string of ``"Force"`` / ``"Machine/Force"`` in the namespace in use."""
        key = name if name in NODES else f"Machine/{name}"
        return f"ns={self.namespace_index};s={key}"

    # ------------------------------------------------------------------ physics

    def force_at(self, extension_mm: float) -> float:
        """The true specimen force (kN) at an extension (mm), without noise."""
        x = extension_mm
        x_yield = self.yield_kn / self.stiffness_kn_mm
        if x <= 0:
            return 0.0
        if x <= x_yield:
            return self.stiffness_kn_mm * x
        if x <= self.tensile_mm:
            u = (x - x_yield) / (self.tensile_mm - x_yield)
            return self.yield_kn + (self.tensile_kn - self.yield_kn) * (1.0 - (1.0 - u) ** 2)
        if x < self.break_mm:
            u = (x - self.tensile_mm) / (self.break_mm - self.tensile_mm)
            return self.tensile_kn - (self.tensile_kn - self.break_kn) * u * u
        return 0.0

    def _step(self) -> tuple[float, float]:
        """Advance the machine; the (force, extension) now."""
        if self.state == "running":
            self.extension_mm = (time.monotonic() - self._t_start) * self.crosshead_mm_s
            if self.extension_mm >= self.break_mm:
                self.extension_mm = self.break_mm
                self.state = "finished"
            else:
                force = self.force_at(self.extension_mm)
                return force + self.rng.gauss(0.0, self.noise_kn), self.extension_mm
        if self.held_force_kn is not None:
            return self.held_force_kn + self.rng.gauss(0.0, self.noise_kn), self.extension_mm
        return self.rng.gauss(0.0, self.zero_noise_kn), self.extension_mm

    # ------------------------------------------------------------------ server

    async def _build(self) -> Server:
        server = Server(user_manager=self._user_manager)
        await server.init()
        server.set_endpoint(self.endpoints()["opcua"])
        server.set_server_name("calgate simulated testing machine")
        await server.set_application_uri(self.application_uri)
        server.set_security_policy([_SECURITY[p] for p in self.policies])
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
        tokens: list[type] = []
        if self.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if self.users is not None:
            tokens.append(ua.UserNameIdentityToken)
        server.set_identity_tokens(tokens)
        server.subscribe_server_callback(CallbackType.PreRead, self._on_read)
        idx = await server.register_namespace(NAMESPACE)
        self.namespace_index = idx
        machine = await server.nodes.objects.add_object(
            ua.NodeId("Machine", idx), ua.QualifiedName("Machine", idx)
        )
        for key, (browse, unit) in NODES.items():
            nodeid = ua.NodeId(key, idx)
            initial: Any = "idle" if key.endswith("TestState") else 0.0
            vtype = ua.VariantType.String if key.endswith("TestState") else ua.VariantType.Double
            var = await machine.add_variable(
                nodeid, ua.QualifiedName(browse, idx), initial, varianttype=vtype
            )
            if unit:
                await var.add_property(
                    ua.NodeId(f"{key}/EngineeringUnits", idx),
                    ua.QualifiedName("EngineeringUnits", 0),
                    ua.LocalizedText(unit),
                )
            self._nodeids[key] = nodeid
        return server

    async def start(self) -> None:
        """Build the address space (first time), listen, and start the update task."""
        await self._settle_stopper()
        if self._running:
            return
        if self._server is None:
            if self.port == 0:
                self.port = free_port(self.host)
            if self.users is not None:
                self._user_manager = _Users(self.users, allow_anonymous=self.allow_anonymous)
            self._server = await self._build()
        await self._server.start()
        self._running = True
        self._task = asyncio.create_task(self._update_loop(), name=f"utm-sim:{self.port}")

    async def stop(self) -> None:
        """Stop listening (every client connection closes); the port is kept for restart."""
        await self._settle_stopper()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._halt()

    async def _settle_stopper(self) -> None:
        """Let a DISCONNECT fault's stop finish before starting or stopping again."""
        stopper, self._stopper = self._stopper, None
        if stopper is not None and stopper is not asyncio.current_task():
            with contextlib.suppress(Exception):
                await stopper

    async def _halt(self) -> None:
        """Stop listening and forget every session, as a power cycle does.

        asyncua keeps a session with subscriptions alive after its connection drops
        (for a reconnecting client); a restarted instrument has forgotten them.
        """
        if not self._running or self._server is None:
            return
        self._running = False
        server = self._server
        await server.stop()
        sessions: dict[Any, Any] = getattr(server.iserver, "_external_sessions", {})
        for session in list(sessions.values()):
            with contextlib.suppress(Exception):
                await session.close_session(True)

    async def restart(self) -> None:
        """Stop and start again on the same port (a power cycle)."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_read(self, event: Any, _dispatcher: Any) -> None:
        if event.is_external:
            self.read_requests.append(len(event.request_params.NodesToRead))

    # ------------------------------------------------------------------ updates

    async def _write(self, key: str, value: Any, vtype: ua.VariantType, now: datetime) -> None:
        assert self._server is not None
        status = self._statuses.get(key, ua.StatusCode(ua.StatusCodes.Good))
        variant = ua.Variant(value, vtype)
        if status.is_bad():
            variant = ua.Variant()
        await self._server.write_attribute_value(
            self._nodeids[key],
            ua.DataValue(variant, StatusCode=status, SourceTimestamp=now, ServerTimestamp=now),
        )

    async def _tick(self) -> None:
        fault = self.faults.take()
        if fault in (Fault.SLOW, Fault.NO_REPLY):
            return
        if fault is Fault.DISCONNECT:
            log.info("simulated testing machine: disconnect fault, stopping the server")
            self._stopper = asyncio.create_task(self._disconnect())
            return
        force, extension = self._step()
        now = datetime.now(UTC)
        temperature = self.temperature_c + self.rng.gauss(0.0, 0.01)
        if fault is Fault.DEVICE_ERROR:
            assert self._server is not None
            await self._server.write_attribute_value(
                self._nodeids["Machine/Force"],
                ua.DataValue(
                    ua.Variant(),
                    StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                ),
            )
        elif fault is Fault.GARBAGE:
            # an array where a scalar belongs (the node's type check only sees Double)
            await self._write("Machine/Force", [force, force], ua.VariantType.Double, now)
        else:
            await self._write("Machine/Force", force, ua.VariantType.Double, now)
        await self._write("Machine/Extension", extension, ua.VariantType.Double, now)
        await self._write("Machine/TestState", self.state, ua.VariantType.String, now)
        await self._write("Machine/Temperature", temperature, ua.VariantType.Double, now)
        self.updates += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def next_update(self, count: int = 1) -> None:
        """Wait until ``count`` more update ticks have written their values."""
        loop = asyncio.get_running_loop()
        for _ in range(count):
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            await waiter

    async def _disconnect(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        await self._halt()

    async def _update_loop(self) -> None:
        period = 1.0 / self.update_hz
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            try:
                await self._tick()
            except (UaError, OSError, ValueError) as exc:  # keep simulating
                log.warning("simulated testing machine: update failed: %s", exc)
            deadline += period
            delay = deadline - loop.time()
            if delay < 0:  # late: skip the missed ticks, do not queue them
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)
