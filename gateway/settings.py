"""The ``[mqtt]``, ``[influxdb]`` and ``[outbox]`` tables of ``calgate.toml`` (ARCHITECTURE.md 4.5).

Secrets never sit in the TOML: a table names where to find them (``password_env``,
``password_file``, ``password_credential``; ``token_*`` for InfluxDB 2). They are read
once, when the table is validated, and kept as :class:`pydantic.SecretStr`, so neither
``repr`` nor a log line shows them. A literal ``password`` or ``token`` key is refused
with a message that says what to write instead.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.secrets import read_secret

__all__ = [
    "InfluxSettings",
    "MqttSettings",
    "OutboxSettings",
    "Settings",
    "read_into",
    "resolve_secret",
]

_FORBIDDEN = {
    "password": "password_env, password_file or password_credential",
    "token": "token_env, token_file or token_credential",
    "secret": "an *_env or *_file setting",
}


def resolve_secret(
    env: str | None, file: str | None, credential: str | None, *, what: str
) -> SecretStr | None:
    """The secret from the first configured source (credential, file, environment; see
    :func:`gateway.secrets.read_secret`), wrapped so it never shows in a repr or a log.

    None when no source is configured; ``ConfigError`` (a ``ValueError``, so pydantic
    reports it with its path) when one is configured but yields nothing.
    """
    value = read_secret(env, file, credential, what=what)
    return None if value is None else SecretStr(value)


def read_into(
    problems: list[str], env: str | None, file: str | None, credential: str | None, *, what: str
) -> SecretStr | None:
    """:func:`resolve_secret`, its problem (a source configured that yields nothing)
    added to ``problems`` rather than raised: a table's other problems are still found."""
    try:
        return resolve_secret(env, file, credential, what=what)
    except ValueError as exc:
        problems.append(str(exc))
        return None


def _literal_secrets(data: Any) -> list[str]:
    """Why each ``password``, ``token`` or ``secret`` key of a table is refused."""
    if not isinstance(data, dict):
        return []
    return [
        f"{key}: secrets may not be written in the config file; use {instead}"
        for key, instead in _FORBIDDEN.items()
        if key in data
    ]


def _problem(message: str, data: Any) -> InitErrorDetails:
    return {"type": PydanticCustomError("value_error", message), "loc": (), "input": data}


class Settings(BaseModel):
    """A table of ``calgate.toml`` whose problems are all reported at once: a literal
    secret, the fields' own errors and, when the fields are valid, every problem
    :meth:`_problems` finds (each check independent of the others), not only the first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        secrets = _literal_secrets(data)
        errors = [_problem(msg, data) for msg in secrets]
        if secrets:  # the other keys are still checked
            data = {k: v for k, v in data.items() if k not in _FORBIDDEN}
        try:
            model = handler(data)
        except ValidationError as exc:
            errors += [_copy(e) for e in exc.errors()]
        else:
            errors += [_problem(msg, data) for msg in model._problems()]
            if not errors:
                return model
        raise ValidationError.from_exception_data(cls.__name__, errors)

    def _problems(self) -> list[str]:
        """Every problem of a table whose fields are valid (``field: message``)."""
        return []


def _copy(err: Any) -> InitErrorDetails:
    out: InitErrorDetails = {"type": err["type"], "loc": err["loc"], "input": err["input"]}
    if "ctx" in err:
        out["ctx"] = err["ctx"]
    return out


class _Login(Settings):
    """A username and where its password is (read by :meth:`_read_password`)."""

    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    password_credential: str | None = None

    _password: SecretStr | None = PrivateAttr(default=None)

    def _read_password(self) -> list[str]:
        """The password read (into :attr:`password`); its problems."""
        problems: list[str] = []
        self._password = read_into(
            problems,
            self.password_env,
            self.password_file,
            self.password_credential,
            what="password",
        )
        if self._password is not None and not self.username:
            problems.append("a password needs a username")
        return problems

    @property
    def password(self) -> SecretStr | None:
        return self._password


class MqttSettings(_Login):
    """``[mqtt]``: the broker, TLS, credentials and the publish window."""

    url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = Field(default="calgate", min_length=1, pattern=r"^[^#+]+$")
    client_id: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    qos: Literal[1] = 1
    max_inflight: int = Field(default=1000, ge=1, le=60000)  # packet ids: 65535 in all
    # rows published per turn of the event loop (a few µs each): polls interleave
    batch_size: int = Field(default=100, ge=1)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    flush_timeout_s: float = Field(default=5.0, ge=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"scheme must be mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return url

    def _problems(self) -> list[str]:
        problems = []
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("cert_file and key_file go together (client certificate)")
        for name in ("ca_file", "cert_file", "key_file"):
            p = getattr(self, name)
            if p is not None and not p.is_file():
                problems.append(f"{name}: no such file {p}")
        return problems + self._read_password()

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or (8883 if self.tls else 1883)


class InfluxSettings(_Login):
    """``[influxdb]``: ``api = "v2"`` (``/api/v2/write``) or ``"v1"`` (``/write`` of 1.x)."""

    api: Literal["v2", "v1"] = "v2"
    url: str = "http://127.0.0.1:8086"
    # v2
    org: str = ""
    bucket: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    token_credential: str | None = None
    # v1
    database: str | None = None
    retention_policy: str | None = None  # and username, password_* (v1)
    # https: a private CA, or no verification at all (a lab network's self-signed server)
    ca_file: Path | None = None
    verify_tls: bool = True
    # batching and retries
    batch_size: int = Field(default=5000, ge=1)
    flush_interval_s: float = Field(default=1.0, ge=0)
    timeout_s: float = Field(default=10.0, gt=0)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    flush_timeout_s: float = Field(default=5.0, ge=0)

    _token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be http(s)://host[:port], got {url!r}")
        return url

    def _problems(self) -> list[str]:
        problems = []
        if self.ca_file is not None and not self.ca_file.is_file():
            problems.append(f"ca_file: no such file {self.ca_file}")
        if self.api == "v1":
            if not self.database:
                problems.append('database: required with api = "v1"')
            return problems + self._read_password()
        if not self.bucket:
            problems.append('bucket: required with api = "v2"')
        self._token = read_into(
            problems, self.token_env, self.token_file, self.token_credential, what="token"
        )
        return problems

    @property
    def token(self) -> SecretStr | None:
        return self._token


class OutboxSettings(Settings):
    """``[outbox]``: the durable queue's bounds and commit batching."""

    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    max_age_s: float = Field(default=7 * 86400.0, gt=0)
    commit_interval_s: float = Field(default=0.005, ge=0)
    commit_rows: int = Field(default=500, ge=1)
    cursor_interval_s: float = Field(default=0.5, gt=0)
    maintenance_interval_s: float = Field(default=1.0, gt=0)
    tail_rows: int = Field(default=20000, ge=0)
