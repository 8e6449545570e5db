"""What installing calgate puts into an environment: four import packages, the example
lab as data (not a top-level ``examples`` package), and a refusal to run when another
distribution's package shadows one of the four."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def calgate(*argv: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv],
        capture_output=True, text=True, env=env, timeout=120, check=False, cwd="/",
    )  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "bench", "tests"
        ),
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (whl,) = out.glob("calgate-*.whl")
    return whl


def test_the_wheel_installs_four_packages_and_the_example_lab_and_docs_as_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].startswith("calgate-")}
    assert top == {"gateway", "drivers", "calibration", "simulators"}  # no "examples"
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    for f in [*(ROOT / "examples").rglob("*"), *(ROOT / "docs").rglob("*")]:
        if f.is_file():
            assert f"share/calgate/{f.relative_to(ROOT).as_posix()}" in data, f


def test_installed_the_demo_finds_its_example_lab_under_share(wheel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    subprocess.run(
        # -I: beside, not instead of, the calgate installed in this environment
        [sys.executable, "-m", "pip", "install", "-q", "-I", "--no-deps", "--prefix",
         str(prefix), str(wheel)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (site,) = prefix.glob("lib/python3*/site-packages")
    probe = subprocess.run(
        [sys.executable, "-c",
         "import gateway.installation as i, gateway.demo as d; "
         "print(i.__file__); print(d.example_registry())"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)},
        timeout=60, check=True, cwd="/",
    )  # fmt: skip
    module, registry = probe.stdout.splitlines()
    assert Path(module).is_relative_to(site)
    assert Path(registry) == prefix / "share" / "calgate" / "examples" / "registry"
    done = calgate("registry", "check", registry, pythonpath=site)
    assert done.returncode == 0, done.stderr
    assert "12 equipment" in done.stdout


def test_a_foreign_package_of_the_same_name_is_refused_with_a_clear_message(
    tmp_path: Path,
) -> None:
    (tmp_path / "drivers").mkdir()
    (tmp_path / "drivers" / "__init__.py").write_text('"""Somebody else\'s drivers."""\n')
    done = calgate("registry", "check", str(ROOT / "examples" / "registry"), pythonpath=tmp_path)
    assert done.returncode == 78
    assert (
        f"calgate: package 'drivers' is imported from {tmp_path / 'drivers'}, not calgate's"
        in done.stderr
    )
    assert "install calgate into its own virtual environment" in done.stderr
    assert "Traceback" not in done.stderr


def test_another_distribution_installing_a_sibling_name_is_refused(tmp_path: Path) -> None:
    info = tmp_path / "labtools-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labtools\nVersion: 2.0\n")
    (info / "top_level.txt").write_text("calibration\n")
    done = calgate("registry", "check", str(ROOT / "examples" / "registry"), pythonpath=tmp_path)
    assert done.returncode == 78
    assert "calgate: package 'calibration' is also installed by labtools" in done.stderr
