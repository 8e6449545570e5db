"""``calgate demo``: the simulated lab, the example registry, the gateway and the delivery path.

Everything runs in one process on loopback: the simulators (free ports), an MQTT broker
(mosquitto when installed, else the embedded one), a time-series store (InfluxDB when
``--influx-url`` is given or ``influxd`` is installed, else a local SQLite history with
retention), the gateway with ``examples/registry``, its HTTP status, and a live table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from simulators.net import free_port

__all__ = ["example_registry", "lab_toml", "run_demo"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def example_registry() -> Path:
    """``examples/registry``: from a source checkout, or as installed (``share/calgate``)."""
    from gateway.installation import example_dir

    return example_dir() / "registry"


def lab_toml(
    endpoints: Mapping[str, Mapping[str, str]],
    *,
    registry: Path,
    state_dir: Path,
    mqtt_url: str | None = None,
    influx: Mapping[str, str] | None = None,
    http: str | None = None,
    interval_s: float = 1.0,
    site: str = "demo-lab",
    gateway_id: str = "edge-demo",
    only: Iterable[str] | None = None,
    gateway_extra: Mapping[str, float] | None = None,
) -> str:
    """A ``calgate.toml`` for the lab's endpoints (as :meth:`simulators.lab.Lab.endpoints`)."""
    ep = endpoints
    out = [
        "[gateway]",
        f'id = "{gateway_id}"',
        f'site = "{site}"',
        f'registry = "{registry}"',
        f'state_dir = "{state_dir}"',
        *(f"{k} = {v}" for k, v in (gateway_extra or {}).items()),
        "",
    ]
    if mqtt_url:
        out += ["[mqtt]", f'url = "{mqtt_url}"', ""]
    if influx:
        out += ["[influxdb]", *(f'{k} = "{v}"' for k, v in influx.items()), ""]
    out += ["[http]", f'listen = "{http}"' if http else "enabled = false", ""]
    tables: dict[str, list[str]] = {
        "BAL-01": ['driver = "mt-sics"', f'port = "{ep["BAL-01"]["tcp"]}"'],
        "BAL-02": ['driver = "sartorius-sbi"', f'port = "{ep["BAL-02"]["tcp"]}"'],
        "PC-01": ['driver = "scpi-pressure"', f'port = "{ep["PC-01"]["tcp"]}"'],
    }
    for eq, order in (("PT-101", "ABCD"), ("PT-102", "CDAB")):
        tables[eq] = [
            'driver = "modbus"', f'url = "{ep[eq]["tcp"]}"', f"unit = {ep[eq]['unit']}",
            "[[equipment.channels]]", 'name = "pressure"', 'register = "input"', "address = 0",
            'type = "float32"', f'word_order = "{order}"', 'unit = "mbar"',
        ]  # fmt: skip
    if "UTM-01" in ep:
        tables["UTM-01"] = [
            'driver = "opcua"', f'url = "{ep["UTM-01"]["opcua"]}"', "[[equipment.channels]]",
            'name = "force"', 'node = "ns=2;s=Machine/Force"', 'mode = "poll"', 'unit = "kN"',
        ]  # fmt: skip
    keep = set(only) if only is not None else None
    for eq, body in tables.items():
        if keep is not None and eq not in keep:
            continue
        out += ["[[equipment]]", f'id = "{eq}"', f"interval_s = {interval_s}", "timeout_s = 1.0"]
        out += [*body, ""]
    return "\n".join(out)


class _Process:
    """A server binary run for the demo, in the demo's folder, until the demo stops."""

    def __init__(self, cmd: list[str], workdir: Path, name: str) -> None:
        self.cmd, self.workdir, self.name = cmd, workdir, name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Any, timeout_s: float = 20.0) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _mosquitto(workdir: Path) -> tuple[_Process, int] | None:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if binary is None:
        return None
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = _Process([binary, "-c", str(conf)], workdir, "mosquitto")

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    proc.start(ready)
    return proc, port


def _influxd(workdir: Path) -> tuple[_Process, str] | None:
    binary = shutil.which("influxd")
    if binary is None:
        return None
    port, rpc = free_port(), free_port()
    d = workdir / "influxdb"
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc}"\n'
        f'[meta]\n  dir = "{d}/meta"\n[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n'
        f'  query-log-enabled = false\n[http]\n  bind-address = "127.0.0.1:{port}"\n'
        "  log-enabled = false\n[monitor]\n  store-enabled = false\n"
    )
    proc = _Process([binary, "-config", str(conf)], workdir, "influxd")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/ping", timeout=1) as resp:
            return bool(resp.status == 204)

    proc.start(ready)
    req = urllib.request.Request(f"{url}/query", data=b"q=CREATE+DATABASE+calgate", method="POST")
    with urllib.request.urlopen(req, timeout=5):
        pass
    return proc, url


