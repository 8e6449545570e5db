"""The calibration registry: equipment and certificates, loaded into an immutable snapshot.

A registry is a directory (ARCHITECTURE.md 4.2)::

    equipment/<ID>.toml            one per instrument or standard
    certificates/<NUMBER>.toml     one per calibration certificate
    certificates/<NUMBER>.xml      or a PTB Digital Calibration Certificate (DCC)

:meth:`Registry.load` parses and cross-checks everything and reports **every** problem at
once as a :class:`~calibration.errors.RegistryError` whose ``errors`` read
``file: path.to.field: message`` (``file`` relative to the registry directory).

Records are frozen pydantic models. Certificate data is converted to its channel's unit
at load (a certificate in ``bar`` for a channel in ``kPa`` is scaled by 100, U included);
``Certificate.source_unit`` keeps the unit the certificate was written in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import stat
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from calibration import chain as _chain
from calibration import conformity as _conformity
from calibration import dcc, units
from calibration.conformity import DecisionRule, Tolerance
from calibration.errors import CalibrationError, RegistryError

if TYPE_CHECKING:
    from calibration.corrector import Corrector

__all__ = [
    "Certificate",
    "Channel",
    "Equipment",
    "Limits",
    "Point",
    "Range",
    "Registry",
    "Tolerance",
    "describe_tolerance",
    "utc_date",
]

Role = Literal["reference_standard", "working_standard", "check_standard", "instrument"]
EquipmentStatus = Literal["active", "out_of_service", "retired"]

_MODEL_RE = re.compile(r"^(interpolate|linear|polynomial:([1-9][0-9]?))$")


def utc_date(at: datetime | date) -> date:
    """The UTC calendar day of ``at`` (a naive datetime is taken as UTC)."""
    if isinstance(at, datetime):
        if at.tzinfo is None:
            return at.date()
        return at.astimezone(UTC).date()
    return at


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, allow_inf_nan=False
    )


class Range(_Frozen):
    """A span ``[low, high]`` in the channel's unit."""

    low: float
    high: float

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, v: Any) -> Any:
        v = _bounds(v, width_from_zero=True)
        if not isinstance(v, Mapping):
            raise ValueError(
                f"must be a number (its width), [low, high] or {{low, high}} (got {v!r})"
            )
        return v

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self

    @property
    def width(self) -> float:
        return self.high - self.low


def _bounds(v: Any, *, width_from_zero: bool = False) -> Any:
    """The spellings of a span or range (ARCHITECTURE.md 4.2), as ``{low, high}``.

    ``[low, high]`` and ``{low, high}`` give the bounds; a number is a width, which for a
    ``range`` starts at zero (``1000.0`` is ``[0.0, 1000.0]``). Anything else is left for
    the model to refuse with its own message.
    """
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return {"low": v[0], "high": v[1]}
    if width_from_zero and isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"low": 0.0, "high": v}
    return v


def _span_width(tolerance: Any) -> Any:
    """A tolerance table whose ``span`` is written as bounds, with the span as its width.

    Bounds go through :class:`Range` (the one parser of spans and ranges); its errors are
    reported at ``tolerance.span``.
    """
    if not isinstance(tolerance, Mapping):
        return tolerance
    span = tolerance.get("span")
    if not isinstance(span, (list, tuple, Mapping)):
        return tolerance  # a number (the width), or something Tolerance refuses
    try:
        width = Range.model_validate(span).width
    except ValidationError as exc:
        raise ValidationError.from_exception_data(
            exc.title,
            [
                {
                    "type": e["type"],
                    "loc": ("span", *e["loc"]),
                    "input": e["input"],
                    "ctx": e.get("ctx", {}),
                }
                for e in exc.errors()
            ],
        ) from None
    return {**tolerance, "span": width}


class Limits(_Frozen):
    """Process limits that readings are judged against; either side may be open."""

    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        if self.low is None and self.high is None:
            raise ValueError("give low, high or both")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self

    def as_tuple(self) -> tuple[float | None, float | None]:
        return (self.low, self.high)


