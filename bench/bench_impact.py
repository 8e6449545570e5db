"""``calgate impact`` over N stored readings on a real influxd: values/s and peak RSS.

.venv/bin/python bench/bench_impact.py [--readings 1000000] [--page-size 10000 ...] [--write]

Writes N readings of PT-101 (10 Hz from 2026-09-07, inside the window of its certificate
PCL-2026-0906) into a fresh influxd through the gateway's pipeline and line encoder, adds
a WS-P1 certificate whose as-found results fail (so PT-101's readings are in doubt), then
runs ``calgate impact --standard WS-P1 --json`` as a child process once per page size and
prints one JSON line each: readings re-evaluated, wall time, values/s, CPU-s of the child,
its peak RSS (ru_maxrss) and the number of queries. Memory should follow the page size,
not N. With ``--write`` each page size runs a second time, writing ``reading_recorrected``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from servers import InfluxV1  # noqa: E402 - the tests' real-server fixtures

from calibration import Registry  # noqa: E402
from drivers.base import Reading  # noqa: E402
from gateway.demo import example_registry  # noqa: E402
from gateway.pipeline import Pipeline  # noqa: E402
from gateway.wire import Encoder  # noqa: E402

T0 = datetime(2026, 9, 7, tzinfo=UTC)
SITE = "bench"


def fill(influx: InfluxV1, db: str, registry: Path, n: int) -> float:
    """N readings of PT-101 at 10 Hz from T0; returns the seconds it took."""
    pipeline = Pipeline(Registry.load(registry), clock=lambda: T0 + timedelta(days=1))
    enc = Encoder(SITE, "calgate")
    t = time.perf_counter()
    batch = 20_000
    for start in range(0, n, batch):
        lines = []
        readings = [
            Reading(
                equipment="PT-101",
                channel="pressure",
                raw=950.5 + (i % 1000) * 0.002,
                unit="mbar",
                t_wall=T0 + timedelta(milliseconds=100 * i),
                t_mono=0.0,
            )
            for i in range(start, min(n, start + batch))
        ]
        for i, m in enumerate(pipeline.process(readings)):
            lines.append(enc.measurement(m, start + i + 1)[2])
        req = urllib.request.Request(
            f"{influx.url}/write?db={db}&precision=ns", data=b"\n".join(lines), method="POST"
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 204
    return time.perf_counter() - t


def drift(registry: Path, today: date) -> None:
    import tomllib

    old = tomllib.loads((registry / "certificates" / "PCL-2025-0731.toml").read_text())

    def table(err: float) -> str:
        return ",\n".join(
            f"{{ reference = {p['reference']}, indicated = {p['reference'] + err:.4f}, "
            f"U = {p['U']}, k = {p['k']} }}"
            for p in old["points"]
        )

    (registry / "certificates" / "PCL-NEXT.toml").write_text(
        f'number = "PCL-NEXT"\nitem = "WS-P1"\nissued_by = "bench"\n'
        f"calibrated = {today.isoformat()}\ndue = {(today + timedelta(days=1000)).isoformat()}\n"
        f'standards = ["REF-P1"]\nunit = "kPa"\npoints = [\n{table(0.0)}\n]\n'
        f"as_found = [\n{table(0.15)}\n]\n"
    )


# The command in a child that reports its own peak RSS (ru_maxrss, kB) on stderr.
_CHILD = (
    "import resource, sys\n"
    "from gateway.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run(config: Path, page_size: int, *, write: bool) -> dict[str, object]:
    cmd = [
        sys.executable, "-c", _CHILD, "impact", "-c", str(config), "--standard", "WS-P1",
        "--json", "--page-size", str(page_size),
    ]  # fmt: skip
    if write:
        cmd.append("--write")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    out = done.stdout
    rss_kb = int(done.stderr.rsplit("maxrss ", 1)[1].split()[0])
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(out)
    n = int(report["readings"])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "page_size": page_size,
        "write": write,
        "readings": n,
        "wall_s": round(wall, 2),
        "values_per_s": round(n / wall),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "written": report["written"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--page-size", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        influx = InfluxV1(work)
        influx.start()
        try:
            registry = work / "registry"
            shutil.copytree(example_registry(), registry)
            db = "bench"
            influx.create_database(db)
            fill_s = fill(influx, db, registry, args.readings)
            print(json.dumps({"filled": args.readings, "fill_s": round(fill_s, 1)}), flush=True)
            drift(registry, datetime.now(UTC).date())
            config = work / "calgate.toml"
            config.write_text(
                f'[gateway]\nid = "bench"\nsite = "{SITE}"\nregistry = "{registry}"\n'
                f'state_dir = "{work / "state"}"\n[influxdb]\napi = "v1"\nurl = "{influx.url}"\n'
                f'database = "{db}"\ntimeout_s = 120\n[http]\nenabled = false\n'
                '[[equipment]]\nid = "PT-101"\ndriver = "modbus"\nurl = "tcp://127.0.0.1:1"\n'
                'unit = 1\n[[equipment.channels]]\nname = "pressure"\nregister = "input"\n'
                'address = 0\ntype = "float32"\nunit = "mbar"\n'
            )
            (work / "state").mkdir()
            for size in args.page_size:
                print(json.dumps(run(config, size, write=False)), flush=True)
                if args.write:  # the second write of each run overwrites the first's points
                    print(json.dumps(run(config, size, write=True)), flush=True)
        finally:
            influx.stop()


if __name__ == "__main__":
    main()
