"""Procedure files of ``calgate calibrate``: the examples load, mistakes are listed with paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.calibration_run import load_procedure
from gateway.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "procedures"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_procedures_load(path: Path) -> None:
    proc = load_procedure(path)
    assert proc.duts
    assert proc.balance == (proc.generator is None)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_procedure(path)
    return [e.removeprefix(f"{path}: ") for e in info.value.errors]


def test_every_mistake_is_listed_with_its_path(tmp_path: Path) -> None:
    errs = errors_of(
        tmp_path,
        '[procedure]\nname = "x"\ngenerator = "PC-01"\nreference = "PC-01"\n'
        'duts = [{ id = "PT-101", chanel = "p" }]\nsetpoints = [1.0, 2.0]\n'
        'cycles = "round"\nreadings = 1\nstable = { max_std = 0.1 }\n',
    )
    assert "procedure.duts[0].chanel: Extra inputs are not permitted" in errs
    assert any(e.startswith("procedure.cycles: Input should be 'up' or 'up-down'") for e in errs)
    assert any(
        e.startswith("procedure.readings: Input should be greater than or equal to 2") for e in errs
    )
    assert "procedure.stable.max_slope_per_s: Field required" in errs


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'generator = "PC-01"\nreference = "PC-01"\nsetpoints = [1.0]',
            "at least 2 different `setpoints`",
        ),
        ('generator = "PC-01"\nsetpoints = [1.0, 2.0]', "`reference` is required"),
        ("setpoints = [1.0, 2.0]", "`setpoints` need a `generator`"),
        ("loads = [{ nominal = 100.0 }, { nominal = 0.0 }]", "needs its `standard`"),
        ('loads = [{ nominal = 100.0, standard = "W" }]', "at least 2 `loads`"),
        (
            'generator = "PT-101"\nreference = "PC-01"\nsetpoints = [1.0, 2.0]',
            "cannot also be a DUT",
        ),
    ],
)
def test_a_procedure_is_either_a_generator_run_or_a_balance_run(
    tmp_path: Path, body: str, message: str
) -> None:
    errs = errors_of(
        tmp_path,
        f'[procedure]\nname = "x"\nduts = [{{ id = "PT-101" }}]\n{body}\n'
        "stable = { max_std = 0.1, max_slope_per_s = 0.1 }\n",
    )
    assert any(message in e for e in errs), errs


def test_only_a_procedure_table(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, '[procedur]\nname = "x"\n')
    assert errs == ["(file): expected one [procedure] table and nothing else"]