async def run_demo(
    *,
    duration_s: float | None = None,
    influx_url: str | None = None,
    influx_db: str = "calgate",
    use_mosquitto: bool = True,
    use_influxd: bool = True,
    refresh_s: float = 1.0,
    out: Any = None,
    workdir: Path | None = None,
    registry_dir: Path | None = None,
) -> int:
    from gateway.embedded_broker import EmbeddedBroker
    from gateway.live import event_line, render_rows, render_table
    from gateway.model import Event
    from gateway.service import Gateway, load_everything
    from gateway.sinks.history import HistorySink
    from simulators.lab import Lab

    out = out or sys.stdout
    tty = out.isatty()
    own_dir = workdir is None
    work = workdir or Path(tempfile.mkdtemp(prefix="calgate-demo-"))
    procs: list[_Process] = []
    broker: EmbeddedBroker | None = None
    lab = Lab(fixed_ports=False)
    gw: Gateway | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP: the terminal or the SSH session that ran the demo went away; it stops
    # like Ctrl-C, so mosquitto, influxd and the temporary folder do not stay behind.
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    http = f"127.0.0.1:{free_port()}"
    console = f"lab console:  http://{http}/   (open it in a browser)"
    try:
        print(console, file=out, flush=True)
        print("starting the simulated lab…", file=out, flush=True)
        await lab.start()
        m = _mosquitto(work) if use_mosquitto else None
        if m is not None:
            procs.append(m[0])
            broker_port, broker_kind = m[1], "mosquitto"
        else:
            broker = EmbeddedBroker()
            await broker.start()
            assert broker.port is not None
            broker_port, broker_kind = broker.port, "embedded broker"
        influx: dict[str, str] | None = None
        store = "local SQLite history"
        if influx_url:
            influx = {"api": "v1", "url": influx_url, "database": influx_db}
            store = f"InfluxDB at {influx_url}, database {influx_db}"
        elif use_influxd:
            started = await asyncio.to_thread(_influxd, work)
            if started is not None:
                procs.append(started[0])
                influx = {"api": "v1", "url": started[1], "database": "calgate"}
                store = f"InfluxDB (influxd) at {started[1]}, database calgate"
        path = work / "calgate.toml"
        path.write_text(
            lab_toml(
                lab.endpoints(),
                registry=(registry_dir or example_registry()).resolve(),
                state_dir=work / "state",
                mqtt_url=f"mqtt://127.0.0.1:{broker_port}",
                influx=influx,
                http=http,
            )
        )
        config, registry = load_everything(path)
        history = {} if influx else {"history": partial(HistorySink, path=work / "history.sqlite")}
        gw = Gateway(config, registry, extra_sinks=history)
        recent: deque[Event] = deque(maxlen=200)  # the live table's events
        gw.results.listeners.append(recent.extend)
        fresh: list[Event] = []  # events not printed yet (piped output)
        gw.results.listeners.append(fresh.extend)
        printed_head = False
        await gw.start()
        intro = [
            console,
            f"calgate demo: {len(config.equipment)} simulated instruments, registry {config.registry_dir}",
            f"  MQTT ({broker_kind}):  mosquitto_sub -h 127.0.0.1 -p {broker_port} -t 'calgate/#' -v",
            f"  status:  curl http://{http}/status",
            f"  metrics: curl http://{http}/metrics",
            f"  store:   {store}",
        ]
        if influx:
            intro.append(
                f"  query:   curl -G {influx['url']}/query --data-urlencode db=calgate "
                "--data-urlencode 'q=SELECT last(value) FROM reading GROUP BY equipment'"
            )
        else:
            intro.append(
                f"  query:   sqlite3 {work / 'history.sqlite'} 'SELECT * FROM reading ORDER BY seq DESC LIMIT 10'"
            )
        intro.append(f"  config:  {path}    (Ctrl-C stops)")
        header = "\n".join(intro)  # the console's URL heads it on each redraw (tty)
        print("\n".join(intro[1:]), file=out, flush=True)  # printed first already
        t_end = None if duration_s is None else loop.time() + duration_s
        while not stop.is_set():
            timeout = refresh_s if t_end is None else max(0.0, min(refresh_s, t_end - loop.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await stop.wait()
            if stop.is_set():
                break
            if tty:
                table = render_table(gw.monitor.states, recent, header=header + "\n")
                out.write("\x1b[H\x1b[2J" + table + "\n")
            else:  # piped: plain lines, the column header once, each event once
                head, *rows = render_rows(gw.monitor.states, colour=False, width=80)
                if not printed_head:
                    rows.insert(0, head)
                    printed_head = True
                # an event line is a log line: whole, or the reason it gives is lost
                rows += [f"event{event_line(e, None)}" for e in fresh]
                fresh.clear()
                out.write("\n".join(rows) + "\n")
            out.flush()
            if t_end is not None and loop.time() >= t_end:
                break
        return 0
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if gw is not None and gw.started:
            await gw.stop()
        await lab.stop()
        if broker is not None:
            await broker.stop()
        for p in procs:
            p.stop()
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            print("calgate demo: stopped", file=out, flush=True)
