"""``calgate.toml``: load, validate per driver, and cross-check against the registry.

Validation is two-phase (STYLE.md "Config"): the top-level tables first, then each
``[[equipment]]`` table by its ``driver`` key through that driver's own pydantic model.
Every problem is collected and reported at once as ``file: path.to.field: message``.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers import KINDS, driver_class
from drivers.base import DriverConfig
from gateway.errors import ConfigError
from gateway.settings import InfluxSettings, MqttSettings, OutboxSettings
from gateway.status import HttpSettings

if TYPE_CHECKING:
    from datetime import date, datetime

    from calibration import Registry

__all__ = [
    "Config",
    "EquipmentEntry",
    "GatewaySettings",
    "check_against_registry",
    "check_paths",
    "equipment_where",
    "format_loc",
    "left_out_in_chain",
    "load_config",
    "never_calibrated",
    "read_config",
]

# Keys of an [[equipment]] table that belong to the gateway, not to the driver.
GATEWAY_KEYS = frozenset({"uncalibrated"})


class GatewaySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default="edge-01", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    site: str = Field(default="lab", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    registry: Path = Path("registry")
    state_dir: Path = Path("/var/lib/calgate")
    status_interval_s: float = Field(default=60.0, gt=0)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # the service's event loop (gateway/eventloop.py); read at start, not on reload
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # refuse to start while a polled channel has no certificate in force (calgate run
    # --strict); by default such a channel is published with calibration "none"
    require_calibration: bool = False


class _TopLevel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gateway: GatewaySettings = GatewaySettings()
    mqtt: MqttSettings | None = None
    influxdb: InfluxSettings | None = None
    http: HttpSettings = HttpSettings()
    outbox: OutboxSettings = OutboxSettings()
    equipment: list[dict[str, Any]] = []


@dataclass(frozen=True, slots=True)
class EquipmentEntry:
    """One ``[[equipment]]`` table: the driver's validated config and the gateway's keys."""

    driver: DriverConfig
    uncalibrated: frozenset[str] = frozenset()
    index: int = 0

    @property
    def id(self) -> str:
        return self.driver.id


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    gateway: GatewaySettings
    mqtt: MqttSettings | None
    influxdb: InfluxSettings | None
    http: HttpSettings
    outbox: OutboxSettings
    equipment: tuple[EquipmentEntry, ...] = field(default_factory=tuple)
    # what the cross-check with the registry found that does not stop the service (a
    # channel without a certificate in force), as ``file: path: message``
    warnings: tuple[str, ...] = ()
    # the path as the user gave it, which every error of the file starts with
    given_path: str = ""

    @property
    def shown_path(self) -> str:
        return self.given_path or str(self.path)

    @property
    def registry_dir(self) -> Path:
        return self.gateway.registry

    @property
    def state_dir(self) -> Path:
        return self.gateway.state_dir


def format_loc(loc: Iterable[int | str], prefix: str = "") -> str:
    """``("equipment", 2, "channels", 0, "type")`` → ``equipment[2].channels[0].type``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _errors(
    exc: ValidationError,
    fname: str,
    prefix: str = "",
    model: type[BaseModel] | None = None,
    also: frozenset[str] = frozenset(),
) -> list[str]:
    """Each error as ``file: path: message``; an unknown key of ``model`` (or of a table
    inside it; ``also``: more keys of the top table) gets the nearest known key as a
    suggestion."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        where = format_loc(loc, prefix) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")  # pydantic's wording, not ours
        if err["type"] == "extra_forbidden" and model is not None and loc:
            known = _known_keys(model, loc[:-1]) | (also if len(loc) == 1 else set())
            msg = "unknown key" + _did_you_mean(str(loc[-1]), known)
        lines.append(f"{fname}: {where}: {msg}")
    return lines


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    import difflib  # only for a config with an error: a running gateway does not keep it

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _known_keys(model: type[BaseModel], loc: Sequence[int | str]) -> set[str]:
    """The keys of the table at ``loc`` inside ``model`` (empty when it is not a model)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return set()
        if isinstance(part, int):
            continue  # an item of a list: the list's model is already current
        field = current.model_fields.get(part)
        current = _model_in(field.annotation) if field is not None else None
    return set(current.model_fields) if current is not None else set()


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``Model``, ``list[Model]``, ``Model | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def topic_level_problem(name: str) -> str | None:
    """Why ``name`` (an equipment id, a channel name) cannot be one level of an MQTT topic.

    ``/`` would split it, ``+`` and ``#`` are wildcards (a PUBLISH with one is a protocol
    error: the broker drops the connection, so no instrument's data would get through),
    and control characters (NUL among them) are refused by brokers.
    """
    bad = sorted({c for c in name if c in "/+#" or ord(c) < 0x20 or ord(c) == 0x7F})
    if not bad:
        return None
    shown = ", ".join(repr(c) for c in bad)
    return f"{name!r} cannot be a level of an MQTT topic ({shown} not allowed)"


