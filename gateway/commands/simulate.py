"""``calgate simulate lab|balance|pressure-transmitter|pressure-controller|testing-machine``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

__all__ = ["register"]

WHAT = ("lab", "balance", "pressure-transmitter", "pressure-controller", "testing-machine")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run simulated instruments (real protocol servers) until Ctrl-C",
        description="Run the bundled instrument simulators. `lab` starts the whole demo lab "
        "on fixed ports (see examples/calgate-lab.toml); the others start one instrument.",
    )
    p.add_argument("what", choices=WHAT)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    p.add_argument(
        "--free-ports", action="store_true", help="lab: free ports instead of the fixed ones"
    )
    p.add_argument("--pty", action="store_true", help="serial instruments: also serve on a pty")
    p.add_argument(
        "--protocol", choices=("mt-sics", "sbi"), default="mt-sics", help="balance protocol"
    )
    p.add_argument("--capacity", type=float, default=220.0, help="balance capacity")
    p.add_argument("--resolution", type=float, default=0.01, help="balance resolution d")
    p.add_argument("--unit", default=None, help="display unit (balance: g; controller: mbar)")
    p.add_argument("--load", type=float, default=100.0, help="balance: mass placed at start")
    p.add_argument("--units", default="1,2,3", help="transmitter unit ids, comma-separated")
    p.add_argument("--word-order", default="ABCD", choices=("ABCD", "CDAB", "BADC", "DCBA"))
    p.add_argument("--rtu", action="store_true", help="transmitter: also serve Modbus RTU on a pty")
    p.add_argument("--setpoint", type=float, default=1000.0, help="controller setpoint (mbar)")
    p.add_argument("--security", default="None", help="testing machine: OPC UA security policy")
    p.add_argument(
        "--fault",
        choices=("no-reply", "garbage", "slow", "disconnect", "device-error"),
        help="arm a fault from the start (until the simulator stops)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_simulate)


def build(args: argparse.Namespace) -> Any:
    from simulators.faults import Faults

    faults = Faults()
    if args.fault:
        faults.arm(args.fault)
    if args.what == "lab":
        from simulators.lab import Lab

        return Lab(host=args.host, fixed_ports=not args.free_ports, pty=args.pty, seed=args.seed)
    if args.what == "balance":
        kw: dict[str, Any] = {
            "capacity": args.capacity, "resolution": args.resolution, "unit": args.unit or "g",
            "host": args.host, "port": args.port, "pty": args.pty, "faults": faults, "seed": args.seed,
        }  # fmt: skip
        if args.protocol == "sbi":
            from simulators.sbi import SbiSim

            return SbiSim(**kw)
        from simulators.mt_sics import MtSicsSim

        return MtSicsSim(**kw)
    if args.what == "pressure-controller":
        from simulators.pressure_controller import PressureControllerSim

        return PressureControllerSim(
            unit=args.unit,
            host=args.host,
            port=args.port,
            pty=args.pty,
            faults=faults,
            seed=args.seed,
        )
    if args.what == "pressure-transmitter":
        from simulators.modbus_transmitter import ModbusTransmitterSim

        units = tuple(int(u) for u in args.units.split(",") if u.strip())
        sim = ModbusTransmitterSim(
            host=args.host, port=args.port, rtu=args.rtu, units=units,
            word_order=args.word_order, seed=args.seed,
        )  # fmt: skip
        if args.fault:
            for dev in sim.devices.values():
                dev.faults.arm(args.fault)
        return sim
    from simulators.testing_machine import TestingMachineSim

    return TestingMachineSim(
        host=args.host, port=args.port, security=args.security, faults=faults, seed=args.seed
    )


async def _serve(args: argparse.Namespace) -> int:
    sim = build(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sim.start()
    except OSError as exc:
        print(f"cannot start the simulator: {exc}", file=sys.stderr)
        return 1
    try:
        if args.what == "balance":
            sim.place(args.load)
        elif args.what == "pressure-controller":
            sim.manifold.setpoint = args.setpoint
        endpoints = sim.endpoints()
        print(f"calgate simulate {args.what}: running (Ctrl-C stops)")
        if args.what == "lab":
            for eq, eps in endpoints.items():
                print(f"  {eq:<8} " + "  ".join(f"{k}={v}" for k, v in eps.items()))
            print("probe them: calgate probe -c examples/calgate-lab.toml")
        else:
            for k, v in endpoints.items():
                print(f"  {k}: {v}")
        sys.stdout.flush()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await sim.stop()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))