def describe_tolerance(t: Tolerance) -> str:
    """A tolerance as a quality manager reads it: ``OIML R76 class II, e = 0.01, in-service``."""
    if t.mpe is not None:
        return f"MPE ±{t.mpe:g}"
    if t.mpe_percent_of_span is not None:
        return f"MPE ±{t.mpe_percent_of_span:g} % of span {t.span:g}"
    if t.mpe_percent_of_reading is not None:
        return f"MPE ±{t.mpe_percent_of_reading:g} % of reading"
    if t.en837_class is not None:
        return f"EN 837 class {t.en837_class:g}, span {t.span:g}"
    if t.oiml_r76 is not None:
        r = t.oiml_r76
        return f"OIML R76 class {r.class_}, e = {r.e:g}, {r.verification.replace('_', '-')}"
    assert t.oiml_r111 is not None
    return f"OIML R111 class {t.oiml_r111.class_}"


class Channel(_Frozen):
    """One measured quantity of an instrument or standard."""

    name: str = Field(min_length=1)
    quantity: str = Field(min_length=1)
    unit: str
    resolution: float = Field(default=0.0, ge=0)
    repeatability: float = Field(default=0.0, ge=0)
    range: Range | None = None
    decision_rule: DecisionRule = "simple"
    tolerance: Tolerance | None = None
    limits: Limits | None = None
    # Judge readings against the limits even when the chain is untraceable (the lab's
    # choice); by default their conformity is "indeterminate".
    judge_untraceable: bool = False

    @field_validator("limits", mode="before")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        return _bounds(v)

    @field_validator("tolerance", mode="before")
    @classmethod
    def _span(cls, v: Any) -> Any:
        return _span_width(v)

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str) -> str:
        try:
            return units.normalise(v)
        except CalibrationError as exc:
            raise ValueError(str(exc)) from exc

    @property
    def limits_tuple(self) -> tuple[float | None, float | None] | None:
        return None if self.limits is None else self.limits.as_tuple()


class Equipment(_Frozen):
    """An instrument or standard (``equipment/<ID>.toml``)."""

    id: str = Field(min_length=1)
    role: Role
    status: EquipmentStatus = "active"
    description: str = ""
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    due_soon_days: int = Field(default=30, ge=0)
    coverage_factor: float = Field(default=2.0, gt=0)
    calibration_interval_months: int | None = Field(
        default=None, ge=1
    )  # sets a new certificate's due date
    channels: tuple[Channel, ...] = Field(min_length=1)
    source: str = Field(default="", exclude=True)

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, v: tuple[Channel, ...]) -> tuple[Channel, ...]:
        seen: set[str] = set()
        for ch in v:
            if ch.name in seen:
                raise ValueError(f"duplicate channel name {ch.name!r}")
            seen.add(ch.name)
        return v

    def channel(self, name: str | None) -> Channel | None:
        """The channel called ``name``; ``None`` picks the only channel."""
        if name is None:
            return self.channels[0] if len(self.channels) == 1 else None
        return next((c for c in self.channels if c.name == name), None)

    @property
    def channels_by_name(self) -> Mapping[str, Channel]:
        return {c.name: c for c in self.channels}

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)


class Point(_Frozen):
    """One calibration point: the reference value, the indication, and its U at k."""

    reference: float
    indicated: float
    U: float = Field(gt=0)
    k: float = Field(gt=0)
    dof: float | None = Field(default=None, ge=1)

    @field_validator("reference", "indicated", "U", "k")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @property
    def error(self) -> float:
        """Indication error e = indicated − reference."""
        return self.indicated - self.reference

    @property
    def u(self) -> float:
        return self.U / self.k

    def scaled(self, f: float) -> Point:
        if f == 1.0:
            return self
        return self.model_copy(
            update={
                "reference": self.reference * f,
                "indicated": self.indicated * f,
                "U": self.U * f,
            }
        )


