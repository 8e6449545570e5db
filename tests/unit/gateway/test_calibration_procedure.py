"""Procedure files of ``calgate calibrate``: the examples load, mistakes are listed with paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from labconfig import EXAMPLE_REGISTRY

from calibration import Registry
from gateway.calibration_run import CalibrationRunError, Plan, load_procedure, plan_run
from gateway.cli import main
from gateway.config import load_config
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


# -- plans: what is refused before anything moves --------------------------------------------

CONFIG = """
[gateway]
registry = "{registry}"
[[equipment]]
id = "PC-01"
driver = "{pc_driver}"
port = "socket://127.0.0.1:9"
[[equipment]]
id = "BAL-01"
driver = "mt-sics"
port = "socket://127.0.0.1:9"
[[equipment]]
id = "PT-101"
driver = "modbus"
url = "tcp://127.0.0.1:9"
[[equipment.channels]]
name = "pressure"
address = 0
type = "float32"
"""

PRESSURE = """[procedure]
name = "p"
generator = "PC-01"
reference = "PC-01"
duts = [{ id = "PT-101" }]
setpoints = [500.0, 1000.0]
stable = { max_std = 0.1, max_slope_per_s = 0.1 }
"""

BALANCE = """[procedure]
name = "b"
duts = [{ id = "BAL-01" }]
loads = [{ nominal = 0.0 }, { nominal = 100.0, standard = "WS-E2" }]
stable = { max_std = 0.1, max_slope_per_s = 0.1 }
"""


def lab_files(tmp_path: Path, procedure: str, *, edit: dict[str, tuple[str, str]] | None = None,
              pc_driver: str = "scpi-pressure") -> tuple[Path, Path, Path]:  # fmt: skip
    """(registry, config, procedure) files: a copy of the example registry (with
    ``edit``: file -> (old, new) text), CONFIG on it, and ``procedure``."""
    registry = tmp_path / "registry"
    shutil.copytree(EXAMPLE_REGISTRY, registry)
    for rel, (old, new) in (edit or {}).items():
        f = registry / rel
        text = f.read_text()
        assert old in text
        f.write_text(text.replace(old, new))
    cfg = tmp_path / "calgate.toml"
    cfg.write_text(CONFIG.format(registry=registry, pc_driver=pc_driver))
    proc = tmp_path / "p.toml"
    proc.write_text(procedure)
    return registry, cfg, proc


def plan(tmp_path: Path, procedure: str, *, edit: dict[str, tuple[str, str]] | None = None,
         pc_driver: str = "scpi-pressure") -> Plan:  # fmt: skip
    registry, cfg, proc = lab_files(tmp_path, procedure, edit=edit, pc_driver=pc_driver)
    return plan_run(load_config(cfg), Registry.load(registry), load_procedure(proc))


def test_calibrate_lists_a_bad_procedures_errors_counted_and_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg, proc = lab_files(
        tmp_path,
        '[procedure]\nname = "x"\ngenerator = "PC-01"\nreference = "PC-01"\n'
        'duts = [{ id = "PT-101" }]\nsetpoints = [1.0, 2.0]\ncycles = "round"\n'
        "stable = { max_std = 0.1 }\n",
    )
    assert main(["calibrate", "-c", str(cfg), str(proc), "--out", str(tmp_path / "out")]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "2 error(s)"  # as check-config and run count theirs
    assert any(e.startswith(f"{proc}: procedure.cycles: ") for e in err[:-1]), err
    assert f"{proc}: procedure.stable.max_slope_per_s: Field required" in err
    assert not (tmp_path / "out").exists()


def test_calibrate_into_a_broken_registry_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The instruments are at port 9, where nothing answers: the run would fail with exit 1.
    _, cfg, proc = lab_files(tmp_path, PRESSURE)
    into = tmp_path / "other"
    shutil.copytree(EXAMPLE_REGISTRY, into)
    (into / "certificates" / "PCL-2026-0906.toml").write_text('number = "PCL-2026-0906"\n')
    out = tmp_path / "out"
    code = main(["calibrate", "-c", str(cfg), str(proc), "--out", str(out), "--into", str(into)])
    err = capsys.readouterr().err
    assert code == 78, err
    assert f"--into {into} is not a valid registry" in err
    assert "PCL-2026-0906.toml" in err
    assert not out.exists()


def test_a_pressure_plan_goes_up_and_down_through_the_reference(tmp_path: Path) -> None:
    p = plan(
        tmp_path, PRESSURE.replace("[500.0, 1000.0]", "[1000.0, 500.0]") + 'cycles = "up-down"\n'
    )
    assert [(s.value, s.direction) for s in p.steps] == [
        (500.0, "up"), (1000.0, "up"), (1000.0, "down"), (500.0, "down"),
    ]  # fmt: skip
    assert [s.equipment.id for s in p.standards] == ["PC-01"]
    assert p.standards[0].certificate == "PCL-2026-0905"
    assert p.standards[0].chain[-1][0] == "NIM-LP-2025-0417"
    assert len(p.standards[0].sha256) == 64
    assert p.setpoint_tolerance == pytest.approx(10.0)


def test_an_out_of_service_reference_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CalibrationRunError, match="reference standard PC-01 is out of service"):
        plan(
            tmp_path,
            PRESSURE,
            edit={"equipment/PC-01.toml": ('status = "active"', 'status = "out_of_service"')},
        )


def test_a_generator_must_be_a_pressure_controller(tmp_path: Path) -> None:
    with pytest.raises(CalibrationRunError, match="only a SCPI pressure controller"):
        plan(tmp_path, PRESSURE, pc_driver="mt-sics")


def test_a_dut_must_be_configured(tmp_path: Path) -> None:
    with pytest.raises(CalibrationRunError, match="DUT 'PT-102' is not in the config"):
        plan(tmp_path, PRESSURE.replace('"PT-101"', '"PT-102"'))


def test_a_weight_in_another_unit_than_the_balance_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CalibrationRunError, match="WS-E2 is in kg, the DUTs read in g"):
        plan(tmp_path, BALANCE, edit={"equipment/WS-E2.toml": ('unit = "g"', 'unit = "kg"')})


def test_a_load_its_weights_certificate_does_not_list_is_refused(tmp_path: Path) -> None:
    # WS-E2's certificate lists 100 g, 200 g and 1 kg: a 150 g load is another weight.
    with pytest.raises(CalibrationRunError, match="gives no conventional mass for a nominal"):
        plan(tmp_path, BALANCE.replace("nominal = 100.0,", "nominal = 150.0,"))


def test_a_balance_plan_takes_each_weight_as_a_standard(tmp_path: Path) -> None:
    p = plan(tmp_path, BALANCE)
    assert [(s.value, s.load.standard if s.load else None) for s in p.steps] == [
        (0.0, None), (100.0, "WS-E2"),
    ]  # fmt: skip
    assert [(s.equipment.id, s.role) for s in p.standards] == [("WS-E2", "test load")]
