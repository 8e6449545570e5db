"""calgate.toml validation: every error listed with its file and path; check-config exits 78."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from labconfig import EXAMPLE_REGISTRY

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.service import load_everything

BROKEN = f"""
[gateway]
id = "edge 01"
registry = "{EXAMPLE_REGISTRY}"
bogus = 1

[mqtt]
url = "mqtt://127.0.0.1:1883"
password = "hunter2"

[[equipment]]
id = "BAL-01"
driver = "mt-sics"
baudrate = "fast"
port = "/dev/ttyUSB0"

[[equipment]]
id = "PT-101"
driver = "modbus"
url = "tcp://127.0.0.1:502"
  [[equipment.channels]]
  name = "pressure"
  register = "input"
  address = 0
  type = "float24"
  word_order = "CDAB"

[[equipment]]
id = "X-1"
driver = "telepathy"

[[equipment]]
id = "BAL-01"
driver = "mt-sics"
port = "/dev/ttyUSB1"
"""


def test_a_broken_config_lists_every_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "calgate.toml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    text = "\n".join(errors)
    assert all(line.startswith(f"{path}: ") for line in errors)
    assert f"{path}: gateway.id: " in text
    assert f"{path}: gateway.bogus: " in text
    assert f"{path}: mqtt" in text
    assert "password" in text
    assert "hunter2" not in text
    assert f"{path}: equipment[0] (BAL-01).baudrate: " in text
    assert f"{path}: equipment[1] (PT-101).channels[0].type: " in text
    assert f"{path}: equipment[2] (X-1).driver: unknown driver 'telepathy'" in text
    assert f"{path}: equipment[3] (BAL-01).id: duplicate equipment id 'BAL-01'" in text


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "calgate.toml"
    path.write_text("[gateway\nid = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors[0].startswith(f"{path}: TOML syntax:")


def test_check_config_cross_checks_the_registry_and_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "calgate.toml"
    path.write_text(
        f'[gateway]\nregistry = "{EXAMPLE_REGISTRY}"\nstate_dir = "{tmp_path}"\n'
        '[[equipment]]\nid = "NOPE-1"\ndriver = "mt-sics"\nport = "/dev/null"\n'
        '[[equipment]]\nid = "PT-101"\ndriver = "modbus"\nurl = "tcp://127.0.0.1:502"\n'
        '[[equipment.channels]]\nname = "temperature"\naddress = 0\ntype = "float32"\n'
    )
    assert main(["check-config", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{path}: equipment[0] (NOPE-1).id: 'NOPE-1' is not in the registry" in err
    assert (
        f"{path}: equipment[1] (PT-101).channels[0].name: "
        "channel 'temperature' is not a channel of PT-101" in err
    )
    assert "2 error(s)" in err


def test_check_config_accepts_the_example_lab(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "calgate-lab.toml"
    assert main(["check-config", "-c", str(example)]) == 0
    assert "OK: 6 equipment" in capsys.readouterr().out


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "calgate.toml"
    path.parent.mkdir()
    path.write_text('[gateway]\nregistry = "reg"\nstate_dir = "state"\n')
    cfg = load_config(path)
    assert cfg.registry_dir == (tmp_path / "sub" / "reg").resolve()
    assert cfg.state_dir == (tmp_path / "sub" / "state").resolve()


def test_the_documented_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/calgate.toml documents every option; it must stay a valid config."""
    monkeypatch.delenv("CALGATE_INFLUX_TOKEN", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(Path(__file__).resolve().parents[3] / "examples" / "calgate.toml")
    assert "CALGATE_INFLUX_TOKEN" in "\n".join(info.value.errors)
    monkeypatch.setenv("CALGATE_INFLUX_TOKEN", "a-token")  # secrets come from the environment
    example = Path(__file__).resolve().parents[3] / "examples" / "calgate.toml"
    cfg = load_config(example)
    assert [e.id for e in cfg.equipment] == ["BAL-01", "BAL-02", "PC-01", "PT-101", "UTM-01"]
    assert cfg.mqtt is not None
    assert cfg.influxdb is not None
    assert cfg.outbox.max_bytes == 268435456


def test_an_impossible_state_dir_is_a_config_error_in_check_config_and_run(
    tmp_path: Path,
) -> None:
    """A file in the state directory's path: both commands exit 78 naming the field,
    and ``run`` does not crash with a traceback (systemd would restart it in a loop)."""
    blocker = tmp_path / "passwd"
    blocker.write_text("root:x:0:0\n")
    path = tmp_path / "calgate.toml"
    path.write_text(
        f'[gateway]\nregistry = "{EXAMPLE_REGISTRY}"\nstate_dir = "{blocker}/state"\n'
        "[http]\nenabled = false\n"
    )
    for command in ("check-config", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "gateway", command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 78, done.stderr
        err = done.stderr
        assert (
            f"{path}: gateway.state_dir: cannot create {blocker}/state: "
            f"{blocker} is a file, not a directory"
        ) in err
        assert "Traceback" not in err


def test_a_misspelt_registry_names_the_field_and_says_it_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "calgate.toml"
    path.write_text(f'[gateway]\nregistry = "regsitry"\nstate_dir = "{tmp_path}"\n')
    assert main(["check-config", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"{path}: gateway.registry: {tmp_path / 'regsitry'} does not exist"
    )
    assert "1 error(s)" in err


def test_a_typo_in_a_key_names_the_equipment_and_suggests_the_key(tmp_path: Path) -> None:
    path = tmp_path / "calgate.toml"
    path.write_text(
        "[gateway]\nstauts_interval_s = 3\n"
        '[[equipment]]\nid = "PT-101"\ndriver = "modbus"\nurl = "tcp://127.0.0.1:502"\n'
        "intervl_s = 1\nuncalibratd = true\n"
        '[[equipment.channels]]\nname = "pressure"\naddress = 0\ntype = "float32"\nwrod_order = "CDAB"\n'
        '[[equipment]]\ndriver = "mt-sics"\nport = "/dev/null"\nbaudrat = 9600\n'
        '[[equipment]]\nid = "BAL-02"\ndriver = "mt-sics"\nport = "/dev/null"\ncolour = "red"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert set(info.value.errors) == {
        f"{path}: gateway.stauts_interval_s: unknown key; did you mean status_interval_s?",
        f"{path}: equipment[0] (PT-101).intervl_s: unknown key; did you mean interval_s?",
        f"{path}: equipment[0] (PT-101).uncalibratd: unknown key; did you mean uncalibrated?",
        f"{path}: equipment[0] (PT-101).channels[0].wrod_order: unknown key; "
        "did you mean word_order?",
        f"{path}: equipment[1].baudrat: unknown key; did you mean baudrate?",
        f"{path}: equipment[1].id: Field required",
        f"{path}: equipment[2] (BAL-02).colour: unknown key",
    }


def _lab_with_broken(tmp_path: Path, certificate: str) -> Path:
    """examples/calgate-lab.toml beside a copy of the example registry in which one
    certificate file is broken (a field error and a unit error)."""
    examples = Path(__file__).resolve().parents[3] / "examples"
    shutil.copytree(examples / "registry", tmp_path / "registry")
    path = tmp_path / "registry" / "certificates" / f"{certificate}.toml"
    text = re.sub(r'^unit = "m?g"', 'unit = "kPa"', path.read_text(), flags=re.M)
    path.write_text(text.replace("issued_by = ", 'issued_by = ""\n# ', 1))
    config = tmp_path / "calgate.toml"
    config.write_text((examples / "calgate-lab.toml").read_text())
    return config


def test_a_broken_certificate_of_equipment_not_polled_does_not_stop_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """WS-E2 (a working standard, not polled) has a broken certificate: the gateway
    starts with the sound entries, the broken one is reported as a warning, and BAL-01,
    calibrated with WS-E2, is flagged: its chain has no certificate of WS-E2 (untraceable)."""
    config = _lab_with_broken(tmp_path, "MCS-2025-0610")
    assert main(["check-config", "-c", str(config)]) == 0
    captured = capsys.readouterr()
    assert "OK: 6 equipment" in captured.out
    reg = tmp_path / "registry"
    # the OK names what it costs the polled channels: BAL-01's chain has lost WS-E2
    assert captured.err.splitlines() == [
        f"warning: {config.resolve()}: equipment[0] (BAL-01): channel 'weight' of BAL-01 lost "
        "its traceability: its certificate MCS-2026-1022 rests on WS-E2, left out of the "
        'registry for its errors: published with calibration "untraceable" (quality '
        "uncertain); correct the files of WS-E2",
        f"warning: registry {reg}: left out (not polled here): WS-E2",
        f"warning: {reg}/certificates/MCS-2025-0610.toml: issued_by: must not be empty",
        f"warning: {reg}/certificates/MCS-2025-0610.toml: unit: 'kPa' is not compatible "
        "with channel 'mass' unit 'g' ([mass] / [length] / [time] ** 2 vs [mass])",
    ]
    _, registry = load_everything(config)
    assert registry.equipment("WS-E2") is None
    assert registry.state("BAL-01", datetime.now(UTC)).status == "untraceable"
    assert registry.state("PT-101", datetime.now(UTC)).status in ("valid", "due_soon")


def test_a_broken_certificate_of_a_polled_instrument_is_still_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _lab_with_broken(tmp_path, "MCS-2026-1022")  # BAL-01's own certificate
    assert main(["check-config", "-c", str(config)]) == 78
    err = capsys.readouterr().err
    assert f"{tmp_path / 'registry'}/certificates/MCS-2026-1022.toml: issued_by: " in err
    assert "2 error(s)" in err


def test_probe_says_which_channels_lost_their_chain_not_that_they_are_raw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """probe's note on the same registry: WS-E2 is left out, BAL-01 is still corrected
    (through its own certificate) but untraceable; no value is raw (it said "left out,
    values raw: WS-E2", as if BAL-01's were)."""
    from gateway.commands.ops import _optional_registry
    from gateway.config import load_config

    config = load_config(_lab_with_broken(tmp_path, "MCS-2025-0610"))
    bal = [e for e in config.equipment if e.id == "BAL-01"]
    registry = _optional_registry(config.registry_dir, bal)
    assert registry is not None
    assert registry.corrector("BAL-01", "weight", datetime.now(UTC)).certificate == "MCS-2026-1022"
    (note,) = capsys.readouterr().err.splitlines()
    assert note.endswith(
        "; left out: WS-E2; corrected but untraceable (a standard left out): BAL-01 weight"
    )
    assert "raw" not in note