class Certificate(_Frozen):
    """A calibration certificate (``certificates/<NUMBER>.toml`` or a DCC)."""

    number: str = Field(min_length=1)
    item: str = Field(min_length=1)
    channel: str | None = None
    issued_by: str = Field(min_length=1)
    accreditation: str = ""
    nmi: bool = False
    calibrated: date
    due: date
    standards: tuple[str, ...] = ()
    standard_certificates: Mapping[str, str] = Field(default_factory=dict)
    unit: str
    model: str = "interpolate"
    points: tuple[Point, ...] = Field(min_length=1)
    as_found: tuple[Point, ...] = ()
    source: str = Field(default="", exclude=True)
    source_unit: str = Field(default="", exclude=True)

    @field_validator("calibrated", "due", mode="before")
    @classmethod
    def _date_only(cls, v: Any) -> Any:
        if isinstance(v, datetime):
            raise ValueError("must be a date (YYYY-MM-DD), not a date-time")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not _MODEL_RE.match(v):
            raise ValueError(f"must be 'interpolate', 'linear' or 'polynomial:N' (got {v!r})")
        return v

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str) -> str:
        try:
            return units.normalise(v)
        except CalibrationError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("standards")
    @classmethod
    def _unique_standards(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"listed twice: {', '.join(dup)}")
        return v

    @property
    def min_points(self) -> int:
        """Points the model needs: 2 to interpolate or fit a line, N+1 for polynomial:N."""
        m = _MODEL_RE.match(self.model)
        if m and m.group(2):
            return int(m.group(2)) + 1
        return 2

    @property
    def found_points(self) -> tuple[Point, ...]:
        """The as-found results: ``as_found`` if given, else the points (no adjustment)."""
        return self.as_found or self.points


# -- pydantic errors -> "file: path: message" ---------------------------------------------


def _loc(loc: Sequence[int | str], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = "class" if part == "class_" else part
            out += f".{name}" if out else name
    return out or "(file)"


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    inp = err.get("input")
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {inp!r})"
    if kind == "greater_than":
        return f"must be > {ctx.get('gt'):g}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge'):g}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number (got {inp!r})"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer (got {inp!r})"
    if kind in ("string_type",):
        return f"must be a string (got {inp!r})"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false (got {inp!r})"
    if kind.startswith("date"):
        return f"must be a date (YYYY-MM-DD) (got {inp!r})"
    if kind in ("tuple_type", "list_type"):
        return "must be a list"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "must be a table"
    if kind == "too_short":
        n = ctx.get("min_length")
        return f"must have at least {n} item{'s' if n != 1 else ''}"
    if kind == "string_too_short":
        return "must not be empty"
    msg = str(err.get("msg", kind))
    return msg.removeprefix("Value error, ")


def validation_errors(exc: ValidationError, file: str, prefix: str = "") -> list[str]:
    """A pydantic ValidationError as ``file: path: message`` lines."""
    errs = exc.errors()
    locs = [tuple(e["loc"]) for e in errs]
    out = []
    for e in errs:
        loc = tuple(e["loc"])
        # A list whose only item failed is also "too short": report the item, not both.
        if e["type"] == "too_short" and any(
            len(other) > len(loc) and other[: len(loc)] == loc for other in locs
        ):
            continue
        out.append(f"{file}: {_loc(e['loc'], prefix)}: {_message(e)}")
    return out


# -- the snapshot ---------------------------------------------------------------------------


def _freeze_groups(
    groups: Mapping[str, list[Certificate]],
) -> Mapping[str, tuple[Certificate, ...]]:
    return MappingProxyType(
        {k: tuple(sorted(v, key=lambda c: (c.calibrated, c.number))) for k, v in groups.items()}
    )


