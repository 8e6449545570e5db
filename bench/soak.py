"""Soak: Modbus transmitters → ``calgate run`` → mosquitto + InfluxDB API, with outages.

N simulated Modbus TCP transmitters (bench_gateway.py's, in a process of their own) are
polled every P ms for ``--duration`` seconds, both sinks on, while the broker and the
database are each cut for ``--cut-s`` seconds and the gateway is SIGKILLed ``--kills``
times (and started again at once). At the end the gateway is stopped cleanly after both
sinks have caught up, and the script prints what was committed against what arrived:

- ``committed``: the outbox's last seq (every Measurement and Event gets one);
- ``mqtt``: distinct seqs received by a QoS 1 subscriber with a persistent session (the
  broker keeps it across its own restart), duplicates and seqs missing;
- ``influx``: distinct seqs stored in victoria-metrics (``reading_seq`` and
  ``event_seq`` samples), duplicates and seqs missing;
- ``dropped``: rows the outbox dropped by its bounds (then a ``data_dropped`` event says
  which; none are expected with the default bounds);
- the gateway's RSS after the warm-up and at the end (each SIGKILL starts a new process,
  so the end figure is the last process's), and its peak.

    python bench/soak.py                                    # 100 × 10 Hz, 30 minutes
    python bench/soak.py --duration 300 --cut-s 30          # a short check of the script

Not part of the test run; figures, not assertions (the exit status is 1 when a
committed seq is missing from a sink).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_gateway import make_config, make_registry, scrape, wait_until  # noqa: E402

from gateway.outbox import committed_seq_in  # noqa: E402
from simulators.net import free_port  # noqa: E402

_SEQ = re.compile(rb'"seq":(\d+)')


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    cur = re.search(r"VmRSS:\s+(\d+) kB", text)
    peak = re.search(r"VmHWM:\s+(\d+) kB", text)
    return (
        int(cur.group(1)) / 1024 if cur else float("nan"),
        int(peak.group(1)) / 1024 if peak else float("nan"),
    )


class SeqCounter:
    """A QoS 1 subscriber with a persistent session: how often each seq arrived."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.counts = bytearray(1 << 20)
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="calgate-soak", clean_session=False
        )
        self.client.on_message = self.on_message
        self.ready = threading.Event()
        self.client.on_connect = self.on_connect
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise TimeoutError("the soak's subscriber did not connect")

    def on_connect(self, client: Any, _u: object, _f: object, rc: Any, _p: object) -> None:
        client.subscribe("calgate/soak/#", qos=1)
        self.ready.set()

    def on_message(self, _c: object, _u: object, msg: Any) -> None:
        m = _SEQ.search(msg.payload)
        if m is None:
            return  # a retained status: no seq
        seq = int(m.group(1))
        with self.lock:
            if seq >= len(self.counts):
                self.counts.extend(bytearray(max(seq + 1 - len(self.counts), len(self.counts))))
            if self.counts[seq] < 255:
                self.counts[seq] += 1

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def influx_seqs(vm_port: int) -> list[int]:
    """Every ``seq`` sample stored in victoria-metrics (duplicates included)."""
    base = f"http://127.0.0.1:{vm_port}"
    urllib.request.urlopen(f"{base}/internal/force_flush", timeout=60).read()
    out: list[int] = []
    for metric in ("reading_seq", "event_seq"):
        url = f"{base}/api/v1/export?match[]={metric}&start=0"
        with urllib.request.urlopen(url, timeout=600) as resp:
            for line in resp:
                out.extend(int(v) for v in json.loads(line)["values"])
    return out


