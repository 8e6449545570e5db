"""The wire contracts: the MQTT JSON payloads (ARCHITECTURE.md 4.3) and the InfluxDB line
protocol (4.4) of Measurements and Events, in one place.

Two encoders write them. The plain one builds the payload dict
(:func:`measurement_payload`, :func:`event_payload`, which ``Measurement.payload`` and
``Event.payload`` return) and :func:`dumps` it; :func:`measurement_line` and
:func:`event_line` write the lines. :class:`Encoder` is the outbox's fast path for
Measurements: the same bytes, written from cached parts (``tests/unit/gateway/test_wire.py``
pins it to the plain one, field for field, for any Measurement).

One rule for numbers: JSON has no NaN or infinity, so a non-finite number travels as
``null`` (:func:`finite`, :func:`json_safe`), and the line protocol leaves the field out.
Times are RFC 3339 in UTC with microseconds (:func:`rfc3339`) in JSON, and nanoseconds
since the epoch in a line.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.model import Event, Measurement

__all__ = [
    "Encoder",
    "dumps",
    "event_line",
    "event_payload",
    "finite",
    "json_safe",
    "line_flags",
    "measurement_line",
    "measurement_payload",
    "recorrected_line",
    "rfc3339",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- numbers and times


def finite(x: float | None) -> float | None:
    """The number as it travels in JSON: ``None`` (null) when absent or not finite."""
    if x is None or not math.isfinite(x):
        return None
    return x


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float inside it (dicts, lists, tuples) made ``None``
    and every mapping's keys made strings: what JSON can carry."""
    if isinstance(obj, float):
        return finite(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def rfc3339(t: datetime) -> str:
    """RFC 3339 in UTC with microseconds: ``2026-11-27T18:38:08.123456Z``."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)  # an aware time in another zone, or a naive one (taken as local)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(t: datetime) -> tuple[int, int]:
    """Whole seconds and microseconds since the epoch (a naive time is taken as UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    d = t - _EPOCH
    return d.days * 86400 + d.seconds, d.microseconds


def _ns(t: datetime) -> int:
    sec, us = _epoch(t)
    return (sec * 1_000_000 + us) * 1000


# --------------------------------------------------------------------------- JSON


def measurement_payload(m: Measurement, seq: int) -> dict[str, Any]:
    """The MQTT payload of a Measurement (ARCHITECTURE.md 4.3; ``raw`` in instrument units)."""
    r = m.reading
    return {
        "ts": rfc3339(r.t_wall),
        "seq": seq,
        "equipment": r.equipment,
        "channel": r.channel,
        "raw": finite(r.raw),
        "value": finite(m.value),
        "unit": m.unit,
        "u": finite(m.u),
        "U": finite(m.U),
        "k": finite(m.k),
        "quality": m.quality,
        "flags": sorted(m.flags),
        "calibration": m.calibration,
        "certificate": m.certificate,
        "conformity": m.conformity,
    }


def event_payload(e: Event, seq: int) -> dict[str, Any]:
    """The MQTT payload of an Event (ARCHITECTURE.md 4.3): the common fields, then the
    event's ``detail`` (which never overrides them)."""
    out: dict[str, Any] = {
        "ts": rfc3339(e.t_wall),
        "seq": seq,
        "type": e.type,
        "severity": e.severity,
        "equipment": e.equipment,
        "channel": e.channel,
        "message": e.message,
    }
    for key, value in e.detail.items():
        out.setdefault(key, value)
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return rfc3339(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)
_ENCODER_NAN = json.JSONEncoder(separators=(",", ":"), allow_nan=True, default=_json_default)


def dumps(obj: Any) -> str:
    """Compact JSON of a payload or any other document (event details, retained status):
    a non-finite number becomes null; dates, sets, paths and numpy scalars are written
    as JSON can carry them."""
    try:
        return _ENCODER.encode(obj)
    except ValueError:
        return _ENCODER_NAN.encode(json_safe(json.loads(_ENCODER_NAN.encode(obj))))


# --------------------------------------------------------------------------- line protocol

_TAG_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\\": "\\\\"})
_STR_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "\n": "\\n"})


def _tag(v: str) -> str:
    return v.translate(_TAG_ESCAPES)


