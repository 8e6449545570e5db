"""docs/ is the user's reference: it names every registry field, command, metric and
payload field the code has, and the CLI points to it (not to files outside the repo)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from records import meas

from calibration.conformity import OimlR76, Tolerance
from calibration.registry import Certificate, Channel, Equipment, Point
from gateway.cli import build_parser
from gateway.installation import docs_dir
from gateway.metrics import Metrics
from gateway.wire import measurement_payload, recorrected_line

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.mark.parametrize("model", [Equipment, Channel, Certificate, Point, Tolerance, OimlR76])
def test_the_registry_page_names_every_field(model: type) -> None:
    text = (DOCS / "registry.md").read_text()
    fields = {
        (f.alias or name)
        for name, f in model.model_fields.items()  # type: ignore[attr-defined]
        if not f.exclude
    }
    assert {f for f in fields if f"`{f}`" not in text and f"{{ {f} =" not in text} == set()


def test_the_interfaces_page_names_every_command_metric_and_payload_field() -> None:
    text = (DOCS / "interfaces.md").read_text()
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    for command in sub.choices:  # type: ignore[union-attr]
        assert f"calgate {command}" in text, command
    for name in Metrics().names():
        assert f"`{name}" in text, name
    for field in measurement_payload(meas(0), 1):
        assert f"`{field}`" in text, field


def test_the_interfaces_page_names_every_field_of_reading_recorrected() -> None:
    (row,) = [
        line
        for line in (DOCS / "interfaces.md").read_text().splitlines()
        if line.startswith("| `reading_recorrected` |")
    ]
    line = recorrected_line(
        site="s", equipment="e", channel="c", quantity="q", unit="mbar", certificate="C-1",
        raw=1.0, value=1.0, u=0.1, U=0.2, k=2.0, quality="good", flags="", calibration="valid",
        conformity="pass", seq=1, stored_value=1.0, stored_U=0.2, stored_conformity="pass",
        stored_certificate="C-0", basis="b", registry="d", time_ns=0,
    )  # fmt: skip
    key, fields, _ = line.split(" ")
    tags = [t.split("=")[0] for t in key.split(",")[1:]]
    names = [f.split("=")[0] for f in fields.split(",")]
    assert [n for n in (*tags, *names) if f"`{n}`" not in row] == []


def test_the_help_points_to_the_reference_in_the_repository() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, check=True
    )
    assert str(docs_dir() / "README.md") in done.stdout.replace("\n", "")
    assert docs_dir() == DOCS
    for path in ROOT.glob("gateway/**/*.py"):
        text = path.read_text()
        assert "help=" not in text or "ARCHITECTURE.md" not in text, path
    assert "ARCHITECTURE.md" not in (ROOT / "README.md").read_text()
    assert "METROLOGY.md" not in (ROOT / "README.md").read_text()


def _subcommands(parser: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, f"{prefix} {name}")
            return
    yield prefix, parser


def test_the_command_line_synopsis_has_every_option() -> None:
    """Each command's line in interfaces.md names each of its options (``simulate``'s
    ``[options]`` are in simulators.md)."""
    text = (DOCS / "interfaces.md").read_text()
    synopsis = [line for line in text.splitlines() if line.startswith("calgate ")]
    missing = []
    for command, parser in _subcommands(build_parser(), "calgate"):
        lines = [line for line in synopsis if line.startswith(f"{command} ")]
        assert lines, f"{command} has no synopsis line"
        if any(line.endswith("[options]") for line in lines):  # simulate: simulators.md
            lines.append((DOCS / "simulators.md").read_text())
        written = {o for line in lines for o in re.findall(r"(?<![\w-])--?[a-z][\w-]*", line)}
        for action in parser._actions:
            names = set(action.option_strings) - {"-h", "--help"}
            if names and not names & written:
                missing.append(f"{command} {max(names, key=len)}")
    assert missing == []


def test_the_help_lists_the_commands_in_a_new_users_order() -> None:
    """Try it, run it, look into the registry, then the quality team's tools (it listed
    calibrate first and check-config between run and probe: by module name)."""
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert [a.dest for a in sub._choices_actions] == [  # type: ignore[attr-defined]
        "demo", "run", "check-config", "probe", "registry", "correct", "impact", "calibrate",
        "simulate",
    ]  # fmt: skip


def test_every_commands_help_says_what_it_does() -> None:
    """``calgate run --help`` (and check-config, probe, demo, the registry actions) printed
    only their usage and options; each now opens with a sentence."""
    for command, parser in _subcommands(build_parser(), "calgate"):
        assert parser.description, command
        assert parser.format_help().split("\n\n")[1].strip()[0].isupper(), command
