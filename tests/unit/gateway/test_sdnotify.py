"""sd_notify over a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for_async

from gateway import sdnotify


class FakeSystemd:
    """A bound AF_UNIX datagram socket, as systemd's notify socket is."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, timeout_s: float = 5.0) -> dict[str, str]:
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> list[dict[str, str]]:
        """Everything queued now, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(4096).decode()
                out.append(dict(line.split("=", 1) for line in data.split("\n")))
        except BlockingIOError:
            pass
        return out


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield FakeSystemd(sock)


def test_ready_status_stopping(systemd: FakeSystemd) -> None:
    assert sdnotify.ready("polling 3 instruments")
    assert systemd.recv() == {"READY": "1", "STATUS": "polling 3 instruments"}
    assert sdnotify.status("outbox\n12 rows")
    assert systemd.recv() == {"STATUS": "outbox 12 rows"}  # one line, always
    assert sdnotify.stopping()
    assert systemd.recv() == {"STOPPING": "1"}
    assert sdnotify.watchdog()
    assert systemd.recv() == {"WATCHDOG": "1"}


def test_reloading_carries_monotonic_usec(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading("reloading config")
    msg = systemd.recv()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert msg["STATUS"] == "reloading config"


def test_abstract_socket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"calgate-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert FakeSystemd(sock).recv() == {"READY": "1"}


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.notify("WATCHDOG=1") is False
    # a socket that went away: logged, not raised
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert sdnotify.ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # inherited from a parent
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", "x")
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval_s() is None


async def test_watchdog_pings_only_while_alive(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "40000")  # 40 ms: pings every 20 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    state = {"alive": True, "checks": 0}

    def alive() -> bool:
        state["checks"] += 1
        if state["alive"] is None:
            raise RuntimeError("monitor broken")
        return bool(state["alive"])

    task = asyncio.create_task(sdnotify.watchdog_task(alive), name="watchdog")
    try:
        got: list[dict[str, str]] = []
        while len(got) < 3:
            got += await asyncio.to_thread(lambda: [systemd.recv()])
        assert got == [{"WATCHDOG": "1"}] * 3

        # stalled: the check runs on, no ping is sent
        state["alive"] = False
        systemd.pending()  # drop what was sent before the flip
        start = state["checks"]
        await wait_for_async(lambda: state["checks"] >= start + 4, what="4 checks")
        assert systemd.pending() == []

        state["alive"] = None  # a raising check counts as not alive
        start = state["checks"]
        await wait_for_async(lambda: state["checks"] >= start + 3, what="3 checks")
        assert systemd.pending() == []

        state["alive"] = True  # alive again: pings resume
        assert await asyncio.to_thread(systemd.recv) == {"WATCHDOG": "1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_task_returns_without_a_watchdog(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(sdnotify.watchdog_task(lambda: True), timeout=5)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("NOTIFY_SOCKET")
    await asyncio.wait_for(sdnotify.watchdog_task(lambda: True), timeout=5)
    assert systemd.pending() == []


async def test_watchdog_explicit_interval(systemd: FakeSystemd) -> None:
    task = asyncio.create_task(sdnotify.watchdog_task(lambda: True, interval_s=0.02))
    try:
        assert await asyncio.to_thread(systemd.recv) == {"WATCHDOG": "1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
