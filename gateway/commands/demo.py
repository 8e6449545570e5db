"""``calgate demo [--duration S]``."""

from __future__ import annotations

import argparse
import asyncio

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
    p.add_argument("--refresh", type=float, default=1.0, metavar="S", help="table refresh period")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return asyncio.run(
        run_demo(
            duration_s=args.duration,
            influx_url=args.influx_url,
            influx_db=args.influx_db,
            use_mosquitto=not args.embedded_broker,
            use_influxd=not args.no_influxd,
            refresh_s=args.refresh,
        )
    )
