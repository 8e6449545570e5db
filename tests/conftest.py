"""Session-wide fixtures: real servers on free loopback ports; no test leaves a task or a
thread behind."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from servers import InfluxV1, Mosquitto, VictoriaMetrics


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A shared broker for the session; tests use unique topics."""
    server = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own, which the test may stop and restart."""
    server = Mosquitto(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxV1]:
    server = InfluxV1(tmp_path_factory.mktemp("influxd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path_factory.mktemp("victoria"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test, for topics, databases and buckets."""
    import re
    import uuid

    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    return f"{base}_{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- leaks
# A test fails when it leaves a task or a thread behind: a leak in the code under test
# (a task never awaited or cancelled, a thread never joined) shows where it started,
# not as a flaky failure of a later test.

_GRACE_S = 2.0  # what a test leaves may still be finishing (a joined thread, a callback)


def _is_function_loop_test(request: pytest.FixtureRequest) -> bool:
    if not inspect.iscoroutinefunction(getattr(request, "function", None)):
        return False
    marker = request.node.get_closest_marker("asyncio")
    return marker is None or marker.kwargs.get("loop_scope", "function") == "function"


_THREADS = pytest.StashKey[set[threading.Thread]]()


@pytest.fixture(autouse=True)
def no_leftover_tasks(request: pytest.FixtureRequest) -> None:
    """An async test (on its own loop) fails when its tasks outlive it."""
    if _is_function_loop_test(request):
        request.getfixturevalue("_no_leftover_tasks")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    item.stash[_THREADS] = set(threading.enumerate())
    return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After every fixture of the test is torn down (its event loop closed, joining the
    loop's executor threads): no thread the test started may still run."""
    result = yield
    before = item.stash.get(_THREADS, None)
    if before is None:
        return result
    deadline = time.monotonic() + _GRACE_S
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if left:
        pytest.fail(f"the test left {len(left)} thread(s) running: {[t.name for t in left]}")
    return result


@pytest_asyncio.fixture
async def _no_leftover_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    deadline = time.monotonic() + _GRACE_S
    while True:
        left = [t for t in asyncio.all_tasks() if t not in before and t is not me and not t.done()]
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    if left:
        names = [f"{t.get_name()} ({t.get_coro()!r})" for t in left]
        for t in left:
            t.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        pytest.fail(f"the test left {len(left)} task(s) pending: {names}")
