"""Ports for servers started on the fly (the demo's lab, the bench, the tests' servers)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_given: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago, for a server about to bind it.

    Chosen below the kernel's ephemeral range: a port from ``bind(0)`` comes from that
    range, where any outgoing connection (a gateway opening a hundred Modbus
    connections) may take it before the server binds it, and the server then fails
    with "address already in use". Never the same port twice in one process.
    """
    low = _ephemeral_low()
    if low > 2048:
        for _ in range(200):
            port = random.randrange(1024, low)
            if port in _given:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    with socket.socket() as s:  # no room below the range: any free port
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    _given.add(port)
    return port
