"""A slowloris client on the HTTP server: hundreds of connections that never finish
their request headers, against ``calgate run`` with 256 file descriptors (a systemd
service gets 1024 by default). Polling goes on, MQTT gets every reading, and a client
that asks properly is answered."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from helpers import free_port, wait_for_async
from labconfig import calgate, committed_seq, every_seq_arrives, http_get, lab_config
from mqttsub import Subscriber
from servers import Mosquitto

from simulators.lab import Lab

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 400  # more than the gateway's file descriptors


async def slow_client(port: int, opened: list[asyncio.StreamWriter]) -> None:
    """Connect, start a request, then add a header line every half second, for ever."""
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(writer)
        writer.write(b"GET /status HTTP/1.1\r\nHost: gateway\r\n")
        while True:
            await asyncio.sleep(0.5)
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()


async def test_a_slowloris_client_stalls_neither_polling_nor_other_clients(
    tmp_path: Path, own_mosquitto: Mosquitto
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    async with Lab(fixed_ports=False, opcua=False, seed=31) as lab:
        config = lab_config(
            lab, tmp_path, mqtt_url=own_mosquitto.url, http=f"127.0.0.1:{port}",
            only={"PT-101", "PT-102", "PC-01"}, interval_s=0.05,
        )  # fmt: skip
        with log.open("ab") as out, Subscriber(own_mosquitto.port, "calgate/lab-t/#") as sub:
            gw = await asyncio.create_subprocess_exec(
                "prlimit", "--nofile=256:256", *calgate(), "run", "-c", str(config),
                stdout=out, stderr=out,
            )  # fmt: skip
            opened: list[asyncio.StreamWriter] = []
            attack: list[asyncio.Task[None]] = []
            try:
                await wait_for_async(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
                                     timeout_s=30, what="the gateway healthy")  # fmt: skip
                attack = [
                    asyncio.create_task(slow_client(port, opened)) for _ in range(SLOW_CLIENTS)
                ]
                await wait_for_async(lambda: len(opened) == SLOW_CLIENTS, what="slow clients")
                before = max(sub.seqs())
                # while they hold on: readings keep coming, a proper client is answered
                await wait_for_async(
                    lambda: max(sub.seqs()) > before + 100, timeout_s=30, what="readings"
                )
                code, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/healthz")
                assert code == 200
                code, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/status")
                assert code == 200
                assert '"PT-101"' in body
            finally:
                for task in attack:
                    task.cancel()
                await asyncio.gather(*attack, return_exceptions=True)
                for writer in opened:
                    writer.close()
                gw.terminate()
                assert await asyncio.wait_for(gw.wait(), 30) == 0, log.read_text()[-3000:]
            assert await every_seq_arrives(sub, committed_seq(tmp_path / "state"))
    assert not [m for m in sub.json("/event") if m["type"] == "equipment_offline"]
    assert "Too many open files" not in log.read_text()
