"""``calgate calibrate -c CONFIG PROCEDURE.toml [--out DIR] [--into REGISTRY] [--json]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli import report_errors
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from calibration.certificate_out import IssuedCertificate
    from calibration.evaluation import PointResult

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="run a calibration (generator, reference, DUTs) and issue the certificates",
        description="Drive the generator to each setpoint (or ask for each load), read the "
        "reference and the devices under test, and write per DUT <NUMBER>.toml (registry "
        "format), <NUMBER>.xml (DCC) and <NUMBER>.html.",
    )
    p.add_argument("-c", "--config", type=Path, required=True, help="calgate.toml")
    p.add_argument("procedure", type=Path, metavar="PROCEDURE.toml")
    p.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")
    p.add_argument(
        "--into",
        type=Path,
        metavar="REGISTRY",
        help="also add each certificate (TOML) to this registry's certificates/",
    )
    p.add_argument("--json", action="store_true", help="one JSON line per DUT")
    p.set_defaults(func=cmd_calibrate)


async def _prompt(message: str) -> str:
    print(f">>> {message}", flush=True)
    line: str = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise EOFError("no operator: standard input is closed")
    return line


def _point_json(p: PointResult) -> dict[str, Any]:
    return {
        "reference": p.reference,
        "indicated": p.indicated,
        "error": p.error,
        "U": p.U,
        "k": p.k,
        "dof": None if math.isinf(p.dof) else p.dof,
        "direction": p.direction,
        "hysteresis": p.hysteresis,
        "series": [
            {
                "direction": s.direction,
                "reference": s.reference,
                "indicated": s.indicated,
                "error": s.error,
                "n": s.n,
            }
            for s in p.series
        ],
    }


def write_outputs(cert: IssuedCertificate, out: Path, into: Path | None) -> list[Path]:
    """``<NUMBER>.toml``, ``.xml`` and ``.html`` in ``out``; the TOML also into the registry."""
    from calibration.certificate_out import certificate_html, certificate_toml
    from calibration.dcc_out import certificate_dcc

    out.mkdir(parents=True, exist_ok=True)
    toml_text = certificate_toml(cert)
    files = {
        out / f"{cert.number}.toml": toml_text,
        out / f"{cert.number}.xml": certificate_dcc(cert),
        out / f"{cert.number}.html": certificate_html(cert),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    written = list(files)
    if into is not None:
        # Only the TOML: the DCC carries the same number, and a registry refuses two
        # certificates with one number.
        target = into / "certificates" / f"{cert.number}.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(toml_text, encoding="utf-8")
        written.append(target)
    return written


def cmd_calibrate(args: argparse.Namespace) -> int:
    from calibration import Registry, RegistryError
    from gateway.calibration_run import (
        CalibrationRunError,
        load_procedure,
        plan_run,
        run_calibration,
    )
    from gateway.config import load_config

    try:
        config = load_config(args.config)
        procedure = load_procedure(args.procedure)
    except ConfigError as exc:
        return report_errors(exc.errors)
    try:
        registry = Registry.load(config.registry_dir)
    except RegistryError as exc:
        return report_errors(exc.errors)
    if args.into is not None and args.into.resolve() != config.registry_dir:
        # Before anything moves: a registry that is broken already would refuse the new
        # certificates only after the whole run.
        try:
            Registry.load(args.into)
        except RegistryError as exc:
            print(
                f"calgate calibrate: --into {args.into} is not a valid registry:", file=sys.stderr
            )
            return report_errors(exc.errors)
    try:
        plan = plan_run(config, registry, procedure)
    except CalibrationRunError as exc:
        print(f"calgate calibrate: refused: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        print(
            f"{procedure.name}: {len(plan.steps)} points, DUTs {', '.join(d.equipment.id for d in plan.duts)}"
        )
    try:
        outcome = asyncio.run(run_calibration(plan, operator=_prompt))
    except (CalibrationRunError, EOFError) as exc:
        print(f"calgate calibrate: run failed, no certificate issued: {exc}", file=sys.stderr)
        return 1
    added: list[Path] = []
    for cert in outcome.certificates:
        files = write_outputs(cert, args.out, args.into)
        added += [f for f in files if args.into is not None and f.parent.parent == args.into]
        if args.json:
            print(
                json.dumps(
                    {
                        "equipment": cert.item.id,
                        "channel": cert.channel.name,
                        "number": cert.number,
                        "files": [str(f) for f in files],
                        "as_found": cert.as_found,
                        "as_left": cert.as_left,
                        "points": [_point_json(p) for p in cert.points],
                        "as_found_points": [_point_json(p) for p in cert.as_found_points],
                    }
                ),
                flush=True,
            )
        else:
            _print_summary(cert, files)
    for f in outcome.failures:
        msg = f"{f.equipment}: no certificate: {f.message}"
        if args.json:
            print(json.dumps({"equipment": f.equipment, "channel": f.channel, "error": f.message}))
        print(f"calgate calibrate: {msg}", file=sys.stderr)
    if args.into is not None and outcome.certificates:
        try:
            Registry.load(args.into)
        except RegistryError as exc:
            for path in added:  # leave the registry as it was; the certificates stay in --out
                path.unlink()
            print(
                f"calgate calibrate: the registry {args.into} refuses the new certificates "
                f"(taken out again; they are in {args.out}):",
                file=sys.stderr,
            )
            return report_errors(exc.errors)
    return 1 if outcome.failures else 0


def _print_summary(cert: IssuedCertificate, files: list[Path]) -> None:
    from calibration.rounding import round_result, round_uncertainty

    unit = cert.unit
    left = f", adjusted, as left: {cert.as_left or 'not judged'}" if cert.adjusted else ""
    print(
        f"{cert.item.id} {cert.channel.name}: certificate {cert.number}, "
        f"as found: {cert.as_found or 'not judged'}{left}"
    )
    for p in cert.points:
        ref, _ = round_result(p.reference, p.U)
        err, _ = round_result(p.error, p.U)
        print(
            f"  {ref:>12} {unit}  error {err:>9} ± {round_uncertainty(p.U)} {unit} "
            f"(k = {p.k:.2f})  {p.direction}"
        )
    for f in files:
        print(f"  wrote {f}")
