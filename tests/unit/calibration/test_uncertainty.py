"""GUM helpers against published and hand-worked examples."""

from __future__ import annotations

import math

import pytest

from calibration import uncertainty as unc
from calibration.errors import CalibrationError
from calibration.rounding import format_value, round_uncertainty


def test_type_b_divisors() -> None:
    # a = 0.3: rectangular 0.3/√3 = 0.173205…, triangular 0.3/√6 = 0.122474…,
    # U-shaped 0.3/√2 = 0.212132…
    assert unc.rectangular(0.3) == pytest.approx(0.17320508075688773)
    assert unc.triangular(0.3) == pytest.approx(0.12247448713915890)
    assert unc.u_shaped(0.3) == pytest.approx(0.21213203435596426)


def test_resolution_is_half_digit_rectangular() -> None:
    # d = 0.1 g: half-width 0.05 g, u = 0.05/√3 = 0.1/(2√3) = 0.028867513… g
    assert unc.resolution(0.1) == pytest.approx(0.028867513459481287)
    assert unc.resolution(0.0) == 0.0


def test_from_expanded_and_combine() -> None:
    assert unc.from_expanded(0.045, 2.0) == pytest.approx(0.0225)
    assert unc.combine(3.0, 4.0) == pytest.approx(5.0)
    with pytest.raises(CalibrationError):
        unc.from_expanded(0.1, 0.0)
    with pytest.raises(CalibrationError):
        unc.rectangular(-1.0)


def test_welch_satterthwaite_by_hand() -> None:
    # u₁ = 0.02 (ν = 10), u₂ = u₃ = 0.01 (ν = ∞): u_c² = 0.0004 + 0.0001 + 0.0001 = 0.0006
    # ν_eff = 0.0006² / (0.02⁴/10) = 3.6e-7 / 1.6e-8 = 22.5 → 22 truncated
    assert unc.welch_satterthwaite([0.02, 0.01, 0.01], [10, math.inf, math.inf]) == pytest.approx(
        22.5
    )
    assert unc.effective_dof([0.02, 0.01, 0.01], [10, math.inf, math.inf]) == 22.0
    assert unc.effective_dof([0.1, 0.2], [math.inf, math.inf]) == math.inf
    # One component: ν_eff is its own ν (17 stays 17 despite float noise).
    assert unc.effective_dof([0.3], [17]) == 17.0


def test_coverage_factors_of_metrology_md() -> None:
    # GUM (JCGM 100:2008) Table G.2: t95.45(∞) = 2.000, t95(16) = 2.120, t99(16) = 2.921
    assert round(unc.coverage_factor(math.inf, 95.45), 3) == 2.000
    assert round(unc.coverage_factor(16, 95.0), 3) == 2.120
    assert round(unc.coverage_factor(16, 99.0), 3) == 2.921
    # ν is truncated down first: 16.9 → 16
    assert unc.coverage_factor(16.9, 95.0) == unc.coverage_factor(16, 95.0)
    # k = 2 stands for 95.45 %
    assert unc.coverage_probability(2.0) == pytest.approx(95.45, abs=0.001)
    with pytest.raises(CalibrationError):
        unc.coverage_factor(0.5)


def test_gum_h1_end_gauge() -> None:
    # GUM H.1 (end-gauge calibration), its table H.1 of contributions |cᵢ|·u(xᵢ) in nm:
    # l_s 25 (ν 18), d 9.7 (ν 25.6), δα 2.9 (ν 50), δθ 16.6 (ν 2); α_s and θ have c = 0.
    # u_c = 31.7 nm ≈ 32 nm; ν_eff = 16.7 → 16; U99 = t99(16)·32 = 2.92·32 = 93 nm,
    # U95 = 2.12·32 = 68 nm (H.1.6).
    u = [25.0, 9.7, 2.9, 16.6]
    nu = [18.0, 25.6, 50.0, 2.0]
    assert unc.combine(*u) == pytest.approx(31.67, abs=0.01)
    assert unc.welch_satterthwaite(u, nu) == pytest.approx(16.7, abs=0.1)
    assert unc.effective_dof(u, nu) == 16.0
    k99 = unc.coverage_factor(16, 99.0)
    k95 = unc.coverage_factor(16, 95.0)
    assert round_uncertainty(k99 * 32.0) == "93"
    assert round_uncertainty(k95 * 32.0) == "68"


