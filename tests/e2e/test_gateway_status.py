"""``calgate run`` as systemd runs it: HTTP status, Prometheus metrics, sd_notify, exit codes.

The service runs as a child process polling the simulated lab, with ``NOTIFY_SOCKET``
bound by the test (a unix datagram socket, as systemd's) and ``WATCHDOG_USEC`` set:
READY=1 once it polls, WATCHDOG=1 pings, STOPPING=1 and exit code 0 on SIGTERM.
``/healthz``, ``/status`` and ``/metrics`` answer what the registry and the instruments
imply, also after an instrument is unplugged. A broken config exits 78 listing every error.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
import signal
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, wait_for_async
from labconfig import calgate, calgate_run, http_get
from servers import InfluxV1, Mosquitto

from calibration import Registry
from gateway.demo import example_registry, lab_toml
from gateway.registry_watch import revision_of
from simulators.lab import Lab

pytestmark = pytest.mark.e2e

EQUIPMENT = {"BAL-01", "BAL-02", "PC-01", "PT-101", "PT-102"}
EX_CONFIG = 78


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition → {(name, labels): value}; every line must parse."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def sample(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    want = set(labels.items())
    for (n, ls), v in metrics.items():
        if n == name and want <= ls:
            return v
    return None


class Notify:
    """The systemd side of sd_notify: a datagram socket collecting what the service sends."""

    def __init__(self) -> None:
        self.name = f"@calgate-test-{uuid.uuid4().hex}"  # abstract: no path length limit
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.messages.extend(data.decode().splitlines())

    def __enter__(self) -> Notify:
        self._task = asyncio.create_task(self._collect())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sock.close()

    def count(self, line: str) -> int:
        return self.messages.count(line)


async def test_http_status_metrics_and_systemd_notify(
    tmp_path: Path, mosquitto: Mosquitto, influxd: InfluxV1, unique_name: str
) -> None:
    influxd.create_database(unique_name)
    registry = Registry.load(example_registry())
    http = f"127.0.0.1:{free_port()}"
    base = f"http://{http}"
    config = tmp_path / "calgate.toml"
    log = tmp_path / "calgate.log"
    async with Lab(fixed_ports=False, opcua=False, seed=6) as lab:
        config.write_text(
            lab_toml(
                lab.endpoints(),
                registry=example_registry(),
                state_dir=tmp_path / "state",
                mqtt_url=mosquitto.url,
                influx={"api": "v1", "url": influxd.url, "database": unique_name},
                http=http,
                interval_s=0.1,
                site=f"status-{unique_name[-8:]}",
                gateway_id="edge-status",
                gateway_extra={"backoff_min_s": 0.05, "backoff_max_s": 0.2},
            )
        )
        with Notify() as notify:
            # As systemd sets them (WatchdogSec=0.4); an inherited WATCHDOG_PID would not match.
            env = {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": ""}
            async with calgate_run(config, log, env) as proc:
                await wait_for_async(
                    lambda: notify.count("READY=1") >= 1, timeout_s=30, what="READY=1"
                )

                # Every equipment polled, then /healthz, /status and /metrics.
                def status() -> dict[str, Any]:
                    code, body = http_get(f"{base}/status")
                    assert code == 200
                    return dict(json.loads(body))

                def polled() -> bool:
                    eqs = status()["equipment"]
                    return all(
                        eqs[e]["connection"] == "online"
                        and all(ch["last"] for ch in eqs[e]["channels"].values())
                        and eqs[e]["channels"]
                        for e in EQUIPMENT
                    )

                await wait_for_async(polled, timeout_s=30, what="every equipment online")
                code, body = http_get(f"{base}/healthz")
                assert (code, json.loads(body)["status"]) == (200, "ok")

                now = datetime.now(UTC)
                st = status()
                applied = revision_of(example_registry())  # the registry it applied
                started, uptime = st["gateway"].pop("started"), st["gateway"].pop("uptime_s")
                assert started.endswith("Z")
                assert uptime > 0
                assert st["gateway"] == {
                    "id": "edge-status",
                    "site": f"status-{unique_name[-8:]}",
                    "version": importlib.metadata.version("calgate"),
                    "healthy": True,
                    "problems": [],
                    "event_loop": "uvloop",  # the default of [gateway] event_loop
                    "registry": applied.to_json(),
                    "last_reload": None,  # no SIGHUP yet
                }
                assert st["sinks"]["mqtt"]["connected"] is True
                assert st["sinks"]["influx"]["connected"] is True
                assert set(st["equipment"]) == EQUIPMENT
                for eq_id, eq in st["equipment"].items():
                    cal = registry.state(eq_id, now)
                    assert eq["connection"] == "online"
                    assert eq["calibration"] == cal.status
                    assert eq["certificate"] == cal.certificate
                    assert eq["due"] == (cal.due.isoformat() if cal.due else None)
                    assert eq["chain"] == list(cal.chain)
                    assert eq["chain"][0] == cal.certificate
                    assert "instrument_conforms" in eq
                    (channel,) = registry.equipment(eq_id).channels  # type: ignore[union-attr]
                    last = eq["channels"][channel.name]["last"]
                    assert last["equipment"] == eq_id
                    assert last["channel"] == channel.name
                    assert last["unit"] == channel.unit
                    assert last["certificate"] == cal.certificate
                    assert last["calibration"] == cal.status
                    assert "conformity" in last
                    assert last["U"] > 0
                assert st["equipment"]["BAL-02"]["calibration"] == "untraceable"
                assert st["outbox"]["depth"].keys() == {"mqtt", "influx"}

                code, text = http_get(f"{base}/metrics")
                assert code == 200
                m = parse_metrics(text)
                for eq_id in EQUIPMENT:
                    polls = sample(m, "calgate_polls_total", equipment=eq_id)
                    assert polls is not None
                    assert polls >= 1
                    count = sample(m, "calgate_poll_latency_seconds_count", equipment=eq_id)
                    assert count is not None
                    assert count >= 1
                    status_now = registry.state(eq_id, now).status
                    assert (
                        sample(m, "calgate_calibration_status", equipment=eq_id, status=status_now)
                        == 1
                    )
                for sink in ("mqtt", "influx"):
                    assert sample(m, "calgate_outbox_depth", sink=sink) is not None
                    assert sample(m, "calgate_sink_lag_seconds", sink=sink) is not None
                assert sample(m, "calgate_outbox_dropped_total") == 0
                assert sample(m, "calgate_poll_errors_total", equipment="BAL-01") is None

                # BAL-01 unplugged: connect errors counted, offline in /status, still healthy.
                await lab.balance.stop()

                def bal_errors() -> float:
                    metrics = parse_metrics(http_get(f"{base}/metrics")[1])
                    return sum(
                        v
                        for (n, ls), v in metrics.items()
                        if n == "calgate_poll_errors_total" and ("equipment", "BAL-01") in ls
                    )

                await wait_for_async(lambda: bal_errors() >= 2, timeout_s=20, what="poll errors")
                await wait_for_async(
                    lambda: status()["equipment"]["BAL-01"]["connection"] == "offline",
                    what="BAL-01 offline",
                )
                bal = status()["equipment"]["BAL-01"]
                assert bal["last_error"]
                assert bal["channels"]["weight"]["last"] is not None  # the last good one stays
                m = parse_metrics(http_get(f"{base}/metrics")[1])
                assert sample(m, "calgate_equipment_up", equipment="BAL-01") == 0
                assert sample(m, "calgate_equipment_up", equipment="PT-101") == 1
                errs = {
                    dict(ls)["kind"]
                    for (n, ls), v in m.items()
                    if n == "calgate_poll_errors_total" and ("equipment", "BAL-01") in ls and v > 0
                }
                assert errs <= {"connect", "timeout"}
                assert errs
                assert http_get(f"{base}/healthz")[0] == 200  # an unplugged balance is data

                # The watchdog is pinged every half interval while the loops turn.
                pings = notify.count("WATCHDOG=1")
                await wait_for_async(
                    lambda: notify.count("WATCHDOG=1") >= pings + 3, what="WATCHDOG=1 pings"
                )
                # systemctl reload (SIGHUP): RELOADING=1 with MONOTONIC_USEC, then READY=1.
                proc.send_signal(signal.SIGHUP)
                await wait_for_async(
                    lambda: notify.count("READY=1") >= 2, timeout_s=20, what="READY=1 again"
                )
                reloading = notify.messages.index("RELOADING=1")
                assert notify.messages[reloading + 1].startswith("MONOTONIC_USEC=")
                ready_again = len(notify.messages) - 1 - notify.messages[::-1].index("READY=1")
                assert reloading < ready_again
                assert http_get(f"{base}/healthz")[0] == 200

                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 30)
            assert code == 0, log.read_text()[-3000:]
            await wait_for_async(lambda: "STOPPING=1" in notify.messages, what="STOPPING=1")
            assert notify.messages.index("READY=1") < notify.messages.index("STOPPING=1")
            assert notify.count("READY=1") == 2  # start and reload
            # Nothing pings after STOPPING=1.
            assert "WATCHDOG=1" not in notify.messages[notify.messages.index("STOPPING=1") :]


async def run_broken(config: Path) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        *calgate(), "run", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode().splitlines()


async def test_broken_config_exits_78_listing_every_error(tmp_path: Path) -> None:
    reg = example_registry()
    config = tmp_path / "broken.toml"
    config.write_text(
        "[gateway]\n"
        f'registry = "{reg}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        "status_interval_s = 0\n"
        "[http]\n"
        'listen = "nowhere"\n'
        "[[equipment]]\n"
        'id = "BAL-01"\n'
        'driver = "mt-sics"\n'
        "interval_s = -1\n"
        'port = "socket://127.0.0.1:1"\n'
        "[[equipment]]\n"
        'id = "PT-101"\n'
        'driver = "telepathy"\n'
    )
    code, lines = await run_broken(config)
    assert code == EX_CONFIG
    errors = [x for x in lines if x.startswith(f"{config}: ")]
    where = {x.split(": ")[1] for x in errors}
    assert where == {
        "gateway.status_interval_s",
        "http.listen",
        "equipment[0] (BAL-01).interval_s",
        "equipment[1] (PT-101).driver",
    }, lines
    assert lines[-1] == f"{len(errors)} error(s)"

    # Valid TOML, but equipment and channels the registry does not know.
    config.write_text(
        "[gateway]\n"
        f'registry = "{reg}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        "[http]\nenabled = false\n"
        "[[equipment]]\n"
        'id = "NOPE-1"\n'
        'driver = "mt-sics"\n'
        'port = "socket://127.0.0.1:1"\n'
        "[[equipment]]\n"
        'id = "PT-101"\n'
        'driver = "modbus"\n'
        'url = "tcp://127.0.0.1:1"\n'
        "[[equipment.channels]]\n"
        'name = "temperature"\n'
        'register = "input"\n'
        "address = 0\n"
        'type = "float32"\n'
    )
    code, lines = await run_broken(config)
    assert code == EX_CONFIG
    errors = [x for x in lines if x.startswith(f"{config}: ")]
    assert len(errors) == 2, lines
    assert any(x.startswith(f"{config}: equipment[0] (NOPE-1).id: 'NOPE-1'") for x in errors)
    assert any(
        x.startswith(f"{config}: equipment[1] (PT-101).channels[0].name: channel 'temperature'")
        for x in errors
    )
    assert not (tmp_path / "state").exists(), "nothing started"


async def test_status_port_taken_exits_with_a_clear_error_not_a_traceback(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    """Another process holds the HTTP port: a one-line error naming it, exit 69
    (EX_UNAVAILABLE: systemd restarts, unlike 78), the MQTT sink closed cleanly."""
    site = f"taken-{unique_name[-8:]}"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "calgate.toml"
        config.write_text(
            "[gateway]\n"
            f'site = "{site}"\n'
            f'registry = "{example_registry()}"\n'
            f'state_dir = "{tmp_path / "state"}"\n'
            f'[mqtt]\nurl = "{mosquitto.url}"\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\n'
        )
        code, lines = await run_broken(config)
    assert code == 69, lines
    assert not any("Traceback" in x for x in lines), lines
    assert any(f"127.0.0.1:{port}" in x and "in use" in x for x in lines), lines
    # The gateway's retained status is not left "online".
    from mqttsub import Subscriber

    with Subscriber(mosquitto.port, f"calgate/{site}/gateway/+/status") as late:
        late.wait_for(lambda s: bool(s.messages), what="the retained gateway status")
        assert late.json()[-1]["state"] == "offline"


async def test_metrics_show_backlog_lag_and_drops_while_the_broker_is_away(
    tmp_path: Path, unique_name: str
) -> None:
    """No broker at the MQTT address and a short age bound: the outbox backs up, then
    drops its oldest rows; /metrics counts them and shows the sink's depth and lag."""
    http = f"127.0.0.1:{free_port()}"
    base = f"http://{http}"
    config = tmp_path / "calgate.toml"
    log = tmp_path / "calgate.log"
    async with Lab(fixed_ports=False, opcua=False, seed=7) as lab:
        config.write_text(
            lab_toml(
                lab.endpoints(),
                registry=example_registry(),
                state_dir=tmp_path / "state",
                mqtt_url=f"mqtt://127.0.0.1:{free_port()}",  # nobody listens
                http=http,
                interval_s=0.05,
                site="drops",
                only={"PT-101", "PT-102"},
            )
            + "\n[outbox]\nmax_age_s = 0.5\nmaintenance_interval_s = 0.1\n"
        )
        async with calgate_run(config, log, {}) as proc:

            def metrics() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
                return parse_metrics(http_get(f"{base}/metrics")[1])

            await wait_for_async(
                lambda: (sample(metrics(), "calgate_outbox_dropped_total") or 0) > 0,
                timeout_s=30,
                what="dropped rows counted",
            )
            m = metrics()
            depth = sample(m, "calgate_outbox_depth", sink="mqtt")
            lag = sample(m, "calgate_sink_lag_seconds", sink="mqtt")
            assert depth is not None
            assert depth > 0
            assert lag is not None
            assert lag > 0
            polls = sample(m, "calgate_polls_total", equipment="PT-101")
            assert polls is not None
            assert polls > 0, "polling goes on"
            code, body = http_get(f"{base}/status")
            assert code == 200
            st = json.loads(body)
            assert st["outbox"]["dropped"] > 0
            assert st["outbox"]["depth"]["mqtt"] > 0
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-3000:]
    assert "outbox: dropped" in log.read_text()  # and why: max_age
