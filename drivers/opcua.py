"""OPC UA instruments (universal testing machines and the like), driver kind "opcua".

Channels name their node in config: a NodeId string (``ns=2;s=Machine/Force``,
``i=2258``), a NodeId with its namespace URI instead of its index
(``nsu=urn:calgate:sim:utm;s=Machine/Force``; the index is looked up once per
connection, so it survives a server that renumbers its namespaces), or a browse path
from the Objects folder (``/2:Machine/2:Force``). Each channel is read by ``mode``:

- ``poll``: :meth:`OpcUaDriver.poll` reads every poll channel in ONE Read request.
- ``subscribe``: :meth:`OpcUaDriver.subscribe` creates one subscription with a
  monitored item per channel (``sampling_interval_ms``) and yields the data changes.

A driver with both kinds serves both: the gateway calls ``poll()`` on its schedule (poll
channels only) and iterates ``subscribe()`` (subscribe channels only) in another task;
both share one connection.

Readings: ``t_wall`` is the value's SourceTimestamp, else its ServerTimestamp, else the
local clock (aware UTC); ``t_mono`` is the local monotonic clock at arrival. Status codes
map to quality (:func:`quality_of`): Good is ``good``; Uncertain* is ``uncertain`` and
Bad* is ``bad`` (raw NaN), both flagged with the status name (``UncertainLastUsableValue``,
``BadSensorFailure``); a Good sub-code (``GoodClamped``) stays ``good`` and is flagged.
A Good NaN is ``bad`` ``nan``; ±inf is ``bad`` ``overflow``/``underflow``. A non-numeric
value (a String, an array, an empty Good value) is a FrameError in ``poll()``; in
``subscribe()`` (which cannot skip one poll) it becomes a ``bad`` reading flagged
``non_numeric``. Booleans read as 0.0 and 1.0.

Connection: every call has a timeout (``timeout_s``). A lost connection (server
stopped or restarted, network down) makes ``poll()`` raise ConnectError and
``subscribe()`` raise ConnectError; the next ``poll()`` or ``subscribe()`` connects again
(a fresh session, so the subscription is created again). The gateway's supervisor calls
``subscribe()`` again after its backoff. Exceptions of asyncua, the OS and the event loop
are translated in :meth:`OpcUaDriver._translate` (and :meth:`OpcUaDriver._connect_error`
for session set-up) only.

Security: ``security = "None"`` or ``"Basic256Sha256,Sign"`` / ``"Basic256Sha256,SignAndEncrypt"``
with the client's ``certificate`` (DER or PEM) and ``private_key`` (PEM) files; the
client's application URI is taken from the certificate's URI SubjectAltName unless
``application_uri`` is set. ``server_certificate`` pins the server's certificate (else it
is taken from the server's endpoint list). ``username`` with a password from
``password_env`` (an environment variable) or ``password_file`` (a file, e.g. a systemd
credential); secrets are never in the TOML and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncua.ua as _ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies
from asyncua.ua import status_codes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from drivers.base import Buses, Driver, DriverConfig, Quality, Reading, unique_channel_names
from drivers.errors import ConnectError, DeviceError, DeviceTimeout, DriverError, FrameError

__all__ = [
    "SECURITY_MODES",
    "NodeSpec",
    "OpcUaChannel",
    "OpcUaConfig",
    "OpcUaDriver",
    "convert_value",
    "parse_node",
    "quality_of",
    "reading_from_datavalue",
    "status_name",
]

log = logging.getLogger(__name__)

# asyncua annotates its API with its own wrapper classes (ua.Boolean, ua.Int16, ua.UInt32)
# where plain Python values are passed at run time; its ``ua`` module is used untyped.
ua: Any = _ua

SecurityMode = Literal["None", "Basic256Sha256,Sign", "Basic256Sha256,SignAndEncrypt"]
SECURITY_MODES: tuple[str, ...] = ("None", "Basic256Sha256,Sign", "Basic256Sha256,SignAndEncrypt")
DEFAULT_APPLICATION_URI = "urn:calgate:client"

# ---------------------------------------------------------------------------- node specs


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A parsed channel ``node``: ``kind`` is ``nodeid``, ``nsu`` or ``path``.

    ``nodeid``: ``text`` is a NodeId string. ``nsu``: ``namespace_uri`` plus ``text``, the
    NodeId string without its namespace. ``path``: ``path`` holds ``(namespace index,
    browse name)`` steps from the Objects folder.
    """

    kind: Literal["nodeid", "nsu", "path"]
    text: str
    namespace_uri: str = ""
    path: tuple[tuple[int, str], ...] = ()