@dataclass(frozen=True, slots=True, eq=False)
class Registry:
    """An immutable snapshot of a registry directory. Build it with :meth:`load`."""

    root: Path
    _equipment: Mapping[str, Equipment]
    _certificates: Mapping[str, Certificate]
    _by_item: Mapping[str, tuple[Certificate, ...]] = field(repr=False)
    notes: tuple[str, ...] = ()
    """What the loader noticed that is not an error (``file: (file): message``): a missing
    ``certificates/`` or ``equipment/`` directory, which git does not keep when empty."""
    problems: tuple[str, ...] = ()
    """``load(sound_only=True)``: the errors of the entries left out (``file: path: message``)."""
    unsound: frozenset[str] = frozenset()
    """``load(sound_only=True)``: the equipment ids whose own files (equipment or
    certificate) are broken and left out; ``"*"`` when a broken file's item is unknown."""

    # -- construction --------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str, *, sound_only: bool = False) -> Registry:
        """Load and cross-check a registry directory; raise RegistryError listing all errors.

        ``sound_only``: do not raise; leave out every broken file, the equipment it belongs
        to and that equipment's certificates, and list them in ``problems`` and
        ``unsound`` (a chain through a left-out standard is then ``untraceable``)."""
        return _load_directory(Path(path), sound_only=sound_only)

    @classmethod
    def from_records(
        cls,
        root: Path,
        equipment: Iterable[Equipment],
        certificates: Iterable[Certificate],
        notes: Iterable[str] = (),
    ) -> Registry:
        """A snapshot of already validated records (the loader's last step)."""
        eq = {e.id: e for e in equipment}
        certs = {c.number: c for c in certificates}
        groups: dict[str, list[Certificate]] = defaultdict(list)
        for c in certs.values():
            groups[c.item].append(c)
        return cls(
            root=root,
            _equipment=MappingProxyType(dict(sorted(eq.items()))),
            _certificates=MappingProxyType(dict(sorted(certs.items()))),
            _by_item=_freeze_groups(groups),
            notes=tuple(notes),
        )

    # -- look-ups ------------------------------------------------------------------------

    def equipment(self, eq_id: str) -> Equipment | None:
        return self._equipment.get(eq_id)

    def equipment_ids(self) -> list[str]:
        return list(self._equipment)

    def require(self, eq_id: str) -> Equipment:
        eq = self._equipment.get(eq_id)
        if eq is None:
            known = ", ".join(self._equipment) or "none"
            raise CalibrationError(f"unknown equipment {eq_id!r} (known: {known})")
        return eq

    def certificate(self, number: str) -> Certificate | None:
        return self._certificates.get(number)

    def certificates(
        self, item: str | None = None, channel: str | None = None
    ) -> tuple[Certificate, ...]:
        """Certificates (superseded ones included), oldest first."""
        if item is None:
            return tuple(
                sorted(self._certificates.values(), key=lambda c: (c.calibrated, c.number))
            )
        certs = self._by_item.get(item, ())
        if channel is not None:
            certs = tuple(c for c in certs if c.channel == channel)
        return certs

    def in_force(
        self, item: str, at: datetime | date, channel: str | None = None
    ) -> Certificate | None:
        """The certificate in force at ``at``: the latest with ``calibrated <= date(at)``.

        It may have expired; the status says so. ``channel=None`` considers every channel.
        """
        day = utc_date(at)
        best: Certificate | None = None
        for c in self.certificates(item, channel):
            if c.calibrated <= day:
                best = c
        return best

    def in_force_until(self, cert: Certificate) -> date:
        """The last day ``cert`` is in force (UTC): its ``due`` day, or the day before its
        successor was calibrated when that comes first. The one rule for the chain's
        links and the reverse trace."""
        nxt = self.successor(cert)
        if nxt is not None and nxt.calibrated <= cert.due:
            return nxt.calibrated - timedelta(days=1)
        return cert.due

    def in_force_on(self, cert: Certificate, day: date) -> bool:
        """Whether ``day`` lies within ``[calibrated, in_force_until]`` (inclusive)."""
        return cert.calibrated <= day <= self.in_force_until(cert)

    def successor(self, cert: Certificate) -> Certificate | None:
        """The next certificate of the same item and channel, if any."""
        later = [
            c
            for c in self.certificates(cert.item, cert.channel)
            if (c.calibrated, c.number) > (cert.calibrated, cert.number)
        ]
        return later[0] if later else None

    def predecessor(self, cert: Certificate) -> Certificate | None:
        """The previous certificate of the same item and channel, if any."""
        earlier = [
            c
            for c in self.certificates(cert.item, cert.channel)
            if (c.calibrated, c.number) < (cert.calibrated, cert.number)
        ]
        return earlier[-1] if earlier else None

    def dependants(self, item: str) -> tuple[Certificate, ...]:
        """Certificates that name ``item`` as a standard, oldest first."""
        return tuple(c for c in self.certificates() if item in c.standards)

    # -- calibration status, chains, corrections -----------------------------------------

    def state(
        self, eq_id: str, at: datetime | date, channel: str | None = None
    ) -> _chain.CalibrationState:
        """Calibration status at ``at`` with every reason (see :mod:`calibration.chain`)."""
        return _chain.state(self, eq_id, at, channel)

    def chain_tree(
        self, eq_id: str, at: datetime | date, channel: str | None = None
    ) -> _chain.ChainNode:
        """The traceability tree of the certificate in force at ``at``."""
        return _chain.tree(self, eq_id, at, channel)

    def reverse_trace(
        self, std_id: str, since: date | None = None, until: date | None = None
    ) -> list[_chain.Affected]:
        """Every certificate downstream of ``std_id``, to any depth, with its window."""
        return _chain.reverse_trace(self, std_id, since=since, until=until)

    def conforms(self, cert: Certificate) -> bool | None:
        """As-found conformity of ``cert`` against its channel's tolerance (None: no MPE)."""
        return _chain.conforms(self, cert)

    def corrector(self, eq_id: str, channel: str | None, at: datetime | date) -> Corrector:
        """The Corrector of the certificate in force at ``at`` (identity when none)."""
        return _build_corrector(self, eq_id, channel, at)

    def corrector_for(self, cert: Certificate) -> Corrector:
        """The Corrector of ``cert`` for its item's channel (``cert`` may be a revised copy
        of a registry certificate, :mod:`calibration.revision`)."""
        eq = self.require(cert.item)
        ch = eq.channel(cert.channel)
        if ch is None:
            raise CalibrationError(f"{cert.item} has no channel {cert.channel!r}")
        return _corrector_of(eq, ch, cert)


