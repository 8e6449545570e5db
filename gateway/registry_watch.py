"""Which registry the gateway applied, and what a new one means for readings already made.

- :func:`revision_of` identifies a registry directory: the SHA-256 of every file under
  ``equipment/`` and ``certificates/`` and one digest over them all (path and content),
  plus the git commit when the registry is a git checkout (and whether its work tree
  differs from that commit). The gateway emits it as a ``registry_loaded`` event at
  start and at each reload and shows it in ``/status``, so any stored reading can be tied
  to the certificates in force when it was made.
- :func:`changes` compares the registry the gateway applied last (its :class:`Memory`,
  kept in the state directory, so a restart compares as a reload does) with the one a
  reload or a start brings, for the channels the gateway polls, and gives the events owed once for that change:
  ``traceability_suspect`` when a new finding (an item found out of tolerance as found,
  :mod:`calibration.revision`) puts readings of a channel in doubt, and
  ``certificate_superseded`` when a channel's past readings went through a certificate
  that the registry no longer holds in force for them (a certificate entered late or
  reissued, or one whose content changed). Each names the window and the
  ``calgate impact`` command that re-evaluates it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.model import Event
from gateway.outbox import DROP_EQUIPMENT

if TYPE_CHECKING:
    from calibration import Certificate, Registry

__all__ = [
    "Memory",
    "RegistryRevision",
    "changes",
    "load_memory",
    "loaded_event",
    "memory_of",
    "revision_of",
    "save_memory",
]

log = logging.getLogger(__name__)

_GIT_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryRevision:
    """A registry directory's content: ``files`` maps each path (relative, POSIX) to its
    SHA-256; ``digest`` is the SHA-256 over the sorted ``path\\0sha\\n`` lines."""

    root: str
    digest: str
    files: dict[str, str]
    commit: str | None = None
    dirty: bool | None = None  # the work tree differs from ``commit`` (None: not git)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "digest": self.digest,
            "files": dict(self.files),
            "commit": self.commit,
            "dirty": self.dirty,
        }


def revision_of(root: Path) -> RegistryRevision:
    files: dict[str, str] = {}
    for sub in ("equipment", "certificates"):
        folder = root / sub
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                files[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    commit, dirty = _git(root)
    return RegistryRevision(
        root=str(root), digest=h.hexdigest(), files=files, commit=commit, dirty=dirty
    )


def _git(root: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, work tree of the registry differs) when ``root`` is in a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False,
        )  # fmt: skip
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "."],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:  # no git, or it hangs
        log.debug("registry %s: git: %s", root, exc)
        return None, None
    return head.stdout.strip() or None, bool(status.stdout.strip())


def loaded_event(rev: RegistryRevision, at: datetime, *, reload: bool) -> Event:
    commit = (
        f" at commit {rev.commit[:12]}" + (" (with local changes)" if rev.dirty else "")
        if rev.commit
        else ""
    )
    return Event(
        type="registry_loaded",
        severity="info",
        equipment=DROP_EQUIPMENT,
        message=f"registry {rev.root} {'reloaded' if reload else 'loaded'}: "
        f"{len(rev.files)} files, digest {rev.digest[:12]}{commit}",
        t_wall=at,
        detail=rev.to_json() | {"reload": reload},
    )


def _command(config: Path, option: str, value: str) -> str:
    """The command line, quoted for a POSIX shell (a config path with a space, an id
    with a quote), so it can be pasted as it stands."""
    return shlex.join(["calgate", "impact", "-c", str(config), option, value])


@dataclass(frozen=True, slots=True)
class Memory:
    """What a registry said, kept to compare the next one with (in the state directory,
    so a restart compares as a reload does): its findings, and each channel's
    certificates as ``(number, calibrated, content digest)``, oldest first."""

    findings: frozenset[tuple[str, str]]
    certificates: dict[str, tuple[tuple[str, str, str], ...]]  # "EQ/CH" -> certificates

    def in_force(self, eq_id: str, channel: str, day: date) -> str | None:
        best = None
        for number, calibrated, _ in self.certificates.get(f"{eq_id}/{channel}", ()):
            if date.fromisoformat(calibrated) <= day:
                best = number
        return best

    def content(self, eq_id: str, channel: str, number: str) -> str | None:
        for n, _, sha in self.certificates.get(f"{eq_id}/{channel}", ()):
            if n == number:
                return sha
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "findings": sorted(list(f) for f in self.findings),
            "certificates": {k: [list(c) for c in v] for k, v in sorted(self.certificates.items())},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Memory:
        return cls(
            findings=frozenset((str(a), str(b)) for a, b in doc["findings"]),
            certificates={
                str(k): tuple((str(n), str(c), str(h)) for n, c, h in v)
                for k, v in doc["certificates"].items()
            },
        )


def _content(cert: Certificate) -> str:
    text = json.dumps(cert.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def memory_of(reg: Registry) -> Memory:
    from calibration.revision import findings

    certs: dict[str, tuple[tuple[str, str, str], ...]] = {}
    for eq_id in reg.equipment_ids():
        for ch in reg.require(eq_id).channel_names:
            certs[f"{eq_id}/{ch}"] = tuple(
                (c.number, c.calibrated.isoformat(), _content(c))
                for c in reg.certificates(eq_id, ch)
            )
    found = frozenset((f.certificate.number, f.found_by.number) for f in findings(reg))
    return Memory(findings=found, certificates=certs)


def load_memory(path: Path) -> Memory | None:
    """The memory saved at ``path``; None when there is none (or it cannot be read)."""
    try:
        return Memory.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: cannot read the last registry's memory (%s): starting afresh", path, exc)
        return None


def save_memory(path: Path, memory: Memory) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(memory.to_json()), encoding="utf-8")
    tmp.replace(path)


def changes(
    old: Memory,
    new: Registry,
    channels: Iterable[tuple[str, str]],
    *,
    config: Path,
    at: datetime,
) -> list[Event]:
    """The events owed for the polled ``channels`` when ``new`` follows the registry that
    ``old`` remembers (:func:`memory_of`)."""
    from calibration.revision import findings
    from gateway.impact import select

    polled = set(channels)
    today = at.date()
    out: list[Event] = []
    # New findings: every polled channel whose readings they put in doubt.
    for f in findings(new):
        if (f.certificate.number, f.found_by.number) in old.findings:
            continue
        sel = select(new, certificate=f.certificate.number)
        command = _command(config, "--standard", f.item)
        for t in sel.targets:
            if (t.equipment, t.channel) not in polled:
                continue
            start = min(a for a, _ in t.windows)
            ends = [b for _, b in t.windows]
            end = None if any(b is None for b in ends) else max(b for b in ends if b is not None)
            frm = _day(start)
            to = today if end is None else min(today, _day(end) - timedelta(days=1))
            out.append(
                Event(
                    type="traceability_suspect",
                    severity="warning",
                    equipment=t.equipment,
                    channel=t.channel,
                    message=(
                        f"{f.item} was found out of tolerance (as found) in {f.found_by.number}: "
                        f"readings of {t.equipment}/{t.channel} from {frm.isoformat()} to "
                        f"{to.isoformat()} ({', '.join(t.certificates)}) are suspect; "
                        f"re-evaluate them with: {command}"
                    ),
                    t_wall=at,
                    detail={
                        "standard": f.item,
                        "found_by": f.found_by.number,
                        "certificates": list(t.certificates),
                        "from": frm.isoformat(),
                        "to": to.isoformat(),
                        "command": command,
                    },
                )
            )
    # Certificates entered late or changed: past readings went through another one.
    for eq_id, ch in sorted(polled):
        if new.equipment(eq_id) is None:
            continue
        for c in new.certificates(eq_id, ch):
            prev = old.content(eq_id, ch, c.number)
            if prev is not None and prev == _content(c):
                continue
            if c.calibrated >= today:
                continue  # a calibration from today on: no reading made before it is touched
            nxt = new.successor(c)
            to = today if nxt is None else min(today, nxt.calibrated - timedelta(days=1))
            was = old.in_force(eq_id, ch, c.calibrated)
            what = (
                f"certificate {c.number} changed in the registry"
                if prev is not None
                else f"certificate {c.number} (calibrated {c.calibrated.isoformat()}) was entered"
                + (f" after {was}" if was is not None else "")
            )
            command = _command(config, "--certificate", c.number)
            out.append(
                Event(
                    type="certificate_superseded",
                    severity="warning",
                    equipment=eq_id,
                    channel=ch,
                    message=(
                        f"{what}: readings of {eq_id}/{ch} from {c.calibrated.isoformat()} to "
                        f"{to.isoformat()} were corrected through "
                        f"{'its old content' if prev is not None else (was or 'no certificate')}; "
                        f"re-evaluate them with: {command}"
                    ),
                    t_wall=at,
                    detail={
                        "certificate": c.number,
                        "superseded": None if prev is not None else was,
                        "changed": prev is not None,
                        "from": c.calibrated.isoformat(),
                        "to": to.isoformat(),
                        "command": command,
                    },
                )
            )
    return out


def _day(ns: int) -> date:
    return date(1970, 1, 1) + timedelta(days=ns // 86_400_000_000_000)
