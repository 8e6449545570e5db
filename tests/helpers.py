"""Small helpers shared by the tests: free ports, readiness polling, required binaries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from simulators.net import free_port  # the tests' servers take their ports from it

__all__ = ["free_port", "require_binary", "wait_for", "wait_for_async", "wait_port"]


def require_binary(name: str, *candidates: str) -> str:
    """Path of a server binary; skip on a laptop without it, fail when ``CI`` is set."""
    for cand in (name, *candidates):
        path = shutil.which(cand) or (
            cand if os.path.isabs(cand) and os.access(cand, os.X_OK) else None
        )
        if path:
            return path
    msg = f"{name} is not installed (the test command installs it: scripts/test)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def wait_for(
    check: Callable[[], bool], *, timeout_s: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; never a fixed sleep standing in for readiness."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


async def wait_for_async(
    check: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 15.0, what: str = "condition"
) -> None:
    """The asyncio twin of :func:`wait_for`; ``check`` may be a coroutine function."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            res = check()
            if isinstance(res, Awaitable):
                res = await res
            if res:
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def wait_port(port: int, host: str = "127.0.0.1", *, timeout_s: float = 15.0) -> None:
    def probe() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True

    wait_for(probe, timeout_s=timeout_s, what=f"{host}:{port} to accept connections")


@contextlib.asynccontextmanager
async def running_sink(sink: Any) -> AsyncIterator[asyncio.Task[None]]:
    """A sink's ``run()`` as a task; on exit it is stopped (flushing what is committed)."""
    task = asyncio.create_task(sink.run(), name=f"sink:{sink.name}")
    try:
        yield task
    finally:
        await sink.stop(timeout_s=3)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