# -- loading --------------------------------------------------------------------------------


MAX_FILE_BYTES = 4 * 1024 * 1024
"""A registry file larger than this is refused: a certificate is a few kB, a DCC with
hundreds of points well under a MB; a bigger one is a mistake or an attack on memory."""


def _read_file(path: Path, root: Path, rel: str, errors: list[str]) -> bytes | None:
    """The bytes of one registry file, or None with its error in ``errors``.

    Only regular files inside the registry directory ``root`` are read: a symbolic link
    may point elsewhere in the registry, not out of it (what the registry's history in
    git does not hold is not calibration data), and a device or FIFO is never opened.
    """
    try:
        real = path.resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError) as exc:  # a dangling link, a loop of links
        errors.append(f"{rel}: (file): cannot read: {exc}")
        return None
    if not real.is_relative_to(root.resolve()):
        errors.append(f"{rel}: (file): a symbolic link out of the registry (to {real}): refused")
        return None
    if not stat.S_ISREG(st.st_mode):
        errors.append(f"{rel}: (file): not a regular file: refused")
        return None
    if st.st_size > MAX_FILE_BYTES:
        errors.append(
            f"{rel}: (file): {st.st_size} bytes, more than the {MAX_FILE_BYTES} a registry "
            "file may have: refused"
        )
        return None
    try:
        with real.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        errors.append(f"{rel}: (file): cannot read: {exc}")
        return None
    if len(data) > MAX_FILE_BYTES:  # it grew since stat()
        errors.append(f"{rel}: (file): more than {MAX_FILE_BYTES} bytes: refused")
        return None
    return data


def _parse_toml(data: bytes, rel: str, errors: list[str]) -> dict[str, Any] | None:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        errors.append(f"{rel}: (file): TOML syntax error: {exc}")
    except UnicodeDecodeError as exc:
        errors.append(f"{rel}: (file): cannot read: {exc}")
    return None


_EMPTY = {
    "equipment": "no equipment yet",
    "certificates": "no certificates yet: every channel's calibration is none",
}


def _files(root: Path, name: str, suffixes: tuple[str, ...], notes: list[str]) -> list[Path]:
    """The record files of ``root/name``; a missing or empty directory is noted, not an
    error (git keeps no empty directory, so a new lab's registry has none of one kind)."""
    folder = root / name
    if not folder.is_dir():
        notes.append(f"{name}/: (file): no such directory: {_EMPTY[name]}")
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix in suffixes)
    if not files:
        notes.append(f"{name}/: (file): no {' or '.join(suffixes)} files: {_EMPTY[name]}")
    return files


