"""``calgate correct DIR ITEM CHANNEL VALUE``: one reading corrected as the gateway would.

Prints the corrected value with u, U and k (rounded for display per GUM 7.2.6 / ILAC
P14: U to two significant digits, the value to the same decimal place), the calibration
status with its reasons, the certificate and its chain to the NMI, the conformity against
the channel's limits, and the uncertainty budget naming each certificate of the chain.
``--json`` prints the MQTT Measurement payload (docs/interfaces.md, full precision,
``seq`` 0) plus ``chain`` (certificate numbers, item → NMI).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from typing import Any

from calibration import Registry
from calibration.conformity import INDETERMINATE
from calibration.corrector import Corrector
from calibration.errors import CalibrationError
from calibration.registry import describe_tolerance
from calibration.rounding import round_result
from calibration.uncertainty import Budget, ChainLevel
from drivers.base import Reading
from gateway.cli import EX_CONFIG, EX_USAGE
from gateway.commands.registry import EX_OK, load_or_report, parse_at
from gateway.model import Measurement
from gateway.pipeline import DOUBTFUL, Pipeline

__all__ = ["correct_one", "register"]


def correct_one(
    reg: Registry, item: str, channel: str, raw: float, at: datetime
) -> tuple[Measurement, dict[str, Any]]:
    """The Measurement of one raw value, and the facts shown beside it."""
    eq = reg.require(item)
    ch = eq.channel(channel)
    if ch is None:
        raise CalibrationError(
            f"{item} has no channel {channel!r} (channels: {', '.join(eq.channel_names)})"
        )
    state = reg.state(item, at, ch.name)
    corrector = reg.corrector(item, ch.name, at)
    reading = Reading(
        equipment=item,
        channel=ch.name,
        raw=raw,
        unit=ch.unit,
        t_wall=at,
        t_mono=time.monotonic(),
    )
    # the gateway's own path (a channel without a certificate: as read, no U, uncalibrated)
    (m,) = Pipeline(reg, clock=lambda: at).process([reading])
    value = raw if m.value is None else m.value
    facts: dict[str, Any] = {
        "state": state,
        "channel": ch,
        "equipment": eq,
        "budget": _budget(reg, corrector, item, ch.name, at, raw, value),
        "span": corrector.span,
    }
    return m, facts


def _quality_note(m: Measurement, status: str, span: tuple[float, float]) -> str:
    """Why a corrected value is not ``good``, in words."""
    if "out_of_range" in m.flags:
        return (
            f"  (outside the calibrated span {span[0]:g} to {span[1]:g} {m.unit}: "
            "not extrapolated; the correction and U do not hold there)"
        )
    if "uncalibrated" in m.flags:
        return "  (no certificate in force: the value as read)"
    if status in DOUBTFUL:
        return f"  (calibration {status})"
    return ""


def _budget(
    reg: Registry,
    corrector: Corrector,
    item: str,
    channel: str,
    at: datetime,
    raw: float,
    value: float,
) -> Budget:
    """The GTC uncertainty budget; with a certificate, each certificate of the chain up to
    the NMI is named with its share of the certificate's u (nothing counted twice)."""
    from calibration.chain import upstream_levels

    levels = [
        ChainLevel(number, u, dof)
        for number, u, dof in upstream_levels(reg, item, at, channel, value)
    ]
    return corrector.budget(raw, upstream=levels or None)


def _correct(args: argparse.Namespace) -> int:
    reg = load_or_report(args.dir)
    if reg is None:
        return EX_CONFIG
    at = args.at or datetime.now(UTC)
    try:
        raw = float(args.value)
        if not math.isfinite(raw):
            raise ValueError
    except ValueError:
        print(f"calgate: VALUE must be a finite number (got {args.value!r})", file=sys.stderr)
        return EX_USAGE
    try:
        m, facts = correct_one(reg, args.item, args.channel, raw, at)
    except CalibrationError as exc:
        print(f"calgate: {exc}", file=sys.stderr)
        return EX_USAGE
    state = facts["state"]
    if args.json:
        payload = m.payload(0)
        payload["chain"] = list(state.chain)
        print(json.dumps(payload, ensure_ascii=False))
        return EX_OK
    ch = facts["channel"]
    unit = m.unit
    print(f"{m.equipment} {m.channel} ({ch.quantity}) at {at.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    print(f"  raw            {raw:g} {unit}")
    if m.U is not None and m.U > 0:
        v, Ur = round_result(m.value, m.U)
        doubt = "  ! not valid here: see quality" if "out_of_range" in m.flags else ""
        print(f"  corrected      {v} {unit} ± {Ur} {unit}  (k = {m.k:g}){doubt}")
        print(f"                 full precision: value {m.value!r}, u {m.u!r}, U {m.U!r}")
    else:
        print(f"  corrected      {m.value:g} {unit}  (no uncertainty)")
    print(f"  quality        {m.quality}" + _quality_note(m, state.status, facts["span"]))
    if m.flags:
        print(f"  flags          {', '.join(sorted(m.flags))}")
    status = state.status
    print(f"  calibration    {status}")
    for r in state.reasons:
        print(f"                 ! {r}")
    if m.certificate:
        cert = reg.certificate(m.certificate)
        assert cert is not None
        who = cert.issued_by + (f", {cert.accreditation}" if cert.accreditation else "")
        print(
            f"  certificate    {cert.number} ({who}), calibrated {cert.calibrated.isoformat()}, "
            f"due {cert.due.isoformat()}, model {cert.model}"
        )
        nmi = reg.certificate(state.chain[-1]) if state.chain else None
        tail = " (NMI)" if nmi is not None and nmi.nmi else " (does not end at an NMI)"
        print(f"  chain          {' → '.join(state.chain)}{tail}")
    else:
        print("  certificate    none: published as read (flag uncalibrated), no uncertainty")
    if m.conformity == INDETERMINATE:
        why = (
            "outside the calibrated span"
            if "out_of_range" in m.flags
            else "no certificate in force"
            if m.certificate is None
            else "untraceable chain"
        )
        print(f"  conformity     {INDETERMINATE}  (no decision on this value: {why})")
    elif ch.limits is not None:
        lo = "-∞" if ch.limits.low is None else f"{ch.limits.low:g}"
        hi = "+∞" if ch.limits.high is None else f"{ch.limits.high:g}"
        print(
            f"  conformity     {m.conformity}  (limits [{lo}, {hi}] {unit}, rule {ch.decision_rule})"
        )
    else:
        print("  conformity     -  (no process limits on this channel)")
    if ch.tolerance is not None:
        verdict = {True: "conforms", False: "DOES NOT CONFORM", None: "-"}[state.conforms]
        print(
            f"  as found       {verdict}  ({describe_tolerance(ch.tolerance)}, rule {ch.decision_rule})"
        )
    if m.U is None:
        print("  uncertainty    none: no certificate in force")
        return EX_OK
    budget: Budget = facts["budget"]
    print(f"  uncertainty budget ({unit}; GTC, inputs named back to the NMI):")
    for line in budget.lines():
        print(f"    {line}")
    return EX_OK


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "correct",
        help="correct one value through the registry: u, U, k, status, conformity",
        description="Correct one raw value as the gateway would, and show why.",
    )
    p.add_argument("dir", help="registry directory")
    p.add_argument("item", help="equipment id")
    p.add_argument("channel", help="channel name")
    p.add_argument("value", help="raw value in the channel's unit")
    p.add_argument("--at", type=parse_at, help="date or date-time (default: now)")
    p.add_argument("--json", action="store_true", help="the MQTT Measurement payload plus chain")
    p.set_defaults(func=_correct)
