"""The event loop ``calgate run`` runs on: uvloop when configured and installed.

``[gateway] event_loop = "uvloop"`` (the default) runs the service on uvloop, libuv's
event loop for asyncio, on which the gateway costs less CPU per value (bench/README.md).
``"asyncio"`` keeps the standard library's loop; so does a machine without uvloop (with
a warning).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["EventLoop", "loop_factory", "name", "run"]

log = logging.getLogger(__name__)

EventLoop = Literal["uvloop", "asyncio"]
T = TypeVar("T")


def loop_factory(kind: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for ``asyncio.Runner``; None for the standard loop."""
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("event_loop = %r but uvloop is not installed: using asyncio's loop", kind)
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: EventLoop = "uvloop") -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def name(loop: asyncio.AbstractEventLoop) -> EventLoop:
    """Which loop this is, for ``/status``."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