def _str(v: str) -> str:
    return '"' + v.translate(_STR_ESCAPES) + '"'


def _float_fields(parts: list[str], names: Sequence[str], values: Sequence[float | None]) -> None:
    for name, x in zip(names, values, strict=True):
        x = finite(x)
        if x is not None:
            parts.append(f"{name}={float(x)!r}")


_M_FLOATS = ("raw", "value", "u", "U", "k")


def measurement_line(m: Measurement, seq: int, site: str, key: str | None = None) -> str:
    """The line of ARCHITECTURE.md 4.4 (measurement ``reading``) for one Measurement.

    ``key`` is the precomputed ``reading,tags`` prefix (the outbox caches it).
    """
    r = m.reading
    if key is None:
        key = _reading_key(site, r.equipment, r.channel, m.quantity, m.unit)
    parts: list[str] = []
    _float_fields(parts, _M_FLOATS, (r.raw, m.value, m.u, m.U, m.k))
    parts.append(f"quality={_str(m.quality)}")
    parts.append(f"flags={_str(line_flags(m.flags))}")
    parts.append(f"calibration={_str(m.calibration)}")
    if m.certificate is not None:
        parts.append(f"certificate={_str(m.certificate)}")
    if m.conformity is not None:
        parts.append(f"conformity={_str(m.conformity)}")
    parts.append(f"seq={seq}i")
    return f"{key} {','.join(parts)} {_ns(r.t_wall)}"


def line_flags(flags: frozenset[str]) -> str:
    """A Measurement's flags as one line-protocol string field: sorted, comma-separated
    (``""`` when none), the same set the JSON payload lists."""
    return ",".join(sorted(flags))


def _reading_key(site: str, equipment: str, channel: str, quantity: str | None, unit: str) -> str:
    tags = [f"channel={_tag(channel)}", f"equipment={_tag(equipment)}"]
    if quantity:
        tags.append(f"quantity={_tag(quantity)}")
    tags.append(f"site={_tag(site)}")
    if unit:
        tags.append(f"unit={_tag(unit)}")
    return "reading," + ",".join(tags)


def event_line(e: Event, seq: int, site: str) -> str:
    """The line of ARCHITECTURE.md 4.4 (measurement ``event``) for one Event."""
    tags = (
        f"event,equipment={_tag(e.equipment)},severity={_tag(e.severity)},"
        f"site={_tag(site)},type={_tag(e.type)}"
    )
    parts: list[str] = []
    if e.channel is not None:
        parts.append(f"channel={_str(e.channel)}")
    parts.append(f"message={_str(e.message)}")
    parts.append(f"seq={seq}i")
    parts.append(f"detail={_str(dumps(dict(e.detail)))}")
    return f"{tags} {','.join(parts)} {_ns(e.t_wall)}"


# --------------------------------------------------------------------------- the fast encoder

_jstr = json.encoder.encode_basestring_ascii


def _jnum(x: float | None) -> str:
    """A number as ``json`` writes it (``float.__repr__``); null when absent or non-finite."""
    x = finite(x)
    return "null" if x is None else repr(float(x))


_Tail = tuple[float | None, str, frozenset[str], str, str | None, str | None]
_Nums = tuple[str, float, float, float | None, float | None]
_NUMS_CACHED = 1024  # (unit, raw, value, u, U) texts kept (about 0.4 MB: RSS is budgeted)


