"""``calgate impact`` at the edges of the period in doubt, worked from the certificate files.

WS-P1's certificate PCL-2025-0731 was in force from 2025-07-31 until its successor
PCL-2026-1201 (examples/drift/) found it 1.5 mbar high as found on 2026-12-01. A reading
taken the last nanosecond of 2026-11-30 (UTC) is in doubt and is re-corrected through the
as-found points; one taken at 2026-12-01T00:00Z is already under the new certificate (in
force from its calibration day, ARCHITECTURE.md 4.2) and through its as-left points.
"""

from __future__ import annotations

import shutil
import tomllib
from datetime import date
from typing import Any

import numpy as np
import pytest
from labconfig import EXAMPLE_REGISTRY

from calibration import Registry
from calibration.revision import Revisions
from gateway.impact import Evaluator, Page, day_ns, select

DRIFT = EXAMPLE_REGISTRY.parent / "drift" / "PCL-2026-1201.toml"
FOUND = date(2026, 12, 1)


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("registry")
    shutil.copytree(EXAMPLE_REGISTRY, root, dirs_exist_ok=True)
    shutil.copy(DRIFT, root / "certificates" / DRIFT.name)
    return Registry.load(root)


def corrected_mbar(points: list[dict[str, float]], raw_mbar: float) -> float:
    """y = x − e(x), e interpolated linearly in the indication; the file is in kPa."""
    ind = np.array([p["indicated"] for p in points]) * 10.0
    err = ind - np.array([p["reference"] for p in points]) * 10.0
    return raw_mbar - float(np.interp(raw_mbar, ind, err))


def test_the_window_ends_at_midnight_utc_of_the_finding(reg: Registry) -> None:
    sel = select(reg, standard="WS-P1")
    (ws,) = [t for t in sel.targets if t.equipment == "WS-P1"]
    assert ws.windows == [(day_ns(date(2025, 7, 31)), day_ns(FOUND))]
    assert ws.certificates == ["PCL-2025-0731"]
    # cut by --since/--until inside it, and nothing left when --since is its end
    assert ws.clipped(day_ns(FOUND) - 5, None) == [(day_ns(FOUND) - 5, day_ns(FOUND))]
    assert ws.clipped(day_ns(FOUND), None) == []


def test_a_reading_either_side_of_midnight_goes_through_its_own_certificate(
    reg: Registry,
) -> None:
    file = tomllib.loads(DRIFT.read_text())
    edge = day_ns(FOUND)
    times = [edge - 1, edge]
    raw = 1000.0
    page = Page(
        time=np.array(times, dtype=np.int64),
        raw=np.array([raw, raw]),
        value=np.zeros(2),  # stored values far off: every reading counts as changed
        U=np.full(2, 1e-6),
        quality=["good", "good"],
        calibration=["valid", "valid"],
        flags=["", ""],
        certificate=["PCL-2025-0731", "PCL-2025-0731"],
        conformity=[None, None],
        seq=[1, 2],
        quantity=["absolute pressure"] * 2,
        unit=["mbar"] * 2,
    )
    ev = Evaluator(Revisions(reg), "WS-P1", "pressure", site="lab")
    rows: list[list[Any]] = []
    ev.evaluate(page, csv_rows=rows)
    before, after = rows
    assert before[-1] == "PCL-2025-0731"  # the certificate in doubt, taken as found
    assert before[6] == pytest.approx(corrected_mbar(file["as_found"], raw), abs=1e-9)
    assert after[-1] == "PCL-2026-1201"  # the new one, as left
    assert after[6] == pytest.approx(corrected_mbar(file["points"], raw), abs=1e-9)
    # 1.5 mbar apart: the as-found error is the as-left one plus 1.5 mbar
    assert before[6] - after[6] == pytest.approx(-1.5, abs=0.05)
    assert ev.report.certificates_now == {"PCL-2025-0731", "PCL-2026-1201"}


def test_a_reading_stored_in_another_unit_is_compared_in_the_units_of_now(
    reg: Registry,
) -> None:
    """WS-P1's channel read in kPa when the reading was stored (its unit tag), in mbar now:
    a stored value that is the re-corrected one, in kPa, has not changed."""
    file = tomllib.loads(DRIFT.read_text())
    raw = 1000.0
    now_mbar = corrected_mbar(file["as_found"], raw)
    page = Page(
        time=np.array([day_ns(date(2026, 6, 1))], dtype=np.int64),
        raw=np.array([raw]),
        value=np.array([now_mbar / 10.0]),  # kPa
        U=np.array([0.01]),  # kPa: 0.1 mbar
        quality=["good"],
        calibration=["valid"],
        flags=[""],
        certificate=["PCL-2025-0731"],
        conformity=[None],
        seq=[7],
        quantity=["absolute pressure"],
        unit=["kPa"],
    )
    ev = Evaluator(Revisions(reg), "WS-P1", "pressure", site="lab")
    rows: list[list[Any]] = []
    lines: list[str] = []
    ev.evaluate(page, lines=lines, csv_rows=rows)
    assert rows == []
    assert ev.report.changed == 0
    assert ev.report.max_change_U == pytest.approx(0.0, abs=1e-9)
    (line,) = lines
    assert ",unit=mbar " in line  # the re-corrected value's unit, not the stored tag
    assert f"stored_value={now_mbar / 10.0!r}" in line  # what `reading` holds, as it is


def test_raw_is_converted_from_the_unit_the_config_reads_it_in(
    reg: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A controller configured in kPa (the equipment table's unit) stored kPa raws; a
    Modbus channel's unit is in its channel table, the table's `unit` is a slave id."""
    from gateway.config import load_config
    from gateway.impact import raw_factor

    cfg = tmp_path_factory.mktemp("cfg") / "calgate.toml"
    cfg.write_text(
        f'[gateway]\nregistry = "{reg.root}"\n'
        '[[equipment]]\nid = "PC-01"\ndriver = "scpi-pressure"\nport = "socket://127.0.0.1:9"\n'
        'unit = "kPa"\n'
        '[[equipment]]\nid = "PT-101"\ndriver = "modbus"\nurl = "tcp://127.0.0.1:9"\nunit = 3\n'
        '[[equipment.channels]]\nname = "pressure"\naddress = 0\ntype = "float32"\n'
        'unit = "bar"\n'
        '[[equipment]]\nid = "PT-102"\ndriver = "modbus"\nurl = "tcp://127.0.0.1:9"\nunit = 2\n'
        '[[equipment.channels]]\nname = "pressure"\naddress = 0\ntype = "float32"\n'
    )
    config = load_config(cfg)
    assert raw_factor(config, reg, "PC-01", "pressure") == pytest.approx(10.0)
    assert raw_factor(config, reg, "PT-101", "pressure") == pytest.approx(1000.0)
    assert raw_factor(config, reg, "PT-102", "pressure") == 1.0
