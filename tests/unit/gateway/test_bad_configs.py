"""Rejected gateway configs, each beside the errors it must give (telegraf-style golden
cases, like the registry's): ``bad_configs/<case>/calgate.toml`` and ``expected.err``.

The errors are those ``calgate run`` and ``calgate check-config`` list before exiting 78:
config, registry folder and cross-checks against the registry, every one at once. In
``expected.err`` a path inside the case is relative to it and the example registry is
``<examples/registry>``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.service import load_everything

HERE = Path(__file__).resolve().parent
REGISTRY = HERE.parents[2] / "examples" / "registry"
CASES = sorted(p for p in (HERE / "bad_configs").iterdir() if p.is_dir())


def expected(case: Path) -> list[str]:
    return (case / "expected.err").read_text(encoding="utf-8").splitlines()


def relative(case: Path, lines: list[str]) -> list[str]:
    return [
        line.replace(str(REGISTRY), "<examples/registry>").replace(f"{case}/", "") for line in lines
    ]


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_a_rejected_config_lists_every_error(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALGATE_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CALGATE_INFLUX_TOKEN", raising=False)
    with pytest.raises(ConfigError) as info:
        load_everything(case / "calgate.toml")
    assert relative(case, info.value.errors) == expected(case)


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_check_config_exits_78_printing_them(
    case: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "-c", str(case / "calgate.toml")]) == 78
    err = capsys.readouterr().err
    printed = relative(case, err.splitlines())
    assert all(line in printed for line in expected(case))
    for secret in ("hunter2", "s3cr3t-t0ken"):
        assert secret not in err  # a secret written in the file is never echoed


def test_every_error_starts_with_the_path_as_given(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``calgate check-config -c calgate.toml``: the cross-checks' errors name the file as
    the config's own do (they said /abs/path/calgate.toml beside calgate.toml)."""
    monkeypatch.delenv("CALGATE_INFLUX_TOKEN", raising=False)
    monkeypatch.chdir(HERE / "bad_configs" / "every_error_at_once")
    assert main(["check-config", "-c", "calgate.toml"]) == 78
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(expected(HERE / "bad_configs" / "every_error_at_once")) + 1
    assert all(line.startswith("calgate.toml: ") for line in lines[:-1])