class Encoder:
    """Measurement → (topic, JSON payload, line), with per-channel parts cached.

    The JSON is written directly (no dict, no ``json.dumps``): it equals
    ``json.dumps(m.payload(seq))`` field for field, which the unit tests check. Cached:
    the parts that depend on the channel (topic, tags, names, unit) and on its status (k,
    quality, flags, calibration, certificate, conformity); the time, which one poll's
    readings share; and the numbers (raw, value, u, U), which repeat when the instrument
    is quantised (a Modbus register, a display digit) — a float's repr is the largest
    cost per value. The numbers cache is switched off for a while when it hardly hits
    (instruments whose every value is new).
    """

    def __init__(self, site: str, topic_prefix: str) -> None:
        self.site = site
        self.base = f"{topic_prefix}/{site}/"
        self._heads: dict[tuple[str, str, str | None, str], tuple[str, str, str, str]] = {}
        self._tails: dict[_Tail, tuple[str, str]] = {}
        self._sec = -1  # the second ``_prefix`` renders (readings come in time order)
        self._prefix = ""
        self._t: datetime | None = None  # the last time rendered (one poll's readings share it)
        self._tsns = ("", 0)
        self._nums: dict[_Nums, tuple[str, str]] = {}
        self._nums_from = 0  # the seq when the numbers cache was last emptied
        self._nums_off_until = 0  # no numbers cache for seqs below this one

    def _times(self, t: datetime) -> tuple[str, int]:
        """RFC 3339 (UTC, µs) and ns since the epoch, the date part cached per second."""
        sec, us = _epoch(t)
        ns = (sec * 1_000_000 + us) * 1000
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{us:06d}Z", ns

    def _head(self, eq: str, ch: str, quantity: str | None, unit: str) -> tuple[str, str, str, str]:
        k = (eq, ch, quantity, unit)
        head = self._heads.get(k)
        if head is None:
            head = self._heads[k] = (
                f"{self.base}{eq}/{ch}/reading",
                f',"equipment":{_jstr(eq)},"channel":{_jstr(ch)},"raw":',
                f',"unit":{_jstr(unit)},"u":',
                _reading_key(self.site, eq, ch, quantity, unit),
            )
        return head

    def _tail(self, key: _Tail) -> tuple[str, str]:
        """The JSON from ``"k"`` on, and the line's fields from ``k`` on."""
        k, quality, flags, calibration, certificate, conformity = key
        kk = _jnum(k)
        jflags = "[" + ",".join(_jstr(f) for f in sorted(flags)) + "]"
        jtail = (
            f',"k":{kk},"quality":{_jstr(quality)},"flags":{jflags},'
            f'"calibration":{_jstr(calibration)},'
            f'"certificate":{"null" if certificate is None else _jstr(certificate)},'
            f'"conformity":{"null" if conformity is None else _jstr(conformity)}}}'
        )
        ltail = "" if kk == "null" else f"k={kk},"
        ltail += (
            f"quality={_str(quality)},flags={_str(line_flags(flags))},"
            f"calibration={_str(calibration)}"
        )
        if certificate is not None:
            ltail += f",certificate={_str(certificate)}"
        if conformity is not None:
            ltail += f",conformity={_str(conformity)}"
        # k = 0.0 and -0.0 are one key but two texts: never cache them
        if (k is None or k != 0) and len(self._tails) < 10000:
            self._tails[key] = (jtail, ltail)
        return jtail, ltail

    def _numbers(self, key: _Nums, seq: int) -> tuple[str, str]:
        """The JSON from raw's number to U's, and the line's number fields (each with a
        trailing comma), as ``_jnum`` writes the numbers."""
        junit, x, v, y, z = key
        if (
            type(x) is type(v) is type(y) is type(z) is float
            and x - x == v - v == y - y == z - z == 0.0  # all finite (the usual)
        ):
            raw, value, u, big_u = repr(x), repr(v), repr(y), repr(z)
            out = (
                f'{raw},"value":{value}{junit}{u},"U":{big_u}',
                f"raw={raw},value={value},u={u},U={big_u},",
            )
            # Cache only non-zero numbers: equal floats then have equal texts (0.0 and
            # -0.0 are equal, NaN never is; None or an int never becomes a key).
            if x and v and y and z and seq >= self._nums_off_until:
                nums = self._nums
                if len(nums) >= _NUMS_CACHED:
                    nums.clear()
                    if seq - self._nums_from < 2 * _NUMS_CACHED:  # fewer than half were hits
                        self._nums_off_until = seq + 16 * _NUMS_CACHED
                    self._nums_from = seq
                nums[key] = out
            return out
        raw, value, u, big_u = _jnum(x), _jnum(v), _jnum(y), _jnum(z)
        return (
            f'{raw},"value":{value}{junit}{u},"U":{big_u}',
            "".join(
                f"{name}={text},"
                for name, text in (("raw", raw), ("value", value), ("u", u), ("U", big_u))
                if text != "null"
            ),
        )

    def measurement(self, m: Measurement, seq: int) -> tuple[str, bytes, bytes]:
        r = m.reading
        hkey = (r.equipment, r.channel, m.quantity, m.unit)
        head = self._heads.get(hkey)
        if head is None:
            head = self._head(*hkey)
        topic, jhead, junit, lkey = head
        tkey = (m.k, m.quality, m.flags, m.calibration, m.certificate, m.conformity)
        tail = self._tails.get(tkey)
        if tail is None:
            tail = self._tail(tkey)
        jtail, ltail = tail
        nkey = (junit, r.raw, m.value, m.u, m.U)
        nums = self._nums.get(nkey) if seq >= self._nums_off_until else None
        if nums is None:
            nums = self._numbers(nkey, seq)
        jnums, lnums = nums
        t = r.t_wall
        if t is self._t:
            ts, ns = self._tsns
        else:
            ts, ns = self._tsns = self._times(t)
            self._t = t
        payload = f'{{"ts":"{ts}","seq":{seq}{jhead}{jnums}{jtail}'
        line = f"{lkey} {lnums}{ltail},seq={seq}i {ns}"
        return topic, payload.encode(), line.encode()


