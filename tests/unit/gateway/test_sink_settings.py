"""[mqtt], [influxdb], [outbox] settings (secrets!), backoff and Retry-After parsing."""

from __future__ import annotations

import email.utils
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import InfluxSettings, MqttSettings, OutboxSettings
from gateway.sinks.base import backoff_delay
from gateway.sinks.influx import parse_retry_after


def test_mqtt_defaults_and_url() -> None:
    s = MqttSettings()
    assert (s.host, s.port, s.tls, s.qos, s.topic_prefix) == (
        "127.0.0.1",
        1883,
        False,
        1,
        "calgate",
    )
    t = MqttSettings(url="mqtts://broker.lab:9883")
    assert (t.host, t.port, t.tls) == ("broker.lab", 9883, True)
    assert MqttSettings(url="mqtts://broker.lab").port == 8883


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "http://x:1883"}, "scheme must be mqtt:// or mqtts://"),
        ({"url": "mqtt://"}, "no host"),
        ({"qos": 0}, "qos"),
        ({"password": "hunter2", "username": "u"}, "secrets may not be written in the config"),
        ({"cert_file": "/etc/hostname"}, "cert_file and key_file go together"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file: no such file"),
        ({"bogus": 1}, "Extra inputs are not permitted"),
        ({"topic_prefix": "a/#"}, "topic_prefix"),
    ],
)
def test_mqtt_refuses(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttSettings.model_validate(table)


def test_password_from_env_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALGATE_TEST_MQTT_PW", "s3cret!")
    s = MqttSettings(username="edge-01", password_env="CALGATE_TEST_MQTT_PW")
    assert s.password is not None
    assert s.password.get_secret_value() == "s3cret!"
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(s.model_dump())


def test_password_from_file_strips_one_newline(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("p w\n\n")
    s = MqttSettings(username="u", password_file=str(f))
    assert s.password is not None
    assert s.password.get_secret_value() == "p w\n"


def test_credential_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("CALGATE_TEST_MQTT_PW", "from-env")
    s = MqttSettings(
        username="u", password_credential="mqtt-password", password_env="CALGATE_TEST_MQTT_PW"
    )
    assert s.password is not None
    assert s.password.get_secret_value() == "from-systemd"


def test_a_configured_secret_that_is_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALGATE_TEST_NOPE", raising=False)
    with pytest.raises(ValidationError, match="CALGATE_TEST_NOPE"):
        MqttSettings(username="u", password_env="CALGATE_TEST_NOPE")
    with pytest.raises(ValidationError, match="needs a username"):
        MqttSettings(password_env="PATH")


def test_influx_v2_and_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALGATE_TEST_TOKEN", "tok")
    v2 = InfluxSettings(bucket="metrology", org="lab", token_env="CALGATE_TEST_TOKEN")
    assert v2.token is not None
    assert v2.token.get_secret_value() == "tok"
    assert "tok'" not in repr(v2)
    v1 = InfluxSettings(api="v1", database="lab", retention_policy="autogen")
    assert v1.password is None
    with pytest.raises(ValidationError, match="bucket: required"):
        InfluxSettings(api="v2")
    with pytest.raises(ValidationError, match="database: required"):
        InfluxSettings(api="v1")
    with pytest.raises(ValidationError, match="secrets may not be written"):
        InfluxSettings.model_validate({"bucket": "b", "token": "abc"})
    with pytest.raises(ValidationError, match="url"):
        InfluxSettings(bucket="b", url="udp://x:8089")


def test_outbox_defaults() -> None:
    s = OutboxSettings()
    assert s.max_bytes == 256 * 1024 * 1024
    assert s.max_age_s == 7 * 86400
    assert s.commit_rows == 500
    with pytest.raises(ValidationError):
        OutboxSettings(commit_rows=0)


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    assert [backoff_delay(a, 0.5, 30.0, lambda: 1.0) for a in range(8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    assert backoff_delay(3, 0.5, 30.0, lambda: 0.0) == 0.0
    assert backoff_delay(10_000, 0.5, 30.0, lambda: 0.5) == 15.0


def test_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("999999") == 600.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
