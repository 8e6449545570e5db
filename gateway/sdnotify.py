"""The systemd notify protocol, without a dependency (``sd_notify(3)``).

With ``Type=notify`` systemd waits for ``READY=1`` before it counts the service as
started, shows ``STATUS=`` in ``systemctl status``, and with ``WatchdogSec=`` restarts
the service when ``WATCHDOG=1`` stops arriving. Everything here is a no-op when
``$NOTIFY_SOCKET`` is unset (run by hand, in tests, in containers).

The service calls :func:`ready` once its sinks, status server and poll loops run,
:func:`reloading` then :func:`ready` around a SIGHUP reload, :func:`stopping` on SIGTERM,
and runs :func:`watchdog_task` with an ``alive`` check that is false when the poll loops
stalled, so a wedged gateway is restarted rather than pinged forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval_s",
    "watchdog_task",
]

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()  # abstract namespace
    return name


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to ``$NOTIFY_SOCKET``.

    Returns True when sent, False when there is no socket or sending failed (a notify
    failure is logged, never raised: the service must not die because systemd is gone).
    """
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return False
    if not (name.startswith(("/", "@"))):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name", name)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), _address(name))
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", state.split("\n", 1)[0], exc)
        return False
    return True


def ready(text: str | None = None) -> bool:
    """Startup (or a reload) finished."""
    return notify("READY=1" + (f"\nSTATUS={_one_line(text)}" if text else ""))


def reloading(text: str | None = None) -> bool:
    """A reload began; send :func:`ready` when it is done.

    ``MONOTONIC_USEC`` makes this valid for ``Type=notify-reload`` (systemd ≥ 253) too;
    with ``Type=notify`` + ``ExecReload=kill -HUP`` systemd shows "reloading" meanwhile.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = f"RELOADING=1\nMONOTONIC_USEC={usec}"
    return notify(msg + (f"\nSTATUS={_one_line(text)}" if text else ""))


def stopping(text: str | None = None) -> bool:
    """Shutdown began."""
    return notify("STOPPING=1" + (f"\nSTATUS={_one_line(text)}" if text else ""))


def status(text: str) -> bool:
    """A one-line status for ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """One keep-alive ping."""
    return notify("WATCHDOG=1")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval_s() -> float | None:
    """The watchdog timeout systemd set for this process (``WatchdogSec=``), or None.

    None when ``$WATCHDOG_USEC`` is unset, not a positive integer, or when
    ``$WATCHDOG_PID`` names another process (the variables were inherited).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


async def watchdog_task(alive: Callable[[], bool], *, interval_s: float | None = None) -> None:
    """Ping ``WATCHDOG=1`` every half watchdog interval while ``alive()`` is true.

    When ``alive()`` is false (or raises), the ping is withheld and a warning logged; if
    that lasts a whole interval systemd kills and restarts the service. The task also
    stops pinging when the event loop itself is stuck, since it runs on that loop.
    Returns at once when there is no watchdog (``interval_s`` None and no
    ``$WATCHDOG_USEC``) or no ``$NOTIFY_SOCKET``; otherwise runs until cancelled.
    """
    timeout_s = interval_s if interval_s is not None else watchdog_interval_s()
    if timeout_s is None or timeout_s <= 0 or not os.environ.get("NOTIFY_SOCKET"):
        return
    period_s = timeout_s / 2
    log.info("systemd watchdog: %.1f s timeout, pinging every %.1f s", timeout_s, period_s)
    was_alive = True
    while True:
        try:
            ok = bool(alive())
        except Exception:
            log.exception("watchdog alive() check raised")
            ok = False
        if ok:
            watchdog()
            if not was_alive:
                log.warning("watchdog: alive again, pinging resumed")
        elif was_alive:
            log.warning("watchdog: gateway not alive, withholding pings (systemd will restart it)")
        was_alive = ok
        await asyncio.sleep(period_s)
