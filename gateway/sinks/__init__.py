"""Sinks: the consumers of the outbox (MQTT, InfluxDB), one cursor and one task each."""

from gateway.sinks.base import Sink, backoff_delay
from gateway.sinks.influx import InfluxSink
from gateway.sinks.mqtt import MqttSink

__all__ = ["InfluxSink", "MqttSink", "Sink", "backoff_delay"]
