"""Real servers for the tests: mosquitto, influxd (InfluxDB 1.x) and victoria-metrics.

Each runs as a child process on a free loopback port with its data in a temporary
directory, is polled for readiness, and is stopped (and can be restarted on the same
port, to test outages) by the test that owns it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import free_port, require_binary, wait_for, wait_port

__all__ = ["InfluxV1", "Mosquitto", "Server", "VictoriaMetrics"]


@dataclass
class Server:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    host = "127.0.0.1"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        cmd = self.command()
        log = open(self.workdir / f"{type(self).__name__.lower()}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        try:
            wait_for(self._ready_or_dead, timeout_s=30, what=f"{cmd[0]} on port {self.port}")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {self.proc.returncode}: {self.log_tail()}")

    def _ready_or_dead(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or self.ready()

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 2000) -> str:
        p = self.workdir / f"{type(self).__name__.lower()}.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def http(
        self, path: str, data: bytes | None = None, *, method: str | None = None
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://{self.host}:{self.port}{path}", data=data, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


@dataclass
class Mosquitto(Server):
    """A mosquitto broker with anonymous access on 127.0.0.1.

    ``tls = (cafile, certfile, keyfile)`` makes the listener speak TLS (``mqtts://``);
    ``persistence = True`` keeps sessions and queued messages across :meth:`restart`;
    ``users`` requires a username and password (a password file made with mosquitto_passwd).
    """

    tls: tuple[Path, Path, Path] | None = None
    persistence: bool = False
    users: dict[str, str] | None = None  # username -> password; then no anonymous access

    def command(self) -> list[str]:
        binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
        conf = self.workdir / "mosquitto.conf"
        tls = ""
        if self.tls is not None:
            ca, cert, key = self.tls
            tls = f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        persistence = (
            f"persistence true\npersistence_location {self.workdir}/\n"
            if self.persistence
            else "persistence false\n"
        )
        # as root, mosquitto drops to user "mosquitto", who cannot read the test's
        # private temporary directory (certificates, persistence file)
        private = self.tls or self.persistence or self.users
        stay = "user root\n" if os.geteuid() == 0 and private else ""
        auth = "allow_anonymous true\n"
        if self.users is not None:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            tool = require_binary("mosquitto_passwd")
            for user, password in self.users.items():
                subprocess.run([tool, "-b", str(pwfile), user, password], check=True)
            auth = f"allow_anonymous false\npassword_file {pwfile}\n"
        conf.write_text(
            f"{stay}listener {self.port} 127.0.0.1\n"
            f"{tls}"
            f"{auth}"
            f"{persistence}"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        return [binary, "-c", str(conf)]

    def ready(self) -> bool:
        wait_port(self.port, timeout_s=0.2)
        return True

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"


@dataclass
class InfluxV1(Server):
    """Debian's InfluxDB 1.x (``influxd``) with its HTTP API on 127.0.0.1."""

    rpc_port: int = field(default_factory=free_port)

    def command(self) -> list[str]:
        binary = require_binary("influxd")
        d = self.workdir
        conf = d / "influxdb.conf"
        conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
        )
        return [binary, "-config", str(conf)]

    def ready(self) -> bool:
        status, _ = self.http("/ping")
        return status == 204

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"', method="POST")

    def query(
        self, q: str, db: str | None = None, *, method: str = "GET"
    ) -> list[dict[str, object]]:
        """Run InfluxQL; return the series of the first result (``[]`` when empty)."""
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        qs = urllib.parse.urlencode(params)
        if method == "POST":
            status, body = self.http("/query", qs.encode(), method="POST")
        else:
            status, body = self.http(f"/query?{qs}")
        if status != 200:
            raise RuntimeError(f"influx query {q!r}: HTTP {status} {body!r}")
        results = json.loads(body)["results"]
        if results and "error" in results[0]:
            raise RuntimeError(results[0]["error"])
        series: list[dict[str, object]] = results[0].get("series", []) if results else []
        return series

    def rows(self, q: str, db: str) -> list[dict[str, object]]:
        """InfluxQL result as a list of dicts, one per row, tags included when grouped."""
        out: list[dict[str, object]] = []
        for s in self.query(q, db):
            cols = s["columns"]
            tags = s.get("tags") or {}
            for vals in s["values"]:  # type: ignore[union-attr]
                row = dict(zip(cols, vals, strict=True))  # type: ignore[call-overload]
                row.update(tags)  # type: ignore[arg-type]
                out.append(row)
        return out


@dataclass
class VictoriaMetrics(Server):
    """victoria-metrics, which serves InfluxDB's ``/api/v2/write`` (for ``api = "v2"``)."""

    def command(self) -> list[str]:
        binary = require_binary("victoria-metrics", "victoria-metrics-prod")
        return [
            binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir / 'vmdata'}",
            "-retentionPeriod=100y",
            "-search.disableCache",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
        ]

    def ready(self) -> bool:
        status, _ = self.http("/health")
        return status == 200

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def flush(self) -> None:
        """Make recently written samples searchable (victoria-metrics buffers ~1 s)."""
        self.http("/internal/force_flush")

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching the selector, as /api/v1/export's JSON lines."""
        self.flush()
        qs = urllib.parse.urlencode({"match[]": match, "start": "0"})
        status, body = self.http(f"/api/v1/export?{qs}")
        if status != 200:
            raise RuntimeError(f"export {match}: HTTP {status} {body!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def export_until(
        self, match: str, ok: Callable[[list[dict[str, Any]]], bool], *, timeout_s: float = 15.0
    ) -> list[dict[str, Any]]:
        """Poll :meth:`export` until ``ok(series)``; ingestion is asynchronous."""
        box: list[list[dict[str, Any]]] = [[]]

        def check() -> bool:
            box[0] = self.export(match)
            return ok(box[0])

        with contextlib.suppress(TimeoutError):
            wait_for(check, timeout_s=timeout_s, what=f"victoria-metrics series {match}")
        return box[0]


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() not in {"", "0", "false", "no"}
