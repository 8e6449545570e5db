"""``calgate run``, ``calgate check-config`` and ``calgate probe``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import eventloop
from gateway.cli import EX_USAGE, report_errors
from gateway.errors import CalgateError, ConfigError

if TYPE_CHECKING:
    from calibration import Registry
    from drivers.base import Reading
    from drivers.errors import DriverError
    from gateway.config import Config, EquipmentEntry

__all__ = ["register"]

EX_UNAVAILABLE = 69  # sysexits.h: a resource (the HTTP port...) is unavailable; may pass


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    strict = (
        "refuse a polled channel without a certificate in force (as [gateway] "
        'require_calibration = true); by default it is published with calibration "none"'
    )
    p = sub.add_parser("run", help="run the gateway service (systemd runs this)")
    p.add_argument("-c", "--config", type=Path, required=True, help="calgate.toml")
    p.add_argument("--strict", action="store_true", help=strict)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate config and registry; list every error")
    p.add_argument("-c", "--config", type=Path, required=True, help="calgate.toml")
    p.add_argument("--strict", action="store_true", help=strict)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("probe", help="poll each equipment once and print its measurements")
    p.add_argument("-c", "--config", type=Path, required=True, help="calgate.toml")
    p.add_argument("ids", nargs="*", metavar="ID", help="equipment ids (default: all)")
    p.add_argument("--json", action="store_true", help="one Measurement per line, as JSON")
    p.set_defaults(func=cmd_probe)


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.service import load_everything

    try:
        config, registry = load_everything(args.config, strict=args.strict)
    except ConfigError as exc:
        return report_errors(exc.errors)
    n_ch = sum(len(e.driver.model_dump().get("channels") or [None]) for e in config.equipment)
    _print_registry_problems(config, registry)
    print(
        f"{config.path}: OK: {len(config.equipment)} equipment, {n_ch} channel(s); "
        f"registry {config.registry_dir}: {len(registry.equipment_ids())} equipment"
    )
    print(config.http.access())
    return 0


def _print_registry_problems(config: Config, registry: Registry) -> None:
    """Broken registry entries of equipment that is not polled, and polled channels
    without a certificate in force: warnings, not errors."""
    for line in config.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if not registry.problems:
        return
    left_out = ", ".join(sorted(registry.unsound))
    print(
        f"warning: registry {config.registry_dir}: left out (not polled here): {left_out}",
        file=sys.stderr,
    )
    for line in registry.problems:
        print(f"warning: {config.registry_dir}/{line}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.service import Gateway, load_everything

    try:
        config, registry = load_everything(args.config, strict=args.strict)
    except ConfigError as exc:
        return report_errors(exc.errors)
    _print_registry_problems(config, registry)
    gateway = Gateway(config, registry, strict=args.strict)
    try:
        eventloop.run(gateway.serve_forever(), config.gateway.event_loop)
    except ConfigError as exc:
        return report_errors(exc.errors)
    except CalgateError as exc:  # e.g. the HTTP port is taken: not the config's fault
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"calgate: cannot start: {text}", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from gateway.config import load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return report_errors(exc.errors)
    known = {e.id for e in config.equipment}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        names = ", ".join(repr(i) for i in unknown)
        print(
            f"calgate: unknown equipment {names} (configured: {', '.join(sorted(known))})",
            file=sys.stderr,
        )
        return EX_USAGE
    entries = [e for e in config.equipment if not args.ids or e.id in args.ids]
    registry = _optional_registry(config.registry_dir, entries)
    return asyncio.run(_probe(entries, registry, as_json=args.json))


def _optional_registry(path: Path, entries: list[EquipmentEntry]) -> Registry | None:
    """The registry's sound entries (broken files are left out, as ``run`` does, with a
    note saying what that does to ``entries``); probe works without one (value = raw,
    calibration none)."""
    from datetime import UTC, datetime

    from calibration import Registry
    from gateway.config import configured_channels, left_out_in_chain

    if not path.is_dir():
        print(f"note: no registry at {path}: values are raw, calibration none", file=sys.stderr)
        return None
    registry = Registry.load(path, sound_only=True)
    if not registry.problems:
        return registry
    now = datetime.now(UTC)
    raw, untraceable = [], []
    for entry in entries:
        if entry.id in registry.unsound:
            raw.append(entry.id)
            continue
        eq = registry.equipment(entry.id)
        names = {ch.name for ch in eq.channels} if eq is not None else set()
        for name, _ in configured_channels(entry, names):
            if name in names and left_out_in_chain(registry, entry.id, name, now, registry.unsound):
                untraceable.append(f"{entry.id} {name}")
    told = [f"left out: {', '.join(sorted(registry.unsound))}"]
    if raw:
        told.append(f"values raw: {', '.join(raw)}")
    if untraceable:
        told.append(f"corrected but untraceable (a standard left out): {', '.join(untraceable)}")
    print(
        f"note: registry {path}: {len(registry.problems)} error(s) (calgate registry check "
        f"{path}); {'; '.join(told)}",
        file=sys.stderr,
    )
    return registry


async def _probe(entries: list[EquipmentEntry], registry: Registry | None, *, as_json: bool) -> int:
    from drivers.base import Buses
    from drivers.errors import DriverError
    from gateway.pipeline import Pipeline
    from gateway.service import make_driver

    pipeline = Pipeline(registry)
    buses = Buses()
    failures = 0

    async def one(entry: EquipmentEntry) -> tuple[EquipmentEntry, list[Reading] | DriverError]:
        driver = make_driver(entry, registry, buses)
        try:
            async with driver:
                return entry, await driver.poll()
        except DriverError as exc:
            return entry, exc

    results = await asyncio.gather(*(one(e) for e in entries))
    for entry, res in results:
        if isinstance(res, DriverError):
            failures += 1
            if as_json:
                print(
                    json.dumps(
                        {"equipment": entry.id, "error": str(res), "kind": type(res).__name__}
                    )
                )
            else:
                print(f"{entry.id:<10} ERROR {type(res).__name__}: {res}")
            continue
        for m in pipeline.process(res):
            if as_json:
                print(json.dumps(m.payload(0) | {"seq": None}))
            else:
                print(format_measurement(m))
    return 1 if failures else 0


def format_measurement(m: Any) -> str:
    """One line for a person: id, channel, value ± U (rounded per GUM 7.2.6), status."""
    from calibration.rounding import format_value
    from gateway.live import format_raw

    shown = format_value(m.value, m.U) if m.U is not None and m.U > 0 else f"{m.value:.6g}"
    extra = f" k={m.k:g}" if m.k else ""
    conf = f" conformity={m.conformity}" if m.conformity else ""
    flags = f" [{', '.join(sorted(m.flags))}]" if m.flags else ""
    return (
        f"{m.equipment:<10} {m.channel:<10} {shown} {m.unit}{extra}  raw={format_raw(m)}"
        f"  {m.quality}  cal={m.calibration} cert={m.certificate or '-'}{conf}{flags}"
    )
