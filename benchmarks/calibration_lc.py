"""Calibration of the length-controlled win rate: does its CI exclude 0.5 for a judge that only rewards length?

`lengthcontrol.length_controlled_win_rate` claims to remove the part of a judge's preference that the length difference
explains. This module measures that claim by simulation, through the report's own function:

  type-I cells   the truth is LC = 0.5 (no quality difference), arm A's answers are longer on average
                 (lognormal word counts, A's mean 1.5x B's, A longer on about 79% of prompts), and the judge
                 rewards length only:
                   "longer always wins"   the longer answer wins, equal lengths tie (a step function: the data
                                          carry no information about the preference at equal length);
                   "length slope 1.5"     y ~ Bernoulli(sigmoid(1.5 * tanh(delta / sd))), the fitted model's form;
                   "length slope 3.0"     the same with slope 3;
                   "log-ratio slope 2.0"  y ~ Bernoulli(sigmoid(2 * log(len_a / len_b))): a length effect of
                                          another shape than the fitted tanh (the fit is misspecified);
  power cells    a real quality difference, logit +0.6 at equal length (true LC = sigmoid(0.6) = 0.646), with
                 and without the length slope 1.5 on top.

Per cell: the share of runs whose CI excludes 0.5 ("ci_excludes_0.5": a type-I error where the truth is 0.5,
power otherwise; nominal 5%, about 2.5% per side), the mean LC and the mean raw win rate. With
`compare_bootstrap=True` each cell also gets the rate of a percentile bootstrap of the same Firth fit
(`n_resamples` resamples), the interval the function does not use (the docstring of
`lengthcontrol.length_controlled_win_rate` says why).

    python benchmarks/calibration_lc.py                 # the table, 200 runs per cell (about a minute)
    python benchmarks/calibration_lc.py --runs 1000 --compare-bootstrap

`benchmarks/bench_calibration.py` imports `lc_cells`. Seeded: the same arguments give the same numbers. Rates
are shares of `n_runs` runs (binomial standard error sqrt(p (1 - p) / runs): 1.5 points at 5% and 200 runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from phased_ift import lengthcontrol, stats  # noqa: E402

SIZES = (40, 80, 300)
LENGTH_RATIO = 1.5  # arm A's answers are this much longer on average (geometric mean)
QUALITY = 0.6  # the power cells' logit at equal length


def _lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Word counts of arm A and arm B: a shared per-prompt length (some prompts need long answers) times
    per-answer lognormal noise, A's mean LENGTH_RATIO x B's."""
    prompt = rng.normal(np.log(120), 0.5, n)
    len_b = np.maximum(1, np.round(np.exp(prompt + rng.normal(0, 0.35, n))))
    len_a = np.maximum(1, np.round(np.exp(prompt + np.log(LENGTH_RATIO) + rng.normal(0, 0.35, n))))
    return len_a, len_b


def _verdicts(rng: np.random.Generator, scenario: str, len_a: np.ndarray, len_b: np.ndarray) -> list[str]:
    delta = len_a - len_b
    x = np.tanh(delta / delta.std())
    if scenario == "longer always wins":
        return ["win" if d > 0 else "loss" if d < 0 else "tie" for d in delta]
    logit = {"length slope 1.5": 1.5 * x, "length slope 3.0": 3.0 * x,
             "log-ratio slope 2.0": 2.0 * np.log(len_a / len_b),
             "quality +0.6": np.full(delta.size, QUALITY),
             "quality +0.6, length slope 1.5": QUALITY + 1.5 * x}[scenario]
    wins = rng.random(delta.size) < 1 / (1 + np.exp(-logit))
    return ["win" if w else "loss" for w in wins]


def _bootstrap_excludes(verdicts: list[str], len_a: np.ndarray, len_b: np.ndarray, n_resamples: int,
                        seed: int) -> tuple[bool, bool]:
    """Whether the percentile bootstrap of the Firth intercept lies above / below 0.5 (the rejected alternative)."""
    y = stats.verdict_values(verdicts)
    delta = len_a - len_b
    x = np.tanh(delta / delta.std())
    b0, b1 = lengthcontrol.fit_length_logistic(y, x, np.ones(y.size))
    idx = np.random.default_rng(seed).integers(0, y.size, size=(n_resamples, y.size))
    w = np.zeros((n_resamples, y.size))
    np.add.at(w, (np.arange(n_resamples)[:, None], idx), 1.0)
    bb0, _ = lengthcontrol.fit_length_logistic(y, x, w, start=(b0[0], b1[0]), iterations=100)
    lo, hi = np.quantile(bb0, [0.025, 0.975])
    return bool(lo > 0), bool(hi < 0)


