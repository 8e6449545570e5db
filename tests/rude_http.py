"""An HTTP server for the InfluxDB write endpoints that misbehaves on purpose (tests)."""

from __future__ import annotations

import asyncio
import socket
import struct

from helpers import LoopbackServer

__all__ = ["RudePeer"]


class RudePeer(LoopbackServer):
    """A raw TCP server for the write endpoints that misbehaves on the first requests, by
    ``script`` (one entry per connection): ``slow`` answers 204 after ``slow_s``;
    ``reset_body`` resets the connection halfway through reading the request body;
    ``reset_reply`` sends half a status line, then resets; ``500`` answers 500. Later
    connections get 204s (keep-alive). ``written`` holds the seqs of the requests
    answered 2xx."""

    scheme = "http"

    def __init__(self, script: list[str], slow_s: float = 1.0) -> None:
        self.script = list(script)
        self.slow_s = slow_s
        self.written: list[int] = []
        self.connections = 0
        super().__init__()

    async def _serve_on(self, host: str) -> asyncio.Server:
        return await asyncio.start_server(self._serve, host, 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        how = self.script.pop(0) if self.script else "ok"
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        h.split(b":", 1)[1]
                        for h in head.split(b"\r\n")
                        if h.lower().startswith(b"content-length:")
                    )
                )
                if how == "reset_body":
                    await reader.readexactly(length // 2)
                    return _reset(writer)
                body = await reader.readexactly(length)
                if how == "reset_reply":
                    writer.write(b"HTTP/1.1 20")
                    await writer.drain()
                    return _reset(writer)
                if how == "500":
                    writer.write(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"
                    )
                    await writer.drain()
                    return None
                if how == "slow":
                    await asyncio.sleep(self.slow_s)
                self.written.extend(
                    int(line.split(b"seq=")[1].split(b"i")[0]) for line in body.split(b"\n")
                )
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                how = "ok"
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashing server or a middlebox does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
