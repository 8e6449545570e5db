"""Pipeline: the per-poll fast path gives what the Corrector gives, reading by reading."""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from calibration import Registry
from drivers.base import Reading
from gateway.model import Measurement
from gateway.pipeline import Pipeline

REGISTRY = Path(__file__).resolve().parents[3] / "examples" / "registry"
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REGISTRY)


def reading(raw: float, unit: str = "mbar", quality: str = "good") -> Reading:
    return Reading(
        equipment="PT-101", channel="pressure", raw=raw, unit=unit, t_wall=T0, t_mono=0.0,
        quality=quality,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("raw", [1000.3, 949.0, 1099.9, 1200.0, 20.0, 2600.0, -5.0])
def test_values_uncertainty_and_conformity_are_the_correctors(
    registry: Registry, raw: float
) -> None:
    pipeline = Pipeline(registry, clock=lambda: T0)
    [m] = pipeline.process([reading(raw)])
    corrector = registry.corrector("PT-101", "pressure", T0)
    value, u, big_u, out_of_range = corrector.correct_one(raw)
    assert (m.value, m.u, m.U, m.k) == (value, u, big_u, corrector.k)
    # Outside the calibrated span (not extrapolated) only a fail at the span's edge it
    # lies beyond decides (the value is further out still): PT-101's limits [950, 1100]
    # mbar lie inside its calibrated span, so each edge fails.
    if not out_of_range:
        assert m.conformity == corrector.judge_one(value, big_u)
    else:
        edge = corrector.span[0] if raw < corrector.span[0] else corrector.span[1]
        assert corrector.span[0] < 950.0 < 1100.0 < corrector.span[1]
        assert m.conformity == "fail" == corrector.judge_one(*corrector.correct_one(edge)[::2])
    assert ("out_of_range" in m.flags) == out_of_range
    assert m.quality == ("uncertain" if out_of_range else "good")
    assert m.certificate == corrector.certificate
    assert m.calibration == "valid"


def test_units_are_converted_and_mismatches_flagged(registry: Registry) -> None:
    pipeline = Pipeline(registry, clock=lambda: T0)
    kpa, wrong = pipeline.process([reading(100.03, unit="kPa"), reading(1.0, unit="kg")])
    corrector = registry.corrector("PT-101", "pressure", T0)
    assert kpa.unit == "mbar"
    assert kpa.value == corrector.correct_one(100.03 * 10.0)[0]
    assert wrong.unit == "kg"
    assert "unit_mismatch" in wrong.flags
    assert wrong.certificate is None
    # 1 kg is no pressure: not a usable value (it went out quality "good", as if measured)
    assert wrong.quality == "bad"
    # no certificate corrected it (it said "valid", PT-101's status, beside certificate
    # null) and PT-101's limits [950, 1100] mbar cannot judge a mass
    assert corrector.certificate is not None
    assert (wrong.calibration, wrong.U, wrong.conformity) == ("none", None, "indeterminate")
    assert wrong.payload(0)["calibration"] == "none"


def test_a_unit_mismatch_in_a_batch_is_told_as_alone(registry: Registry) -> None:
    """The batched path (several readings of one channel in a poll) says the same."""
    pipeline = Pipeline(registry, clock=lambda: T0)
    ok, wrong = pipeline.process([reading(1000.3), reading(1.0, unit="kg")])
    assert (ok.calibration, ok.certificate) == (
        "valid",
        registry.corrector("PT-101", "pressure", T0).certificate,
    )
    assert (wrong.quality, wrong.calibration, wrong.certificate) == ("bad", "none", None)
    assert wrong.conformity == "indeterminate"


def test_bad_and_nan_readings_stay_bad(registry: Registry) -> None:
    pipeline = Pipeline(registry, clock=lambda: T0)
    bad, nan = pipeline.process([reading(1000.0, quality="bad"), reading(math.nan)])
    for m in (bad, nan):
        assert m.quality == "bad"
        assert math.isnan(m.value)
        assert m.conformity is None


def test_plans_are_rebuilt_when_the_date_changes(registry: Registry) -> None:
    now = [T0]
    pipeline = Pipeline(registry, clock=lambda: now[0])
    pipeline.process([reading(1000.0)])
    first = pipeline.plan("PT-101", "pressure", T0)
    pipeline.process([reading(1000.0)])
    assert pipeline.plan("PT-101", "pressure", T0) is first
    now[0] = T0 + timedelta(days=1)
    pipeline.process([reading(1000.0)])
    assert pipeline.plan("PT-101", "pressure", now[0]) is not first
    assert pipeline.plan("PT-101", "pressure", now[0]).built_on == now[0].date()


def test_unknown_equipment_passes_through_uncorrected(registry: Registry) -> None:
    pipeline = Pipeline(registry, clock=lambda: T0)
    r = Reading(equipment="NOPE", channel="x", raw=1.5, unit="g", t_wall=T0, t_mono=0.0)
    [m] = pipeline.process([r])
    assert (m.value, m.unit, m.calibration, m.conformity) == (1.5, "g", "none", None)


def test_positional_builders_equal_the_keyword_constructors(registry: Registry) -> None:
    flags = frozenset({"stable"})
    r = Reading.make("PT-101", "pressure", 1000.3, "mbar", T0, 1.5, flags, "uncertain")
    kw = Reading(
        equipment="PT-101", channel="pressure", raw=1000.3, unit="mbar", t_wall=T0,
        t_mono=1.5, flags=flags, quality="uncertain",
    )  # fmt: skip
    assert r == kw
    assert hash(r) == hash(kw)
    assert repr(r) == repr(kw)
    assert dataclasses.replace(r, raw=2.0) == dataclasses.replace(kw, raw=2.0)
    [m] = Pipeline(registry, clock=lambda: T0).process([r])
    fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(Measurement)}
    assert Measurement(**fields) == m
    assert hash(Measurement(**fields)) == hash(m)
    assert m.conformity is not None
    assert m.U is not None
    assert len({m, Measurement(**fields)}) == 1