def test_ea_4_02_s2_weight_calibration() -> None:
    # EA-4/02 M example S2: a 10 kg weight (class M1) compared with a 10 kg reference.
    # m_X = m_S + δm_D + δm + δm_C + δB with
    #   m_S  = 10 000.005 g, U = 45 mg (k = 2)           → u = 22.5 mg
    #   δm_D  drift of the standard, ±15 mg rectangular   → u = 8.66 mg
    #   δm    = 0.020 g observed, pooled s = 25 mg, n = 3 → u = 14.4 mg
    #   δm_C  comparator, ±10 mg rectangular              → u = 5.77 mg
    #   δB    air buoyancy, ±10 mg rectangular            → u = 5.77 mg
    # u_c = 29.3 mg, U = 2·u_c = 59 mg, m_X = 10 000.025 g.
    comps = [
        unc.from_expanded(45.0, 2.0),
        unc.rectangular(15.0),
        25.0 / math.sqrt(3.0),
        unc.rectangular(10.0),
        unc.rectangular(10.0),
    ]
    uc = unc.combine(*comps)
    assert uc == pytest.approx(29.3, abs=0.05)
    m_x = 10_000.005 + 0.020
    assert format_value(m_x, 2.0 * uc * 1e-3, unit="g") == "10000.025 ± 0.059 g"


def test_chain_contributions_preserve_the_total() -> None:
    # Item certificate u = 0.05; its standard's certificate 0.03; the NMI's 0.01.
    # Own parts: √(0.05² − 0.03²) = 0.04, √(0.03² − 0.01²) = 0.028284…, 0.01.
    parts = unc.chain_contributions(
        "LAB-7", 0.05, math.inf, [unc.ChainLevel("ACC-3", 0.03), unc.ChainLevel("NMI-1", 0.01)]
    )
    assert [p.label for p in parts] == ["LAB-7", "ACC-3", "NMI-1"]
    assert [p.u for p in parts] == pytest.approx([0.04, math.sqrt(0.0008), 0.01])
    assert unc.combine(*(p.u for p in parts)) == pytest.approx(0.05)


def test_make_budget_is_a_gtc_result() -> None:
    b = unc.make_budget(
        10.0,
        [unc.Contribution("C-1", 0.03, 10.0), unc.Contribution("resolution", 0.04)],
        2.0,
    )
    assert b.value == pytest.approx(10.0)
    assert b.u == pytest.approx(0.05)
    assert math.isclose(b.U, 0.1, rel_tol=1e-12)
    # ν_eff = 0.05⁴ / (0.03⁴/10) = 6.25e-6 / 8.1e-8 = 77.16…
    assert b.dof == pytest.approx(6.25e-6 / 8.1e-8)
    assert list(b) == [("C-1", 0.03), ("resolution", 0.04)]
    from GTC import reporting

    labels = {i.label: i.u for i in reporting.budget(b.result)}
    assert labels == pytest.approx({"C-1": 0.03, "resolution": 0.04})
    assert "combined" in "\n".join(b.lines())


def test_budget_archive_keeps_input_identities() -> None:
    from GTC import persistence, reporting

    b = unc.make_budget(
        2.5,
        unc.chain_contributions("LAB-7", 0.05, math.inf, [unc.ChainLevel("NMI-1", 0.03)]),
        2.0,
    )
    text = b.archive_json("BAL-01/mass")
    # archiving twice is allowed (each archive names a fresh intermediate result)
    again = persistence.loads_json(b.archive_json("BAL-01/mass"))["BAL-01/mass"]
    assert again.u == pytest.approx(0.05)
    y = persistence.loads_json(text)["BAL-01/mass"]
    assert y.x == pytest.approx(2.5)
    assert y.u == pytest.approx(0.05)
    assert {i.label: i.u for i in reporting.budget(y)} == pytest.approx(
        {"LAB-7": 0.04, "NMI-1": 0.03}
    )