def _load_equipment(
    root: Path, errors: list[str], broken: set[str], notes: list[str], owners: dict[str, str]
) -> dict[str, Equipment]:
    """Equipment files by id; ids of files that failed go to ``broken`` (their own errors
    are reported; references to them are not reported again as unknown). ``owners``
    gets each file's equipment id."""
    found: dict[str, Equipment] = {}
    for path in _files(root, "equipment", (".toml",), notes):
        rel = path.relative_to(root).as_posix()
        owners[rel] = path.stem
        raw = _read_file(path, root, rel, errors)
        data = None if raw is None else _parse_toml(raw, rel, errors)
        if data is None:
            broken.add(path.stem)
            continue
        try:
            eq = Equipment.model_validate(data).model_copy(update={"source": rel})
        except ValidationError as exc:
            errors.extend(validation_errors(exc, rel))
            broken.add(path.stem)
            if isinstance(data.get("id"), str):
                broken.add(data["id"])
            continue
        if eq.id != path.stem:
            errors.append(
                f"{rel}: id: {eq.id!r} does not match the file name (expected {path.stem!r})"
            )
        if eq.id in found:
            errors.append(
                f"{rel}: id: duplicate equipment id {eq.id!r} (also in {found[eq.id].source})"
            )
            continue
        found[eq.id] = eq
    return found


_ITEM_RE = re.compile(r'^\s*item\s*=\s*"([^"]+)"', re.MULTILINE)

# Stand-ins for the fields of a certificate that failed validation, so that the checks
# that do not depend on them still run (every error at once, not in phases).
_STAND_IN: dict[str, Any] = {
    "number": "?",
    "item": "?",
    "channel": None,
    "issued_by": "?",
    "accreditation": "",
    "nmi": False,
    "calibrated": date(1, 1, 1),
    "due": date(9999, 12, 31),
    "standards": (),
    "standard_certificates": {},
    "unit": "1",
    "model": "interpolate",
    "points": ({"reference": 0.0, "indicated": 0.0, "U": 1.0, "k": 1.0},),
    "as_found": (),
}


def _partial(data: Mapping[str, Any], exc: ValidationError) -> tuple[Certificate, frozenset[str]]:
    """The certificate with its failed top-level fields stood in for, and their names."""
    failed = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    kept = {k: v for k, v in data.items() if k not in failed}
    stand_in = {k: _STAND_IN[k] for k in failed if k in _STAND_IN}
    return Certificate.model_validate(kept | stand_in), frozenset(stand_in)


def _load_certificates(
    root: Path,
    equipment: Mapping[str, Equipment],
    errors: list[str],
    notes: list[str],
    owners: dict[str, str],
) -> tuple[list[Certificate], list[tuple[Certificate, frozenset[str]]]]:
    """The certificates that validate, and those that did not with the fields that
    failed (their other cross-checks still run). ``owners`` gets each file's item when
    it can be read."""
    out: list[Certificate] = []
    partial: list[tuple[Certificate, frozenset[str]]] = []
    for path in _files(root, "certificates", (".toml", ".xml"), notes):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".toml":
            raw = _read_file(path, root, rel, errors)
            data = None if raw is None else _parse_toml(raw, rel, errors)
            # a syntax error: the item is still written in it, as a rule
            if data is None and raw and (m := _ITEM_RE.search(raw.decode("utf-8", "replace"))):
                owners[rel] = m.group(1)
        else:
            xml = _read_file(path, root, rel, errors)
            if xml is None:
                continue
            try:
                data = dcc.certificate_fields(dcc.read(xml, source=rel), equipment)
            except RegistryError as exc:
                errors.extend(exc.errors)
                continue
        if data is None:
            continue
        if isinstance(data.get("item"), str):
            owners[rel] = data["item"]
        try:
            cert = Certificate.model_validate(data)
        except ValidationError as exc:
            errors.extend(validation_errors(exc, rel))
            with contextlib.suppress(ValidationError):
                c, skip = _partial(data, exc)
                partial.append((c.model_copy(update={"source": rel}), skip))
            continue
        out.append(cert.model_copy(update={"source": rel, "source_unit": cert.unit}))
    return out, partial


