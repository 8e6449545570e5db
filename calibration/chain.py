"""Traceability: the chain tree at a time, calibration status with reasons, reverse trace.

Rules (ARCHITECTURE.md 4.2):

- The certificate *in force* for an item at t is the latest with ``calibrated <= date(t)``
  (superseded certificates are kept). Dates compare as UTC calendar days.
- Its status at t is ``expired`` when date(t) > ``due`` (a certificate is in force through
  its whole due day), ``due_soon`` when ``due − date(t) <= due_soon_days``, ``none`` when
  there is no certificate.
- Each standard's certificate must have been in force on the child's ``calibrated`` date,
  and every path must end at an ``nmi = true`` certificate, else ``untraceable``.
- An item found out of tolerance (as found) at its next calibration was ``suspect``
  while the previous certificate was in force (this shows when looking back in time).
- A standard ``out_of_service`` now makes every certificate it took part in since its last
  calibration ``suspect``; a standard whose *next* certificate's as-found results fail its
  tolerance (it drifted while in use) makes every certificate it took part in while the
  previous certificate was in force ``suspect``. Suspect and untraceable propagate down
  the chain: an instrument calibrated with a suspect working standard is suspect too.

When several apply, the status is the first of :data:`PRECEDENCE` that applies —
``expired > untraceable > suspect > due_soon > valid`` — and ``reasons`` gives all of them:
an expired certificate must not be used whatever else is wrong; an untraceable one has no
valid link to the SI; a suspect one is traceable but in doubt; due-soon is a reminder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from calibration.registry import Certificate, Registry

__all__ = [
    "CALIBRATION_STATUSES",
    "PRECEDENCE",
    "Affected",
    "CalStatus",
    "CalibrationState",
    "ChainNode",
    "Issue",
    "conforms",
    "reverse_trace",
    "state",
    "tree",
]

#: The calibration status of a certificate, an item or a reading (ARCHITECTURE.md 4.2, 4.3).
CalStatus = Literal["valid", "due_soon", "expired", "untraceable", "suspect", "none"]
CALIBRATION_STATUSES: tuple[CalStatus, ...] = get_args(CalStatus)

PRECEDENCE: tuple[CalStatus, ...] = ("expired", "untraceable", "suspect", "due_soon", "valid")
# Picking the worst of several channels: a channel without certificate ranks after suspect.
_WORST: dict[CalStatus, int] = {
    "expired": 0,
    "untraceable": 1,
    "suspect": 2,
    "none": 3,
    "due_soon": 4,
    "valid": 5,
}


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _day(at: datetime | date) -> date:
    from calibration.registry import utc_date

    return utc_date(at)


@dataclass(frozen=True, slots=True)
class Issue:
    """One reason a certificate is not simply valid: ``kind`` is a status name."""

    kind: str
    message: str


def _status(issues: tuple[Issue, ...]) -> CalStatus:
    kinds = {i.kind for i in issues}
    return next((s for s in PRECEDENCE if s in kinds), "valid")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainNode:
    """A certificate in a traceability tree, evaluated on ``evaluated_on``.

    The root is evaluated at the requested time; a standard's node at the date its parent
    was calibrated (when it had to be in force). ``number`` is None when the item had no
    certificate then.
    """

    number: str | None
    item: str
    channel: str | None
    evaluated_on: date
    status: CalStatus
    issues: tuple[Issue, ...] = ()
    standards: tuple[ChainNode, ...] = ()
    issued_by: str | None = None
    accreditation: str | None = None
    nmi: bool = False
    calibrated: date | None = None
    due: date | None = None
    # the last day it is in force (Registry.in_force_until: due, or superseded before)
    in_force_to: date | None = None
    source: str | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(i.message for i in self.issues)

    def walk(self) -> Iterator[ChainNode]:
        """This node and every node below it, depth first."""
        yield self
        for child in self.standards:
            yield from child.walk()

    def numbers(self) -> tuple[str, ...]:
        """Certificate numbers depth first: for a linear chain, item → NMI."""
        return tuple(n.number for n in self.walk() if n.number is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "item": self.item,
            "channel": self.channel,
            "status": self.status,
            "reasons": list(self.reasons),
            "issued_by": self.issued_by,
            "accreditation": self.accreditation,
            "nmi": self.nmi,
            "calibrated": self.calibrated.isoformat() if self.calibrated else None,
            "due": self.due.isoformat() if self.due else None,
            "in_force_to": self.in_force_to.isoformat() if self.in_force_to else None,
            "evaluated_on": self.evaluated_on.isoformat(),
            "source": self.source,
            "standards": [c.to_json() for c in self.standards],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationState:
    """An item's calibration status at a time, for the gateway and the status topic."""

    status: CalStatus
    certificate: str | None
    due: date | None
    reasons: tuple[str, ...]
    chain: tuple[str, ...]
    conforms: bool | None
    channel: str | None = None
    calibrated: date | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "certificate": self.certificate,
            "channel": self.channel,
            "calibrated": self.calibrated.isoformat() if self.calibrated else None,
            "due": self.due.isoformat() if self.due else None,
            "reasons": list(self.reasons),
            "chain": list(self.chain),
            "conforms": self.conforms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Affected:
    """A certificate downstream of a standard, and the days readings were corrected
    through it (inclusive; ``window[1]`` is None while it has no successor): an expired
    certificate is still the one readings are corrected with. ``in_force_to`` is the
    last day it was in force (:meth:`Registry.in_force_until`, as in the chain).

    ``via`` is the path of items from the traced standard to this certificate's standard.
    Readings taken through this certificate during ``window`` are affected.
    """

    item: str
    certificate: str
    channel: str | None
    window: tuple[date, date | None]
    via: tuple[str, ...]
    depth: int
    in_force_to: date

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "certificate": self.certificate,
            "channel": self.channel,
            "from": self.window[0].isoformat(),
            "to": self.window[1].isoformat() if self.window[1] else None,
            "in_force_to": self.in_force_to.isoformat(),
            "via": list(self.via),
            "depth": self.depth,
        }


