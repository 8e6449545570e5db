"""The private names of paho-mqtt that the MQTT sink's client uses are there, as they were.

The sink subclasses ``paho.mqtt.client.Client`` for its hot path (gateway/sinks/mqtt.py,
``PAHO_INTERNALS``); a paho release may rename or change any of them without notice. This
test fails, naming each one, before a changed paho breaks delivery at run time.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import MutableMapping
from importlib.metadata import version

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.sinks.mqtt import PAHO_INTERNALS, _BufferedClient

METHODS = {
    "_sock_recv": ["self", "bufsize"],
    "_packet_queue": ["self", "command", "packet", "mid", "qos", "info"],
    "_handle_pubackcomp": ["self", "cmd"],
    "_do_on_publish": ["self", "mid", "reason_code", "properties"],
}


def test_paho_is_the_pinned_release() -> None:
    assert version("paho-mqtt").startswith("2.2."), (
        "paho-mqtt is not 2.2: check every name of gateway.sinks.mqtt.PAHO_INTERNALS "
        "against the new release, then move the pin in pyproject.toml"
    )


def test_every_private_name_used_is_listed_and_present() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    missing = [name for name in PAHO_INTERNALS if not hasattr(client, name)]
    assert not missing, f"paho-mqtt {version('paho-mqtt')} lacks {missing}"
    for name, params in METHODS.items():
        got = list(inspect.signature(getattr(paho.Client, name)).parameters)
        assert got == params, f"paho.Client.{name}{got} changed (was {params})"
    assert set(METHODS) <= set(PAHO_INTERNALS)

    assert client._in_packet["command"] == 0
    assert "packet" in client._in_packet
    assert isinstance(client._last_bytes_received, float)
    assert isinstance(client._last_mid, int)
    assert isinstance(client._out_messages, MutableMapping)
    assert isinstance(client._out_message_mutex, type(threading.RLock()))
    assert client._protocol == MQTTProtocolVersion.MQTTv311
    assert client._sock is None


def test_the_subclass_uses_no_other_private_name() -> None:
    src = inspect.getsource(_BufferedClient)
    own = {"_rbuf", "_rpos", "_take_acks"}
    used = {f"_{n}" for n in re.findall(r"(?:self|super\(\))\._(\w+)", src)} - own
    assert used == set(PAHO_INTERNALS), (
        f"used, not listed: {used - set(PAHO_INTERNALS)}; listed, unused: "
        f"{set(PAHO_INTERNALS) - used}"
    )