def _check_certificate(
    cert: Certificate,
    equipment: Mapping[str, Equipment],
    numbers: Mapping[str, Certificate],
    errors: list[str],
    broken: set[str],
    skip: frozenset[str] = frozenset(),
) -> Certificate | None:
    """Cross-checks of one certificate; returns it in its channel's unit, or None.

    ``skip``: fields that failed validation (stood in for): the checks that need them are
    left out, the others run, and the certificate is not returned."""
    f = cert.source
    ok = not skip
    update: dict[str, Any] = {}
    eq = None if "item" in skip else equipment.get(cert.item)
    if eq is None:
        if "item" not in skip and cert.item not in broken:
            errors.append(f"{f}: item: unknown equipment {cert.item!r}")
        ok = False
    elif "channel" in skip:
        ok = False
    else:
        ch = eq.channel(cert.channel)
        if ch is None:
            names = ", ".join(eq.channel_names)
            if cert.channel is None:
                errors.append(f"{f}: channel: required: {eq.id} has several channels ({names})")
            else:
                errors.append(
                    f"{f}: channel: {eq.id} has no channel {cert.channel!r} (channels: {names})"
                )
            ok = False
        else:
            update["channel"] = ch.name
            if "unit" in skip:
                ok = False
            elif not units.compatible(cert.unit, ch.unit):
                errors.append(
                    f"{f}: unit: {cert.unit!r} is not compatible with channel {ch.name!r} "
                    f"unit {ch.unit!r} ({units.dimensionality(cert.unit)} vs {units.dimensionality(ch.unit)})"
                )
                ok = False
            else:
                try:
                    k = units.factor(cert.unit, ch.unit)
                except CalibrationError as exc:
                    errors.append(f"{f}: unit: {exc}")
                    ok = False
                else:
                    update["unit"] = ch.unit
                    update["points"] = tuple(p.scaled(k) for p in cert.points)
                    update["as_found"] = tuple(p.scaled(k) for p in cert.as_found)
    if not {"calibrated", "due"} & skip and cert.due <= cert.calibrated:
        errors.append(
            f"{f}: due: {cert.due.isoformat()} is not after calibrated {cert.calibrated.isoformat()}"
        )
        ok = False
    if not {"points", "model"} & skip and len(cert.points) < cert.min_points:
        errors.append(
            f"{f}: points: model {cert.model!r} needs at least {cert.min_points} points "
            f"(got {len(cert.points)})"
        )
        ok = False
    indications = [p.indicated for p in cert.points]
    if "points" not in skip and len(set(indications)) != len(indications):
        errors.append(f"{f}: points: two points have the same indicated value")
        ok = False
    if ok and eq is not None and (ch := eq.channel(update["channel"])) and ch.tolerance:
        scale = units.factor(cert.unit, ch.unit)
        for name, pts in (("points", cert.points), ("as_found", cert.as_found)):
            for i, p in enumerate(pts):
                try:
                    _conformity.mpe(ch.tolerance, p.reference * scale, ch.unit)
                except CalibrationError as exc:
                    errors.append(f"{f}: {name}[{i}].reference: {exc}")
                    ok = False
    for i, s in enumerate(cert.standards):
        if s not in equipment:
            if s not in broken:
                errors.append(f"{f}: standards[{i}]: unknown equipment {s!r}")
            ok = False
        elif s == cert.item:
            errors.append(f"{f}: standards[{i}]: cycle in the traceability chain: {s} → {s}")
            ok = False
    for s, number in cert.standard_certificates.items():
        if "standards" in skip:
            break
        if s not in cert.standards:
            errors.append(f"{f}: standard_certificates.{s}: {s!r} is not one of the standards")
            ok = False
            continue
        cited = numbers.get(number)
        if cited is None:
            errors.append(f"{f}: standard_certificates.{s}: unknown certificate {number!r}")
            ok = False
        elif cited.item != s:
            errors.append(
                f"{f}: standard_certificates.{s}: certificate {number!r} is for {cited.item!r}, not {s!r}"
            )
            ok = False
    if not ok:
        return None
    checked = cert.model_copy(update=update)
    assert eq is not None
    try:
        _corrector_of(eq, eq.channels_by_name[checked.channel or ""], checked)
    except CalibrationError as exc:
        errors.append(f"{f}: points: {exc}")
        return None
    return checked


