"""CPU per row of the outbox: encode (JSON + line protocol) + batched commit + fetch + ack.

.venv/bin/python bench/bench_outbox.py [ROWS]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from drivers.base import Reading
from gateway.model import Measurement
from gateway.outbox import Outbox
from gateway.settings import OutboxSettings


def measurement(i: int) -> Measurement:
    r = Reading(
        equipment=f"PT-{i % 100:03d}",
        channel="pressure",
        raw=100.0 + i * 1e-3,
        unit="kPa",
        t_wall=datetime.now(UTC),
        t_mono=time.monotonic(),
    )
    return Measurement(
        reading=r,
        value=100.01 + i * 1e-3,
        unit="kPa",
        u=0.012,
        U=0.024,
        k=2.0,
        calibration="valid",
        certificate="DKD-K-12345/2026",
        conformity="pass",
        quantity="pressure",
    )


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        ob = Outbox(Path(d) / "outbox.sqlite", OutboxSettings(), sinks=("mqtt", "influx"))
        batch = [measurement(i) for i in range(100)]  # 100 values per poll round
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n // 100):
            ob.add(batch)
            await asyncio.sleep(0)
        ob.commit()
        c1 = time.process_time()
        print(
            f"add+commit: {(c1 - c0) / n * 1e6:.1f} µs CPU/row ({n} rows, wall {time.perf_counter() - t0:.2f} s)"
        )
        c0 = time.process_time()
        for sink in ob.sinks:
            while rows := ob.fetch_nowait(sink, 500):
                ob.ack(sink, [r.seq for r in rows])
        ob.commit()
        c1 = time.process_time()
        print(f"fetch+ack (2 sinks): {(c1 - c0) / n * 1e6:.1f} µs CPU/row")
        c0 = time.process_time()
        while ob.stats().rows_bytes:
            ob.maintain()  # 20k rows a round
        print(f"delete delivered: {(time.process_time() - c0) / n * 1e6:.1f} µs CPU/row")
        print(ob.stats())
        ob.close()


async def overflow(seconds: float = 10.0) -> None:
    """100 values every 10 ms into a 16 MiB outbox that no sink drains."""
    import logging

    logging.disable(logging.WARNING)  # one "dropped" line per drop
    with tempfile.TemporaryDirectory() as d:
        ob = Outbox(Path(d) / "o.sqlite", OutboxSettings(max_bytes=16 * 2**20), sinks=("mqtt",))
        commit = ob._commit  # what the timed and the size-triggered commits call
        times: list[float] = []

        def timed(*, cursors: bool) -> int:
            t = time.perf_counter()
            n = commit(cursors=cursors)
            times.append((time.perf_counter() - t) * 1e3)
            return n

        ob._commit = timed  # type: ignore[method-assign]
        task = asyncio.create_task(ob.run())
        batch = [measurement(i) for i in range(100)]
        for _ in range(int(seconds * 100)):
            ob.add(batch)
            await asyncio.sleep(0.01)
        task.cancel()
        times.sort()

        def q(p: float) -> float:
            return times[min(len(times) - 1, int(p * len(times)))]

        print(
            f"overflowing at 10k values/s: commit p50 {q(0.5):.2f} ms, p95 {q(0.95):.2f} ms, "
            f"p99 {q(0.99):.2f} ms, max {times[-1]:.1f} ms; {ob.dropped} rows dropped"
        )
        ob.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
    asyncio.run(overflow())
