"""``calgate registry check|chain|trace|import-dcc``: the calibration registry for people.

``check`` loads a registry directory and lists every problem (exit 78), else prints each
item's calibration status today. ``chain`` prints an item's traceability tree at a time,
each link with its status and reasons (``--json``: the tree of docs/interfaces.md).
``trace`` is the reverse trace of a standard. ``import-dcc`` reads a PTB Digital
Calibration Certificate, resolves its item and standards against the registry, copies it
into ``certificates/`` and checks the whole registry again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from calibration import ChainNode, Registry, RegistryError
from calibration.errors import CalibrationError
from gateway.cli import EX_CONFIG, EX_USAGE
from gateway.installation import docs_dir

__all__ = ["load_or_report", "parse_at", "register"]

EX_OK = 0


# -- helpers shared with ``calgate correct`` -------------------------------------------------


def parse_at(text: str) -> datetime:
    """``--at``: a date (midnight UTC) or an ISO 8601 date-time (naive = UTC)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--at: not a date or date-time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ): {text!r}"
        ) from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def load_or_report(directory: str) -> Registry | None:
    """Load the registry, or print every error to stderr and return None (exit 78)."""
    try:
        return Registry.load(Path(directory))
    except RegistryError as exc:
        n = len(exc.errors)
        print(
            f"calgate: registry {directory} is not valid ({n} error{'s' if n != 1 else ''}):",
            file=sys.stderr,
        )
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


# -- rendering -------------------------------------------------------------------------------

_MARK = {
    "valid": "ok",
    "due_soon": "DUE SOON",
    "expired": "EXPIRED",
    "untraceable": "UNTRACEABLE",
    "suspect": "SUSPECT",
    "none": "NO CERTIFICATE",
}


def _node_line(node: ChainNode, root: bool) -> str:
    status = _MARK.get(node.status, node.status)
    if node.number is None:
        return f"{node.item}: no certificate  [{status}]"
    who = node.issued_by or "?"
    if node.nmi:
        who += " — NMI"
    elif node.accreditation:
        who += f", {node.accreditation}"
    ch = f"/{node.channel}" if node.channel else ""
    assert node.calibrated is not None
    assert node.due is not None
    when = f"calibrated {node.calibrated.isoformat()}, due {node.due.isoformat()}"
    if not root:
        when += f"; needed in force on {node.evaluated_on.isoformat()}"
    return f"{node.number}  {node.item}{ch}  [{status}]  {when}  ({who})"


def render_tree(node: ChainNode) -> list[str]:
    lines = [_node_line(node, True)]
    lines.extend(f"    ! {r}" for r in node.reasons)
    lines.extend(_render_children(node, ""))
    return lines


def _render_children(node: ChainNode, prefix: str) -> list[str]:
    lines: list[str] = []
    for i, child in enumerate(node.standards):
        last = i == len(node.standards) - 1
        lines.append(prefix + ("└── " if last else "├── ") + _node_line(child, False))
        inner = prefix + ("    " if last else "│   ")
        lines.extend(f"{inner}    ! {r}" for r in child.reasons)
        lines.extend(_render_children(child, inner))
    return lines


# -- commands --------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    reg = load_or_report(args.dir)
    if reg is None:
        return EX_CONFIG
    at = args.at or datetime.now(UTC)
    ids = reg.equipment_ids()
    n_certs = len(reg.certificates())
    print(f"{args.dir}: {len(ids)} equipment, {n_certs} certificates: no errors")
    for note in reg.notes:
        print(f"note: {note}")
    print(f"status on {at.date().isoformat()} (UTC):")
    width = max(len(i) for i in ids) if ids else 0
    bad = 0
    for eq_id in ids:
        eq = reg.require(eq_id)
        for ch in eq.channels:
            st = reg.state(eq_id, at, ch.name)
            if st.status in ("expired", "untraceable", "suspect", "none"):
                bad += 1
            cert = st.certificate or "-"
            due = st.due.isoformat() if st.due else "-"
            conf = {True: "conforms", False: "DOES NOT CONFORM", None: ""}[st.conforms]
            print(
                f"  {eq_id:<{width}}  {ch.name:<9} {_MARK.get(st.status, st.status):<15} "
                f"{cert:<20} due {due:<10}  {eq.role.replace('_', ' ')}"
                + (f"  as found: {conf}" if conf else "")
            )
            for r in st.reasons:
                print(f"  {'':<{width}}    ! {r}")
    findings = _out_of_tolerance(reg, at)
    if findings:
        print("found out of tolerance (as found), with what depends on them (reverse trace):")
        for line in findings:
            print("  " + line)
    if args.strict and bad:
        print(f"{bad} channel(s) expired, untraceable, suspect or without certificate")
        return EX_CONFIG
    return EX_OK


