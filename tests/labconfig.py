"""Write a ``calgate.toml`` for a running :class:`simulators.lab.Lab` (tests and benches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_REGISTRY = REPO / "examples" / "registry"


def lab_config(
    lab: Any,
    directory: Path,
    *,
    mqtt_url: str | None = None,
    influx: dict[str, str] | None = None,
    http: str | None = None,
    interval_s: float = 0.2,
    registry: Path = EXAMPLE_REGISTRY,
    extra: str = "",
    only: set[str] | None = None,
) -> Path:
    ep = lab.endpoints()
    lines = [
        "[gateway]",
        'id = "edge-test"',
        'site = "lab-t"',
        f'registry = "{registry}"',
        f'state_dir = "{directory / "state"}"',
        "status_interval_s = 1.0",
        "backoff_min_s = 0.05",
        "backoff_max_s = 0.5",
        "",
    ]
    if mqtt_url:
        lines += ["[mqtt]", f'url = "{mqtt_url}"', ""]
    if influx:
        lines += ["[influxdb]", *(f'{k} = "{v}"' for k, v in influx.items()), ""]
    lines += ["[http]", f'listen = "{http}"' if http else "enabled = false", ""]
    tables = {
        "BAL-01": ['driver = "mt-sics"', f'port = "{ep["BAL-01"]["tcp"]}"'],
        "BAL-02": ['driver = "sartorius-sbi"', f'port = "{ep["BAL-02"]["tcp"]}"'],
        "PC-01": ['driver = "scpi-pressure"', f'port = "{ep["PC-01"]["tcp"]}"'],
    }
    for eq, unit, order in (("PT-101", 1, "ABCD"), ("PT-102", 2, "CDAB")):
        tables[eq] = [
            'driver = "modbus"',
            f'url = "{ep[eq]["tcp"]}"',
            f"unit = {unit}",
            "[[equipment.channels]]",
            'name = "pressure"',
            'register = "input"',
            "address = 0",
            'type = "float32"',
            f'word_order = "{order}"',
            'unit = "mbar"',
        ]
    if "UTM-01" in ep:
        tables["UTM-01"] = [
            'driver = "opcua"',
            f'url = "{ep["UTM-01"]["opcua"]}"',
            "[[equipment.channels]]",
            'name = "force"',
            f'node = "{lab.machine.node_id("Force") if hasattr(lab.machine, "node_id") else "ns=2;s=Machine/Force"}"',
            'mode = "poll"',
            'unit = "kN"',
        ]
    for eq, body in tables.items():
        if only is not None and eq not in only:
            continue
        head = ["[[equipment]]", f'id = "{eq}"', f"interval_s = {interval_s}", "timeout_s = 1.0"]
        # keys of the equipment table must come before its [[equipment.channels]]
        keys = [
            b
            for b in body
            if "=" in b and not b.startswith("[") and body.index(b) < _first_sub(body)
        ]
        rest = body[len(keys) :]
        lines += [*head, *keys, *rest, ""]
    path = directory / "calgate.toml"
    path.write_text("\n".join(lines) + extra)
    return path


def _first_sub(body: list[str]) -> int:
    for i, b in enumerate(body):
        if b.startswith("["):
            return i
    return len(body)
