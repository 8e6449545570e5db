"""Where calgate's parts are installed: the example lab, and a guard against shadowing.

calgate installs four top-level import packages (``gateway``, ``drivers``,
``calibration``, ``simulators``: the layout the project was specified with). Another
distribution with a top-level package of the same name, installed into the same
environment or earlier on ``sys.path``, would be imported in its place and fail in
strange ways far from the cause. :func:`shadowing` names every such clash, and the CLI
refuses to run while there is one (install calgate into its own virtual environment).

The example lab and the reference are data, not import packages: ``examples/`` and
``docs/`` of a source checkout, or ``{prefix}/share/calgate/examples`` and ``…/docs`` of
an installed wheel.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sysconfig
from pathlib import Path

__all__ = ["PACKAGES", "docs_dir", "example_dir", "shadowing"]

PACKAGES = ("gateway", "drivers", "calibration", "simulators")
_HOME = Path(__file__).resolve().parent.parent  # where gateway/ is, and its siblings
_DIST = "calgate"


@functools.cache
def shadowing() -> list[str]:
    """Every sibling package that is not calgate's own, as a sentence; [] when none.
    Reads every installed distribution's file list: call it once (``calgate`` does, at
    start)."""
    problems: list[str] = []
    for name in PACKAGES[1:]:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is None:
            problems.append(f"package {name!r} is missing (calgate's is expected in {_HOME})")
        elif origin.parent.parent != _HOME:
            problems.append(
                f"package {name!r} is imported from {origin.parent}, not calgate's "
                f"(beside {_HOME / 'gateway'})"
            )
    owners = importlib.metadata.packages_distributions()
    for name in PACKAGES:
        others = sorted({d for d in owners.get(name, []) if d.lower() != _DIST})
        if others:
            problems.append(
                f"package {name!r} is also installed by {', '.join(others)}: one overwrites "
                "the other"
            )
    return problems


def example_dir() -> Path:
    """The example lab: the checkout's ``examples/``, else the installed copy."""
    return _data("examples", "calgate-lab.toml")


def docs_dir() -> Path:
    """The reference (``docs/``): the checkout's, else the installed copy."""
    return _data("docs", "README.md")


def _data(folder: str, marker: str) -> Path:
    """``folder`` of the checkout, else of ``share/calgate`` where the wheel put it
    (found through the distribution's file list: the prefix of a venv, ``--user``...)."""
    here = _HOME / folder
    if (here / marker).is_file():
        return here
    try:
        dist = importlib.metadata.distribution(_DIST)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    for f in (dist.files or []) if dist is not None else []:
        if f.as_posix().endswith(f"share/calgate/{folder}/{marker}"):
            return Path(str(dist.locate_file(f))).resolve().parent  # type: ignore[union-attr]
    return Path(sysconfig.get_path("data")) / "share" / "calgate" / folder
