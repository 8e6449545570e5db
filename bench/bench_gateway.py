"""The gateway's whole hot path, measured: Modbus TCP transmitters → gateway → mosquitto + InfluxDB API.

Starts N simulated Modbus TCP pressure transmitters (one float32 each, a new value on
every read) in a process of their own, real ``mosquitto`` and ``victoria-metrics``
(InfluxDB's v2 write API), and ``calgate run`` polling every
transmitter every P ms with calibration on (a registry with one certificate per
transmitter, chained to the example lab's NMI) and both sinks on. A subscriber counts
what arrives and the latency from register read (the payload's acquisition ``ts``) to
MQTT delivery. Prints one JSON line.

    python bench/bench_gateway.py --devices 100 --period-ms 100 --seconds 30

``--sse-clients N`` keeps N lab-console pages connected to the gateway's ``/api/stream``
(server-sent events) during the run, as N browsers on a wall screen would, and reports
the updates each received. ``--registers K`` gives every transmitter a block of K live int16 registers (the
simulator's ``block_registers``) read as K channels in one request (block reads);
``--profile`` samples the gateway with py-spy during the measured window and prints its
top functions to stderr. The gateway's ``/metrics`` is scraped before and after the
window for missed poll deadlines and poll errors. bench/README.md lists the scenarios
and the figures measured.

Figures, not assertions: tests never assert on wall-clock speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
BLOCK_ADDRESS = 200  # simulators.modbus_transmitter.BLOCK_ADDRESS (not imported: no pymodbus here)

sys.path.insert(0, str(REPO))
from simulators.net import free_port  # noqa: E402 - below the ephemeral range (see there)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def peak_rss_mb(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


# -- the transmitters' process ---------------------------------------------------------


async def serve_transmitters(n: int, registers: int, ports_file: Path) -> None:
    sys.path.insert(0, str(REPO))
    from simulators.modbus_transmitter import ModbusTransmitterSim
    from simulators.physics import Manifold

    manifold = Manifold(seed=1)
    manifold.setpoint = 1000.0
    manifold.output = True
    sims = [
        ModbusTransmitterSim(units=(1,), manifold=manifold, seed=i, block_registers=registers)
        for i in range(n)
    ]
    for sim in sims:
        await sim.start()
    ports_file.write_text(json.dumps([sim.endpoints()["tcp"] for sim in sims]))  # noqa: ASYNC240 - once, at start
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for sim in sims:
        await sim.stop()


# -- set-up ------------------------------------------------------------------------------


def channel_names(registers: int) -> list[str]:
    """``pressure`` (one float32), or ``p000``… for a block of ``registers`` registers."""
    return [f"p{j:03d}" for j in range(registers)] if registers else ["pressure"]


def make_registry(dst: Path, n: int, registers: int) -> list[str]:
    """The example registry plus transmitters BT-0001… each channel with a certificate
    like PT-101's (one equipment channel like PT-101's per register of a block)."""
    shutil.copytree(REPO / "examples" / "registry", dst)
    eq_src = (dst / "equipment" / "PT-101.toml").read_text()
    head, channel = eq_src.split("[[channels]]", 1)
    names = channel_names(registers)
    cert_src = (dst / "certificates" / "PCL-2026-0906.toml").read_text()
    ids = []
    for i in range(1, n + 1):
        eq = f"BT-{i:04d}"
        ids.append(eq)
        body = head.replace('id = "PT-101"', f'id = "{eq}"') + "".join(
            "[[channels]]" + channel.replace('name = "pressure"', f'name = "{name}"')
            for name in names
        )
        (dst / "equipment" / f"{eq}.toml").write_text(body)
        for j, name in enumerate(names):
            number = f"BENCH-{i:04d}-{j:03d}"
            (dst / "certificates" / f"{number}.toml").write_text(
                cert_src.replace('number = "PCL-2026-0906"', f'number = "{number}"')
                .replace('item = "PT-101"', f'item = "{eq}"')
                .replace('channel = "pressure"', f'channel = "{name}"')
            )
    return ids


def make_config(
    path: Path, registry: Path, state: Path, ids: list[str], urls: list[str], period_s: float,
    mqtt_port: int, vm_port: int, http_port: int, registers: int,
    outbox: list[str] | None = None, event_loop: str = "uvloop",
) -> None:  # fmt: skip
    lines = [
        "[gateway]", 'id = "bench"', 'site = "bench"', f'registry = "{registry}"',
        f'state_dir = "{state}"', f'event_loop = "{event_loop}"', "",
        "[mqtt]", f'url = "mqtt://127.0.0.1:{mqtt_port}"', "max_inflight = 5000", "",
        "[influxdb]", 'api = "v2"', f'url = "http://127.0.0.1:{vm_port}"', 'org = "lab"',
        'bucket = "bench"', "", "[http]", f'listen = "127.0.0.1:{http_port}"', "",
    ]  # fmt: skip
    if outbox:
        lines += ["[outbox]", *outbox, ""]
    for eq, url in zip(ids, urls, strict=True):
        lines += [
            "[[equipment]]", f'id = "{eq}"', 'driver = "modbus"', f'url = "{url}"', "unit = 1",
            f"interval_s = {period_s}", "timeout_s = 1.0",
        ]  # fmt: skip
        if not registers:
            lines += [
                "[[equipment.channels]]", 'name = "pressure"', 'register = "input"',
                "address = 0", 'type = "float32"', 'unit = "mbar"', "",
            ]  # fmt: skip
        for j, name in enumerate(channel_names(registers) if registers else []):
            lines += [
                "[[equipment.channels]]", f'name = "{name}"', 'register = "input"',
                f"address = {BLOCK_ADDRESS + j}", 'type = "int16"', "scale = 0.1",
                'unit = "mbar"', "",
            ]  # fmt: skip
    path.write_text("\n".join(lines))


class Counter:
    """A paho subscriber counting readings and their latency (acquisition → delivery)."""

    def __init__(self, port: int, latency_every: int = 1) -> None:
        import paho.mqtt.client as mqtt

        self.latency_every = latency_every  # parse the ts of one message in this many
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
        with self.lock:
            self.count += 1
            if self.count % self.latency_every:
                return
        payload = msg.payload  # type: ignore[attr-defined]
        i = payload.find(b'"ts":"') + 6
        ts = datetime.fromisoformat(payload[i : i + 27].decode().replace("Z", "+00:00")).timestamp()
        with self.lock:
            self.latencies.append(now - ts)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class ConsolePages:
    """N connections to the console's event stream, each counting the updates it reads
    (what a browser's EventSource does, without a browser's own CPU in the figures)."""

    MARK = b"\nevent: update\n"

    def __init__(self, port: int, n: int) -> None:
        self.updates = [0] * n
        self.socks: list[socket.socket] = []
        for i in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Accept: text/event-stream\r\n\r\n")  # fmt: skip
            self.socks.append(sock)
            threading.Thread(target=self._read, args=(i, sock), daemon=True).start()

    def _read(self, i: int, sock: socket.socket) -> None:
        tail = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            data = tail + chunk
            self.updates[i] += data.count(self.MARK)
            tail = data[-(len(self.MARK) - 1) :]

    def counts(self) -> list[int]:
        return list(self.updates)

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


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


def scrape(port: int) -> dict[str, float]:
    """Sums over every series of each ``calgate_*`` counter of the gateway's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def top_functions(raw: Path, n: int = 25) -> str:
    """py-spy's raw (collapsed) stacks → the top functions by own and by total samples."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        samples += count
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            total[f] = total.get(f, 0) + count
    if not samples:
        return "py-spy: no samples"
    lines = [f"py-spy: {samples} samples (GIL held)", "  own %   function"]
    for f, c in sorted(own.items(), key=lambda x: -x[1])[:n]:
        lines.append(f"  {100 * c / samples:5.1f}   {f}")
    lines.append("  total % function")
    for f, c in sorted(total.items(), key=lambda x: -x[1])[:n]:
        lines.append(f"  {100 * c / samples:5.1f}   {f}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``readings (/work/main/gateway/service.py:312)`` → ``readings (gateway/service.py)``."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("site-packages/", str(REPO) + "/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--period-ms", type=float, default=100.0)
    ap.add_argument("--registers", type=int, default=0,
                    help="K > 0: K int16 channels per device, read in one request (block reads)")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the gateway during the window; top functions to stderr")  # fmt: skip
    ap.add_argument("--profile-out", type=Path, help="keep py-spy's raw stacks here")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment of the gateway (e.g. MALLOC_ARENA_MAX=2)")  # fmt: skip
    ap.add_argument("--outbox", action="append", default=[], metavar="KEY=VALUE",
                    help="an [outbox] setting, e.g. tail_rows=5000 (repeatable)")  # fmt: skip
    ap.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                    help="[gateway] event_loop")  # fmt: skip
    ap.add_argument("--sse-clients", type=int, default=0, metavar="N",
                    help="N lab-console pages following /api/stream during the run")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve_transmitters(args.devices, args.registers, args.serve))
        return 0

    work = Path(tempfile.mkdtemp(prefix="calgate-bench-"))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], name: str, **kw: object) -> subprocess.Popen[bytes]:
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work, **kw)  # type: ignore[call-overload]
        procs.append(p)
        return p

    try:
        mqtt_port, vm_port, http_port = free_port(), free_port(), free_port()
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
            [sys.executable, __file__, "--devices", str(args.devices),
             "--registers", str(args.registers), "--serve", str(ports_file)],
            "sims",
        )  # fmt: skip
        wait_until(lambda: socket.create_connection(("127.0.0.1", mqtt_port), 0.5))
        wait_until(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{vm_port}/health", timeout=1).status
                == 200
            )
        )
        wait_until(ports_file.exists, 120)
        urls = json.loads(ports_file.read_text())
        ids = make_registry(work / "registry", args.devices, args.registers)
        config = work / "calgate.toml"
        make_config(config, work / "registry", work / "state", ids, urls, args.period_ms / 1000,
                    mqtt_port, vm_port, http_port, args.registers, args.outbox,
                    args.event_loop)  # fmt: skip
        channels = max(args.registers, 1)
        expected = args.devices * channels * 1000.0 / args.period_ms
        counter = Counter(mqtt_port, latency_every=max(1, int(expected // 2000)))
        env = dict(os.environ)
        env.update(kv.split("=", 1) for kv in args.env)
        gw = spawn([sys.executable, "-m", "gateway", "run", "-c", str(config)], "gateway", env=env)
        started = time.monotonic()

        def polling() -> bool:
            if gw.poll() is not None:
                raise RuntimeError(f"the gateway exited with {gw.returncode}")
            return scrape(http_port).get("calgate_polls_total", 0) > 0

        try:
            wait_until(polling, 300)
        except (RuntimeError, TimeoutError) as exc:
            print(f"{exc!r}; the gateway's log ends:", file=sys.stderr)
            print((work / "gateway.log").read_text()[-3000:], file=sys.stderr)
            return 1
        startup_s = time.monotonic() - started
        pages = ConsolePages(http_port, args.sse_clients) if args.sse_clients else None
        time.sleep(args.warmup)  # a benchmark's warm-up, not a readiness wait
        if gw.poll() is not None:
            print((work / "gateway.log").read_text()[-3000:], file=sys.stderr)
            return 1
        m0 = scrape(http_port)
        profiler = None
        if args.profile:
            raw = args.profile_out or work / "profile.txt"
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(gw.pid),
                 "--duration", str(int(args.seconds)), "--rate", "200", "--gil",
                 "--nonblocking", "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        (u0, s0), t0 = cpu_split(gw.pid), time.monotonic()
        pushed0 = pages.counts() if pages else []
        with counter.lock:
            counter.measuring = True
        time.sleep(args.seconds)
        with counter.lock:
            counter.measuring = False
            n, lat = counter.count, sorted(counter.latencies)
        (u1, s1), t1 = cpu_split(gw.pid), time.monotonic()
        pushed = [b - a for a, b in zip(pushed0, pages.counts(), strict=True)] if pages else []
        m1 = scrape(http_port)
        if pages is not None:
            pages.close()
        rss = peak_rss_mb(gw.pid)
        counter.stop()
        elapsed = t1 - t0
        cpu = (u1 - u0) + (s1 - s0)

        def delta(name: str) -> int:
            return round(m1.get(name, 0.0) - m0.get(name, 0.0))

        q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [float("nan")] * 99
        result = {
            "devices": args.devices,
            "registers": args.registers,
            "period_ms": args.period_ms,
            "seconds": round(elapsed, 1),
            "delivered_per_s": round(n / elapsed, 1),
            "expected_per_s": expected,
            "delivered_pct": round(100 * n / elapsed / expected, 2),
            "event_loop": args.event_loop,
            "cpu_s_per_1000_values": round(1000 * cpu / max(n, 1), 4),
            "core_pct": round(100 * cpu / elapsed, 1),
            "system_pct_of_cpu": round(100 * (s1 - s0) / max(cpu, 1e-9), 1),
            "peak_rss_mb": round(rss, 1),
            "latency_ms_p50": round(1000 * q[49], 2),
            "latency_ms_p95": round(1000 * q[94], 2),
            "latency_ms_max": round(1000 * lat[-1], 2) if lat else None,
            "missed_deadlines": delta("calgate_missed_deadlines_total"),
            "poll_errors": delta("calgate_poll_errors_total"),
            "startup_s": round(startup_s, 1),
            "sse_clients": args.sse_clients,
            "sse_updates_per_client_per_s": [round(c / elapsed, 2) for c in pushed],
            "profiled": bool(args.profile),
        }
        print(json.dumps(result), flush=True)
        if profiler is not None:
            profiler.wait(60)
            print(top_functions(args.profile_out or work / "profile.txt"), file=sys.stderr)
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
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
