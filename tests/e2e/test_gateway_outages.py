"""Outages: the broker and the database cut mid-run, the gateway killed with SIGKILL.

After recovery every sequence number arrives in InfluxDB exactly once and on MQTT at
least once: the outbox commits before sending, sinks resume at their cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, wait_for_async
from labconfig import (
    calgate_run,
    committed_seq,
    every_seq_arrives,
    http_get,
    start_calgate_run,
)
from mqttsub import Subscriber
from servers import InfluxV1, Mosquitto

from gateway.demo import example_registry, lab_toml
from simulators.lab import Lab

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_influxd(tmp_path: Path) -> InfluxV1:
    server = InfluxV1(tmp_path)
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def outage_config(
    tmp_path: Path,
    lab: Lab,
    mosquitto: Mosquitto,
    influxd: InfluxV1,
    *,
    http: str | None = None,
    tail: str = "",
) -> Path:
    """calgate.toml for three transmitters at 20 Hz into both sinks (site lab-x), fast
    backoff; ``tail`` is appended (more tables). The broker is restarted with persistence,
    so the test's subscriber session and its queue live through the broker's outages."""
    influxd.create_database("calgate")
    mosquitto.persistence = True
    mosquitto.restart()
    config = tmp_path / "calgate.toml"
    text = lab_toml(
        lab.endpoints(),
        registry=example_registry(),
        state_dir=tmp_path / "state",
        mqtt_url=mosquitto.url,
        http=http,
        interval_s=0.05,
        site="lab-x",
        gateway_id="edge-x",
        influx={"api": "v1", "url": influxd.url, "database": "calgate", "flush_interval_s": "0.2"},
        only={"PT-101", "PT-102", "PC-01"},
        gateway_extra={"backoff_min_s": 0.05, "backoff_max_s": 0.3},
    )
    config.write_text(text.replace('flush_interval_s = "0.2"', "flush_interval_s = 0.2") + tail)
    return config


def influx_seqs(influxd: InfluxV1) -> list[int]:
    rows = influxd.rows("SELECT seq FROM reading", "calgate") + influxd.rows(
        "SELECT seq FROM event", "calgate"
    )
    return [int(r["seq"]) for r in rows]  # type: ignore[call-overload]


async def test_broker_and_database_outages_and_sigkill_lose_nothing_committed(
    tmp_path: Path, own_mosquitto: Mosquitto, own_influxd: InfluxV1
) -> None:
    state = tmp_path / "state"
    log = tmp_path / "gateway.log"
    async with Lab(fixed_ports=False, opcua=False, seed=5) as lab:
        config = outage_config(tmp_path, lab, own_mosquitto, own_influxd)
        with Subscriber(own_mosquitto.port, "calgate/lab-x/#", session="outage-test") as sub:
            gw = await start_calgate_run(config, log)
            try:
                n = lambda: len(sub.json("/reading"))  # noqa: E731
                await wait_for_async(lambda: n() > 30, timeout_s=30, what="first readings")
                # The broker goes away for a while, then comes back on the same port.
                own_mosquitto.stop()
                await asyncio.sleep(1.0)  # an outage of about a second, while polling goes on
                own_mosquitto.start()
                seen = n()
                await wait_for_async(
                    lambda: n() > seen + 30, timeout_s=30, what="readings after the broker's return"
                )
                # The database goes away, then comes back.
                own_influxd.stop()
                await asyncio.sleep(1.0)
                own_influxd.start()
                # The gateway is killed mid-stream, and started again.
                seen = n()
                await wait_for_async(lambda: n() > seen + 20, timeout_s=30, what="more readings")
                gw.send_signal(signal.SIGKILL)
                await gw.wait()
                gw = await start_calgate_run(config, log)
                seen = n()
                await wait_for_async(
                    lambda: n() > seen + 30, timeout_s=30, what="readings after the restart"
                )
            finally:
                if gw.returncode is None:
                    gw.send_signal(signal.SIGTERM)  # a clean stop flushes both sinks
                    await asyncio.wait_for(gw.wait(), 30)
            assert gw.returncode == 0, log.read_text()[-3000:]
            last = committed_seq(state)
            await every_seq_arrives(sub, last)
    expected = set(range(1, last + 1))
    mqtt_seqs = [m["seq"] for m in sub.json("/reading") + sub.json("/event")]
    missing = sorted(expected - set(mqtt_seqs))
    assert not missing, f"{len(missing)} seqs never arrived on MQTT: {missing[:20]}..{missing[-5:]}"
    assert set(mqtt_seqs) == expected  # at least once: duplicates allowed, gaps not
    assert sorted(influx_seqs(own_influxd)) == sorted(expected), "exactly once per series and time"


def metric(port: int, name: str) -> float:
    """The sum over the series of one metric of the gateway's /metrics."""
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    )


