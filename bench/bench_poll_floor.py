"""The floor under the gateway's CPU: one Modbus TCP read per device per interval, and nothing else.

N simulated transmitters (``bench_gateway.py --serve``, another process), polled at
10 Hz, one task per device, by either a bare ``asyncio.Protocol`` client (one FC4 read
of 2 registers, the reply unpacked, no timeout, no processing: the least a Python
poller can do) or calgate's own Supervisor + ModbusDriver (timeouts, bus lock, decode,
Readings; the readings go nowhere). Prints one JSON line: µs of user and system CPU of
this process per poll, on the chosen event loop.

    python bench/bench_poll_floor.py [--client bare|driver] [--loop asyncio|uvloop] [--devices 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from drivers.base import Reading  # noqa: E402
from drivers.modbus import ModbusConfig, ModbusDriver  # noqa: E402
from gateway import eventloop  # noqa: E402
from gateway.scheduler import Supervisor, Ticker  # noqa: E402

INTERVAL_S = 0.1


class BareClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.future: asyncio.Future[bytes] | None = None
        self.tid = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        future, self.future = self.future, None
        if future is not None and not future.done():
            future.set_result(data)

    def read(self) -> asyncio.Future[bytes]:
        self.tid = (self.tid + 1) & 0xFFFF
        self.future = asyncio.get_running_loop().create_future()
        self.transport.write(struct.pack(">HHHBBHH", self.tid, 0, 6, 1, 4, 0, 2))
        return self.future


class Count:
    polls = 0

    def readings(self, equipment: str, readings: list[Reading], latency_s: float) -> None:
        self.polls += 1

    def failure(self, equipment: str, error: Exception) -> None:
        raise SystemExit(f"{equipment}: {error}")

    def missed(self, equipment: str, count: int) -> None:
        pass


async def bare(url: str, count: Count) -> None:
    host, port = url.split("//")[1].split(":")
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(BareClient, host, int(port))
    deadline = loop.time()
    while True:
        deadline += INTERVAL_S
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        reply = await client.read()
        struct.unpack(">f", reply[9:13])
        count.polls += 1


async def measure(urls: list[str], client: str, seconds: float) -> dict[str, Any]:
    count = Count()
    if client == "bare":
        tasks = [asyncio.create_task(bare(u, count)) for u in urls]
    else:
        ticker = Ticker()
        channel = {
            "name": "p",
            "register": "input",
            "address": 0,
            "type": "float32",
            "unit": "mbar",
        }
        tasks = []
        for i, url in enumerate(urls):
            config = ModbusConfig(id=f"BT-{i}", url=url, interval_s=INTERVAL_S, channels=[channel])  # type: ignore[arg-type]
            sup = Supervisor(ModbusDriver(config), count, interval_s=INTERVAL_S, ticker=ticker)
            tasks.append(asyncio.create_task(sup.run()))
    await asyncio.sleep(3.0)  # connected and steady: a warm-up, not a readiness wait
    r0, n0 = resource.getrusage(resource.RUSAGE_SELF), count.polls
    await asyncio.sleep(seconds)
    r1, n1 = resource.getrusage(resource.RUSAGE_SELF), count.polls
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    polls = max(n1 - n0, 1)
    return {
        "polls": polls,
        "us_user_per_poll": round(1e6 * (r1.ru_utime - r0.ru_utime) / polls, 1),
        "us_system_per_poll": round(1e6 * (r1.ru_stime - r0.ru_stime) / polls, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--client", choices=["bare", "driver"], default="bare")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="calgate-floor-") as tmp:
        ports = Path(tmp) / "ports.json"
        sims = subprocess.Popen(
            [sys.executable, str(HERE / "bench_gateway.py"), "--devices", str(args.devices),
             "--serve", str(ports)]
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not (ports.exists() and ports.read_text()):
                if time.monotonic() > deadline or sims.poll() is not None:
                    raise SystemExit("the transmitters did not start")
                time.sleep(0.1)
            urls = json.loads(ports.read_text())
            out = eventloop.run(measure(urls, args.client, args.seconds), args.loop)
        finally:
            sims.terminate()
            sims.wait()
    print(json.dumps({"client": args.client, "loop": args.loop, "devices": args.devices} | out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
