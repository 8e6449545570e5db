"""The gateway's exception tree (STYLE.md "Errors")."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CalgateError", "ConfigError", "OutboxError", "SinkError"]


class CalgateError(Exception):
    """Base of the gateway's own errors."""


class ConfigError(CalgateError, ValueError):
    """A bad config or registry: ``errors`` lists every problem, ``file: path: message``."""

    def __init__(self, message: str, *, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors: list[str] = list(errors) or [message]


class SinkError(CalgateError):
    """A sink could not deliver (broker or database unreachable, batch rejected)."""


class OutboxError(CalgateError):
    """The outbox database cannot be opened or written, or the outbox is closed."""