_ID_KEYS = ("i=", "s=", "g=", "b=")


def parse_node(node: str) -> NodeSpec:
    """Check a channel's ``node`` string and say how it is resolved (ValueError if bad)."""
    text = node.strip()
    if not text:
        raise ValueError("node must not be empty")
    if text.startswith("/"):
        steps: list[tuple[int, str]] = []
        for part in text[1:].split("/"):
            index, sep, name = part.partition(":")
            if not sep or not name or not index.isdigit():
                raise ValueError(
                    f"{node!r}: a browse path is /NS:Name/NS:Name... from the Objects "
                    f"folder, e.g. /2:Machine/2:Force; bad step {part!r}"
                )
            steps.append((int(index), name))
        return NodeSpec("path", text, path=tuple(steps))
    parts = text.split(";")
    identifier_at = next((i for i, p in enumerate(parts) if p.strip().startswith(_ID_KEYS)), None)
    if identifier_at is None:
        raise ValueError(
            f"{node!r}: not a NodeId (ns=2;s=Name, ns=0;i=2258, nsu=URI;s=Name) "
            "nor a browse path (/2:Machine/2:Force)"
        )
    head = {}
    for p in parts[:identifier_at]:
        key, sep, value = p.partition("=")
        if not sep or key.strip() not in ("ns", "nsu", "srv"):
            raise ValueError(f"{node!r}: unexpected {p!r} before the identifier")
        head[key.strip()] = value.strip()
    identifier = ";".join(parts[identifier_at:]).strip()
    key, _, value = identifier.partition("=")
    if key == "i" and not value.isdigit():
        raise ValueError(f"{node!r}: a numeric identifier (i=) must be a non-negative integer")
    if key in ("s", "b", "g") and not value:
        raise ValueError(f"{node!r}: empty identifier")
    if "srv" in head:
        raise ValueError(f"{node!r}: nodes on other servers (srv=) are not supported")
    if "ns" in head and "nsu" in head:
        raise ValueError(f"{node!r}: give ns= or nsu=, not both")
    if "ns" in head and not head["ns"].isdigit():
        raise ValueError(f"{node!r}: ns= must be a namespace index (0, 1, 2...)")
    if "nsu" in head:
        if not head["nsu"]:
            raise ValueError(f"{node!r}: nsu= needs a namespace URI")
        return NodeSpec("nsu", identifier, namespace_uri=head["nsu"])
    try:
        ua.NodeId.from_string(text)
    except (UaError, ValueError) as exc:
        raise ValueError(f"{node!r}: not a valid NodeId: {exc}") from None
    return NodeSpec("nodeid", text)


# ---------------------------------------------------------------------------- config


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "opc.tcp":
        raise ValueError(f"{url!r}: an OPC UA URL is opc.tcp://host:port")
    if not parts.hostname:
        raise ValueError(f"{url!r}: the URL needs a host: opc.tcp://host:4840")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"{url!r}: bad port") from None
    if parts.username or parts.password:
        raise ValueError(
            f"{url!r}: no credentials in the URL; use username and password_env/password_file"
        )
    return url