# -- conformity of as-found results ---------------------------------------------------------


def conforms(reg: Registry, cert: Certificate) -> bool | None:
    """Whether every as-found point's error is within the channel's MPE under its rule.

    ``None`` when the channel has no tolerance. A certificate without ``as_found`` points
    records an unadjusted item: its points are the as-found results. A non-binary
    ``conditional_pass`` conforms, a ``conditional_fail`` does not
    (:func:`calibration.conformity.instrument_conformity`).
    """
    from calibration.conformity import instrument_conformity

    eq = reg.equipment(cert.item)
    ch = eq.channel(cert.channel) if eq else None
    if ch is None or ch.tolerance is None:
        return None
    pts = cert.found_points
    verdict = instrument_conformity(
        indicated=[p.indicated for p in pts],
        reference=[p.reference for p in pts],
        U=[p.U for p in pts],
        tolerance=ch.tolerance,
        rule=ch.decision_rule,
        unit=ch.unit,
    )
    return verdict.conforms


# -- the tree -------------------------------------------------------------------------------


def _channel_of(reg: Registry, eq_id: str, channel: str | None) -> tuple[str | None, ...]:
    from calibration.errors import CalibrationError

    eq = reg.require(eq_id)
    if channel is not None:
        if eq.channel(channel) is None:
            raise CalibrationError(
                f"{eq_id} has no channel {channel!r} (channels: {', '.join(eq.channel_names)})"
            )
        return (channel,)
    return eq.channel_names


def tree(reg: Registry, eq_id: str, at: datetime | date, channel: str | None = None) -> ChainNode:
    """The traceability tree of ``eq_id``'s certificate in force at ``at``.

    With ``channel=None`` on a multi-channel item, the channel whose status is worst.
    """
    day = _day(at)
    nodes = [_root(reg, eq_id, day, ch) for ch in _channel_of(reg, eq_id, channel)]
    return min(nodes, key=lambda n: _WORST[n.status])


def _root(reg: Registry, eq_id: str, day: date, channel: str | None) -> ChainNode:
    cert = reg.in_force(eq_id, day, channel)
    if cert is None:
        msg = f"{eq_id} has no certificate calibrated on or before {day.isoformat()}"
        return ChainNode(
            number=None,
            item=eq_id,
            channel=channel,
            evaluated_on=day,
            status="none",
            issues=(Issue("none", msg),),
        )
    return _node(reg, cert, day, used_by=None, path=())