def _cycles(certs: Sequence[Certificate], errors: list[str]) -> None:
    """Refuse cycles in the item → standard graph, naming the loop and a certificate."""
    edges: dict[str, list[tuple[str, Certificate]]] = defaultdict(list)
    for c in certs:
        for s in c.standards:
            if s != c.item:  # self-references are reported per certificate
                edges[c.item].append((s, c))
    WHITE, GREY, BLACK = 0, 1, 2
    colour: dict[str, int] = defaultdict(int)
    reported: set[frozenset[str]] = set()

    def visit(node: str, path: list[str]) -> None:
        colour[node] = GREY
        path.append(node)
        for nxt, cert in sorted(edges.get(node, []), key=lambda e: (e[0], e[1].number)):
            if colour[nxt] == GREY:
                loop = [*path[path.index(nxt) :], nxt]
                key = frozenset(loop)
                if key not in reported:
                    reported.add(key)
                    i = cert.standards.index(nxt)
                    errors.append(
                        f"{cert.source}: standards[{i}]: cycle in the traceability chain: "
                        + " → ".join(loop)
                    )
            elif colour[nxt] == WHITE:
                visit(nxt, path)
        path.pop()
        colour[node] = BLACK

    for start in sorted(edges):
        if colour[start] == WHITE:
            visit(start, [])


def _load_directory(root: Path, *, sound_only: bool = False) -> Registry:
    if not root.is_dir():
        raise RegistryError([f"{root}: (file): not a directory"], root=str(root))
    errors: list[str] = []
    notes: list[str] = []
    broken: set[str] = set()
    owners: dict[str, str] = {}  # file -> the equipment id it belongs to
    equipment = _load_equipment(root, errors, broken, notes, owners)
    parsed, partial = _load_certificates(root, equipment, errors, notes, owners)
    numbers: dict[str, Certificate] = {}
    for c in parsed:
        if c.number in numbers:
            errors.append(
                f"{c.source}: number: duplicate certificate number {c.number!r} "
                f"(also in {numbers[c.number].source})"
            )
        else:
            numbers[c.number] = c
    checked = [
        c2
        for c in numbers.values()
        if (c2 := _check_certificate(c, equipment, numbers, errors, broken)) is not None
    ]
    for c, skip in partial:
        _check_certificate(c, equipment, numbers, errors, broken, skip)
    _cycles(list(numbers.values()), errors)
    if not errors:
        return Registry.from_records(root, equipment.values(), checked, notes)
    # Stable sort by file keeps each file's problems in the order they were found.
    errors.sort(key=lambda e: e.split(": ", 1)[0])
    if not sound_only:
        raise RegistryError(errors, root=str(root))
    bad_files = {e.split(": ", 1)[0] for e in errors}
    unsound = {owners.get(f, "*") for f in bad_files} | broken
    sound_eq = [e for e in equipment.values() if e.id not in unsound]
    kept = {e.id for e in sound_eq}
    sound = [c for c in checked if c.source not in bad_files and c.item in kept]
    reg = Registry.from_records(root, sound_eq, sound, notes)
    return dataclasses.replace(reg, problems=tuple(errors), unsound=frozenset(unsound))


# -- corrections ----------------------------------------------------------------------------


def _build_corrector(
    reg: Registry, eq_id: str, channel: str | None, at: datetime | date
) -> Corrector:
    eq = reg.require(eq_id)
    ch = eq.channel(channel)
    if ch is None:
        raise CalibrationError(
            f"{eq_id} has no channel {channel!r} (channels: {', '.join(eq.channel_names)})"
        )
    cert = reg.in_force(eq_id, at, ch.name)
    return _corrector_of(eq, ch, cert)


def _corrector_of(eq: Equipment, ch: Channel, cert: Certificate | None) -> Corrector:
    import numpy as np

    from calibration.corrector import Corrector

    common: dict[str, Any] = {
        "resolution": ch.resolution,
        "repeatability": ch.repeatability,
        "coverage_factor": eq.coverage_factor,
        "limits": ch.limits_tuple,
        "decision_rule": ch.decision_rule,
        "unit": ch.unit,
        "equipment": eq.id,
        "channel": ch.name,
    }
    if cert is None:
        return Corrector.identity(**common)
    pts = sorted(cert.points, key=lambda p: p.indicated)
    dof = [p.dof for p in pts]
    return Corrector.build(
        indicated=np.array([p.indicated for p in pts], dtype=float),
        reference=np.array([p.reference for p in pts], dtype=float),
        U=np.array([p.U for p in pts], dtype=float),
        k=np.array([p.k for p in pts], dtype=float),
        model=cert.model,
        dof=None
        if all(d is None for d in dof)
        else np.array([math.inf if d is None else d for d in dof], dtype=float),
        certificate=cert.number,
        **common,
    )