async def test_both_sinks_down_with_a_small_outbox_drop_the_oldest_and_say_so(
    tmp_path: Path, own_mosquitto: Mosquitto, own_influxd: InfluxV1
) -> None:
    """Broker and database down together while the outbox (64 KiB: about a hundred rows)
    overflows: the oldest rows go, data_dropped events say which and how many, and every
    row not dropped reaches both sinks when they return."""
    port = free_port()
    log = tmp_path / "gateway.log"
    async with Lab(fixed_ports=False, opcua=False, seed=6) as lab:
        config = outage_config(
            tmp_path,
            lab,
            own_mosquitto,
            own_influxd,
            http=f"127.0.0.1:{port}",
            tail="\n[outbox]\nmax_bytes = 65536\n",
        )
        with Subscriber(own_mosquitto.port, "calgate/lab-x/#", session="drop-test") as sub:
            gw = await start_calgate_run(config, log)
            try:
                await wait_for_async(
                    lambda: len(sub.json("/reading")) > 30, timeout_s=30, what="first readings"
                )
                own_mosquitto.stop()
                own_influxd.stop()
                # about three outboxes' worth of rows arrive while both sinks are away
                await wait_for_async(
                    lambda: metric(port, "calgate_outbox_dropped_total") >= 300,
                    timeout_s=60,
                    what="rows dropped",
                )
                own_mosquitto.start()
                own_influxd.start()

                def told() -> bool:  # caught up, and the events count every row dropped
                    return metric(port, "calgate_outbox_depth") == 0 and sum(
                        episodes(sub).values()
                    ) == metric(port, "calgate_outbox_dropped_total")

                await wait_for_async(told, timeout_s=60, what="caught up and told")
                dropped = metric(port, "calgate_outbox_dropped_total")
            finally:
                if gw.returncode is None:
                    gw.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(gw.wait(), 30)
            assert gw.returncode == 0, log.read_text()[-3000:]
            last = committed_seq(tmp_path / "state")
            await wait_for_async(
                lambda: max(sub.seqs(), default=0) >= last, timeout_s=10, what="the last seq"
            )
    expected = set(range(1, last + 1))
    on_mqtt = sub.seqs()
    in_influx = set(influx_seqs(own_influxd))
    drops = [m for m in sub.json("/event") if m["type"] == "data_dropped"]
    lost = (expected - on_mqtt) | (expected - in_influx)
    assert lost, "nothing was dropped"
    # an episode's events are cumulative: its newest tells it all (the earlier ones may
    # have been dropped in turn); the oldest rows go, one run of seqs per episode
    newest = {d["oldest_seq"]: d for d in sorted(drops, key=lambda d: d["seq"])}
    said = set().union(*(range(d["oldest_seq"], d["newest_seq"] + 1) for d in newest.values()))
    assert lost <= said, f"lost and not said: {sorted(lost - said)[:20]}"
    assert sum(d["count"] for d in newest.values()) == len(said) == dropped
    assert {d["reason"] for d in drops} == {"max_bytes"}
    assert set(range(max(said) + 1, last + 1)) <= on_mqtt & in_influx
    # said but not lost: rows a sink had taken when the cut came, before its ack arrived
    assert len(said - lost) < 200
    # a few events a second at most, not one per handful of dropped rows
    assert len(drops) < len(said) / 10


def episodes(sub: Subscriber) -> dict[int, int]:
    """The count of each drop episode (keyed by its oldest seq) as its newest event says."""
    out: dict[int, int] = {}
    for d in sorted(sub.json("/event"), key=lambda d: d["seq"]):
        if d["type"] == "data_dropped":
            out[d["oldest_seq"]] = d["count"]
    return out


async def test_twenty_sigkills_at_random_moments_lose_no_committed_seq_and_reuse_none(
    tmp_path: Path, own_mosquitto: Mosquitto, own_influxd: InfluxV1
) -> None:
    """``calgate run`` SIGKILLed 20 times and started again at once: every other time at
    a random moment of its start (0.05-0.6 s after the exec), else at a random moment
    (0-0.4 s) after it committed more rows (while it polls, commits and sends). Every
    committed seq reaches both sinks, and a seq is never given to two different rows:
    each seq's copies on MQTT are the same message."""
    rng = random.Random(10)
    log = tmp_path / "gateway.log"
    seen_committed: list[int] = []
    async with Lab(fixed_ports=False, opcua=False, seed=7) as lab:
        config = outage_config(tmp_path, lab, own_mosquitto, own_influxd)
        with Subscriber(own_mosquitto.port, "calgate/lab-x/#", session="kill-test") as sub:
            db = tmp_path / "state" / "outbox.sqlite"
            for i in range(20):
                gw = await start_calgate_run(config, log)
                if i % 2:
                    top = committed_seq(tmp_path / "state") if db.exists() else 0
                    await wait_for_async(
                        lambda top=top: db.exists() and committed_seq(tmp_path / "state") > top + 5,
                        timeout_s=30,
                        what="more rows committed",
                    )
                    await asyncio.sleep(rng.uniform(0.0, 0.4))  # a random moment, not a wait
                else:
                    await asyncio.sleep(rng.uniform(0.05, 0.6))
                gw.send_signal(signal.SIGKILL)
                await gw.wait()
                if db.exists():
                    seen_committed.append(committed_seq(tmp_path / "state"))
            gw = await start_calgate_run(config, log)
            try:
                top = max(seen_committed, default=0)
                await wait_for_async(
                    lambda: max(sub.seqs(), default=0) > top + 30,
                    timeout_s=30,
                    what="readings after the last kill",
                )
            finally:
                gw.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(gw.wait(), 30) == 0, log.read_text()[-3000:]
            last = committed_seq(tmp_path / "state")
            await every_seq_arrives(sub, last)
    assert seen_committed == sorted(seen_committed), "the committed seq went back"
    assert len(set(seen_committed)) >= 10  # most kills came while it committed rows
    expected = set(range(1, last + 1))
    missing = expected - sub.seqs()
    assert not missing, f"{len(missing)} committed seqs never reached MQTT: {sorted(missing)[:20]}"
    assert sorted(influx_seqs(own_influxd)) == sorted(expected), "exactly once in InfluxDB"
    copies: dict[int, set[bytes]] = {}
    for topic, payload, _ in sub.messages:
        if topic.endswith(("/reading", "/event")):
            copies.setdefault(json.loads(payload)["seq"], set()).add(payload)
    reused = {seq: p for seq, p in copies.items() if len(p) > 1}
    assert not reused, f"seqs given to different rows: {sorted(reused)[:10]}"


