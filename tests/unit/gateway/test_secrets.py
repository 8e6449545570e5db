"""Secrets from systemd credentials, files and environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.secrets import credential_path, read_secret


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "credentials"
    d.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(d))
    return d


def test_nothing_configured_is_none() -> None:
    assert read_secret() is None
    assert read_secret(env="", file="", credential="") is None


def test_credential_first(creds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (creds / "mqtt-password").write_text("from-credential\n")
    f = tmp_path / "pw"
    f.write_text("from-file")
    monkeypatch.setenv("PW", "from-env")
    assert read_secret(env="PW", file=str(f), credential="mqtt-password") == "from-credential"
    (creds / "mqtt-password").unlink()
    assert read_secret(env="PW", file=str(f), credential="mqtt-password") == "from-file"
    f.unlink()
    assert read_secret(env="PW", file=str(f), credential="mqtt-password") == "from-env"


def test_outside_systemd_the_env_fallback_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("CALGATE_MQTT_PASSWORD", "s3cret")
    assert read_secret(env="CALGATE_MQTT_PASSWORD", credential="mqtt-password") == "s3cret"
    assert credential_path("mqtt-password") is None


def test_one_trailing_newline_is_removed_other_whitespace_kept(creds: Path) -> None:
    (creds / "a").write_text(" pass word \n")
    (creds / "b").write_bytes(b"crlf\r\n")
    (creds / "c").write_text("two\n\n")
    assert read_secret(credential="a") == " pass word "
    assert read_secret(credential="b") == "crlf"
    assert read_secret(credential="c") == "two\n"


def test_percent_d_file_means_the_credentials_directory(creds: Path) -> None:
    (creds / "influx-token").write_text("tok")
    assert read_secret(file="%d/influx-token") == "tok"


def test_configured_but_missing_is_a_config_error_naming_every_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError) as info:
        read_secret(
            env="NOPE",
            file=str(tmp_path / "missing"),
            credential="mqtt-password",
            what="mqtt.password",
        )
    msg = str(info.value)
    assert msg.startswith("mqtt.password: not found in credential 'mqtt-password'")
    assert "$CREDENTIALS_DIRECTORY is not set" in msg
    assert "does not exist" in msg
    assert "environment variable NOPE (not set)" in msg


def test_unreadable_or_binary_file_is_a_config_error(creds: Path) -> None:
    (creds / "dir").mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret(credential="dir")
    (creds / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_secret(credential="bin")


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", ".", ".."])
def test_credential_names_are_plain_file_names(creds: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="plain file name"):
        read_secret(credential=name)


def test_the_value_is_not_in_error_messages(creds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (creds / "bin").write_bytes(b"hunter2\xff")
    with pytest.raises(ConfigError) as info:
        read_secret(credential="bin")
    assert "hunter2" not in str(info.value)
