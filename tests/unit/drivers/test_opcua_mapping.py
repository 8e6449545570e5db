"""OPC UA driver, pure parts: status codes to quality, values, timestamps, config."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncua.ua as _ua
import pytest
from asyncua.ua.uaerrors import UaError
from asyncua.ua.uaerrors import UaStatusCodeError as _UaStatusCodeError
from pydantic import ValidationError

from drivers.errors import ConnectError, DeviceError, DeviceTimeout, FrameError
from drivers.opcua import (
    OpcUaConfig,
    OpcUaDriver,
    _Session,
    convert_value,
    parse_node,
    quality_of,
    reading_from_datavalue,
    status_name,
)

ua: Any = _ua  # asyncua annotates with its own wrapper classes; used untyped here
UaStatusCodeError: Any = _UaStatusCodeError  # its constructor is untyped

T_SOURCE = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
T_SERVER = T_SOURCE + timedelta(milliseconds=5)


def dv(
    value: Any,
    status: int = 0,
    *,
    source: datetime | None = T_SOURCE,
    server: datetime | None = T_SERVER,
    vtype: Any = None,
) -> Any:
    variant = ua.Variant() if value is None else ua.Variant(value, vtype)
    return ua.DataValue(
        variant, StatusCode=ua.StatusCode(status), SourceTimestamp=source, ServerTimestamp=server
    )


def read(datavalue: Any) -> Any:
    return reading_from_datavalue(
        datavalue, equipment="UTM-01", channel="force", unit="kN", t_mono=42.0, node="ns=2;s=F"
    )


# ---------------------------------------------------------------------------- status codes


@pytest.mark.parametrize(
    ("code", "quality", "flags"),
    [
        (ua.StatusCodes.Good, "good", set()),
        (ua.StatusCodes.GoodClamped, "good", {"GoodClamped"}),
        (ua.StatusCodes.Uncertain, "uncertain", {"Uncertain"}),
        (ua.StatusCodes.UncertainLastUsableValue, "uncertain", {"UncertainLastUsableValue"}),
        (ua.StatusCodes.UncertainSensorNotAccurate, "uncertain", {"UncertainSensorNotAccurate"}),
        (ua.StatusCodes.Bad, "bad", {"Bad"}),
        (ua.StatusCodes.BadSensorFailure, "bad", {"BadSensorFailure"}),
        (ua.StatusCodes.BadOutOfService, "bad", {"BadOutOfService"}),
        (ua.StatusCodes.BadNoCommunication, "bad", {"BadNoCommunication"}),
        # info bits (low 16: limit bits, overflow) do not change the name
        (
            ua.StatusCodes.UncertainLastUsableValue | 0x0100,
            "uncertain",
            {"UncertainLastUsableValue"},
        ),
        (ua.StatusCodes.BadSensorFailure | 0x0480, "bad", {"BadSensorFailure"}),
        # unknown sub-codes fall back to their severity
        (0x80FE0000, "bad", {"Bad"}),
        (0xC0000000, "bad", None),
        (0x40FF0000, "uncertain", {"Uncertain"}),
    ],
)
def test_quality_of(code: int, quality: str, flags: set[str] | None) -> None:
    got_quality, got_flags = quality_of(code)
    assert got_quality == quality
    if flags is not None:
        assert got_flags == flags


def test_status_name_ignores_info_bits() -> None:
    assert status_name(ua.StatusCodes.BadSensorFailure) == "BadSensorFailure"
    assert status_name(ua.StatusCodes.BadSensorFailure | 0x00FF) == "BadSensorFailure"
    assert status_name(0x80FE0000) == "Bad"  # not a defined code


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12.5, 12.5),
        (-3, -3.0),
        (2**40, float(2**40)),
        (True, 1.0),
        (False, 0.0),
        (0.0, 0.0),
    ],
)
def test_convert_value(value: Any, expected: float) -> None:
    result = convert_value(value)
    assert isinstance(result, float)
    assert result == expected


@pytest.mark.parametrize("value", ["12.5", b"\x00", [1.0, 2.0], None, {"a": 1}])
def test_convert_value_rejects_non_numbers(value: Any) -> None:
    with pytest.raises(TypeError, match="not a number"):
        convert_value(value)


def test_good_double() -> None:
    r = read(dv(12.5, vtype=ua.VariantType.Double))
    assert (r.raw, r.quality, r.flags, r.unit) == (12.5, "good", frozenset(), "kN")
    assert (r.equipment, r.channel, r.t_mono) == ("UTM-01", "force", 42.0)
    assert r.t_wall == T_SOURCE


@pytest.mark.parametrize(
    ("value", "vtype"),
    [
        (7, ua.VariantType.Int16),
        (7, ua.VariantType.UInt32),
        (7, ua.VariantType.Int64),
        (7.0, ua.VariantType.Float),
        (7, ua.VariantType.Byte),
    ],
)
def test_integer_and_float_types(value: Any, vtype: Any) -> None:
    r = read(dv(value, vtype=vtype))
    assert r.raw == 7.0
    assert r.quality == "good"


def test_timestamps_fall_back_to_server_then_local() -> None:
    assert read(dv(1.0, source=None)).t_wall == T_SERVER
    before = datetime.now(UTC)
    local = read(dv(1.0, source=None, server=None)).t_wall
    assert before <= local <= datetime.now(UTC)
    assert local.tzinfo is not None


def test_naive_timestamp_is_taken_as_utc() -> None:
    naive = datetime(2026, 3, 1, 12, 0, 0)
    r = read(dv(1.0, source=naive))
    assert r.t_wall == naive.replace(tzinfo=UTC)
    assert r.t_wall.utcoffset() == timedelta(0)


def test_uncertain_keeps_value_and_flags_the_status() -> None:
    r = read(dv(3.25, ua.StatusCodes.UncertainLastUsableValue, vtype=ua.VariantType.Double))
    assert r.raw == 3.25
    assert r.quality == "uncertain"
    assert r.flags == {"UncertainLastUsableValue"}


@pytest.mark.parametrize("value", [None, 3.25, "#ERR"])
def test_bad_is_nan_with_the_status_name(value: Any) -> None:
    r = read(dv(value, ua.StatusCodes.BadSensorFailure))
    assert math.isnan(r.raw)
    assert r.quality == "bad"
    assert r.flags == {"BadSensorFailure"}
    assert r.t_wall == T_SOURCE


@pytest.mark.parametrize(
    ("value", "flag"), [(math.nan, "nan"), (math.inf, "overflow"), (-math.inf, "underflow")]
)
def test_good_non_finite_is_bad(value: float, flag: str) -> None:
    r = read(dv(value, vtype=ua.VariantType.Double))
    assert r.quality == "bad"
    assert flag in r.flags


@pytest.mark.parametrize(
    "variant",
    [
        ua.Variant("running", ua.VariantType.String),
        ua.Variant([1.0, 2.0], ua.VariantType.Double),
        ua.Variant(),
        ua.Variant(b"\x01\x02", ua.VariantType.ByteString),
    ],
)
def test_non_numeric_good_value_is_a_frame_error(variant: Any) -> None:
    datavalue = ua.DataValue(variant, SourceTimestamp=T_SOURCE)
    with pytest.raises(FrameError, match=r"channel force \(ns=2;s=F\): not a number") as info:
        read(datavalue)
    assert info.value.equipment == "UTM-01"


def test_missing_status_code_is_good() -> None:
    datavalue = ua.DataValue(ua.Variant(1.5, ua.VariantType.Double), StatusCode=None)
    assert read(datavalue).quality == "good"


# ---------------------------------------------------------------------------- nodes


@pytest.mark.parametrize(
    ("node", "kind"),
    [
        ("ns=2;s=Machine/Force", "nodeid"),
        ("i=2258", "nodeid"),
        ("ns=0;i=2258", "nodeid"),
        ("ns=3;s=a;b=c", "nodeid"),  # a string id may hold ; and =
        ("ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a", "nodeid"),
        ("nsu=urn:calgate:sim:utm;s=Machine/Force", "nsu"),
        ("/2:Machine/2:Force", "path"),
    ],
)
def test_parse_node(node: str, kind: str) -> None:
    assert parse_node(node).kind == kind


def test_parse_node_details() -> None:
    spec = parse_node("nsu=urn:x:y;s=Machine/Force")
    assert (spec.namespace_uri, spec.text) == ("urn:x:y", "s=Machine/Force")
    assert parse_node("/2:Machine/3:Force").path == ((2, "Machine"), (3, "Force"))


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ("", "empty"),
        ("Machine/Force", "not a NodeId"),
        ("ns=2;Force", "not a NodeId"),
        ("ns=x;s=Force", "namespace index"),
        ("ns=2;i=abc", "non-negative integer"),
        ("ns=2;nsu=urn:a;s=F", "not both"),
        ("srv=1;ns=2;s=F", "other servers"),
        ("/Machine/Force", "browse path"),
        ("/2:", "browse path"),
        ("ns=2;s=", "empty identifier"),
    ],
)
def test_parse_node_rejects(node: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_node(node)


# ---------------------------------------------------------------------------- config

BASE: dict[str, Any] = {
    "id": "UTM-01",
    "driver": "opcua",
    "url": "opc.tcp://127.0.0.1:4840",
    "channels": [{"name": "force", "node": "ns=2;s=Machine/Force", "unit": "kN"}],
}


def config(**changes: Any) -> OpcUaConfig:
    return OpcUaConfig.model_validate({**BASE, **changes})


def errors(**changes: Any) -> dict[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as info:
        config(**changes)
    return {tuple(e["loc"]): e["msg"] for e in info.value.errors()}


def test_minimal_config() -> None:
    cfg = config()
    assert cfg.security == "None"
    assert cfg.channels[0].mode == "poll"
    assert cfg.channels[0].sampling_interval_ms == 100.0
    assert cfg.bus_key() is None
    assert cfg.password() is None
    driver = OpcUaDriver(cfg)
    assert driver.kind == "opcua"
    assert not driver.subscribes()


def test_full_config() -> None:
    cfg = config(
        security="Basic256Sha256,SignAndEncrypt",
        certificate="/etc/calgate/opcua-client.der",
        private_key="/etc/calgate/opcua-client.pem",
        server_certificate="/etc/calgate/utm.der",
        username="operator",
        password_env="CALGATE_OPCUA_PASSWORD",
        timeout_s=1.5,
        channels=[
            {"name": "force", "node": "ns=2;s=Machine/Force", "mode": "subscribe", "unit": "kN"},
            {"name": "extension", "node": "/2:Machine/2:Extension", "unit": "mm"},
        ],
    )
    driver = OpcUaDriver(cfg)
    assert driver.subscribes()
    assert [c.name for c in driver.poll_channels] == ["extension"]
    assert [c.name for c in driver.subscribe_channels] == ["force"]


def test_config_is_frozen() -> None:
    cfg = config()
    with pytest.raises(ValidationError):
        cfg.url = "opc.tcp://other:4840"


@pytest.mark.parametrize(
    ("changes", "loc", "message"),
    [
        ({"url": "tcp://127.0.0.1:4840"}, ("url",), "opc.tcp://host:port"),
        ({"url": "opc.tcp://:4840"}, ("url",), "needs a host"),
        ({"url": "opc.tcp://host:99999"}, ("url",), "bad port"),
        ({"url": "opc.tcp://u:p@host:4840"}, ("url",), "no credentials"),
        ({"security": "Basic128Rsa15,Sign"}, ("security",), "Input should be"),
        (
            {"security": "Basic256Sha256,Sign", "private_key": "/k.pem"},
            ("certificate",),
            "needs a certificate file",
        ),
        (
            {"security": "Basic256Sha256,SignAndEncrypt", "certificate": "/c.der"},
            ("private_key",),
            "needs a private_key file",
        ),
        ({"certificate": "/c.der"}, ("certificate",), "only used with security"),
        ({"server_certificate": "/s.der"}, ("server_certificate",), "only used with a secure"),
        ({"password_env": "PW"}, ("password_env",), "only used with username"),
        ({"password_file": "/pw"}, ("password_file",), "only used with username"),
        (
            {"username": "op", "password_env": "PW", "password_file": "/pw"},
            ("password_file",),
            "not both",
        ),
        ({"username": ""}, ("username",), "at least 1 character"),
        ({"password": "secret"}, ("password",), "Extra inputs are not permitted"),
        ({"channels": []}, ("channels",), "at least one channel"),
        (
            {"channels": [{"name": "a", "node": "i=1"}, {"name": "a", "node": "i=2"}]},
            ("channels",),
            "duplicate channel name 'a'",
        ),
        ({"channels": [{"name": "a", "node": "Force"}]}, ("channels", 0, "node"), "not a NodeId"),
        (
            {"channels": [{"name": "a", "node": "i=1", "mode": "push"}]},
            ("channels", 0, "mode"),
            "'poll' or 'subscribe'",
        ),
        (
            {"channels": [{"name": "a", "node": "i=1", "sampling_interval_ms": -1}]},
            ("channels", 0, "sampling_interval_ms"),
            "greater than or equal to 0",
        ),
        (
            {"channels": [{"name": "a", "node": "i=1", "register": 3}]},
            ("channels", 0, "register"),
            "Extra inputs",
        ),
        ({"timeout_s": 0}, ("timeout_s",), "greater than 0"),
    ],
)
def test_config_errors_have_paths(
    changes: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    found = errors(**changes)
    assert loc in found, found
    assert message in found[loc]


def test_every_error_is_reported_at_once() -> None:
    found = errors(
        url="http://x",
        security="Basic256Sha256,Sign",
        password_env="PW",
        channels=[{"name": "a", "node": "nope"}],
    )
    assert {("url",), ("certificate",), ("private_key",), ("password_env",)} <= set(found)
    assert ("channels", 0, "node") in found


def test_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(username="operator", password_env="CALGATE_TEST_OPCUA_PW")
    monkeypatch.setenv("CALGATE_TEST_OPCUA_PW", "s3cret")
    assert cfg.password() == "s3cret"
    monkeypatch.delenv("CALGATE_TEST_OPCUA_PW")
    with pytest.raises(ValueError, match="CALGATE_TEST_OPCUA_PW is not set"):
        cfg.password()


def test_password_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n", encoding="utf-8")
    cfg = config(username="operator", password_file=str(secret))
    assert cfg.password() == "s3cret"
    missing = config(username="operator", password_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read password_file"):
        missing.password()


def test_secrets_are_not_in_the_config_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALGATE_TEST_OPCUA_PW", "s3cret")
    cfg = config(username="operator", password_env="CALGATE_TEST_OPCUA_PW")
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in cfg.model_dump_json()


# ---------------------------------------------------------------------------- exceptions


def secure_driver() -> OpcUaDriver:
    return OpcUaDriver(
        config(
            security="Basic256Sha256,SignAndEncrypt",
            certificate="/c.der",
            private_key="/k.pem",
            username="operator",
            password_env="PW",
        )
    )


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied),
            "BadUserAccessDenied; check username 'operator'",
        ),
        (UaStatusCodeError(ua.StatusCodes.BadIdentityTokenRejected), "check username 'operator'"),
        (UaStatusCodeError(ua.StatusCodes.BadSecurityChecksFailed), "check security, certificate"),
        (
            UaError("No matching endpoints: 3, http://..."),
            "offers no Basic256Sha256,SignAndEncrypt endpoint",
        ),
        (ConnectionRefusedError(111, "Connection refused"), "cannot connect: Connection refused"),
        (TimeoutError(), "no session within 4 s"),
        (ValueError("environment variable PW is not set"), "PW is not set"),
        (RuntimeError("surprise"), "cannot open a session: RuntimeError: surprise"),
    ],
)
def test_connect_errors(exc: BaseException, message: str) -> None:
    error = secure_driver()._connect_error(exc)
    assert isinstance(error, ConnectError)
    assert error.equipment == "UTM-01"
    assert message in str(error)
    assert str(error).startswith("UTM-01: opc.tcp://127.0.0.1:4840: ")


def test_connect_error_without_username_says_so() -> None:
    error = OpcUaDriver(config())._connect_error(
        UaStatusCodeError(ua.StatusCodes.BadIdentityTokenRejected)
    )
    assert "the server wants a username" in str(error)


@pytest.mark.parametrize(
    ("exc", "kind", "lost"),
    [
        (TimeoutError(), DeviceTimeout, True),
        (ConnectionError("client is disconnected"), ConnectError, True),
        (OSError(104, "Connection reset by peer"), ConnectError, True),
        (UaStatusCodeError(ua.StatusCodes.BadSessionClosed), ConnectError, True),
        (UaStatusCodeError(ua.StatusCodes.BadSecureChannelClosed), ConnectError, True),
        (UaStatusCodeError(ua.StatusCodes.BadTimeout), DeviceTimeout, False),
        (UaStatusCodeError(ua.StatusCodes.BadTooManyOperations), DeviceError, False),
        (UaError("something broke in the stack"), ConnectError, True),
    ],
)
def test_request_errors(exc: BaseException, kind: type[Exception], lost: bool) -> None:
    driver = OpcUaDriver(config())
    session = _Session(client=None, nodeids={})
    error = driver._translate(exc, session, "read 3 nodes")
    assert type(error) is kind
    assert error.equipment == "UTM-01"
    assert "read 3 nodes" in str(error)
    assert (session.lost is not None) is lost
    if isinstance(error, DeviceError):
        assert error.code == "BadTooManyOperations"


def test_bugs_are_not_translated() -> None:
    driver = OpcUaDriver(config())
    with pytest.raises(KeyError):
        driver._translate(KeyError("bug"), _Session(client=None, nodeids={}), "read")