@pytest.fixture
def tiny_state(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/state`` as a 4 MiB tmpfs of its own (mounting needs root)."""
    state = tmp_path / "state"
    state.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        msg = f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


async def test_a_full_disk_under_state_dir_is_said_and_loses_nothing(
    tmp_path: Path, tiny_state: Path, own_mosquitto: Mosquitto, own_influxd: InfluxV1
) -> None:
    """state_dir on a 4 MiB filesystem that fills up while the gateway runs: commits
    fail (an error in the log, /healthz 503 saying so within seconds, rows kept in
    memory, polling goes on); when space is freed every seq reaches both sinks."""
    log = tmp_path / "gateway.log"
    filler = tiny_state / "filler"
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"
    async with Lab(fixed_ports=False, opcua=False, seed=8) as lab:
        config = outage_config(tmp_path, lab, own_mosquitto, own_influxd, http=f"127.0.0.1:{port}")
        with Subscriber(own_mosquitto.port, "calgate/lab-x/#", session="disk-test") as sub:
            async with calgate_run(config, log) as gw:
                await wait_for_async(lambda: len(sub.seqs()) > 30, timeout_s=30, what="readings")
                with filler.open("wb") as fh, contextlib.suppress(OSError):
                    while True:  # every free block of the filesystem
                        fh.write(b"\0" * 65536)
                        fh.flush()
                await wait_for_async(
                    lambda: "outbox commit failed" in log.read_text(),
                    timeout_s=30,
                    what="the commit error in the log",
                )
                # before: unhealthy only once 100,000 rows waited (half an hour here)
                await wait_for_async(
                    lambda: http_get(healthz)[0] == 503, timeout_s=10, what="/healthz 503"
                )
                assert "outbox cannot commit: database or disk is full" in http_get(healthz)[1]
                before = max(sub.seqs())
                filler.unlink()
                await wait_for_async(
                    lambda: max(sub.seqs()) > before + 60, timeout_s=30, what="delivery again"
                )
                await wait_for_async(
                    lambda: http_get(healthz)[0] == 200, timeout_s=10, what="/healthz 200"
                )
                gw.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(gw.wait(), 30) == 0, log.read_text()[-3000:]
            last = committed_seq(tiny_state)
            assert await every_seq_arrives(sub, last)
    assert "database or disk is full" in log.read_text()
    assert sorted(influx_seqs(own_influxd)) == list(range(1, last + 1))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
async def test_a_damaged_outbox_at_start_is_refused_with_what_to_do(
    tmp_path: Path, own_mosquitto: Mosquitto, own_influxd: InfluxV1, damage: str
) -> None:
    """Random bytes, or a real outbox cut to half its size: ``calgate run`` exits 69
    (systemd retries) saying the file is damaged and what to do; the file is left as it
    was (never replaced by an empty outbox behind the operator's back)."""
    state = tmp_path / "state"
    log = tmp_path / "gateway.log"
    async with Lab(fixed_ports=False, opcua=False, seed=9) as lab:
        config = outage_config(tmp_path, lab, own_mosquitto, own_influxd)
        db = state / "outbox.sqlite"
        if damage == "garbage":
            state.mkdir()
            db.write_bytes(random.Random(1).randbytes(100_000))
        else:
            async with calgate_run(config, log) as gw:
                await wait_for_async(lambda: committed_seq(state) > 200, what="rows")
                gw.send_signal(signal.SIGTERM)
                assert await gw.wait() == 0
            with db.open("r+b") as fh:
                fh.truncate(db.stat().st_size // 2)
        before = db.read_bytes()
        async with calgate_run(config, log) as gw:
            assert await asyncio.wait_for(gw.wait(), 30) == 69
    assert db.read_bytes() == before
    last = log.read_text().splitlines()[-1]
    assert last.startswith(f"calgate: cannot start: cannot open outbox {db}: ")
    assert last.endswith(
        "the file is damaged: move it aside (keep it for recovery) to start with an empty "
        "outbox, whose seq starts again at 1"
    )
