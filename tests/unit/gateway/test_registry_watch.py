"""What a new registry owes the readings already made: one event per new finding and per
late or changed certificate of a polled channel, naming the window and the command; and
the registry's identity (digests, git commit)."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import require_binary

from calibration import Registry
from gateway.demo import example_registry
from gateway.registry_watch import (
    Memory,
    changes,
    load_memory,
    loaded_event,
    memory_of,
    revision_of,
    save_memory,
)

AT = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
POLLED = [
    ("PC-01", "pressure"),
    ("PT-101", "pressure"),
    ("PT-102", "pressure"),
    ("BAL-01", "weight"),
]
CONFIG = Path("/etc/calgate/calgate.toml")


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    shutil.copytree(example_registry(), root)
    return root


def _ws_p1_found_out(root: Path, calibrated: str) -> None:
    (root / "certificates" / "PCL-NEXT.toml").write_text(
        f'number = "PCL-NEXT"\nitem = "WS-P1"\nissued_by = "Lab"\ncalibrated = {calibrated}\n'
        'due = 2029-12-01\nstandards = ["REF-P1"]\nunit = "kPa"\n'
        "points = [{ reference = 10.0, indicated = 10.0, U = 0.003, k = 2 },"
        " { reference = 350.0, indicated = 350.0, U = 0.0095, k = 2 }]\n"
        "as_found = [{ reference = 10.0, indicated = 10.2, U = 0.003, k = 2 },"
        " { reference = 350.0, indicated = 350.2, U = 0.0095, k = 2 }]\n"
    )


def test_the_command_is_quoted_for_the_shell(registry: Path) -> None:
    old = Registry.load(registry)
    _ws_p1_found_out(registry, "2026-12-03")
    config = Path("/srv/lab a/calgate.toml")
    events = changes(memory_of(old), Registry.load(registry), POLLED, config=config, at=AT)
    (command,) = {e.detail["command"] for e in events if e.type == "traceability_suspect"}
    assert command == "calgate impact -c '/srv/lab a/calgate.toml' --standard WS-P1"
    assert shlex.split(command)[3] == str(config)


def test_a_new_finding_makes_each_polled_channel_suspect_once(registry: Path) -> None:
    old = Registry.load(registry)
    _ws_p1_found_out(registry, "2026-12-03")
    new = Registry.load(registry)
    events = changes(memory_of(old), new, POLLED, config=CONFIG, at=AT)
    suspect = {e.equipment: e for e in events if e.type == "traceability_suspect"}
    assert set(suspect) == {"PC-01", "PT-101", "PT-102"}  # BAL-01 is not WS-P1's
    e = suspect["PT-101"]
    assert e.detail["from"] == "2026-09-06"  # PCL-2026-0906, calibrated with WS-P1
    assert e.detail["to"] == "2026-12-03"
    assert e.detail["command"] == f"calgate impact -c {CONFIG} --standard WS-P1"
    assert e.detail["command"] in e.message
    assert suspect["PT-102"].detail["from"] == "2025-12-01"
    # the calibration is today's: no past reading went through another certificate
    assert [e for e in events if e.type == "certificate_superseded"] == []
    # once: the same registry again owes nothing
    assert changes(memory_of(new), new, POLLED, config=CONFIG, at=AT + timedelta(hours=1)) == []


def test_a_certificate_entered_late_supersedes_the_one_readings_went_through(
    registry: Path,
) -> None:
    old = Registry.load(registry)
    src = registry / "certificates" / "PCL-2026-0906.toml"
    text = (
        src.read_text()
        .replace("PCL-2026-0906", "PCL-2026-1120")
        .replace("calibrated = 2026-09-06", "calibrated = 2026-11-20")
    )
    (registry / "certificates" / "PCL-2026-1120.toml").write_text(text)
    new = Registry.load(registry)
    (e,) = changes(memory_of(old), new, POLLED, config=CONFIG, at=AT)
    assert (e.type, e.equipment, e.channel) == ("certificate_superseded", "PT-101", "pressure")
    assert e.detail["superseded"] == "PCL-2026-0906"
    assert (e.detail["from"], e.detail["to"]) == ("2026-11-20", "2026-12-03")
    assert e.detail["command"] == f"calgate impact -c {CONFIG} --certificate PCL-2026-1120"


def test_a_certificate_whose_content_changed_is_announced(registry: Path) -> None:
    old = Registry.load(registry)
    src = registry / "certificates" / "PCL-2026-0906.toml"
    src.write_text(src.read_text().replace("indicated = 100.0397", "indicated = 100.0497"))
    new = Registry.load(registry)
    (e,) = changes(memory_of(old), new, POLLED, config=CONFIG, at=AT)
    assert e.type == "certificate_superseded"
    assert e.detail["changed"] is True
    assert "changed in the registry" in e.message


def test_revision_digests_every_file_and_names_the_git_commit(registry: Path) -> None:
    rev = revision_of(registry)
    f = "certificates/PCL-2026-0906.toml"
    assert rev.files[f] == hashlib.sha256((registry / f).read_bytes()).hexdigest()
    assert len(rev.files) == len(list((registry / "equipment").iterdir())) + len(
        list((registry / "certificates").iterdir())
    )
    assert rev.commit is None  # a plain directory
    git = require_binary("git")
    run = lambda *a: subprocess.run([git, "-C", str(registry), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("-c", "user.email=q@lab", "-c", "user.name=QM", "add", ".")
    run("-c", "user.email=q@lab", "-c", "user.name=QM", "commit", "-qm", "registry")
    head = subprocess.run(
        [git, "-C", str(registry), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    rev2 = revision_of(registry)
    assert (rev2.commit, rev2.dirty, rev2.digest) == (head, False, rev.digest)
    _ws_p1_found_out(registry, "2026-12-03")
    rev3 = revision_of(registry)
    assert rev3.dirty is True
    assert rev3.digest != rev.digest
    e = loaded_event(rev3, AT, reload=True)
    assert e.type == "registry_loaded"
    assert e.detail["digest"] == rev3.digest
    assert "with local changes" in e.message


def test_the_memory_survives_a_restart_and_compares_as_the_registry_did(
    registry: Path, tmp_path: Path
) -> None:
    old = Registry.load(registry)
    path = tmp_path / "state" / "registry-memory.json"
    path.parent.mkdir()
    assert load_memory(path) is None
    save_memory(path, memory_of(old))
    kept = load_memory(path)
    assert kept == memory_of(old)
    _ws_p1_found_out(registry, "2026-12-03")
    new = Registry.load(registry)
    assert changes(kept, new, POLLED, config=CONFIG, at=AT) == changes(  # type: ignore[arg-type]
        memory_of(old), new, POLLED, config=CONFIG, at=AT
    )
    path.write_text("{not json")
    assert load_memory(path) is None  # a damaged memory: start afresh (and say so)
    assert isinstance(kept, Memory)
