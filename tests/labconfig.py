"""Write a ``calgate.toml`` for a running :class:`simulators.lab.Lab` (tests)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.demo import example_registry, lab_toml

EXAMPLE_REGISTRY = example_registry()


def lab_config(
    lab: Any,
    directory: Path,
    *,
    mqtt_url: str | None = None,
    http: str | None = None,
    interval_s: float = 0.2,
    only: Iterable[str] | None = None,
) -> Path:
    """``directory/calgate.toml`` for the lab, site ``lab-t``, gateway ``edge-test``,
    fast backoff so tests see recoveries quickly."""
    path = directory / "calgate.toml"
    path.write_text(
        lab_toml(
            lab.endpoints(),
            registry=EXAMPLE_REGISTRY,
            state_dir=directory / "state",
            mqtt_url=mqtt_url,
            http=http,
            interval_s=interval_s,
            site="lab-t",
            gateway_id="edge-test",
            only=only,
            gateway_extra={"status_interval_s": 1.0, "backoff_min_s": 0.05, "backoff_max_s": 0.5},
        )
    )
    return path
