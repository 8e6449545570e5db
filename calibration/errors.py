"""The calibration engine's exceptions.

``CalibrationError`` subclasses ``ValueError`` (STYLE.md "Errors"): bad calibration data
is a bad value. ``RegistryError`` carries every problem found in a registry at once, each
formatted ``file: path.to.field: message`` with ``file`` relative to the registry
directory, so a quality manager can fix them all in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CalibrationError", "RegistryError"]


class CalibrationError(ValueError):
    """Calibration data that cannot be used (bad unit, bad certificate, no such item)."""


class RegistryError(CalibrationError):
    """A registry that cannot be loaded; ``errors`` lists every problem found."""

    def __init__(self, errors: Iterable[str], *, root: str | None = None) -> None:
        self.errors: list[str] = list(errors)
        self.root = root
        head = f"{root}: " if root else ""
        n = len(self.errors)
        summary = f"{head}{n} error{'s' if n != 1 else ''} in the registry"
        super().__init__("\n".join([summary, *self.errors]))