# --------------------------------------------------------------------------- re-corrected readings


def recorrected_line(
    *,
    site: str,
    equipment: str,
    channel: str,
    quantity: str | None,
    unit: str,
    certificate: str | None,
    raw: float,
    value: float,
    u: float,
    U: float,
    k: float,
    quality: str,
    flags: str,
    calibration: str,
    conformity: str | None,
    seq: int | None,
    stored_value: float,
    stored_U: float,
    stored_conformity: str | None,
    stored_certificate: str | None,
    basis: str,
    registry: str,
    time_ns: int,
) -> str:
    """A line of measurement ``reading_recorrected`` (``calgate impact --write``): the tags
    of ``reading`` plus ``certificate`` (the one the reading was re-corrected through),
    the re-corrected fields as in ``reading`` (``flags`` as :func:`line_flags` writes
    them), ``seq`` the stored reading's, the stored
    ``value``, ``U``, ``conformity`` and ``certificate`` as ``stored_*``, ``basis`` (the
    revisions applied, empty when none) and ``registry`` (the digest of the registry it
    was re-evaluated with, as ``registry_loaded`` gives it); the stored reading's time."""
    key = _recorrected_key(site, equipment, channel, quantity, unit, certificate)
    tail = _recorrected_tail(
        quality, flags, calibration, conformity, stored_conformity, stored_certificate,
        basis, registry,
    )  # fmt: skip
    parts: list[str] = []
    _float_fields(
        parts,
        ("raw", "value", "u", "U", "k", "stored_value", "stored_U"),
        (raw, value, u, U, k, stored_value, stored_U),
    )
    parts.append(tail)
    if seq is not None:
        parts.append(f"seq={seq}i")
    return f"{key} {','.join(parts)} {time_ns}"


# The tags and the text fields repeat from one re-corrected reading to the next (one
# channel, one certificate, one status a day): each is written once and kept.


@lru_cache(maxsize=1024)
def _recorrected_key(
    site: str,
    equipment: str,
    channel: str,
    quantity: str | None,
    unit: str,
    certificate: str | None,
) -> str:
    tags = _reading_key(site, equipment, channel, quantity, unit).removeprefix("reading,")
    if certificate:  # tags in sorted order, as InfluxDB prefers them
        tags = f"certificate={_tag(certificate)},{tags}"
    return f"reading_recorrected,{tags}"


@lru_cache(maxsize=4096)
def _recorrected_tail(
    quality: str,
    flags: str,
    calibration: str,
    conformity: str | None,
    stored_conformity: str | None,
    stored_certificate: str | None,
    basis: str,
    registry: str,
) -> str:
    parts = [f"quality={_str(quality)}", f"flags={_str(flags)}", f"calibration={_str(calibration)}"]
    if conformity is not None:
        parts.append(f"conformity={_str(conformity)}")
    if stored_conformity is not None:
        parts.append(f"stored_conformity={_str(stored_conformity)}")
    if stored_certificate is not None:
        parts.append(f"stored_certificate={_str(stored_certificate)}")
    parts.append(f"basis={_str(basis)}")
    if registry:
        parts.append(f"registry={_str(registry)}")
    return ",".join(parts)