def equipment_where(index: int, eq_id: object) -> str:
    """``equipment[0] (PT-101)``: a table's place in the file and the id a person knows."""
    return f"equipment[{index}]" + (f" ({eq_id})" if isinstance(eq_id, str) and eq_id else "")


def _parse_equipment(
    tables: Sequence[Mapping[str, Any]], fname: str, errors: list[str]
) -> list[EquipmentEntry]:
    names = ", ".join(sorted(KINDS))
    entries: list[EquipmentEntry] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        eq_id = table.get("id")
        where = equipment_where(i, eq_id)
        id_ok = True  # a table with an error is not cross-checked with the registry
        if isinstance(eq_id, str):
            if (why := topic_level_problem(eq_id)) is not None:
                errors.append(f"{fname}: {where}.id: {why}")
                id_ok = False
            if eq_id in seen:
                errors.append(
                    f"{fname}: {where}.id: duplicate equipment id {eq_id!r} (also equipment[{seen[eq_id]}])"
                )
                continue
            seen[eq_id] = i
        kind = table.get("driver")
        if kind is None:
            errors.append(f"{fname}: {where}.driver: field required (one of {names})")
            continue
        cls = driver_class(str(kind))
        if cls is None:
            errors.append(f"{fname}: {where}.driver: unknown driver {kind!r} (one of {names})")
            continue
        own = {k: v for k, v in table.items() if k not in GATEWAY_KEYS}
        try:
            cfg = cls.Config.model_validate(own)
        except ValidationError as exc:
            errors.extend(_errors(exc, fname, where, cls.Config, GATEWAY_KEYS))
            continue
        unc = table.get("uncalibrated", [])
        if isinstance(unc, bool):
            unc_set = frozenset({"*"}) if unc else frozenset()
        elif isinstance(unc, list) and all(isinstance(x, str) for x in unc):
            unc_set = frozenset(unc)
        else:
            errors.append(f"{fname}: {where}.uncalibrated: must be true or a list of channel names")
            continue
        if id_ok:
            entries.append(EquipmentEntry(driver=cfg, uncalibrated=unc_set, index=i))
    return entries


def load_config(path: Path | str) -> Config:
    """Read and validate ``calgate.toml``; raise :class:`ConfigError` listing every problem.

    Relative ``registry`` and ``state_dir`` paths are resolved against the file's folder.
    """
    config, errors = read_config(path)
    if errors or config is None:
        raise ConfigError(f"{path}: {len(errors)} error(s)", errors=errors)
    return config


