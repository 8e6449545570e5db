"""``calgate demo [--duration S]``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="simulated lab + example registry + gateway + broker and store, with a live table",
    )
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--influx-url", default=None, help="write to this InfluxDB 1.x (api v1) instead")
    p.add_argument("--influx-db", default="calgate", help="database for --influx-url")
    p.add_argument("--embedded-broker", action="store_true", help="never start mosquitto")
    p.add_argument(
        "--no-influxd", action="store_true", help="never start influxd; keep a local history"
    )
    p.add_argument(
        "--registry",
        type=Path,
        default=None,
        metavar="DIR",
        help="the calibration registry to run on (default: the example lab's, examples/registry)",
    )
    p.add_argument("--refresh", type=float, default=1.0, metavar="S", help="table refresh period")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli import EX_USAGE, report_errors
    from gateway.demo import run_demo
    from gateway.errors import ConfigError

    if args.registry is not None and not args.registry.is_dir():
        print(f"calgate demo: --registry: {args.registry} is not a directory", file=sys.stderr)
        return EX_USAGE
    try:
        return asyncio.run(
            run_demo(
                duration_s=args.duration,
                influx_url=args.influx_url,
                influx_db=args.influx_db,
                use_mosquitto=not args.embedded_broker,
                use_influxd=not args.no_influxd,
                refresh_s=args.refresh,
                registry_dir=args.registry,
            )
        )
    except ConfigError as exc:  # the registry given does not load
        return report_errors(exc.errors)