def tally(seqs: Any, last: int) -> dict[str, int]:
    """Distinct seqs of 1..last received, duplicates, and seqs missing."""
    if isinstance(seqs, bytearray):
        counts = seqs
    else:
        counts = bytearray(last + 1)
        for s in seqs:
            if s <= last and counts[s] < 255:
                counts[s] += 1
    view = counts[1 : last + 1]
    distinct = last - view.count(0)
    received = sum(view)
    return {"distinct": distinct, "duplicates": received - distinct, "missing": last - distinct}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--period-ms", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of polling")
    ap.add_argument("--cut-s", type=float, default=120.0, help="length of each outage")
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs of the gateway")
    ap.add_argument("--warmup", type=float, default=30.0, help="before the first RSS figure")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    if args.duration < args.warmup + 2 * args.cut_s + 60:
        ap.error("--duration must leave room for the warm-up and both outages")

    work = Path(tempfile.mkdtemp(prefix="calgate-soak-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    t_start = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t_start:7.1f} s] {text}", file=sys.stderr, flush=True)

    def spawn(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(work / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        procs[name] = p
        return p

    def stop(name: str, sig: int = signal.SIGTERM) -> None:
        p = procs[name]
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    mqtt_port, vm_port, http_port = free_port(), free_port(), free_port()
    (work / "mosquitto.conf").write_text(
        f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {work}/\nautosave_interval 0\n"
        "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
    )
    mosquitto = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")]  # fmt: skip
    vm = ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}",
          f"-storageDataPath={work / 'vm'}", "-retentionPeriod=100y", "-loggerLevel=ERROR"]  # fmt: skip
    gateway = [sys.executable, "-m", "gateway", "run", "-c", str(work / "calgate.toml")]

    def broker_up() -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", mqtt_port), 0.5):
            return True

    def vm_up() -> bool:
        url = f"http://127.0.0.1:{vm_port}/health"
        return bool(urllib.request.urlopen(url, timeout=1).status == 200)

    def start_gateway() -> None:
        spawn("gateway", gateway)
        wait_until(lambda: scrape(http_port).get("calgate_polls_total", 0) > 0, 120)

    try:
        spawn("mosquitto", mosquitto)
        spawn("victoria-metrics", vm)
        ports_file = work / "ports.json"
        spawn("sims", [sys.executable, str(HERE / "bench_gateway.py"), "--devices",
                       str(args.devices), "--serve", str(ports_file)])  # fmt: skip
        wait_until(broker_up)
        wait_until(vm_up)
        wait_until(ports_file.exists, 120)
        urls = json.loads(ports_file.read_text())
        ids = make_registry(work / "registry", args.devices, 0)
        make_config(work / "calgate.toml", work / "registry", work / "state", ids, urls,
                    args.period_ms / 1000, mqtt_port, vm_port, http_port, 0)  # fmt: skip
        text = (work / "calgate.toml").read_text().replace('site = "bench"', 'site = "soak"')
        (work / "calgate.toml").write_text(text.replace('bucket = "bench"', 'bucket = "soak"'))
        sub = SeqCounter(mqtt_port)
        start_gateway()
        t0 = time.monotonic()
        say(f"polling {args.devices} transmitters every {args.period_ms:g} ms")

        d, cut = args.duration, args.cut_s
        kills = [d * f for f in (0.30, 0.65, 0.85, 0.92, 0.95)][: args.kills]
        plan: list[tuple[float, str]] = [
            (args.warmup, "rss"),
            (d * 0.15, "broker down"),
            (d * 0.15 + cut, "broker up"),
            (d * 0.45, "database down"),
            (d * 0.45 + cut, "database up"),
            *((t, "kill") for t in kills),
            (d, "end"),
        ]
        rss_start = (float("nan"), float("nan"))
        for at, action in sorted(plan):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if procs["gateway"].poll() is not None and action != "kill":
                say(f"the gateway exited ({procs['gateway'].returncode}); starting it again")
                start_gateway()
            say(action)
            if action == "rss":
                rss_start = rss_mb(procs["gateway"].pid)
            elif action == "broker down":
                stop("mosquitto")
            elif action == "broker up":
                spawn("mosquitto", mosquitto)
                wait_until(broker_up)
            elif action == "database down":
                stop("victoria-metrics")
            elif action == "database up":
                spawn("victoria-metrics", vm)
                wait_until(vm_up)
            elif action == "kill":
                stop("gateway", signal.SIGKILL)
                start_gateway()

        # let both sinks catch up, then a clean stop (it flushes what is committed)
        rss_end = rss_mb(procs["gateway"].pid)
        stop("sims")

        def drained() -> bool:
            m = scrape(http_port)
            return m.get("calgate_outbox_depth", 1.0) == 0.0

        try:
            wait_until(drained, 300)
        except TimeoutError:
            say("the sinks did not catch up within 300 s")
        metrics = scrape(http_port)
        stop("gateway")
        say(f"the gateway stopped ({procs['gateway'].returncode})")
        last = committed_seq_in(work / "state" / "outbox.sqlite")
        time.sleep(2.0)  # the subscriber's last PUBLISHes (QoS 1, already acked to the gateway)
        sub.stop()
        with sub.lock:
            mqtt = tally(sub.counts, last)
        influx = tally(influx_seqs(vm_port), last)
        result = {
            "devices": args.devices,
            "period_ms": args.period_ms,
            "duration_s": args.duration,
            "cut_s": args.cut_s,
            "kills": len(kills),
            "committed": last,
            "mqtt": mqtt,
            "influx": influx,
            "dropped": round(metrics.get("calgate_outbox_dropped_total", 0.0)),
            "poll_errors_last_process": round(metrics.get("calgate_poll_errors_total", 0.0)),
            "rss_mb_start": round(rss_start[0], 1),
            "rss_mb_end": round(rss_end[0], 1),
            "rss_mb_peak_last_process": round(rss_end[1], 1),
            "lost": mqtt["missing"] + influx["missing"],
        }
        print(json.dumps(result), flush=True)
        return 1 if result["lost"] else 0
    finally:
        for name in reversed(list(procs)):
            stop(name)
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