def test_with_the_wall_clock_plans_are_rebuilt_after_utc_midnight(registry: Registry) -> None:
    pipeline = Pipeline(registry)  # the default clock: today's date from time.time()
    key = ("PT-101", "pressure")
    pipeline.process([reading(1000.0)])
    today = datetime.now(UTC).date()
    assert pipeline._plans[key].built_on == today
    tomorrow = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)
    assert pipeline._day_end == tomorrow.timestamp()
    # a plan from yesterday, and the day the pipeline knows has ended: rebuilt
    old = dataclasses.replace(pipeline._plans[key], built_on=today - timedelta(days=1))
    pipeline._plans[key] = old
    pipeline._day_end = time.time() - 1.0
    [m] = pipeline.process([reading(1000.0)])
    assert pipeline._plans[key] is not old
    assert pipeline._plans[key].built_on == today
    assert m.certificate == old.certificate


def _balance(raw: float) -> Reading:
    return Reading(equipment="BAL-02", channel="weight", raw=raw, unit="g", t_wall=T0, t_mono=0.0)


@pytest.mark.parametrize("judge_untraceable", [False, True])
def test_an_untraceable_value_is_not_judged_unless_the_lab_says_so(
    tmp_path: Path, judge_untraceable: bool
) -> None:
    """BAL-02's chain is broken (its standard's certificate had expired): a decision on
    its values is not a decision, so conformity is indeterminate, in the one-value path
    and the path of several values per channel, unless the channel has
    ``judge_untraceable = true``. 100 g is inside its limits [0, 210] g."""
    root = tmp_path / "registry"
    shutil.copytree(REGISTRY, root)
    if judge_untraceable:
        path = root / "equipment" / "BAL-02.toml"
        path.write_text(path.read_text() + "judge_untraceable = true\n")
    pipeline = Pipeline(Registry.load(root), clock=lambda: T0)
    [one] = pipeline.process([_balance(100.0)])
    many = pipeline.process([_balance(100.0), _balance(300.0)])
    assert {m.calibration for m in (one, *many)} == {"untraceable"}
    assert {m.quality for m in (one, *many)} == {"uncertain"}
    expected = "pass" if judge_untraceable else "indeterminate"
    assert (one.conformity, many[0].conformity) == (expected, expected)
    # 300 g: beyond the calibrated span (to 220 g), and its edge is beyond the 210 g limit
    assert many[1].conformity == ("fail" if judge_untraceable else "indeterminate")


def test_a_channel_without_a_certificate_is_published_as_read(tmp_path: Path) -> None:
    """PT-101 with its certificate removed: the raw value (in the channel's unit), no
    uncertainty, quality uncertain, flag uncalibrated, calibration none, no decision
    against its limits (indeterminate); a bad reading stays bad; one reading or several."""
    root = tmp_path / "registry"
    shutil.copytree(REGISTRY, root)
    (root / "certificates" / "PCL-2026-0906.toml").unlink()
    pipeline = Pipeline(Registry.load(root), clock=lambda: T0)
    one = pipeline.process([reading(101.325, unit="kPa")])
    several = pipeline.process([reading(1000.3), reading(1200.0), reading(math.nan, quality="bad")])
    for m in [*one, *several]:
        assert (m.u, m.U, m.k, m.certificate, m.calibration) == (None, None, None, None, "none")
        assert "uncalibrated" in m.flags
    assert (one[0].value, one[0].unit) == (pytest.approx(1013.25), "mbar")
    assert [(m.value, m.quality, m.conformity) for m in several[:2]] == [
        (1000.3, "uncertain", "indeterminate"),
        (1200.0, "uncertain", "indeterminate"),
    ]
    assert math.isnan(several[2].value)
    assert (several[2].quality, several[2].conformity) == ("bad", None)
