"""The gateway's whole hot path, measured: Modbus TCP transmitters → gateway → mosquitto + InfluxDB API.

Starts N simulated Modbus TCP pressure transmitters (one float32 each, a new value on
every read) in a process of their own, real ``mosquitto`` and ``victoria-metrics``
(InfluxDB's v2 write API, through influxdb-client), and ``calgate run`` polling every
transmitter every P ms with calibration on (a registry with one certificate per
transmitter, chained to the example lab's NMI) and both sinks on. A subscriber counts
what arrives and the latency from register read (the payload's acquisition ``ts``) to
MQTT delivery. Prints one JSON line.

    python bench/bench_gateway.py --devices 100 --period-ms 100 --seconds 30

Figures, not assertions: tests never assert on wall-clock speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mb(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


# -- the transmitters' process ---------------------------------------------------------


async def serve_transmitters(n: int, ports_file: Path) -> None:
    sys.path.insert(0, str(REPO))
    from simulators.modbus_transmitter import ModbusTransmitterSim
    from simulators.physics import Manifold

    manifold = Manifold(seed=1)
    manifold.setpoint = 1000.0
    manifold.output = True
    sims = [ModbusTransmitterSim(units=(1,), manifold=manifold, seed=i) for i in range(n)]
    for sim in sims:
        await sim.start()
    ports_file.write_text(json.dumps([sim.endpoints()["tcp"] for sim in sims]))  # noqa: ASYNC240 - once, at start
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for sim in sims:
        await sim.stop()


# -- set-up ------------------------------------------------------------------------------


def make_registry(dst: Path, n: int) -> list[str]:
    """The example registry plus transmitters BT-0001… each with a certificate like PT-101's."""
    shutil.copytree(REPO / "examples" / "registry", dst)
    eq_src = (dst / "equipment" / "PT-101.toml").read_text()
    cert_src = (dst / "certificates" / "PCL-2026-0906.toml").read_text()
    ids = []
    for i in range(1, n + 1):
        eq = f"BT-{i:04d}"
        ids.append(eq)
        (dst / "equipment" / f"{eq}.toml").write_text(
            eq_src.replace('id = "PT-101"', f'id = "{eq}"')
        )
        number = f"BENCH-{i:04d}"
        (dst / "certificates" / f"{number}.toml").write_text(
            cert_src.replace('number = "PCL-2026-0906"', f'number = "{number}"').replace(
                'item = "PT-101"', f'item = "{eq}"'
            )
        )
    return ids


def make_config(
    path: Path, registry: Path, state: Path, ids: list[str], urls: list[str], period_s: float,
    mqtt_port: int, vm_port: int,
) -> None:  # fmt: skip
    lines = [
        "[gateway]", 'id = "bench"', 'site = "bench"', f'registry = "{registry}"',
        f'state_dir = "{state}"', "",
        "[mqtt]", f'url = "mqtt://127.0.0.1:{mqtt_port}"', "max_inflight = 5000", "",
        "[influxdb]", 'api = "v2"', f'url = "http://127.0.0.1:{vm_port}"', 'org = "lab"',
        'bucket = "bench"', "", "[http]", "enabled = false", "",
    ]  # fmt: skip
    for eq, url in zip(ids, urls, strict=True):
        lines += [
            "[[equipment]]", f'id = "{eq}"', 'driver = "modbus"', f'url = "{url}"', "unit = 1",
            f"interval_s = {period_s}", "timeout_s = 1.0",
            "[[equipment.channels]]", 'name = "pressure"', 'register = "input"', "address = 0",
            'type = "float32"', 'unit = "mbar"', "",
        ]  # fmt: skip
    path.write_text("\n".join(lines))


class Counter:
    """A paho subscriber counting readings and their latency (acquisition → delivery)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.count = 0
        self.latencies: list[float] = []
        self.measuring = False
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self.on_message
        self.ready = threading.Event()
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("calgate/bench/+/+/reading", qos=0)
        self.client.loop_start()
        self.ready.wait(10)

    def on_message(self, _c: object, _u: object, msg: object) -> None:
        now = time.time()
        if not self.measuring:
            return
        payload = msg.payload  # type: ignore[attr-defined]
        i = payload.find(b'"ts":"') + 6
        ts = datetime.fromisoformat(payload[i : i + 27].decode().replace("Z", "+00:00")).timestamp()
        with self.lock:
            self.count += 1
            self.latencies.append(now - ts)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_until(check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--period-ms", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve_transmitters(args.devices, args.serve))
        return 0

    work = Path(tempfile.mkdtemp(prefix="calgate-bench-"))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], name: str, **kw: object) -> subprocess.Popen[bytes]:
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work, **kw)  # type: ignore[call-overload]
        procs.append(p)
        return p

    try:
        mqtt_port, vm_port = free_port(), free_port()
        (work / "mosquitto.conf").write_text(
            f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\n"
        )
        spawn(
            [
                shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                "-c",
                str(work / "mosquitto.conf"),
            ],
            "mosquitto",
        )
        spawn(
            ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}", f"-storageDataPath={work / 'vm'}",
             "-retentionPeriod=100y", "-loggerLevel=ERROR"], "victoria-metrics",
        )  # fmt: skip
        ports_file = work / "ports.json"
        spawn(
            [sys.executable, __file__, "--devices", str(args.devices), "--serve", str(ports_file)],
            "sims",
        )
        wait_until(lambda: socket.create_connection(("127.0.0.1", mqtt_port), 0.5))
        wait_until(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{vm_port}/health", timeout=1).status
                == 200
            )
        )
        wait_until(ports_file.exists, 60)
        urls = json.loads(ports_file.read_text())
        ids = make_registry(work / "registry", args.devices)
        config = work / "calgate.toml"
        make_config(config, work / "registry", work / "state", ids, urls, args.period_ms / 1000,
                    mqtt_port, vm_port)  # fmt: skip
        counter = Counter(mqtt_port)
        gw = spawn([sys.executable, "-m", "gateway", "run", "-c", str(config)], "gateway")
        time.sleep(args.warmup)  # a benchmark's warm-up, not a readiness wait
        if gw.poll() is not None:
            print((work / "gateway.log").read_text()[-3000:], file=sys.stderr)
            return 1
        cpu0, t0 = cpu_seconds(gw.pid), time.monotonic()
        with counter.lock:
            counter.measuring = True
        time.sleep(args.seconds)
        with counter.lock:
            counter.measuring = False
            n, lat = counter.count, sorted(counter.latencies)
        cpu1, t1 = cpu_seconds(gw.pid), time.monotonic()
        rss = peak_rss_mb(gw.pid)
        counter.stop()
        elapsed = t1 - t0
        cpu = cpu1 - cpu0
        expected = args.devices * 1000.0 / args.period_ms
        q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [float("nan")] * 99
        result = {
            "devices": args.devices,
            "period_ms": args.period_ms,
            "seconds": round(elapsed, 1),
            "delivered_per_s": round(n / elapsed, 1),
            "expected_per_s": expected,
            "delivered_pct": round(100 * n / elapsed / expected, 2),
            "cpu_s_per_1000_values": round(1000 * cpu / max(n, 1), 4),
            "core_pct": round(100 * cpu / elapsed, 1),
            "peak_rss_mb": round(rss, 1),
            "latency_ms_p50": round(1000 * q[49], 2),
            "latency_ms_p95": round(1000 * q[94], 2),
            "latency_ms_max": round(1000 * lat[-1], 2) if lat else None,
        }
        print(json.dumps(result))
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
