"""``calgate impact``: the stored readings a drifted standard touched, re-corrected and re-judged.

Exit codes as the other commands: 0 done (also when the window holds no reading), 64 a
selection that names no standard or certificate of the registry or a bad time, 69 the
database unreachable or failing (as ``calgate run`` when a resource is unavailable), 78
a bad config or registry, or a database the config names that does not exist or refuses
the credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.cli import EX_CONFIG, EX_USAGE, report_errors
from gateway.commands.ops import EX_UNAVAILABLE
from gateway.commands.registry import parse_at
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.impact import Outcome

__all__ = ["register"]

RULE = (
    "re-corrected from raw through the certificate the registry now holds in force at each "
    "reading's time; an item found out of tolerance is taken to have been in its as-found "
    "state for the whole period before (worst case: ISO/IEC 17025:2017 7.10; the as-found "
    "error propagated to everything calibrated with it, sensitivity 1, GUM 5.1.2)"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "impact",
        help="stored readings a drifted standard touched: re-corrected and re-judged",
        description="Find the readings stored in InfluxDB that went through a certificate "
        "in doubt (a standard found out of tolerance, its reverse trace), re-correct them "
        "from raw with the registry as it stands now, re-judge them, and report. Rule: "
        + RULE
        + ".",
    )
    p.add_argument("-c", "--config", type=Path, required=True, help="calgate.toml")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--standard", metavar="ID", help="a standard (equipment id) found out of tolerance"
    )
    which.add_argument("--certificate", metavar="NUMBER", help="one certificate's period in force")
    p.add_argument(
        "--since", type=parse_at, metavar="T", help="only readings at or after this date or time"
    )
    p.add_argument(
        "--until", type=parse_at, metavar="T", help="only readings before this date or time"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the changed readings as CSV ('-': stdout)")
    p.add_argument(
        "--write",
        action="store_true",
        help="write the re-corrected readings to measurement reading_recorrected",
    )
    p.add_argument(
        "--page-size",
        type=int,
        default=10_000,
        metavar="N",
        help="readings per query (memory is bounded by it)",
    )
    p.set_defaults(func=cmd_impact)


def cmd_impact(args: argparse.Namespace) -> int:
    from gateway import impact
    from gateway.service import load_everything

    try:
        config, registry = load_everything(args.config)
    except ConfigError as exc:
        return report_errors(exc.errors)
    if args.page_size < 1:
        print("calgate: --page-size must be at least 1", file=sys.stderr)
        return EX_USAGE
    if args.since and args.until and args.until <= args.since:
        print("calgate: --until must be after --since", file=sys.stderr)
        return EX_USAGE
    try:
        selection = impact.select(registry, standard=args.standard, certificate=args.certificate)
    except impact.ImpactError as exc:
        print(f"calgate: {exc}", file=sys.stderr)
        return EX_USAGE
    csv_rows: list[list[Any]] | None = [] if args.csv else None
    try:
        outcome = asyncio.run(
            impact.run(
                config,
                registry,
                selection,
                since=args.since,
                until=args.until,
                write=args.write,
                page_size=args.page_size,
                csv_rows=csv_rows,
            )
        )
    except impact.DatabaseError as exc:
        print(f"calgate: {exc}", file=sys.stderr)
        return EX_CONFIG if exc.config else EX_UNAVAILABLE
    if csv_rows is not None:
        _write_csv(args.csv, csv_rows, impact.CSV_HEADER)
    if args.json:
        print(json.dumps(_json(outcome, args), ensure_ascii=False))
    else:
        for line in _text(outcome, args):
            print(line)
    return 0


def _write_csv(dest: str, rows: list[list[Any]], header: tuple[str, ...]) -> None:
    def put(fh: TextIO) -> None:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)

    if dest == "-":
        put(sys.stdout)
        return
    with open(dest, "w", newline="", encoding="utf-8") as fh:
        put(fh)


def _json(outcome: Outcome, args: argparse.Namespace) -> dict[str, Any]:
    from gateway.impact import ns_rfc3339

    return {
        "standard": args.standard,
        "certificate": args.certificate,
        "since": None if outcome.since_ns is None else ns_rfc3339(outcome.since_ns),
        "until": None if outcome.until_ns is None else ns_rfc3339(outcome.until_ns),
        "rule": RULE,
        "registry": None
        if outcome.registry is None
        else {k: v for k, v in outcome.registry.to_json().items() if k != "files"},
        "findings": [
            {
                "item": f.item,
                "certificate": f.certificate.number,
                "found_by": f.found_by.number,
                "from": f.window[0].isoformat(),
                "to": f.window[1].isoformat(),
            }
            for f in outcome.selection.findings
        ],
        "notes": outcome.selection.notes,
        "targets": [t.to_json() for t in outcome.selection.targets],
        "channels": [r.to_json() for r in outcome.reports],
        "readings": sum(r.readings for r in outcome.reports),
        "changed": sum(r.changed for r in outcome.reports),
        "written": outcome.written,
    }


def _text(outcome: Outcome, args: argparse.Namespace) -> list[str]:
    from gateway.impact import ns_rfc3339

    sel = outcome.selection
    lines: list[str] = []
    for f in sel.findings:
        lines.append(
            f"{f.item}: found out of tolerance (as found) in {f.found_by.number} "
            f"({f.found_by.calibrated.isoformat()}); in doubt from {f.window[0].isoformat()} "
            f"to {f.window[1].isoformat()} ({f.certificate.number})"
        )
    lines.extend(f"note: {n}" for n in sel.notes)
    if not sel.targets:
        lines.append("nothing to re-evaluate")
        return lines
    total = sum(r.readings for r in outcome.reports)
    changed = sum(r.changed for r in outcome.reports)
    lines.append(
        f"{len(sel.targets)} channel(s), {total} stored reading(s) re-evaluated, {changed} changed"
        + (f", {outcome.written} written to reading_recorrected" if args.write else "")
    )
    for t, r in zip(sel.targets, outcome.reports, strict=True):
        wins = ", ".join(
            f"{ns_rfc3339(a)[:10]} to {'now' if b is None else ns_rfc3339(b - 1)[:10]}"
            for a, b in t.windows
        )
        lines.append(f"  {t.equipment}/{t.channel}  ({', '.join(t.certificates)}: {wins})")
        if not r.polled:
            lines.append("      not polled by this gateway: no readings of it are stored")
            continue
        if r.readings == 0:
            lines.append("      no stored readings in the window")
            continue
        lines.append(
            f"      {r.readings} readings from {ns_rfc3339(r.first or 0)} to "
            f"{ns_rfc3339(r.last or 0)}; {r.changed} changed"
            + (f"; {r.bad} bad (no value) not re-evaluated" if r.bad else "")
        )
        for (a, b), n in sorted(r.transitions.items()):
            lines.append(f"      {a} → {b}: {n}")
        if r.max_change_at is not None:
            lines.append(
                f"      largest change {r.max_change_U:.3g} U (at {ns_rfc3339(r.max_change_at)})"
            )
        if r.first_changed is not None:
            lines.append(
                f"      changed from {ns_rfc3339(r.first_changed)} to {ns_rfc3339(r.last_changed or 0)}"
            )
    if outcome.registry is not None:
        rev = outcome.registry
        commit = (
            f", git commit {rev.commit[:12]}" + (" + local changes" if rev.dirty else "")
            if rev.commit
            else ""
        )
        lines.append(f"registry: {rev.root}, digest {rev.digest[:12]}{commit}")
    lines.append(f"rule: {RULE}")
    return lines
