"""Corrected readings per second: one value at a time, and in arrays of 1,000.

    .venv/bin/python bench/bench_corrector.py [--seconds 0.5]

For each model (an 11-point certificate over 0–1000, as a balance or pressure channel
would have) it times:

- ``correct_one(x)``            the scalar hot path (plain Python)
- ``correct(np.array([x]))``    the array path fed one value (what not to do per reading)
- ``correct(array of 1000)``    the array path as meant, counted per value
- ``judge_one`` / ``judge``     the conformity decision, per value

Figures depend on the machine; the test suite never asserts on them.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration.corrector import Corrector


def rate(fn: Callable[[], object], per_call: int, seconds: float) -> float:
    """Values per second of ``fn`` (which handles ``per_call`` values), best of 3 runs."""
    best = 0.0
    for _ in range(3):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds / 3
        while True:
            for _ in range(50):
                fn()
            n += 50
            t = time.perf_counter()
            if t >= deadline:
                break
        best = max(best, n * per_call / (t - t0))
    return best


def _one(c: Corrector, cyc: Iterator[float]) -> object:
    return c.correct_one(next(cyc))


def correctors() -> dict[str, Corrector]:
    ind = np.linspace(0.0, 1000.0, 11)
    ref = ind - 0.002 * ind + 0.05 * np.sin(ind / 150.0)
    common: dict[str, Any] = {
        "resolution": 0.01,
        "repeatability": 0.004,
        "limits": (100.0, 900.0),
        "decision_rule": "non_binary",
        "unit": "g",
        "equipment": "BAL-01",
        "channel": "mass",
    }
    out = {
        model: Corrector.build(
            indicated=ind,
            reference=ref,
            U=0.02 + 1e-5 * ind,
            k=2.0,
            model=model,
            certificate="C-1",
            **common,
        )
        for model in ("interpolate", "linear", "polynomial:3")
    }
    out["interpolate+dof"] = Corrector.build(
        indicated=ind,
        reference=ref,
        U=0.02 + 1e-5 * ind,
        k=2.0,
        dof=12,
        model="interpolate",
        certificate="C-1",
        **common,
    )
    out["identity"] = Corrector.identity(**common)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.6, help="time per figure")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    xs = rng.uniform(-20.0, 1020.0, 1000)  # ~2 % out of range on purpose
    x_list = xs.tolist()
    one = np.array([x_list[0]])
    print(f"Python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print(
        f"{'model':<18}{'correct_one':>14}{'correct([x])':>14}{'correct(1000)':>15}"
        f"{'judge_one':>12}{'judge(1000)':>13}   (values/s)"
    )
    for name, c in correctors().items():
        cyc = itertools.cycle(x_list)
        res = c.correct(xs)
        r_one = rate(functools.partial(_one, c, cyc), 1, args.seconds)
        r_arr1 = rate(functools.partial(c.correct, one), 1, args.seconds)
        r_arr = rate(functools.partial(c.correct, xs), 1000, args.seconds)
        r_j1 = rate(functools.partial(c.judge_one, 512.0, 0.05), 1, args.seconds)
        r_j = rate(functools.partial(c.judge, res.value, res.U), 1000, args.seconds)
        print(
            f"{name:<18}{r_one:>14,.0f}{r_arr1:>14,.0f}{r_arr:>15,.0f}{r_j1:>12,.0f}{r_j:>13,.0f}"
        )
        # the two paths agree
        v = [c.correct_one(x)[0] for x in x_list[:50]]
        assert all(
            math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
            for a, b in zip(v, res.value[:50], strict=True)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
