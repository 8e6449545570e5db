"""CPU per row of the MQTT and InfluxDB sinks, against real servers on loopback.

    .venv/bin/python bench/bench_mqtt_sink.py [ROWS]

Starts mosquitto (and influxd when installed) in temporary directories, adds ROWS
Measurements to an outbox in poll-sized chunks, and reports this process's CPU time per
row: outbox add+commit alone, then add+commit+MQTT publish+PUBACK, then
add+commit+InfluxDB v1 write. The servers' own CPU is not counted (other processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench_outbox import measurement

from gateway.outbox import Outbox
from gateway.settings import InfluxSettings, MqttSettings, OutboxSettings
from gateway.sinks import InfluxSink, MqttSink, Sink
from simulators.net import free_port


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port}")


@contextlib.contextmanager
def mosquitto(d: Path) -> Iterator[str]:
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nmax_inflight_messages 0\n"
    )
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def influxd(d: Path) -> Iterator[str | None]:
    binary = shutil.which("influxd")
    if binary is None:
        yield None
        return
    port, rpc = free_port(), free_port()
    conf = d / "influxdb.conf"
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc}"\n'
        f'[meta]\n  dir = "{d}/meta"\n[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n'
        f'  query-log-enabled = false\n[http]\n  bind-address = "127.0.0.1:{port}"\n'
        "  log-enabled = false\n[monitor]\n  store-enabled = false\n"
    )
    proc = subprocess.Popen(
        [binary, "-config", str(conf)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            with contextlib.suppress(OSError):
                req = urllib.request.Request(f"{url}/query", data=b"q=CREATE+DATABASE+bench")
                urllib.request.urlopen(req, timeout=2).read()
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def run(ob: Outbox, sink: Sink | None, n: int, chunk: int = 100) -> float:
    task = asyncio.create_task(sink.run()) if sink is not None else None
    if sink is not None:
        while not sink.connected:  # noqa: ASYNC110 - a benchmark, polling is fine
            await asyncio.sleep(0.01)
    batch = [measurement(i) for i in range(chunk)]
    c0 = time.process_time()
    for _ in range(n // chunk):
        ob.add(batch)
        await asyncio.sleep(0.001)  # a poll round every millisecond or so
    ob.commit()
    if sink is not None:
        while ob.depth(sink.name):  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    cpu = time.process_time() - c0
    if sink is not None and task is not None:
        await sink.stop()
        await task
    return cpu / n * 1e6


async def latency(ob: Outbox, sink: MqttSink, rounds: int = 300, chunk: int = 100) -> None:
    """add() -> PUBACK latency at 10 000 values/s (100 values every 10 ms)."""
    loop = asyncio.get_running_loop()
    added: dict[int, float] = {}
    acked: dict[int, float] = {}
    ack_one = ob.ack_one

    def timed_ack(name: str, seq: int) -> None:
        acked[seq] = loop.time()
        ack_one(name, seq)

    ob.ack_one = timed_ack  # type: ignore[method-assign]
    task = asyncio.create_task(sink.run())
    while not sink.connected:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    batch = [measurement(i) for i in range(chunk)]
    next_t = loop.time()
    for _ in range(rounds):
        first = ob.last_seq + 1
        t = loop.time()
        ob.add(batch)
        for seq in range(first, first + chunk):
            added[seq] = t
        next_t += 0.01
        await asyncio.sleep(max(0.0, next_t - loop.time()))
    while ob.depth(sink.name):  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    await sink.stop()
    await task
    lat = sorted((acked[s] - added[s]) * 1e3 for s in added if s in acked)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(
        f"add -> PUBACK latency at 10k values/s: p50 {p(0.5):.1f} ms, p95 {p(0.95):.1f} ms, "
        f"max {lat[-1]:.1f} ms ({len(lat)} values)"
    )


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ob = Outbox(d / "a.sqlite", OutboxSettings(), sinks=("x",))
        base = await run(ob, None, n)
        ob.close()
        print(f"outbox add+commit:                 {base:6.1f} µs CPU/row")
        with mosquitto(d) as url:
            ob = Outbox(d / "b.sqlite", OutboxSettings(), sinks=("mqtt",))
            sink = MqttSink(MqttSettings(url=url), ob, site="lab", gateway_id="bench")
            total = await run(ob, sink, n)
            ob.close()
            ob = Outbox(d / "l.sqlite", OutboxSettings(), sinks=("mqtt",))
            sink = MqttSink(MqttSettings(url=url), ob, site="lab", gateway_id="bench")
            await latency(ob, sink)
            ob.close()
        print(
            f"  + MQTT QoS 1 publish and PUBACK: {total:6.1f} µs CPU/row "
            f"(sink alone ≈ {total - base:.1f})"
        )
        (d / "influx").mkdir()
        with influxd(d / "influx") as iurl:
            if iurl is None:
                print("influxd not installed: InfluxDB figure skipped")
                return
            ob = Outbox(d / "c.sqlite", OutboxSettings(), sinks=("influx",))
            isink = InfluxSink(
                InfluxSettings(api="v1", url=iurl, database="bench", flush_interval_s=0.2), ob
            )
            total = await run(ob, isink, n)
            ob.close()
        assert isink.rejected == 0, "rows rejected"
        assert isink.writes > 0, "nothing written"
        print(
            f"  + InfluxDB v1 write (batched):   {total:6.1f} µs CPU/row "
            f"(sink alone ≈ {total - base:.1f})"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
