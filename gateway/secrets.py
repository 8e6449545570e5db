"""Secrets (MQTT password, InfluxDB token) from systemd credentials, files or the environment.

A secret never sits in calgate.toml; the TOML names where to find it::

    [mqtt]
    password_credential = "mqtt-password"    # systemd: $CREDENTIALS_DIRECTORY/mqtt-password
    password_file = "/etc/calgate/mqtt-password"      # any file ("%d/NAME" works too)
    password_env = "CALGATE_MQTT_PASSWORD"            # an environment variable

Under systemd, ``LoadCredential=mqtt-password:/etc/calgate/credentials/mqtt-password``
puts the file in the unit's private ``$CREDENTIALS_DIRECTORY`` (readable by the service
user only, even though the source is root's). Sources are tried in that order —
credential, file, environment — and the first that exists wins, so one config can serve
both the systemd unit (credential) and a run by hand (environment variable). One
trailing newline is removed (``echo secret > file`` just works); other whitespace is
kept. Values are never logged.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.errors import ConfigError

__all__ = ["credential_path", "read_secret"]


def credential_path(name: str) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/name``, or None when systemd passed no credentials."""
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"credential name must be a plain file name, got {name!r}")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    return Path(directory) / name


def _expand(path: str) -> Path | None:
    """A file path; ``%d/`` (as in unit files) means ``$CREDENTIALS_DIRECTORY/``."""
    if path.startswith("%d/"):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        return Path(directory) / path[3:] if directory else None
    return Path(path).expanduser()


def _read(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def read_secret(
    env: str | None = None,
    file: str | None = None,
    credential: str | None = None,
    *,
    what: str = "secret",
) -> str | None:
    """The secret from the first source that has it: credential, file, environment.

    None when no source is configured (all three None or empty). Raises
    :class:`ConfigError` when sources are configured but none yields the secret, or a
    file exists but cannot be read — a configured password must not silently become no
    password. ``what`` names the setting in error messages (e.g. ``"mqtt.password"``).
    """
    tried: list[str] = []
    if credential:
        path = credential_path(credential)
        if path is None:
            tried.append(f"credential {credential!r} ($CREDENTIALS_DIRECTORY is not set)")
        elif path.exists():
            return _read(path, what)
        else:
            tried.append(f"credential {credential!r} (no {path})")
    if file:
        fpath = _expand(file)
        if fpath is None:
            tried.append(f"file {file!r} ($CREDENTIALS_DIRECTORY is not set)")
        elif fpath.exists():
            return _read(fpath, what)
        else:
            tried.append(f"file {file!r} (does not exist)")
    if env:
        value = os.environ.get(env)
        if value is not None:
            return value
        tried.append(f"environment variable {env} (not set)")
    if not tried:
        return None
    raise ConfigError(f"{what}: not found in " + ", nor in ".join(tried))