def read_config(path: Path | str) -> tuple[Config | None, list[str]]:
    """``calgate.toml`` read and validated: the config and every problem found.

    With problems, the config holds what could still be checked (``check-config`` goes
    on with it): the ``[gateway]`` table, when it validated (None when it did not, or
    the file cannot be read), and the ``[[equipment]]`` tables that validated; the other
    tables are their defaults.
    """
    path = Path(path)
    fname = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{fname}: file not found"]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{fname}: {exc}"]
    except tomllib.TOMLDecodeError as exc:
        return None, [f"{fname}: TOML syntax: {exc}"]

    errors: list[str] = []
    top: _TopLevel | None = None
    try:
        top = _TopLevel.model_validate(raw)
    except ValidationError as exc:
        errors.extend(
            e for e in _errors(exc, fname, model=_TopLevel) if not _is_equipment_detail(e, fname)
        )
    tables = raw.get("equipment", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        errors.append(f"{fname}: equipment: must be an array of tables ([[equipment]])")
        tables = []
    entries = _parse_equipment(tables, fname, errors)
    gw_raw = raw.get("gateway", {})
    if top is None and isinstance(gw_raw, dict):
        try:
            # its known keys, a misspelt one left out (reported above)
            known = {k: v for k, v in gw_raw.items() if k in GatewaySettings.model_fields}
            top = _TopLevel(gateway=GatewaySettings.model_validate(known))
        except ValidationError:
            pass
    if top is None:
        return None, errors  # where the registry is is not known: nothing more to check

    base = path.resolve().parent
    gw = top.gateway.model_copy(
        update={
            "registry": (base / top.gateway.registry).resolve(),
            "state_dir": (base / top.gateway.state_dir).resolve(),
        }
    )
    config = Config(
        path=path.resolve(),
        gateway=gw,
        mqtt=top.mqtt,
        influxdb=top.influxdb,
        http=top.http,
        outbox=top.outbox,
        equipment=tuple(entries),
        given_path=fname,
    )
    return config, errors


def _is_equipment_detail(line: str, fname: str) -> bool:
    return line.startswith(f"{fname}: equipment[")


def check_paths(config: Config) -> list[str]:
    """What stops the service before it polls: the registry folder missing, the state
    directory impossible (a file in its path) or not writable by this user. Each as
    ``file: gateway.<key>: message``."""
    fname = config.shown_path
    problems: list[str] = []
    reg = config.registry_dir
    if not reg.exists():
        problems.append(f"{fname}: gateway.registry: {reg} does not exist")
    elif not reg.is_dir():
        problems.append(f"{fname}: gateway.registry: {reg} is not a directory")
    why = _state_dir_problem(config.state_dir)
    if why:
        problems.append(f"{fname}: gateway.state_dir: {why}")
    return problems


def _state_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (made into) a writable directory, or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable by this user (uid {os.geteuid()})"
        return None
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not writable by this user (uid {os.geteuid()})"
    return None


def check_against_registry(
    config: Config,
    registry: Registry,
    *,
    at: datetime | None = None,
    skip: Iterable[str] = (),
    strict: bool = False,
    warnings: list[str] | None = None,
) -> list[str]:
    """Cross-check the config with a loaded registry; return every problem found.

    Each configured equipment id must be in the registry and each channel the gateway
    will publish a registry channel of that equipment. A channel without a certificate in
    force now is published with calibration ``none``: unless the table lists it in
    ``uncalibrated`` (a channel that is never calibrated), it goes to ``warnings``, or is
    a problem when ``strict`` (``calgate run --strict``, ``require_calibration``).
    Equipment in ``skip`` (its registry files are broken, reported with their own errors)
    is not checked.
    """
    from datetime import UTC, datetime

    at = at or datetime.now(UTC)
    fname = config.shown_path
    problems: list[str] = []
    left_out = set(skip)
    for entry in config.equipment:
        if entry.id in left_out:
            continue  # its registry entries are broken: reported with their own errors
        where = equipment_where(entry.index, entry.id)
        eq = registry.equipment(entry.id)
        if eq is None:
            problems.append(
                f"{fname}: {where}.id: {entry.id!r} is not in the registry ({config.registry_dir})"
            )
            continue
        reg_channels = {ch.name for ch in eq.channels}
        for name, cwhere in configured_channels(entry, reg_channels):
            if (why := topic_level_problem(name)) is not None:
                problems.append(f"{fname}: {where}{cwhere}: {why}")
                continue
            if name not in reg_channels:
                problems.append(
                    f"{fname}: {where}{cwhere}: channel {name!r} is not a channel of "
                    f"{entry.id} in the registry (has: {', '.join(sorted(reg_channels)) or 'none'})"
                )
                continue
            reg_unit = next(ch.unit for ch in eq.channels if ch.name == name)
            if (why := unit_problem(entry, cwhere, reg_unit)) is not None:
                problems.append(f"{fname}: {where}{why}")
            if "*" in entry.uncalibrated or name in entry.uncalibrated:
                continue  # never calibrated: published as "none", no word about it
            cert = registry.corrector(entry.id, name, at).certificate
            if cert is not None:
                if warnings is not None and (
                    lost := left_out_in_chain(registry, entry.id, name, at, left_out)
                ):
                    warnings.append(
                        f"{fname}: {where}{cwhere}: channel {name!r} of {entry.id} lost its "
                        f"traceability: its certificate {cert} rests on {', '.join(lost)}, "
                        "left out of the registry for its errors: published with calibration "
                        '"untraceable" (quality uncertain); correct the files of ' + ", ".join(lost)
                    )
                continue
            where_ = f"{fname}: {where}{cwhere}: channel {name!r} of {entry.id} has no certificate in force"
            if strict:
                problems.append(f"{where_} (calibration required); calibrate it")
            elif warnings is not None:
                warnings.append(
                    f'{where_}: published with calibration "none" (quality uncertain); '
                    "calibrate it, or list it in `uncalibrated` if it is never calibrated"
                )
    return problems


def left_out_in_chain(
    registry: Registry, eq_id: str, channel: str, at: datetime | date, left_out: Iterable[str]
) -> list[str]:
    """The standards of ``left_out`` (registry entries left out for their errors) that
    the chain of ``eq_id``'s ``channel`` at ``at`` goes through, to any depth: with them
    gone the channel is untraceable."""
    gone = set(left_out)
    if not gone:
        return []
    found: set[str] = set()
    todo = list(registry.chain_tree(eq_id, at, channel).standards)
    while todo:
        node = todo.pop()
        if node.item in gone:
            found.add(node.item)
        todo.extend(node.standards)
    return sorted(found)


def unit_problem(entry: EquipmentEntry, cwhere: str, registry_unit: str) -> str | None:
    """The unit configured for the channel at ``cwhere`` (``.channels[j].name``: that
    channel's ``unit``; else the table's), when it cannot be converted to the registry
    channel's unit: every reading would be published uncorrected, flagged
    ``unit_mismatch``. The problem's path and message, or None."""
    from calibration.errors import CalibrationError
    from calibration.units import factor

    holder: object = entry.driver
    path = ""
    if cwhere.startswith(".channels["):
        path = cwhere.removesuffix(".name")
        holder = entry.driver.channels[int(path[len(".channels[") : -1])]  # type: ignore[attr-defined]
    unit = getattr(holder, "unit", None)
    if not isinstance(unit, str) or not unit or unit == registry_unit:
        return None  # none configured (the instrument says), or a Modbus unit id
    try:
        factor(unit, registry_unit)
    except CalibrationError as exc:
        why = str(exc)
        if repr(registry_unit) not in why:
            why += f" (the registry channel's unit is {registry_unit!r})"
        return f"{path}.unit: {why}"
    return None


def never_calibrated(entry: EquipmentEntry, registry: Registry | None) -> bool:
    """Whether every channel ``entry`` publishes is listed in its ``uncalibrated`` (a door
    contact): its calibration ``none`` is expected, not news."""
    if "*" in entry.uncalibrated:
        return True
    eq = registry.equipment(entry.id) if registry is not None else None
    names = {ch.name for ch in eq.channels} if eq is not None else set()
    published = {name for name, _ in configured_channels(entry, names)}
    return bool(entry.uncalibrated) and published <= entry.uncalibrated


def configured_channels(
    entry: EquipmentEntry, registry_channels: set[str]
) -> list[tuple[str, str]]:
    """The channel names an equipment will publish, with their path in the table."""
    cfg = entry.driver
    channels = getattr(cfg, "channels", None)
    if channels:
        return [(ch.name, f".channels[{j}].name") for j, ch in enumerate(channels)]
    single = getattr(cfg, "channel", None)
    if single:
        return [(single, ".channel")]
    if len(registry_channels) == 1:
        return [(next(iter(registry_channels)), "")]
    return [("<unnamed>", ".channel")]