def _node(
    reg: Registry,
    cert: Certificate,
    day: date,
    *,
    used_by: Certificate | None,
    path: tuple[str, ...],
) -> ChainNode:
    issues: list[Issue] = []
    eq = reg.require(cert.item)
    if used_by is None:
        if day > cert.due:
            issues.append(
                Issue(
                    "expired",
                    f"{cert.number} expired: due {cert.due.isoformat()}, {_days((day - cert.due).days)} ago",
                )
            )
        elif (cert.due - day).days <= eq.due_soon_days:
            issues.append(
                Issue(
                    "due_soon",
                    f"{cert.number} is due on {cert.due.isoformat()}, in {_days((cert.due - day).days)} "
                    f"(due_soon_days = {eq.due_soon_days})",
                )
            )
        # Looking back: the item itself was found out of tolerance when next calibrated,
        # so what it measured under this certificate is in doubt.
        nxt = reg.successor(cert)
        if nxt is not None and reg.conforms(nxt) is False:
            issues.append(
                Issue(
                    "suspect",
                    f"{cert.item} was found out of tolerance (as found) at its next "
                    f"calibration ({nxt.number}, {nxt.calibrated.isoformat()})",
                )
            )
    elif not reg.in_force_on(cert, day):
        nxt = reg.successor(cert)
        if day > cert.due:
            msg = (
                f"{cert.number} of {cert.item} had expired (due {cert.due.isoformat()}) when "
                f"{used_by.number} was calibrated on {day.isoformat()}"
            )
        elif nxt is not None and day >= nxt.calibrated:
            msg = (
                f"{cert.number} of {cert.item} had been superseded by {nxt.number} "
                f"({nxt.calibrated.isoformat()}) when {used_by.number} was calibrated on "
                f"{day.isoformat()}"
            )
        else:
            msg = (
                f"{cert.number} of {cert.item} was issued for a calibration on "
                f"{cert.calibrated.isoformat()}, after {used_by.number} was calibrated on {day.isoformat()}"
            )
        issues.append(Issue("expired", msg))

    children: list[ChainNode] = []
    here = (*path, cert.item)
    if not cert.nmi:
        if not cert.standards:
            issues.append(
                Issue(
                    "untraceable",
                    f"{cert.number} ({cert.issued_by}) is not an NMI certificate and names no standards",
                )
            )
        for std in cert.standards:
            if std in here:  # refused at load; a guard, not a rule
                continue
            child, link_issues = _link(reg, cert, std, here)
            children.append(child)
            issues.extend(link_issues)
    return ChainNode(
        number=cert.number,
        item=cert.item,
        channel=cert.channel,
        evaluated_on=day,
        status=_status(tuple(issues)),
        issues=tuple(issues),
        standards=tuple(children),
        issued_by=cert.issued_by,
        accreditation=cert.accreditation or None,
        nmi=cert.nmi,
        calibrated=cert.calibrated,
        due=cert.due,
        in_force_to=reg.in_force_until(cert),
        source=cert.source or None,
    )


def _link(
    reg: Registry, cert: Certificate, std: str, path: tuple[str, ...]
) -> tuple[ChainNode, list[Issue]]:
    """The node of standard ``std`` as used by ``cert``, and what it means for ``cert``."""
    issues: list[Issue] = []
    when = cert.calibrated
    cited = cert.standard_certificates.get(std)
    s_cert = reg.certificate(cited) if cited else reg.in_force(std, when)
    if s_cert is None:
        msg = f"standard {std} had no certificate when {cert.number} was calibrated on {when.isoformat()}"
        node = ChainNode(
            number=None,
            item=std,
            channel=None,
            evaluated_on=when,
            status="none",
            issues=(
                Issue(
                    "none", f"{std} has no certificate calibrated on or before {when.isoformat()}"
                ),
            ),
        )
        return node, [Issue("untraceable", msg)]
    node = _node(reg, s_cert, when, used_by=cert, path=path)
    if not reg.in_force_on(s_cert, when):
        issues.append(
            Issue(
                "untraceable",
                f"standard {std}: certificate {s_cert.number} was not in force when "
                f"{cert.number} was calibrated on {when.isoformat()} "
                f"(in force {s_cert.calibrated.isoformat()} to "
                f"{reg.in_force_until(s_cert).isoformat()})",
            )
        )
    issues.extend(
        Issue(i.kind, f"via {std} ({s_cert.number}): {i.message}")
        for i in node.issues
        if i.kind in ("untraceable", "suspect")
    )
    s_eq = reg.require(std)
    if s_eq.status == "out_of_service":
        latest = reg.certificates(std, s_cert.channel)[-1]
        if when >= latest.calibrated:
            issues.append(
                Issue(
                    "suspect",
                    f"standard {std} is out of service; {cert.number} was calibrated with it on "
                    f"{when.isoformat()}, after its last calibration ({latest.number}, "
                    f"{latest.calibrated.isoformat()})",
                )
            )
    nxt = reg.successor(s_cert)
    if nxt is not None and nxt.calibrated >= when and reg.conforms(nxt) is False:
        issues.append(
            Issue(
                "suspect",
                f"standard {std} was found out of tolerance (as found) at its next calibration "
                f"({nxt.number}, {nxt.calibrated.isoformat()}); {cert.number} was calibrated with "
                f"it on {when.isoformat()}",
            )
        )
    return node, issues


