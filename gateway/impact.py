"""Impact of a drifted standard on stored readings: find, re-correct, re-judge, write back.

ISO/IEC 17025:2017 7.10 asks a lab to evaluate the results that nonconforming work
touched. Readings keep their ``raw`` value beside the corrected one (ARCHITECTURE.md 2)
so the gateway can do it on the database:

1. :func:`select` turns the registry into :class:`Target` s: an equipment channel and the
   time windows in which its readings went through a certificate in doubt — the period
   of a certificate whose successor's as-found results fail (:mod:`calibration.revision`),
   and everything calibrated with that item meanwhile, to any depth (the reverse trace,
   :func:`calibration.chain.reverse_trace`).
2. :class:`InfluxReader` reads each target's stored readings (measurement ``reading``)
   page by page with InfluxQL over ``/query`` — keyset pages on ``time``, so memory is
   bounded by the page size whatever the window holds. ``api = "v1"`` queries InfluxDB
   1.x (database, retention policy, basic auth); ``api = "v2"`` queries the bucket through
   the v1-compatible ``/query`` that InfluxDB 2.x (its virtual DBRP mapping names the
   database after the bucket) and 3.x serve, with ``Authorization: Token``. Flux is not
   used: InfluxDB 3 dropped it, and neither Debian's influxd 1.6 nor victoria-metrics
   serves it.
3. :class:`Evaluator` re-corrects each page from ``raw`` through the certificate the
   registry *now* holds in force at the reading's time, revised by the registry's
   findings (:class:`calibration.revision.Revisions`), with the Corrector's vectorised
   path, and re-judges it with the channel's limits and decision rule; it counts, per
   channel, the changed decisions and the largest change in units of the stored U.
4. With ``write``, every re-corrected reading goes to measurement ``reading_recorrected``
   (:func:`gateway.wire.recorrected_line`): the stored tags (``unit`` the channel's now)
   plus ``certificate``, time unchanged, so running twice with the same registry
   overwrites the same points (InfluxDB keeps one point per series and time). A run after
   the registry put another certificate in force for a reading writes a point of another
   series (its ``certificate`` tag) beside the first: the field ``registry`` tells them
   apart. ``reading`` is never written.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from calibration.revision import Finding, Revisions, findings
from gateway.errors import CalgateError
from gateway.pipeline import DOUBTFUL, beyond_span, judge_of, unit_factor
from gateway.registry_watch import RegistryRevision, revision_of
from gateway.sinks.influx import post_lines, session, write_endpoint
from gateway.wire import line_flags, recorrected_line, rfc3339

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from calibration import Certificate, Corrector, Registry
    from gateway.config import Config
    from gateway.settings import InfluxSettings

__all__ = [
    "ChannelReport",
    "DatabaseError",
    "Evaluator",
    "ImpactError",
    "InfluxReader",
    "Page",
    "Target",
    "run",
    "select",
]

_DAY_NS = 86_400 * 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Judge = Callable[[float, float], str | None]
COLUMNS = (
    "raw", "value", "u", "U", "k", "quality", "calibration", "certificate", "conformity",
    "seq", "quantity", "unit", "flags",
)  # fmt: skip


class ImpactError(CalgateError):
    """A selection that cannot be made (unknown standard or certificate)."""


class DatabaseError(CalgateError):
    """The database cannot be queried or written: ``config`` when the config is at fault
    (unknown database or bucket, credentials refused), else it is unreachable or failing."""

    def __init__(self, message: str, *, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


def day_ns(d: date) -> int:
    """Nanoseconds since the epoch of ``d``'s UTC midnight."""
    return (
        (datetime(d.year, d.month, d.day, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1) * 1000
    )


def time_ns(t: datetime) -> int:
    return (t.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1) * 1000


def ns_rfc3339(ns: int) -> str:
    """RFC 3339 of a time in ns (µs shown, as the payloads; the ns are kept in the data)."""
    return rfc3339(_EPOCH + timedelta(microseconds=ns // 1000))


# --------------------------------------------------------------------------- selection


@dataclass(slots=True)
class Target:
    """An equipment channel and the windows ``[start_ns, end_ns)`` (end None: open) whose
    readings are affected, with the certificates in doubt and why."""

    equipment: str
    channel: str
    windows: list[tuple[int, int | None]] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def add(self, start: date, end: date | None, certificate: str, reason: str) -> None:
        self.windows.append(
            (day_ns(start), None if end is None else day_ns(end + timedelta(days=1)))
        )
        if certificate not in self.certificates:
            self.certificates.append(certificate)
        if reason not in self.reasons:
            self.reasons.append(reason)

    def clipped(self, since_ns: int | None, until_ns: int | None) -> list[tuple[int, int | None]]:
        """The windows merged, and cut to ``[since, until)``."""
        out: list[tuple[int, int | None]] = []
        for a, b in sorted(self.windows, key=lambda w: w[0]):
            if since_ns is not None:
                a = max(a, since_ns)
            if until_ns is not None:
                b = until_ns if b is None else min(b, until_ns)
            if b is not None and b <= a:
                continue
            if out and (out[-1][1] is None or a <= out[-1][1]):
                last = out[-1]
                out[-1] = (last[0], None if (b is None or last[1] is None) else max(last[1], b))
            else:
                out.append((a, b))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "equipment": self.equipment,
            "channel": self.channel,
            "windows": [
                [ns_rfc3339(a), None if b is None else ns_rfc3339(b)] for a, b in self.windows
            ],
            "certificates": self.certificates,
            "reasons": self.reasons,
        }


@dataclass(slots=True)
class Selection:
    targets: list[Target]
    findings: list[Finding]
    notes: list[str]


def select(
    reg: Registry, *, standard: str | None = None, certificate: str | None = None
) -> Selection:
    """The channels and windows to re-evaluate: a standard's findings (``standard``), one
    certificate's period (``certificate``, found out of tolerance or not), or every
    finding of the registry (neither)."""
    from calibration.errors import CalibrationError

    notes: list[str] = []
    periods: list[tuple[Certificate, date | None, str]] = []  # (cert, last day, why)
    found: list[Finding] = []
    if certificate is not None:
        cert = reg.certificate(certificate)
        if cert is None:
            raise ImpactError(f"unknown certificate {certificate!r}")
        nxt = reg.successor(cert)
        end = None if nxt is None else nxt.calibrated - timedelta(days=1)
        why = f"period of {cert.number} (asked for)"
        found = [f for f in findings(reg, cert.item) if f.certificate.number == cert.number]
        if found:
            why = _finding_reason(found[0])
        periods.append((cert, end, why))
    else:
        if standard is not None:
            try:
                reg.require(standard)
            except CalibrationError as exc:
                raise ImpactError(str(exc)) from exc
        found = findings(reg, standard)
        periods.extend((f.certificate, f.window[1], _finding_reason(f)) for f in found)
        for eq_id in [standard] if standard is not None else reg.equipment_ids():
            eq = reg.require(eq_id)
            if eq.status != "out_of_service":
                continue
            for ch in eq.channel_names:
                certs = reg.certificates(eq_id, ch)
                if certs and not any(f.certificate.number == certs[-1].number for f in found):
                    periods.append((certs[-1], None, f"{eq_id} is out of service"))
                    notes.append(
                        f"{eq_id} is out of service without as-found results: readings "
                        "through it are listed, but nothing is known to re-correct them with"
                    )
        if standard is not None and not periods:
            notes.append(
                f"{standard}: no certificate of it is followed by failing as-found results "
                "and it is not out of service: nothing it took part in is suspect "
                "(--certificate NUMBER re-evaluates one certificate's period anyway)"
            )
    targets: dict[tuple[str, str], Target] = {}

    def target(item: str, channel: str | None) -> Target:
        ch = channel or reg.require(item).channel_names[0]
        return targets.setdefault((item, ch), Target(item, ch))

    for cert, end, why in periods:
        target(cert.item, cert.channel).add(cert.calibrated, end, cert.number, why)
        for a in reg.reverse_trace(cert.item, since=cert.calibrated, until=end):
            target(a.item, a.channel).add(
                a.window[0],
                a.window[1],
                a.certificate,
                f"calibrated with {' → '.join(a.via)} while in doubt ({why})",
            )
    return Selection(list(targets.values()), found, notes)


def _finding_reason(f: Finding) -> str:
    return (
        f"{f.item} found out of tolerance (as found) in {f.found_by.number} "
        f"({f.found_by.calibrated.isoformat()}); in doubt since {f.certificate.number} "
        f"({f.certificate.calibrated.isoformat()})"
    )


# --------------------------------------------------------------------------- reading back


@dataclass(slots=True)
class Page:
    """Stored readings, column by column (numbers as float arrays, NaN where absent)."""

    time: NDArray[np.int64]
    raw: NDArray[np.float64]
    value: NDArray[np.float64]
    U: NDArray[np.float64]
    quality: list[str | None]
    calibration: list[str | None]
    flags: list[str | None]
    certificate: list[str | None]
    conformity: list[str | None]
    seq: list[int | None]
    quantity: list[str | None]
    unit: list[str | None]

    def __len__(self) -> int:
        return int(self.time.size)


def _floats(col: Sequence[Any]) -> NDArray[np.float64]:
    return np.array([math.nan if v is None else v for v in col], dtype=float)


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxReader:
    """Stored readings of one channel in a window, a page at a time (InfluxQL ``/query``)."""

    def __init__(self, settings: InfluxSettings, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http
        self.url = settings.url.rstrip("/") + "/query"
        if settings.api == "v2":
            self.params = {"db": settings.bucket or "", "epoch": "ns"}
        else:
            self.params = {"db": settings.database or "", "epoch": "ns"}
            if settings.retention_policy:
                self.params["rp"] = settings.retention_policy
        self.queries = 0

    async def query(self, q: str) -> dict[str, Any]:
        """The first result of ``q``; every failure a :class:`DatabaseError`."""
        s = self.settings
        where = f"{s.url} ({'bucket' if s.api == 'v2' else 'database'} {self.params['db']!r})"
        self.queries += 1
        try:
            async with self.http.get(self.url, params={**self.params, "q": q}) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DatabaseError(f"{s.url}: cannot query: {type(exc).__name__}: {exc}") from exc
        text = body[:300].decode("utf-8", "replace").strip()
        if status in (401, 403):
            raise DatabaseError(f"{where}: HTTP {status}: credentials refused: {text}", config=True)
        try:
            doc = json.loads(body)
        except ValueError:
            raise DatabaseError(f"{where}: HTTP {status}: not an InfluxQL answer: {text}") from None
        results = doc.get("results") if isinstance(doc, dict) else None
        err = doc.get("error") if isinstance(doc, dict) else None
        if not err and results and isinstance(results[0], dict):
            err = results[0].get("error")
        if err:
            missing = "not found" in str(err)
            raise DatabaseError(f"{where}: {err}", config=missing)
        if status // 100 != 2 or not results:
            raise DatabaseError(f"{where}: HTTP {status}: {text}")
        first: dict[str, Any] = results[0]
        return first

    async def pages(
        self, site: str, equipment: str, channel: str, start_ns: int, end_ns: int | None, size: int
    ) -> AsyncIterator[Page]:
        """The channel's readings in ``[start_ns, end_ns)`` in time order, ``size`` at most
        per page. The next page starts at the last page's last time (``>=``, so readings of
        another series at that same nanosecond are not lost), asking for as many more as
        were already given at that time, and drops those (by seq)."""
        cols = ",".join(_ident(c) for c in COLUMNS)
        base = (
            f"SELECT {cols} FROM {_ident('reading')} WHERE {_ident('site')} = {_literal(site)} "
            f"AND {_ident('equipment')} = {_literal(equipment)} "
            f"AND {_ident('channel')} = {_literal(channel)}"
        )
        end = "" if end_ns is None else f" AND time < {end_ns}"
        lo = start_ns
        seen_at_lo: set[Any] = set()  # seqs already given at time ``lo``
        while True:
            limit = size + len(seen_at_lo)  # the seen ones come again, and are dropped
            result = await self.query(
                f"{base} AND time >= {lo}{end} ORDER BY time ASC LIMIT {limit}"
            )
            series = result.get("series") or []
            if not series:
                return
            s = series[0]
            columns = s.get("columns") or []
            if s.get("name") != "reading" or columns[:1] != ["time"] or "seq" not in columns:
                raise DatabaseError(
                    f"{self.settings.url}: the server does not answer InfluxQL queries (asked for "
                    f"measurement reading, got {s.get('name')!r} with columns {columns}); "
                    "victoria-metrics, for one, answers every /query with its list of databases"
                )
            index = {c: i for i, c in enumerate(columns)}
            i_seq = index["seq"]
            values: list[list[Any]] = s.get("values") or []
            rows = values
            if seen_at_lo:
                rows = [r for r in values if r[0] != lo or r[i_seq] not in seen_at_lo]
            if rows:
                yield _page(rows, index)
                last = rows[-1][0]
                same = {r[i_seq] for r in rows if r[0] == last}
                seen_at_lo = seen_at_lo | same if last == lo else same
                lo = last
            if len(values) < limit:
                return


def _page(rows: list[list[Any]], index: dict[str, int]) -> Page:
    cols = list(zip(*rows, strict=True))
    none: tuple[Any, ...] = (None,) * len(rows)

    def col(name: str) -> Sequence[Any]:
        i = index.get(name)
        return none if i is None else cols[i]

    return Page(
        time=np.array(cols[0], dtype=np.int64),
        raw=_floats(col("raw")),
        value=_floats(col("value")),
        U=_floats(col("U")),
        quality=list(col("quality")),
        calibration=list(col("calibration")),
        flags=list(col("flags")),
        certificate=list(col("certificate")),
        conformity=list(col("conformity")),
        seq=[None if v is None else int(v) for v in col("seq")],
        quantity=list(col("quantity")),
        unit=list(col("unit")),
    )


# --------------------------------------------------------------------------- re-evaluation


@dataclass(slots=True)
class ChannelReport:
    """What the re-evaluation found for one equipment channel."""

    equipment: str
    channel: str
    readings: int = 0
    bad: int = 0  # stored as bad (no value): not re-evaluated
    changed: int = 0
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    max_change_U: float = 0.0  # |new − stored value| / stored U, the largest
    max_change_at: int | None = None
    first: int | None = None
    last: int | None = None
    first_changed: int | None = None
    last_changed: int | None = None
    certificates_stored: set[str] = field(default_factory=set)
    certificates_now: set[str] = field(default_factory=set)
    written: int = 0
    polled: bool = True  # by the gateway of this config (else nothing of it is stored)

    def to_json(self) -> dict[str, Any]:
        def t(ns: int | None) -> str | None:
            return None if ns is None else ns_rfc3339(ns)

        return {
            "equipment": self.equipment,
            "channel": self.channel,
            "readings": self.readings,
            "bad": self.bad,
            "changed": self.changed,
            "conformity_changes": {f"{a}→{b}": n for (a, b), n in sorted(self.transitions.items())},
            "max_change_in_U": self.max_change_U,
            "max_change_at": t(self.max_change_at),
            "first": t(self.first),
            "last": t(self.last),
            "first_changed": t(self.first_changed),
            "last_changed": t(self.last_changed),
            "certificates_stored": sorted(self.certificates_stored),
            "certificates_now": sorted(self.certificates_now),
            "written": self.written,
            "polled": self.polled,
        }


CSV_HEADER = (
    "time", "equipment", "channel", "seq", "raw", "value_stored", "value_now", "U_stored",
    "U_now", "change_in_U", "conformity_stored", "conformity_now", "certificate_stored",
    "certificate_now",
)  # fmt: skip


def _conf(c: str | None) -> str:
    return c if c else "none"


class Evaluator:
    """Re-corrects pages of one channel's stored readings through the registry now.

    A reading has *changed* when its decision changed, or when the new value lies outside
    the stored value ± its stored U (the stored result no longer covers it), both taken
    in the channel's unit now (a reading stored under another ``unit`` tag is converted).
    """

    def __init__(
        self,
        revisions: Revisions,
        equipment: str,
        channel: str,
        *,
        site: str,
        raw_factor: float = 1.0,
        registry_digest: str = "",
    ) -> None:
        reg = revisions.registry
        self.revisions = revisions
        self.report = ChannelReport(equipment, channel)
        self.site = site
        self.raw_factor = raw_factor
        self.registry_digest = registry_digest
        certs = reg.certificates(equipment, channel)
        self._certs = certs
        self._bounds = np.array([day_ns(c.calibrated) for c in certs], dtype=np.int64)
        self._status: dict[tuple[int, str | None], str] = {}
        self._channel = reg.require(equipment).channels_by_name[channel]

    def _status_on(self, day: int, corrector: Corrector) -> str:
        """The calibration status the gateway gives a reading on ``day`` (UTC days since
        the epoch), by the registry now: as :meth:`gateway.pipeline.Pipeline.plan`."""
        key = (day, corrector.certificate)
        st = self._status.get(key)
        if st is None:
            d = date(1970, 1, 1) + timedelta(days=day)
            reg = self.revisions.registry
            st = (
                "none"
                if corrector.certificate is None
                else reg.state(self.report.equipment, d).status
            )
            self._status[key] = st
        return st

    def _judge(self, day: int, corrector: Corrector) -> tuple[str, Judge | None]:
        status = self._status_on(day, corrector)
        return status, judge_of(self._channel, corrector, status)

    def evaluate(
        self, page: Page, *, lines: list[str] | None = None, csv_rows: list[list[Any]] | None = None
    ) -> None:
        rep = self.report
        n = len(page)
        if n == 0:
            return
        quality = page.quality
        good = np.isfinite(page.raw) & np.array([q != "bad" for q in quality], dtype=bool)
        rep.readings += n
        rep.bad += int(n - good.sum())
        t = page.time
        rep.first = int(t[0]) if rep.first is None else min(rep.first, int(t[0]))
        rep.last = int(t[-1]) if rep.last is None else max(rep.last, int(t[-1]))
        rep.certificates_stored.update(c for c in page.certificate if c)
        which = np.searchsorted(self._bounds, t, side="right") - 1
        for i in np.unique(which[good]).tolist():
            sel = np.nonzero(good & (which == i))[0]
            self._group(page, sel, i, lines, csv_rows)

    def _group(
        self,
        page: Page,
        sel: NDArray[np.intp],
        i: int,
        lines: list[str] | None,
        csv_rows: list[list[Any]] | None,
    ) -> None:
        rep = self.report
        reg = self.revisions.registry
        if i < 0:
            cert = None
            corrector = reg.corrector(rep.equipment, rep.channel, date(1970, 1, 1))
        else:
            cert = self._certs[i]
            corrector = self.revisions.corrector(cert)
            rep.certificates_now.add(cert.number)
        basis = "; ".join(self.revisions.revise(cert).notes) if cert is not None else ""
        raw = page.raw[sel] * self.raw_factor
        res = corrector.correct(raw)
        values = res.value.tolist()
        big_us = res.U.tolist()
        out_of_range = res.out_of_range.tolist()
        old_v = page.value[sel]
        old_u = page.U[sel]
        # Stored in the channel's unit of then (its `unit` tag): compared in today's.
        scale = np.array(
            [_to_unit(page.unit[row], corrector.unit) for row in sel.tolist()], dtype=float
        )
        delta = np.abs(res.value - old_v * scale)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(old_u > 0, delta / (old_u * scale), np.nan)
        times = page.time[sel]
        if ratio.size and not np.all(np.isnan(ratio)):
            j = int(np.nanargmax(ratio))
            if float(ratio[j]) > rep.max_change_U:
                rep.max_change_U = float(ratio[j])
                rep.max_change_at = int(times[j])
        moved = (delta > old_u * scale).tolist()
        days = (times // _DAY_NS).tolist()
        k = corrector.k
        number = cert.number if cert is not None else None
        judges: dict[int, tuple[str, Judge | None]] = {}
        for n, row in enumerate(sel.tolist()):
            day = days[n]
            sj = judges.get(day)
            if sj is None:
                sj = judges[day] = self._judge(day, corrector)
            status, judge = sj
            if out_of_range[n]:
                new_c: str | None = beyond_span(corrector, judge, float(raw[n]))
            else:
                new_c = None if judge is None else judge(values[n], big_us[n])
            old_c = page.conformity[row]
            ns = int(times[n])
            if old_c != new_c or moved[n]:
                rep.changed += 1
                if old_c != new_c:
                    rep.transitions[(_conf(old_c), _conf(new_c))] += 1
                rep.first_changed = ns if rep.first_changed is None else min(rep.first_changed, ns)
                rep.last_changed = ns if rep.last_changed is None else max(rep.last_changed, ns)
                if csv_rows is not None:
                    csv_rows.append(
                        [
                            ns_rfc3339(ns), rep.equipment, rep.channel, page.seq[row],
                            float(page.raw[row]), float(old_v[n]), values[n],
                            float(old_u[n]), big_us[n], float(ratio[n]),
                            old_c or "", new_c or "", page.certificate[row] or "", number or "",
                        ]
                    )  # fmt: skip
            if lines is not None:
                flags, q = _quality(page, row, out_of_range[n], status)
                lines.append(
                    recorrected_line(
                        site=self.site,
                        equipment=rep.equipment,
                        channel=rep.channel,
                        quantity=page.quantity[row],
                        unit=corrector.unit,  # the re-corrected value's
                        certificate=number,
                        raw=float(page.raw[row]),
                        value=values[n],
                        u=float(res.u[n]),
                        U=big_us[n],
                        k=k,
                        quality=q,
                        flags=flags,
                        calibration=status,
                        conformity=new_c,
                        seq=page.seq[row],
                        stored_value=float(old_v[n]),
                        stored_U=float(old_u[n]),
                        stored_conformity=page.conformity[row],
                        stored_certificate=page.certificate[row],
                        basis=basis,
                        registry=self.registry_digest,
                        time_ns=ns,
                    )
                )


def _to_unit(stored: str | None, now: str) -> float:
    """Factor from a stored reading's unit tag to the channel's unit now (1 when the same
    or not stored; NaN when incompatible, so the stored value compares as nothing)."""
    f = unit_factor(stored or now, now)
    return math.nan if f is None else f


def _quality(page: Page, row: int, out_of_range: bool, status: str) -> tuple[str, str]:
    """(flags, quality) of a re-corrected reading, as the pipeline sets them: the stored
    flags with ``out_of_range`` as the new correction says; ``uncertain`` when out of
    range, under a doubtful calibration status, or when the instrument said so (the
    stored quality was uncertain for none of the other two reasons)."""
    stored = {f for f in (page.flags[row] or "").split(",") if f}
    explained = "out_of_range" in stored or page.calibration[row] in DOUBTFUL
    instrument_uncertain = page.quality[row] == "uncertain" and not explained
    stored.discard("out_of_range")
    if out_of_range:
        stored.add("out_of_range")
    doubtful = out_of_range or status in DOUBTFUL or instrument_uncertain
    return line_flags(frozenset(stored)), "uncertain" if doubtful else "good"


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class Outcome:
    selection: Selection
    reports: list[ChannelReport]
    since_ns: int | None
    until_ns: int | None
    written: int = 0
    queries: int = 0
    registry: RegistryRevision | None = None


class Writer:
    """Posts line protocol to the configured write endpoint in batches of the sink's
    ``batch_size``; a 413 (body too large) splits the batch in halves, as the sink does."""

    def __init__(self, settings: InfluxSettings, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http
        self.url, self.params = write_endpoint(settings)

    async def write(self, lines: list[str]) -> None:
        step = self.settings.batch_size
        for i in range(0, len(lines), step):
            await self._post(lines[i : i + step])

    async def _post(self, lines: list[str]) -> None:
        if not lines:
            return
        body = "\n".join(lines).encode()
        try:
            status, _, answer = await post_lines(self.http, self.url, self.params, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DatabaseError(
                f"{self.settings.url}: cannot write: {type(exc).__name__}: {exc}"
            ) from exc
        text = answer[:300].decode("utf-8", "replace").strip()
        if status == 413 and len(lines) > 1:
            half = len(lines) // 2
            await self._post(lines[:half])
            await self._post(lines[half:])
            return
        if status // 100 != 2:
            raise DatabaseError(
                f"{self.settings.url}: writing reading_recorrected: HTTP {status}: {text}",
                config=status in (401, 403, 404),
            )


def raw_factor(config: Config, reg: Registry, equipment: str, channel: str) -> float:
    """Factor from the unit ``raw`` was stored in (the instrument's: the config channel
    table's ``unit``, else the equipment table's, as a SCPI controller's or an SBI
    balance's) to the registry channel's unit; 1 when the config names none."""
    eq = reg.require(equipment)
    ch = eq.channel(channel)
    target = ch.unit if ch is not None else ""
    for entry in config.equipment:
        if entry.id != equipment:
            continue
        unit = None
        tables = getattr(entry.driver, "channels", None) or ()
        for c in tables:
            if getattr(c, "name", None) == channel:
                unit = getattr(c, "unit", None)
        if not tables:
            unit = getattr(entry.driver, "unit", None)  # a Modbus `unit` is its slave id
        if isinstance(unit, str) and unit:
            f = unit_factor(unit, target)
            return 1.0 if f is None else f
    return 1.0


async def run(
    config: Config,
    reg: Registry,
    selection: Selection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    write: bool = False,
    page_size: int = 10_000,
    csv_rows: list[list[Any]] | None = None,
    progress: Callable[[ChannelReport], None] | None = None,
) -> Outcome:
    """Read, re-correct and report every target of ``selection`` (and write back)."""
    settings = config.influxdb
    if settings is None:
        raise DatabaseError(
            f"{config.path}: no [influxdb] table: no stored readings to read", config=True
        )
    revisions = Revisions(reg)
    revision = revision_of(config.registry_dir)
    polled = {e.id for e in config.equipment}
    since_ns = None if since is None else time_ns(since)
    until_ns = None if until is None else time_ns(until)
    outcome = Outcome(selection, [], since_ns, until_ns, registry=revision)
    async with session(settings) as http:
        reader = InfluxReader(settings, http)
        writer = Writer(settings, http) if write else None
        for target in selection.targets:
            ev = Evaluator(
                revisions,
                target.equipment,
                target.channel,
                site=config.gateway.site,
                raw_factor=raw_factor(config, reg, target.equipment, target.channel),
                registry_digest=revision.digest,
            )
            ev.report.polled = target.equipment in polled
            for a, b in target.clipped(since_ns, until_ns) if ev.report.polled else ():
                async for page in reader.pages(
                    config.gateway.site, target.equipment, target.channel, a, b, page_size
                ):
                    lines: list[str] | None = [] if writer is not None else None
                    ev.evaluate(page, lines=lines, csv_rows=csv_rows)
                    if writer is not None and lines:
                        await writer.write(lines)
                        ev.report.written += len(lines)
                        outcome.written += len(lines)
            outcome.reports.append(ev.report)
            if progress is not None:
                progress(ev.report)
        outcome.queries = reader.queries
    return outcome