def _out_of_tolerance(reg: Registry, at: datetime) -> list[str]:
    """Certificates whose as-found results fail, and the reverse trace of each item over
    the period before (since its previous calibration): what a quality manager reviews."""
    lines: list[str] = []
    day = at.date()
    for cert in reg.certificates():
        if cert.calibrated > day or reg.conforms(cert) is not False:
            continue
        prev = reg.predecessor(cert)
        since = prev.calibrated if prev else None
        affected = reg.reverse_trace(cert.item, since=since, until=cert.calibrated)
        if prev is None and not affected:
            continue  # its first calibration: nothing relied on it before
        period = f"in use since {prev.number} ({prev.calibrated.isoformat()})" if prev else ""
        lines.append(
            f"{cert.item}: {cert.number} ({cert.calibrated.isoformat()})"
            + (f"; {period}" if period else "")
            + f": {len(affected)} certificate(s) to review"
        )
        for a in affected:
            ch = f"/{a.channel}" if a.channel else ""
            end = a.window[1].isoformat() if a.window[1] else "now"
            lines.append(
                f"  {'  ' * (a.depth - 1)}{a.certificate}  {a.item}{ch}  "
                f"{a.window[0].isoformat()} to {end}"
            )
    return lines


def _chain(args: argparse.Namespace) -> int:
    reg = load_or_report(args.dir)
    if reg is None:
        return EX_CONFIG
    at = args.at or datetime.now(UTC)
    try:
        node = reg.chain_tree(args.item, at, args.channel)
    except CalibrationError as exc:
        print(f"calgate: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.json:
        print(json.dumps(node.to_json(), ensure_ascii=False))
        return EX_OK
    ch = f" ({node.channel})" if node.channel else ""
    print(f"{args.item}{ch} on {at.date().isoformat()}: {_MARK.get(node.status, node.status)}")
    for line in render_tree(node):
        print("  " + line)
    return EX_OK


def _trace(args: argparse.Namespace) -> int:
    reg = load_or_report(args.dir)
    if reg is None:
        return EX_CONFIG
    try:
        since = date.fromisoformat(args.since) if args.since else None
        until = date.fromisoformat(args.until) if args.until else None
        affected = reg.reverse_trace(args.standard, since=since, until=until)
    except (CalibrationError, ValueError) as exc:
        print(f"calgate: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.json:
        print(json.dumps([a.to_json() for a in affected], ensure_ascii=False))
        return EX_OK
    if not affected:
        print(f"no certificate downstream of {args.standard}")
        return EX_OK
    print(f"downstream of {args.standard}: {len(affected)} certificate(s)")
    today = datetime.now(UTC).date()
    for a in affected:
        ch = f"/{a.channel}" if a.channel else ""
        end = a.window[1]
        if end is None:
            end_text = "now (still in force)" if a.in_force_to >= today else "now"
        else:
            end_text = end.isoformat()
        lapsed = a.in_force_to < (end or today)
        print(
            f"  {'  ' * (a.depth - 1)}{a.certificate:<20} {a.item}{ch}: readings and "
            f"calibrations from {a.window[0].isoformat()} to {end_text}"
            + (f" (in force to {a.in_force_to.isoformat()}, expired after)" if lapsed else "")
            + f" (via {' → '.join(a.via)})"
        )
    return EX_OK


def _safe_name(number: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", number).strip("._") or "certificate"


def _import_dcc(args: argparse.Namespace) -> int:
    from calibration import dcc

    src = Path(args.file)
    root = Path(args.into)
    reg = load_or_report(args.into)
    if reg is None:
        return EX_CONFIG
    try:
        doc = dcc.read(src, source=src.name)
        equipment = {i: reg.require(i) for i in reg.equipment_ids()}
        fields = dcc.certificate_fields(doc, equipment)
    except RegistryError as exc:
        print(f"calgate: {src} cannot be imported:", file=sys.stderr)
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EX_CONFIG
    if (existing := reg.certificate(doc.number)) is not None:
        print(
            f"calgate: {src}: certificate {doc.number} is already in the registry "
            f"({existing.source})",
            file=sys.stderr,
        )
        return EX_CONFIG
    dest = root / "certificates" / f"{_safe_name(doc.number)}.xml"
    try:
        dest.parent.mkdir(exist_ok=True)  # a new registry may have no certificates/ yet
        # "x": the file must not exist, not even as a link (a dangling one would be
        # written through, out of the registry)
        with dest.open("xb") as out:
            out.write(src.read_bytes())
    except FileExistsError:
        print(f"calgate: {dest} exists already", file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        print(f"calgate: cannot write {dest}: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        reg = Registry.load(root)
    except RegistryError as exc:
        dest.unlink()
        print(f"calgate: {src} was not imported: the registry would not be valid:", file=sys.stderr)
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EX_CONFIG
    gens = ", ".join(f"D-SI {g}.x" for g in sorted(doc.dsi_generations)) or "no uncertainty"
    std = ", ".join(
        f"{s}" + (f" (certificate {c})" if (c := fields["standard_certificates"].get(s)) else "")
        for s in fields["standards"]
    )
    print(f"imported {doc.number} into {dest}")
    print(
        f"  item        {fields['item']}" + (f" / {fields['channel']}" if fields["channel"] else "")
    )
    print(f"  issued by   {doc.issued_by}" + (" (NMI)" if doc.nmi else f", {doc.accreditation}"))
    print(f"  calibrated  {doc.calibrated.isoformat()}, due {doc.due.isoformat()}")
    print(
        f"  points      {len(doc.points)} in {doc.unit} ({gens})"
        + (f", {len(doc.as_found)} as found" if doc.as_found else "")
    )
    print(f"  standards   {std or 'none'}")
    st = reg.state(fields["item"], datetime.now(UTC), fields["channel"])
    print(f"  status now  {_MARK.get(st.status, st.status)}")
    for r in st.reasons:
        print(f"              ! {r}")
    return EX_OK


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "registry",
        help="check a calibration registry, print traceability chains, import DCCs",
        description="The calibration registry: equipment and certificates. The file format, "
        f"every field and the rules: {docs_dir() / 'registry.md'}",
    )
    sub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    c = sub.add_parser("check", help="load a registry; list every error (exit 78) or the statuses")
    c.add_argument("dir", help="registry directory (equipment/, certificates/)")
    c.add_argument("--at", type=parse_at, help="status at this date or date-time (default: now)")
    c.add_argument(
        "--strict",
        action="store_true",
        help="exit 78 also when a channel is expired, untraceable, suspect or has no certificate",
    )
    c.set_defaults(func=_check)

    t = sub.add_parser("chain", help="an item's traceability chain as a tree, with validity")
    t.add_argument("dir", help="registry directory")
    t.add_argument("item", help="equipment id")
    t.add_argument("--channel", help="channel (default: the only one, or the worst)")
    t.add_argument("--at", type=parse_at, help="date or date-time (default: now)")
    t.add_argument("--json", action="store_true", help="print the tree as JSON")
    t.set_defaults(func=_chain)

    r = sub.add_parser("trace", help="reverse trace: everything calibrated through a standard")
    r.add_argument("dir", help="registry directory")
    r.add_argument("standard", help="equipment id of the standard")
    r.add_argument(
        "--since", help="only uses on or after this date (e.g. its last good calibration)"
    )
    r.add_argument("--until", help="only uses on or before this date")
    r.add_argument("--json", action="store_true", help="print a JSON list")
    r.set_defaults(func=_trace)

    d = sub.add_parser("import-dcc", help="import a PTB Digital Calibration Certificate (XML)")
    d.add_argument("file", help="the DCC (.xml)")
    d.add_argument("--into", required=True, help="registry directory")
    d.set_defaults(func=_import_dcc)