def lc_cells(n_runs: int = 200, seed: int = 0, n_resamples: int = 500, compare_bootstrap: bool = False,
             sizes: tuple[int, ...] = SIZES) -> list[dict]:
    """One dict per (scenario, n): {"test": "LC win rate", "scenario", "n", "true_lc", "runs", "ci_excludes_0.5",
    "ci_above_0.5", "ci_below_0.5", "mean_lc", "raw_win_rate", "mean_ci_width"} (+ the percentile bootstrap's
    "bootstrap_ci_excludes_0.5" with compare_bootstrap). n_resamples is passed to the function (which needs none)
    and used by the bootstrap comparison."""
    scenarios = [("longer always wins", 0.5), ("length slope 1.5", 0.5), ("length slope 3.0", 0.5),
                 ("log-ratio slope 2.0", 0.5), ("quality +0.6", float(1 / (1 + np.exp(-QUALITY)))),
                 ("quality +0.6, length slope 1.5", float(1 / (1 + np.exp(-QUALITY))))]
    cells = []
    for k, (scenario, true_lc) in enumerate(scenarios):
        for n in sizes:
            rng = np.random.default_rng([seed, k, n])
            above = below = boot = 0
            lcs, raws, widths = [], [], []
            for r in range(n_runs):
                len_a, len_b = _lengths(rng, n)
                v = _verdicts(rng, scenario, len_a, len_b)
                lc = lengthcontrol.length_controlled_win_rate(v, len_a, len_b, n_resamples=n_resamples, seed=r)
                lo, hi = lc["lc_ci"]
                above += lo > 0.5
                below += hi < 0.5
                lcs.append(lc["lc_win_rate"])
                widths.append(hi - lo)
                raws.append(float(np.mean(stats.verdict_values(v))))
                if compare_bootstrap:
                    boot += any(_bootstrap_excludes(v, len_a, len_b, n_resamples, r))
            cell = {"test": "LC win rate", "scenario": scenario, "n": n, "true_lc": true_lc, "runs": n_runs,
                    "ci_excludes_0.5": (above + below) / n_runs, "ci_above_0.5": above / n_runs,
                    "ci_below_0.5": below / n_runs, "mean_lc": float(np.mean(lcs)),
                    "raw_win_rate": float(np.mean(raws)), "mean_ci_width": float(np.mean(widths))}
            if compare_bootstrap:
                cell["bootstrap_ci_excludes_0.5"] = boot / n_runs
            cells.append(cell)
    return cells


def _time_call(n: int = 805, repeats: int = 5) -> float:
    """Seconds per `length_controlled_win_rate` call at n prompts, B = 2000 (the report's default)."""
    rng = np.random.default_rng(0)
    len_a, len_b = _lengths(rng, n)
    v = _verdicts(rng, "quality +0.6, length slope 1.5", len_a, len_b)
    lengthcontrol.length_controlled_win_rate(v, len_a, len_b)  # imports
    t0 = time.perf_counter()
    for _ in range(repeats):
        lengthcontrol.length_controlled_win_rate(v, len_a, len_b, n_resamples=2000)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resamples", type=int, default=500)
    ap.add_argument("--compare-bootstrap", action="store_true", help="add the percentile bootstrap's rate (slow)")
    ap.add_argument("--out", type=Path, help="write the cells as JSON here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cells = lc_cells(args.runs, args.seed, args.resamples, args.compare_bootstrap)
    boot = args.compare_bootstrap
    print("| scenario | n | true LC | raw win rate | mean LC | CI excludes 0.5 (above / below) | mean CI width |"
          + (" percentile bootstrap |" if boot else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if boot else ""))
    for c in cells:
        print(f"| {c['scenario']} | {c['n']} | {c['true_lc']:.3f} | {c['raw_win_rate']:.3f} | {c['mean_lc']:.3f} | "
              f"{100 * c['ci_excludes_0.5']:.1f}% ({100 * c['ci_above_0.5']:.1f} / {100 * c['ci_below_0.5']:.1f}) | "
              f"{c['mean_ci_width']:.3f} |" + (f" {100 * c['bootstrap_ci_excludes_0.5']:.1f}% |" if boot else ""))
    per_call = _time_call()
    print(f"\n{args.runs} runs per cell, {time.perf_counter() - t0:.0f} s; "
          f"one call at n = 805: {per_call * 1e3:.1f} ms")
    if args.out:
        args.out.write_text(json.dumps({"cells": cells, "seconds_per_call_n805": per_call}, indent=1))


if __name__ == "__main__":
    main()
