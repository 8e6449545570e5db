"""CPU per value of the poll side of the hot path, without sockets or sinks.

One K-channel Modbus device (int16 block, like ``bench_gateway.py --registers K``): the
driver's poll (decode + Reading) against a link that answers at once, the pipeline
(correction, uncertainty, conformity, Measurement) with a certificate per channel, and
the monitor. Prints one JSON line of µs of CPU per value.

    python bench/bench_poll_path.py [K] [POLLS]
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gateway

from calibration import Registry
from drivers.modbus import ModbusConfig, ModbusDriver
from gateway.monitor import Monitor
from gateway.pipeline import Pipeline


class InstantLink:
    """A Link whose reads are answered at once with the same register bytes."""

    connected = True

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, unit: int, fc: int, address: int, count: int, timeout_s: float) -> Any:
        future = asyncio.get_running_loop().create_future()
        future.set_result(self.data)
        return future


async def measure(k: int, polls: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="calgate-poll-path-"))
    try:
        [eq] = bench_gateway.make_registry(tmp / "registry", 1, k)
        registry = Registry.load(tmp / "registry")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    channels = [
        {"name": name, "register": "input", "address": bench_gateway.BLOCK_ADDRESS + j,
         "type": "int16", "scale": 0.1, "unit": "mbar"}
        for j, name in enumerate(bench_gateway.channel_names(k))
    ]  # fmt: skip
    driver = ModbusDriver(ModbusConfig(id=eq, url="tcp://127.0.0.1:1", channels=channels))  # type: ignore[arg-type]
    link = InstantLink(struct.pack(f">{k}h", *(10130 + j for j in range(k))))
    driver.bus.resource = link
    driver._ready = link  # type: ignore[assignment]
    pipeline, monitor = Pipeline(registry), Monitor()
    readings = await driver.poll()
    ms = pipeline.process(readings)
    t0 = time.process_time()
    for _ in range(polls):
        readings = await driver.poll()
    t1 = time.process_time()
    for _ in range(polls):
        ms = pipeline.process(readings)
    t2 = time.process_time()
    for _ in range(polls):
        monitor.measurements(ms, lambda e, c: None)
    t3 = time.process_time()
    n = polls * k
    return {
        "channels": k,
        "polls": polls,
        "driver_us_per_value": round(1e6 * (t1 - t0) / n, 2),
        "pipeline_us_per_value": round(1e6 * (t2 - t1) / n, 2),
        "monitor_us_per_value": round(1e6 * (t3 - t2) / n, 2),
    }


def main() -> int:
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    polls = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    print(json.dumps(asyncio.run(measure(k, polls))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
