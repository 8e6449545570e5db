"""A real MQTT subscriber for the tests: collects messages of a topic filter (paho, own thread)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["Subscriber"]


class Subscriber:
    """``with Subscriber(port, "calgate/#") as sub: ... sub.wait_for(pred)``."""

    def __init__(
        self, port: int, topic: str, host: str = "127.0.0.1", *, session: str | None = None
    ) -> None:
        """``session``: a client id whose persistent session (clean_session false) keeps
        QoS 1 messages queued at the broker while this subscriber is disconnected."""
        self.port = port
        self.host = host
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=session or "",
            clean_session=session is None,
        )
        self._client.reconnect_delay_set(0.05, 0.5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_connect = lambda c, *a: c.subscribe(self.topic, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def __enter__(self) -> Subscriber:
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("no SUBACK")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def json(self, suffix: str = "") -> list[dict[str, Any]]:
        with self._lock:
            msgs = list(self.messages)
        return [json.loads(p) for t, p, _ in msgs if t.endswith(suffix) and p]

    def seqs(self) -> set[int]:
        """The seqs of every Measurement and Event received (statuses carry none)."""
        return {m["seq"] for m in self.json("/reading") + self.json("/event")}

    def barrier(self, topic: str, timeout_s: float = 10.0) -> None:
        """Publish a marker on ``topic`` (which this subscription must match) and wait for
        it: the broker delivers in order, so everything it had for us (the retained
        messages sent on subscribing) has arrived. No fixed sleep for an absence."""
        marker = f"barrier-{time.monotonic_ns()}".encode()
        self._client.publish(topic, marker, qos=1)
        self.wait_for(
            lambda s: any(p == marker for _, p, _ in list(s.messages)),
            timeout_s=timeout_s,
            what=f"the barrier on {topic}",
        )

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _, _ in self.messages]

    def wait_for(
        self, pred: Callable[[Subscriber], bool], timeout_s: float = 20.0, what: str = "messages"
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred(self):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out waiting for {what}; got {len(self.messages)} messages"
                )
            time.sleep(0.02)