class OpcUaChannel(BaseModel):
    """One value of the instrument: its node, how it is read, its unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    node: str
    mode: Literal["poll", "subscribe"] = "poll"
    unit: str = ""
    sampling_interval_ms: float = Field(default=100.0, ge=0, le=3_600_000)

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        parse_node(value)
        return value.strip()

    @property
    def spec(self) -> NodeSpec:
        return parse_node(self.node)


class OpcUaConfig(DriverConfig):
    """``driver = "opcua"``: one OPC UA server (an instrument's controller)."""

    driver: Literal["opcua"] = "opcua"
    url: str
    security: SecurityMode = "None"
    certificate: str | None = Field(default=None, validate_default=True)
    private_key: str | None = Field(default=None, validate_default=True)
    server_certificate: str | None = None
    application_uri: str | None = None
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(default=None, min_length=1)
    password_file: str | None = Field(default=None, min_length=1)
    publishing_interval_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    channels: tuple[OpcUaChannel, ...]

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("certificate", "private_key")
    @classmethod
    def _security_files(cls, value: str | None, info: ValidationInfo) -> str | None:
        security = info.data.get("security")
        if security is None:  # security itself is invalid: reported there
            return value
        if security != "None" and not value:
            raise ValueError(f"security {security!r} needs a {info.field_name} file")
        if security == "None" and value:
            raise ValueError(
                f"{info.field_name} is only used with security "
                '"Basic256Sha256,Sign" or "Basic256Sha256,SignAndEncrypt"'
            )
        return value

    @field_validator("server_certificate")
    @classmethod
    def _server_certificate(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("security") == "None":
            raise ValueError("server_certificate is only used with a secure security mode")
        return value

    @field_validator("password_env", "password_file")
    @classmethod
    def _password(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not info.data.get("username"):
            raise ValueError(f"{info.field_name} is only used with username")
        if info.field_name == "password_file" and info.data.get("password_env"):
            raise ValueError("give password_env or password_file, not both")
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, channels: tuple[OpcUaChannel, ...]) -> tuple[OpcUaChannel, ...]:
        return unique_channel_names(channels)

    def bus_key(self) -> str | None:
        return None  # each equipment has its own session

    def password(self) -> str | None:
        """The password, read now from its env var or file (ValueError if unavailable)."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ValueError(f"environment variable {self.password_env} is not set")
            return value
        if self.password_file:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(
                    f"cannot read password_file {self.password_file}: {exc.strerror}"
                ) from None
        return None


# ---------------------------------------------------------------------------- mapping

_GOOD_FLAGS: frozenset[str] = frozenset()
_NAN_FLAGS = frozenset({"nan"})
_OVERFLOW_FLAGS = frozenset({"overflow"})
_UNDERFLOW_FLAGS = frozenset({"underflow"})
_SEVERITY_MASK = 0xC0000000
_CODE_MASK = 0xFFFF0000  # the low 16 bits are info bits (limits, overflow)


def status_name(code: int) -> str:
    """The symbolic name of a status code (info bits ignored): ``BadSensorFailure``."""
    name, _doc = status_codes.get_name_and_doc(code & _CODE_MASK)
    return name


def quality_of(code: int) -> tuple[Quality, frozenset[str]]:
    """(quality, flags) of a status code: Good, Uncertain* or Bad* (flagged by name)."""
    if code == 0:
        return "good", _GOOD_FLAGS
    severity = code & _SEVERITY_MASK
    flags = frozenset({status_name(code)})
    if severity == 0:
        return "good", flags if code & _CODE_MASK else _GOOD_FLAGS
    if severity == 0x40000000:
        return "uncertain", flags
    return "bad", flags  # 0x80000000 and the reserved 0xC0000000 are both bad


def convert_value(value: Any) -> float:
    """A numeric OPC UA value as float; TypeError for anything else (strings, arrays)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"not a number: {type(value).__name__} {value!r:.60}")


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def reading_from_datavalue(
    dv: Any,
    *,
    equipment: str,
    channel: str,
    unit: str,
    t_mono: float,
    node: str = "",
) -> Reading:
    """Map one asyncua ``DataValue`` to a Reading (FrameError for a non-numeric Good value).

    Pure: no I/O. ``dv`` has ``Value`` (a Variant or None), ``StatusCode`` (or None: Good),
    ``SourceTimestamp`` and ``ServerTimestamp``.
    """
    status = dv.StatusCode
    code = int(status.value) if status is not None else 0
    quality, flags = quality_of(code)
    t_wall = _aware(dv.SourceTimestamp) or _aware(dv.ServerTimestamp) or datetime.now(UTC)
    variant = dv.Value
    value = variant.Value if variant is not None else None
    if quality == "bad":
        return Reading(
            equipment=equipment,
            channel=channel,
            raw=math.nan,
            unit=unit,
            t_wall=t_wall,
            t_mono=t_mono,
            flags=flags,
            quality="bad",
        )
    try:
        raw = convert_value(value)
    except TypeError as exc:
        where = f" ({node})" if node else ""
        raise FrameError(f"channel {channel}{where}: {exc}", equipment=equipment) from None
    if raw != raw:
        quality, flags = "bad", flags | _NAN_FLAGS
    elif raw == math.inf:
        quality, flags = "bad", flags | _OVERFLOW_FLAGS
    elif raw == -math.inf:
        quality, flags = "bad", flags | _UNDERFLOW_FLAGS
    return Reading(
        equipment=equipment,
        channel=channel,
        raw=raw,
        unit=unit,
        t_wall=t_wall,
        t_mono=t_mono,
        flags=flags,
        quality=quality,
    )


# ---------------------------------------------------------------------------- driver

#: status codes of a request that mean the session or connection is gone
_CONNECTION_LOST = frozenset(
    {
        "BadSessionIdInvalid",
        "BadSessionClosed",
        "BadSessionNotActivated",
        "BadSecureChannelClosed",
        "BadSecureChannelIdInvalid",
        "BadConnectionClosed",
        "BadServerNotConnected",
        "BadNotConnected",
        "BadCommunicationError",
        "BadShutdown",
        "BadServerHalted",
        "BadDisconnect",
        "BadTcpInternalError",
    }
)
_CREDENTIALS = frozenset(
    {"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid"}
)


class _Lost:
    """Queue marker: the connection under a subscription is gone."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(eq=False)
class _Session:
    """One connection (an asyncua Client) and what was resolved on it."""

    client: Any
    nodeids: dict[str, Any]  # channel name -> ua.NodeId
    queues: set[asyncio.Queue[Any]] = field(default_factory=set)
    lost: str | None = None

    def mark_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        for queue in self.queues:
            _put_latest(queue, _Lost(reason))


def _put_latest(queue: asyncio.Queue[Any], item: Any) -> None:
    """Put without blocking; a full queue drops its oldest item (a slow consumer)."""
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()


class _Handler:
    """asyncua subscription handler: data changes and status changes into a queue."""

    def __init__(self, queue: asyncio.Queue[Any], session: _Session) -> None:
        self.queue = queue
        self.session = session

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        _put_latest(self.queue, (node.nodeid, data.monitored_item.Value, time.monotonic()))

    def status_change_notification(self, status: Any) -> None:
        code = int(status.Status.value) if status.Status is not None else 0
        if code & _SEVERITY_MASK:
            self.session.mark_lost(f"subscription status {status_name(code)}")


class OpcUaDriver(Driver, kind="opcua"):
    """Reads nodes of one OPC UA server: polled in one Read request, or by subscription.

    ``open()`` is optional (the first ``poll()`` or ``subscribe()`` connects). After
    ``close()``, ``poll()`` and ``subscribe()`` raise ConnectError until ``open()``.
    ``connects`` counts the sessions opened (a reconnect adds one).
    """

    Config = OpcUaConfig

    def __init__(self, config: DriverConfig, *, buses: Buses | None = None) -> None:
        if not isinstance(config, OpcUaConfig):
            raise TypeError(f"OpcUaDriver needs an OpcUaConfig, not {type(config).__name__}")
        super().__init__(config, buses=buses)
        self.opcua: OpcUaConfig = config
        self.poll_channels = [c for c in config.channels if c.mode == "poll"]
        self.subscribe_channels = [c for c in config.channels if c.mode == "subscribe"]
        self.connects = 0  # sessions opened (reconnects show as > 1)
        self._session: _Session | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        self._closed = False
        await self._ensure()

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await self._discard(session, "driver closed")

    def subscribes(self) -> bool:
        return bool(self.subscribe_channels)

    @property
    def connected(self) -> bool:
        session = self._session
        return session is not None and session.lost is None and _is_connected(session.client)

    # ------------------------------------------------------------------ connection

    async def _ensure(self) -> _Session:
        session = self._session
        if session is not None and session.lost is None and _is_connected(session.client):
            return session
        async with self._connect_lock:
            session = self._session
            if session is not None and session.lost is None and _is_connected(session.client):
                return session
            if session is not None:
                self._session = None
                await self._discard(session, session.lost or "connection lost")
            session = await self._connect()
            if self._closed:  # closed while connecting
                await self._discard(session, "driver closed")
                raise ConnectError("driver is closed", equipment=self.equipment)
            self._session = session
            return session

    async def _connect(self) -> _Session:
        cfg = self.opcua
        client = Client(cfg.url, timeout=cfg.timeout_s, watchdog_intervall=max(cfg.timeout_s, 1.0))
        client.name = client.description = f"calgate {cfg.id}"
        client.product_uri = "urn:calgate"
        client.session_timeout = 600_000  # ms; what asyncua servers grant at most anyway
        session = _Session(client, {})

        async def lost(exc: Exception) -> None:
            log.info("%s: connection to %s lost: %s", cfg.id, cfg.url, exc)
            session.mark_lost(f"connection lost: {exc}" if str(exc) else "connection lost")

        client.connection_lost_callback = lost
        try:
            # set-up, session and node lookups; with the read after it, a poll that has to
            # connect takes at most 3 x timeout_s
            async with asyncio.timeout(cfg.timeout_s * 2):
                await self._setup_client(client)
                await client.connect()
                session.nodeids = await self._resolve(client)
        except BaseException as exc:  # cancelled too: never leave a half-open client behind
            await self._discard(session, "connect failed")
            if isinstance(exc, Exception):
                raise self._connect_error(exc) from exc
            raise
        self.connects += 1
        log.info("%s: connected to %s (%s)", cfg.id, cfg.url, cfg.security)
        return session

    async def _setup_client(self, client: Any) -> None:
        """Security and identity, set before ``connect()``; ValueError for unusable files."""
        cfg = self.opcua
        if cfg.security != "None":
            assert cfg.certificate is not None
            assert cfg.private_key is not None
            client.application_uri = cfg.application_uri or _certificate_uri(cfg.certificate)
            policy_name, mode_name = cfg.security.split(",")
            await client.set_security(
                getattr(security_policies, f"SecurityPolicy{policy_name}"),
                cfg.certificate,
                cfg.private_key,
                server_certificate=cfg.server_certificate,
                mode=getattr(ua.MessageSecurityMode, mode_name),
            )
        elif cfg.application_uri:
            client.application_uri = cfg.application_uri
        if cfg.username:
            client.set_user(cfg.username)
            password = cfg.password()
            if password is not None:
                client.set_password(password)

    async def _resolve(self, client: Any) -> dict[str, Any]:
        """NodeIds of every channel: namespace URIs and browse paths looked up once."""
        out: dict[str, Any] = {}
        specs = [(c, c.spec) for c in self.opcua.channels]
        namespaces: list[str] | None = None
        paths: list[tuple[OpcUaChannel, NodeSpec]] = []
        for channel, spec in specs:
            if spec.kind == "nodeid":
                out[channel.name] = ua.NodeId.from_string(spec.text)
            elif spec.kind == "nsu":
                if namespaces is None:
                    namespaces = list(await client.get_namespace_array())
                if spec.namespace_uri not in namespaces:
                    raise ConnectError(
                        f"channel {channel.name}: the server has no namespace {spec.namespace_uri!r}",
                        equipment=self.equipment,
                    )
                index = namespaces.index(spec.namespace_uri)
                out[channel.name] = ua.NodeId.from_string(f"ns={index};{spec.text}")
            else:
                paths.append((channel, spec))
        if paths:
            relative = [
                ua.RelativePath(
                    Elements=[
                        ua.RelativePathElement(
                            ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                            IsInverse=False,
                            IncludeSubtypes=True,
                            TargetName=ua.QualifiedName(name, ns),
                        )
                        for ns, name in spec.path
                    ]
                )
                for _channel, spec in paths
            ]
            results = await client.translate_browsepaths(
                ua.NodeId(ua.ObjectIds.ObjectsFolder), relative
            )
            for (channel, spec), result in zip(paths, results, strict=True):
                if not result.StatusCode.is_good() or not result.Targets:
                    raise ConnectError(
                        f"channel {channel.name}: browse path {spec.text} not found "
                        f"({status_name(int(result.StatusCode.value))})",
                        equipment=self.equipment,
                    )
                out[channel.name] = result.Targets[0].TargetId
        return out

    async def _discard(self, session: _Session, reason: str) -> None:
        session.mark_lost(reason)
        await _disconnect_quietly(session.client, self.opcua.timeout_s)

    def _connect_error(self, exc: BaseException) -> DriverError:
        """Translate a failure to set up a session (every kind becomes ConnectError)."""
        url = self.opcua.url
        if isinstance(exc, DriverError):
            exc.equipment = self.equipment
            return exc
        if isinstance(exc, UaStatusCodeError):
            name = status_name(int(exc.code))
            hint = ""
            if name in _CREDENTIALS:
                hint = f"; check username {self.opcua.username!r} and its password"
                if not self.opcua.username:
                    hint = "; the server wants a username (set username and password_env)"
            elif name.startswith(("BadSecurity", "BadCertificate")):
                hint = "; check security, certificate and private_key"
            msg = f"{url}: the server refused the session: {name}{hint}"
        elif isinstance(exc, TimeoutError):
            msg = f"{url}: no session within {self.opcua.timeout_s * 2:g} s"
        elif isinstance(exc, OSError):
            msg = f"{url}: cannot connect: {exc.strerror or exc}"
        elif isinstance(exc, UaError) and "endpoint" in str(exc).lower():
            msg = f"{url}: the server offers no {self.opcua.security} endpoint ({exc})"
        elif isinstance(exc, ValueError):  # certificate, key or password unusable
            msg = f"{url}: {exc}"
        else:
            msg = f"{url}: cannot open a session: {type(exc).__name__}: {exc}"
        return ConnectError(msg, equipment=self.equipment)

    def _translate(self, exc: BaseException, session: _Session, what: str) -> DriverError:
        """Translate a failed request; a connection-level failure drops the session."""
        if isinstance(exc, DriverError):
            exc.equipment = self.equipment
            return exc
        if isinstance(exc, TimeoutError):
            session.mark_lost(f"{what}: timed out")
            return DeviceTimeout(
                f"{what}: no answer within {self.opcua.timeout_s} s", equipment=self.equipment
            )
        if isinstance(exc, OSError):  # ConnectionError is an OSError
            session.mark_lost(f"{what}: {exc}")
            return ConnectError(f"{what}: connection lost: {exc}", equipment=self.equipment)
        if isinstance(exc, UaStatusCodeError):
            name = status_name(int(exc.code))
            if name in ("BadTimeout", "BadRequestTimeout"):
                return DeviceTimeout(f"{what}: {name}", equipment=self.equipment)
            if name in _CONNECTION_LOST:
                session.mark_lost(f"{what}: {name}")
                return ConnectError(f"{what}: {name}", equipment=self.equipment)
            return DeviceError(f"{what}: {name}", code=name, equipment=self.equipment)
        if isinstance(exc, UaError):
            session.mark_lost(f"{what}: {exc}")
            return ConnectError(f"{what}: {exc}", equipment=self.equipment)
        raise exc  # a bug: let it escape

    # ------------------------------------------------------------------ reading

    async def poll(self) -> list[Reading]:
        """Read every poll channel in one Read request (nothing when all subscribe)."""
        channels = self.poll_channels
        if not channels:
            return []
        if self._closed:
            raise ConnectError("driver is closed", equipment=self.equipment)
        session = await self._ensure()
        nodeids = [session.nodeids[c.name] for c in channels]
        try:
            async with asyncio.timeout(self.opcua.timeout_s):
                values = await session.client.uaclient.read_attributes(
                    nodeids, ua.AttributeIds.Value
                )
        except Exception as exc:
            raise self._translate(exc, session, f"read {len(nodeids)} nodes") from exc
        t_mono = time.monotonic()
        if len(values) != len(channels):
            raise FrameError(
                f"read {len(channels)} nodes, got {len(values)} values", equipment=self.equipment
            )
        equipment = self.equipment
        return [
            reading_from_datavalue(
                dv, equipment=equipment, channel=c.name, unit=c.unit, t_mono=t_mono, node=c.node
            )
            for c, dv in zip(channels, values, strict=True)
        ]

    async def subscribe(self) -> AsyncIterator[list[Reading]]:
        """Data changes of the subscribe channels, in batches, as the server publishes them.

        Raises ConnectError when the connection cannot be opened or drops (the server
        stopped, restarted, or stopped publishing); call it again (after a backoff) to
        reconnect and re-create the subscription. Closing the iterator deletes the
        subscription. A slow consumer loses the oldest notifications, never blocks the
        connection.
        """
        channels = self.subscribe_channels
        if not channels:
            return
        if self._closed:
            raise ConnectError("driver is closed", equipment=self.equipment)
        session = await self._ensure()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        session.queues.add(queue)
        by_node: dict[Any, list[OpcUaChannel]] = {}
        for c in channels:
            by_node.setdefault(session.nodeids[c.name], []).append(c)
        subscription: Any = None
        try:
            subscription = await self._create_subscription(session, queue, channels)
            if session.lost is not None:
                raise ConnectError(session.lost, equipment=self.equipment)
            while True:
                item = await queue.get()
                batch = [item]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                readings: list[Reading] = []
                for entry in batch:
                    if isinstance(entry, _Lost):
                        raise ConnectError(
                            f"subscription ended: {entry.reason}", equipment=self.equipment
                        )
                    nodeid, dv, t_mono = entry
                    for channel in by_node.get(nodeid, ()):
                        readings.append(self._notification(channel, dv, t_mono))
                if readings:
                    yield readings
        finally:
            session.queues.discard(queue)
            if subscription is not None and session.lost is None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.opcua.timeout_s):
                        await subscription.delete()

    async def _create_subscription(
        self, session: _Session, queue: asyncio.Queue[Any], channels: Sequence[OpcUaChannel]
    ) -> Any:
        cfg = self.opcua
        period = cfg.publishing_interval_ms or max(
            min(c.sampling_interval_ms for c in channels), 10.0
        )
        groups: dict[float, list[Any]] = {}
        for c in channels:
            node = session.client.get_node(session.nodeids[c.name])
            groups.setdefault(c.sampling_interval_ms, []).append(node)
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = period
        # a keep-alive at least every second (or timeout_s): a silent server shows soon
        keepalive = max(1, math.ceil(max(1000.0, cfg.timeout_s * 1000.0) / period))
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = keepalive * 10
        params.MaxNotificationsPerPublish = 10_000
        params.PublishingEnabled = True
        params.Priority = 0
        handler = _Handler(queue, session)
        subscription: Any = None
        what = f"subscribe to {len(channels)} nodes"
        try:
            async with asyncio.timeout(cfg.timeout_s * 2):
                subscription = await session.client.create_subscription(params, handler)
                for interval, nodes in groups.items():
                    handles = await subscription.subscribe_data_change(
                        nodes, ua.AttributeIds.Value, sampling_interval=interval
                    )
                    bad = [
                        f"{node.nodeid.to_string()}: {status_name(int(h.value))}"
                        for node, h in zip(nodes, handles, strict=True)
                        if isinstance(h, ua.StatusCode)
                    ]
                    if bad:
                        raise DeviceError(
                            f"the server refused monitored items: {'; '.join(bad)}",
                            code="monitored_item",
                            equipment=self.equipment,
                        )
        except Exception as exc:
            if subscription is not None and session.lost is None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(cfg.timeout_s):
                        await subscription.delete()
            raise self._translate(exc, session, what) from exc
        return subscription

    def _notification(self, channel: OpcUaChannel, dv: Any, t_mono: float) -> Reading:
        try:
            return reading_from_datavalue(
                dv, equipment=self.equipment, channel=channel.name, unit=channel.unit, t_mono=t_mono
            )
        except FrameError:
            t_wall = _aware(dv.SourceTimestamp) or _aware(dv.ServerTimestamp) or datetime.now(UTC)
            return Reading(
                equipment=self.equipment,
                channel=channel.name,
                raw=math.nan,
                unit=channel.unit,
                t_wall=t_wall,
                t_mono=t_mono,
                flags=frozenset({"non_numeric"}),
                quality="bad",
            )


def _is_connected(client: Any) -> bool:
    return bool(client.uaclient.state is UaClientState.CONNECTED)


async def _disconnect_quietly(client: Any, timeout_s: float) -> None:
    """Close a client's session, channel and socket, whatever state it is in."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.disconnect()
    except (Exception, TimeoutError) as exc:
        log.debug("disconnect: %s", exc)
        with contextlib.suppress(Exception):
            client.disconnect_socket()


def _certificate_uri(path: str) -> str:
    """The URI SubjectAltName of a certificate file (the application URI it was made for)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read certificate {path}: {exc.strerror}") from None
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
    except ValueError as exc:
        raise ValueError(f"certificate {path} is not a DER or PEM certificate: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return DEFAULT_APPLICATION_URI
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else DEFAULT_APPLICATION_URI