def state(
    reg: Registry, eq_id: str, at: datetime | date, channel: str | None = None
) -> CalibrationState:
    """The calibration state of ``eq_id`` at ``at`` (worst channel when ``channel`` is None)."""
    root = tree(reg, eq_id, at, channel)
    cert = reg.certificate(root.number) if root.number else None
    return CalibrationState(
        status=root.status,
        certificate=root.number,
        due=root.due,
        reasons=root.reasons,
        chain=root.numbers(),
        conforms=conforms(reg, cert) if cert is not None else None,
        channel=root.channel,
        calibrated=root.calibrated,
    )


# -- reverse trace ----------------------------------------------------------------------------


def reverse_trace(
    reg: Registry, std_id: str, *, since: date | None = None, until: date | None = None
) -> list[Affected]:
    """Every certificate downstream of ``std_id`` to any depth, with its window in force.

    Only uses of ``std_id`` calibrated within ``[since, until]`` count (default: all). A
    downstream certificate's window runs from its calibration to the day before its
    successor's calibration, or stays open (``None``) while it has no successor — an
    expired certificate is still the one readings are corrected with. Readings corrected
    through it in its window are affected, and so is every certificate its item took part
    in during that window. Depth first: each certificate is followed by its dependants.
    """
    reg.require(std_id)
    out: list[Affected] = []
    seen: set[str] = set()

    def walk(item: str, start: date, end: date | None, via: tuple[str, ...]) -> None:
        for c in reg.dependants(item):
            if c.calibrated < start or (end is not None and c.calibrated > end):
                continue
            if c.number in seen:
                continue
            seen.add(c.number)
            nxt = reg.successor(c)
            w_end = None if nxt is None else nxt.calibrated - timedelta(days=1)
            out.append(
                Affected(
                    item=c.item,
                    certificate=c.number,
                    channel=c.channel,
                    window=(c.calibrated, w_end),
                    via=via,
                    depth=len(via),
                    in_force_to=reg.in_force_until(c),
                )
            )
            walk(c.item, c.calibrated, w_end, (*via, c.item))

    walk(std_id, since or date.min, until, (std_id,))
    return out


# -- the chain as uncertainty inputs ----------------------------------------------------------


def upstream_levels(
    reg: Registry, eq_id: str, at: datetime | date, channel: str | None, value: float
) -> list[tuple[str, float, float]]:
    """``(certificate, u, dof)`` of each standard's certificate above ``eq_id``'s, at ``value``.

    Follows the first standard at each level from the item's own standard up to the NMI
    (the tree's leftmost path). ``u`` is U/k of that certificate's points interpolated
    linearly at ``value`` (held at the edges), converted to the item's channel unit;
    a level whose unit is not compatible (another quantity) ends the walk. ``dof`` is the
    smallest of its points' (``inf`` when none is given).
    """
    import math

    import numpy as np

    from calibration import units

    eq = reg.require(eq_id)
    ch = eq.channel(channel)
    root = tree(reg, eq_id, at, channel)
    if ch is None or root.number is None:
        return []
    out: list[tuple[str, float, float]] = []
    node = root
    while node.standards:
        node = node.standards[0]
        cert = reg.certificate(node.number) if node.number else None
        if cert is None or not units.compatible(cert.unit, ch.unit):
            break
        f = units.factor(cert.unit, ch.unit)
        pts = sorted(cert.points, key=lambda p: p.indicated)
        x = np.array([p.indicated * f for p in pts])
        u = np.array([p.u * f for p in pts])
        dofs = [p.dof for p in pts if p.dof is not None]
        out.append((cert.number, float(np.interp(value, x, u)), min(dofs) if dofs else math.inf))
    return out
