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

__all__ = [
    "LoopbackServer",
    "free_port",
    "require_binary",
    "wait_for",
    "wait_for_async",
    "wait_port",
]


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


class LoopbackServer:
    """A scripted asyncio server on a free loopback port, as an async context manager:
    subclasses make it in :meth:`_serve_on` and name their URL scheme; tasks started
    with :meth:`later` are cancelled on the way out."""

    scheme = "tcp"

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def _serve_on(self, host: str) -> asyncio.Server:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        self._server = await self._serve_on("127.0.0.1")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"{self.scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
