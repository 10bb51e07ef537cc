"""Calibration benchmark: the type-I error and power of every test the report uses, measured by simulation.

A report's verdict is only as honest as the error rate of the test behind it. This script simulates runs of the
designs users run -- S in {1, 2, 3, 5} training seeds x N in {48, 80, 200} prompts, seed-to-prompt variance
ratios {0, 1, 3, 10} ("ratio" = (var_seed / S) / (var_prompt / N), the seed term's weight in the variance of the
pooled mean), continuous outcomes (a loss), binary outcomes (IFEval's prompt-level accuracy) and pairwise verdicts
(win / tie / loss) -- with and without a true effect, and passes each through the report's own functions:

  pooled claim      `effects.paired_effect(...)["significant"]`: the claim about the arms (crossed model, >= 3
                    seeds); at fewer seeds it never fires by design, and the crossed test's would-be rate is shown
                    beside it ("crossed test alone") for the record;
  conditional       `paired_effect(...)["conditional"]["significant"]`: the sign-flip test conditional on the
                    training runs, under its own null (no seed effects: two runs that do not differ) and, to show
                    why it is no claim about the arms, under the arms' null with seed variance;
  McNemar           `stats.mcnemar_midp` on IFEval-like 0/1 outcomes of one run per arm (discordance 2-15%);
  win rate          `paired_effect` on verdict values - 0.5, with ties;
  MDE               power at the true MDE (Bloom 1995: should be ~80%) and the median reported / true MDE;
  LC win rate       `lengthcontrol.length_controlled_win_rate`: a pure-length judge, CI excluding 0.5
                    (benchmarks/calibration_lc.py);
  degenerate        1 x 1, 2 x 1 and 5-of-5 inputs: no claim.

    python benchmarks/bench_calibration.py --out benchmarks/results/calibration.json     # the table (minutes)
    python benchmarks/bench_calibration.py --quick                                        # a small grid (seconds)

Every simulation is seeded (same command, same numbers). Rates are shares of `--runs` runs per cell (binomial
standard error sqrt(p (1 - p) / runs): 0.7 points at 5% and 1,000 runs). The JSON holds every cell; `--markdown`
prints the tables docs/report.md shows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from phased_ift import effects, stats  # noqa: E402

SEEDS = (1, 2, 3, 5)
PROMPTS = (48, 80, 200)
RATIOS = (0.0, 1.0, 3.0, 10.0)
ALPHA = 0.05
MC_RESAMPLES = 1000  # the conditional test's Monte Carlo draws per simulated run (its p is not what is measured)


def seed_variance(ratio: float, s: int, n: int, prompt_sd: float = 1.0) -> float:
    """The seed variance that makes (var_seed / S) / (var_prompt / N) equal `ratio`."""
    return ratio * prompt_sd ** 2 / n * s


def crossed(rng: np.random.Generator, s: int, n: int, ratio: float, effect: float = 0.0, prompt_sd: float = 1.0,
            resid_sd: float = 1.0) -> np.ndarray:
    """(S, N) continuous paired differences: effect + seed + prompt + residual, seed sd set by `ratio`."""
    seed_sd = math.sqrt(seed_variance(ratio, s, n, prompt_sd))
    return (effect + rng.normal(0, seed_sd, (s, 1)) + rng.normal(0, prompt_sd, (1, n))
            + rng.normal(0, resid_sd, (s, n)))


def true_se(s: int, n: int, ratio: float, prompt_sd: float = 1.0, resid_sd: float = 1.0) -> float:
    return math.sqrt(seed_variance(ratio, s, n, prompt_sd) / s + prompt_sd ** 2 / n + resid_sd ** 2 / (s * n))


def _binary(rng, s, n, seed_sd, shift=0.0, base=-1.0, prompt_sd=1.5):
    """(S, N) differences of 0/1 outcomes: each arm and seed its own logit offset, a prompt difficulty shared."""
    difficulty = rng.normal(base, prompt_sd, (1, n))
    arm = 1 / (1 + np.exp(-(difficulty + shift + rng.normal(0, seed_sd, (s, 1)))))
    ref = 1 / (1 + np.exp(-(difficulty + rng.normal(0, seed_sd, (s, 1)))))
    return (rng.random((s, n)) < arm).astype(float) - (rng.random((s, n)) < ref).astype(float)


def _verdicts(rng, s, n, seed_sd, shift=0.0, prompt_sd=1.0, tie=0.2):
    """(S, N) verdict values - 0.5 (win 0.5, tie 0, loss -0.5): P(win | not tie) from a logit with a prompt effect
    shared by the seeds and a seed effect per seed."""
    logit = shift + rng.normal(0, prompt_sd, (1, n)) + rng.normal(0, seed_sd, (s, 1))
    win = rng.random((s, n)) < 1 / (1 + np.exp(-logit))
    return np.where(rng.random((s, n)) < tie, 0.0, np.where(win, 0.5, -0.5))


def plain_satterthwaite_p(d: np.ndarray) -> float:
    """The crossed test with Satterthwaite df from the mean squares themselves (no upper bounds): the variant
    `effects.crossed_test` improves on, kept here to show why."""
    from scipy.stats import t as t_dist

    s, n = d.shape
    ms = effects.mean_squares(d)
    se = math.sqrt((ms["seed"] + ms["prompt"]) / (s * n))
    df = effects._satterthwaite([(ms["seed"], s - 1), (ms["prompt"], n - 1)])
    return float(2 * t_dist.sf(abs(d.mean() / se), df))


def _rate(hits: list[bool]) -> float:
    return float(np.mean(hits)) if hits else float("nan")


def pooled_cells(runs: int, rng, seeds=SEEDS, prompts=PROMPTS, ratios=RATIOS) -> list[dict]:
    """Continuous outcomes: the claim under the null and at 3 true standard errors."""
    rows = []
    for n in prompts:
        for s in seeds:
            for ratio in ratios:
                if s == 1 and ratio:
                    continue  # one seed: the seed term cannot be told from the prompt term; ratio 0 stands for all
                null, alone, plain, alt = [], [], [], []
                for _ in range(runs):
                    d = crossed(rng, s, n, ratio)
                    e = effects.paired_effect(d, MC_RESAMPLES)
                    null.append(e["significant"])
                    if s >= 2:
                        alone.append(effects.crossed_test(d)["p_value"] < ALPHA)
                        plain.append(plain_satterthwaite_p(d) < ALPHA)
                    alt.append(effects.paired_effect(crossed(rng, s, n, ratio, 3 * true_se(s, n, ratio)),
                                                     MC_RESAMPLES)["significant"])
                rows.append({"test": "pooled claim", "outcome": "continuous", "seeds": s, "prompts": n,
                             "ratio": ratio, "runs": runs, "type_I": _rate(null),
                             "crossed_test_alone_type_I": _rate(alone) if alone else None,
                             "plain_satterthwaite_type_I": _rate(plain) if plain else None,
                             "power_at_3_se": _rate(alt), "claim_made": s >= effects.MIN_SEEDS})
    return rows


def _seed_share(make, s: int, n: int) -> float:
    """The seed term's share of the variance of the pooled mean, (var_seed / S) / (var_seed / S + var_prompt / N +
    var_res / (S N)), of a generator, from the ANOVA components of one large draw. (For 0/1 and verdict
    differences under the null the prompt component is ~0: the shared prompt difficulty cancels in arm - baseline,
    so the seed-to-prompt ratio of the continuous grid is not defined there.)"""
    vc = effects.variance_components(make(np.random.default_rng(99), 60, 3000))
    var = vc["seed"] / s + vc["prompt"] / n + vc["residual"] / (s * n)
    return (vc["seed"] / s) / var if var else float("nan")


def binary_cells(runs: int, rng, seeds=(3, 5), prompts=(80, 200), seed_sds=(0.0, 0.3, 0.6)) -> list[dict]:
    """0/1 outcomes (IFEval) and verdicts (win rate): the claim under the null and with a logit shift."""
    rows = []
    for kind, make, shift in (("binary", _binary, 0.5), ("verdicts", _verdicts, 0.4)):
        for n in prompts:
            for s in seeds:
                for sd in seed_sds:
                    null = [effects.paired_effect(make(rng, s, n, sd), MC_RESAMPLES)["significant"]
                            for _ in range(runs)]
                    alt = [effects.paired_effect(make(rng, s, n, sd, shift), MC_RESAMPLES)["significant"]
                           for _ in range(runs)]
                    share = _seed_share(lambda r, ss, nn: make(r, ss, nn, sd), s, n)
                    rows.append({"test": "pooled claim", "outcome": kind, "seeds": s, "prompts": n,
                                 "seed_sd_logit": sd, "seed_share": round(share, 3), "runs": runs,
                                 "type_I": _rate(null),
                                 f"power_at_logit_{shift}": _rate(alt), "claim_made": True})
    return rows


def conditional_cells(runs: int, rng, seeds=(1, 2), prompts=PROMPTS) -> list[dict]:
    """The sign-flip test conditional on the runs: under its own null (no seed effects), continuous (Monte Carlo)
    and binary (exact mid-p); then under the arms' null with seed variance (ratio 3), where it is no claim."""
    rows = []
    for n in prompts:
        for s in seeds:
            cont = [effects.paired_effect(crossed(rng, s, n, 0.0), MC_RESAMPLES)["conditional"]["significant"]
                    for _ in range(runs)]
            binr = [effects.paired_effect(_binary(rng, s, n, 0.0), MC_RESAMPLES)["conditional"]["significant"]
                    for _ in range(runs)]
            seedy = [effects.paired_effect(crossed(rng, s, n, 3.0), MC_RESAMPLES)["conditional"]["significant"]
                     for _ in range(runs)]
            rows.append({"test": "conditional (sign-flip)", "seeds": s, "prompts": n, "runs": runs,
                         "type_I_continuous": _rate(cont), "type_I_binary": _rate(binr),
                         "fires_under_arms_null_ratio_3": _rate(seedy)})
    return rows


def mcnemar_cells(runs: int, rng, prompts=(80, 200, 541), discordance=(0.02, 0.04, 0.08, 0.15)) -> list[dict]:
    """Mid-p McNemar on IFEval-like data: one run per arm, a share of prompts discordant, H0: either side equally
    likely; power with 2:1 odds among the discordant prompts."""
    rows = []
    for n in prompts:
        for q in discordance:
            def draw(p_a: float) -> bool:
                disc = rng.random(n) < q
                a_wins = rng.random(n) < p_a
                both = rng.random(n) < 0.3
                a = np.where(disc, a_wins, both)
                b = np.where(disc, ~a_wins, both)
                return stats.mcnemar_midp(a, b)["p_value"] < ALPHA
            rows.append({"test": "mid-p McNemar", "prompts": n, "discordance": q, "runs": runs,
                         "type_I": _rate([draw(0.5) for _ in range(runs)]),
                         "power_at_2_to_1": _rate([draw(2 / 3) for _ in range(runs)])})
    return rows


def mde_cells(runs: int, rng, seeds=(3, 5), prompts=PROMPTS, ratios=RATIOS) -> list[dict]:
    """Power at the true MDE (the MDE formula at the true variance components: nominal 80%) and the median of the
    MDE a run reports over the true one."""
    rows = []
    for n in prompts:
        for s in seeds:
            for ratio in ratios:
                vc = {"seed": seed_variance(ratio, s, n), "prompt": 1.0, "residual": 1.0}
                true = effects._mde_at(vc, s, n, 0.95, effects.POWER)
                hits, ratios_seen = [], []
                for _ in range(runs):
                    d = crossed(rng, s, n, ratio, true)
                    e = effects.paired_effect(d, MC_RESAMPLES)
                    hits.append(e["significant"])
                    m = effects.minimum_detectable_effect(e, effects.variance_components(d))
                    if m["mde"] is not None:
                        ratios_seen.append(m["mde"] / true)
                rows.append({"test": "MDE", "seeds": s, "prompts": n, "ratio": ratio, "runs": runs,
                             "true_mde": true, "power_at_true_mde": _rate(hits),
                             "median_reported_over_true": float(np.median(ratios_seen)) if ratios_seen else None})
    return rows


def degenerate_rows() -> list[dict]:
    """Inputs from which no claim may come."""
    cases = {"1 seed x 1 prompt": [[0.01]], "2 seeds x 1 prompt": [[0.1], [0.2]],
             "5 of 5 wins (5 prompts)": [[0.5] * 5], "constant difference, 3 x 48": [[0.01] * 48] * 3}
    out = []
    for name, d in cases.items():
        e = effects.paired_effect(d)
        out.append({"test": "degenerate", "case": name, "significant": e["significant"],
                    "conditional_significant": e["conditional"]["significant"],
                    "reason": e["reason"] or e["conditional"]["reason"]})
    return out


def run(runs: int, quick: bool, seed: int = 0, lc: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if quick:
        cells = pooled_cells(runs, rng, seeds=(2, 3, 5), prompts=(48,), ratios=(0.0, 10.0))
    else:
        cells = pooled_cells(runs, rng)
        cells += binary_cells(runs, rng)
        cells += conditional_cells(runs, rng)
        cells += mcnemar_cells(runs, rng)
        cells += mde_cells(max(200, runs // 2), rng)
        if lc:
            from calibration_lc import lc_cells

            cells += lc_cells(n_runs=runs, seed=seed)
    cells += degenerate_rows()
    return {"benchmark": "calibration", "runs": runs, "seed": seed, "alpha": ALPHA, "min_seeds": effects.MIN_SEEDS,
            "min_prompts": effects.MIN_PROMPTS, "df_quantile": effects.DF_QUANTILE,
            "seconds": round(time.perf_counter() - t0, 1), "cells": cells}


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def markdown(result: dict) -> str:
    """The tables docs/report.md shows, from a result of `run`."""
    cells = result["cells"]
    out = ["Pooled claim, continuous outcome: type-I error (power at 3 true SE) per seeds x prompts and ratio.", "",
           "| seeds | prompts | " + " | ".join(f"ratio {r:g}" for r in RATIOS) + " |",
           "|---|---|" + "---|" * len(RATIOS)]
    pooled = [c for c in cells if c["test"] == "pooled claim" and c.get("outcome") == "continuous"]
    for s in SEEDS:
        for n in PROMPTS:
            row = {c["ratio"]: c for c in pooled if c["seeds"] == s and c["prompts"] == n}
            if not row:
                continue
            txt = []
            for r in RATIOS:
                c = row.get(r) or (row.get(0.0) if s == 1 else None)
                if c is None:
                    txt.append("")
                elif not c["claim_made"]:
                    alone = c["crossed_test_alone_type_I"]
                    txt.append("no claim" + (f" (test alone {_pct(alone)})" if alone is not None else ""))
                else:
                    txt.append(f"{_pct(c['type_I'])} ({_pct(c['power_at_3_se'])})")
            out.append(f"| {s} | {n} | " + " | ".join(txt) + " |")
    plain = [c for c in pooled if c.get("plain_satterthwaite_type_I") is not None and c["seeds"] >= 3]
    if plain:
        worst = max(plain, key=lambda c: c["plain_satterthwaite_type_I"])
        out += ["", f"With plain Satterthwaite df (from the mean squares themselves) the same test rejects up to "
                    f"{_pct(worst['plain_satterthwaite_type_I'])} at {worst['seeds']} seeds x {worst['prompts']} "
                    f"prompts, ratio {worst['ratio']:g}; the df from 75% upper bounds of the mean squares give "
                    f"{_pct(worst['type_I'])} there."]
    other = [c for c in cells if c["test"] == "pooled claim" and c.get("outcome") != "continuous"]
    if other:
        out += ["", "Pooled claim, binary outcomes and verdicts (seed sd on the logit scale; the seed term's share of "
                    "the pooled mean's variance, measured):", "",
                "| outcome | seeds | prompts | seed sd | seed share | type-I | power |", "|---|---|---|---|---|---|---|"]
        for c in other:
            pw = next(v for k, v in c.items() if k.startswith("power_at_logit"))
            shift = next(k for k in c if k.startswith("power_at_logit")).rsplit("_", 1)[1]
            out.append(f"| {c['outcome']} | {c['seeds']} | {c['prompts']} | {c['seed_sd_logit']} | {_pct(c['seed_share'])} | "
                       f"{_pct(c['type_I'])} | {_pct(pw)} (logit +{shift}) |")
    cond = [c for c in cells if c["test"] == "conditional (sign-flip)"]
    if cond:
        out += ["", "Conditional on the runs (sign-flip test): type-I under its own null; how often it fires under "
                    "the arms' null with seed variance (ratio 3), which is why it is never a claim about the arms:",
                "", "| seeds | prompts | continuous | binary | arms' null, ratio 3 |", "|---|---|---|---|---|"]
        out += [f"| {c['seeds']} | {c['prompts']} | {_pct(c['type_I_continuous'])} | {_pct(c['type_I_binary'])} | "
                f"{_pct(c['fires_under_arms_null_ratio_3'])} |" for c in cond]
    mc = [c for c in cells if c["test"] == "mid-p McNemar"]
    if mc:
        out += ["", "Mid-p McNemar, one run per arm: type-I (power at 2:1 among discordant prompts):", "",
                "| prompts | " + " | ".join(f"{100 * q:g}% discordant" for q in sorted({c['discordance'] for c in mc}))
                + " |", "|---|" + "---|" * len({c['discordance'] for c in mc})]
        for n in sorted({c["prompts"] for c in mc}):
            out.append(f"| {n} | " + " | ".join(f"{_pct(c['type_I'])} ({_pct(c['power_at_2_to_1'])})"
                                                for c in mc if c["prompts"] == n) + " |")
    mde = [c for c in cells if c["test"] == "MDE"]
    if mde:
        out += ["", "MDE: power at the true MDE (nominal 80%) / median reported MDE over the true one:", "",
                "| seeds | prompts | " + " | ".join(f"ratio {r:g}" for r in RATIOS) + " |",
                "|---|---|" + "---|" * len(RATIOS)]
        for s in sorted({c["seeds"] for c in mde}):
            for n in PROMPTS:
                row = [c for c in mde if c["seeds"] == s and c["prompts"] == n]
                out.append(f"| {s} | {n} | " + " | ".join(
                    f"{_pct(c['power_at_true_mde'])} / {c['median_reported_over_true']:.2f}" for c in row) + " |")
    lc = [c for c in cells if c["test"] == "LC win rate"]
    if lc:
        out += ["", "Length-controlled win rate: share of runs whose CI excludes 0.5 (a type-I error where the true "
                    "LC is 0.5, power otherwise):", "",
                "| scenario | n | true LC | raw win rate | mean LC | CI excludes 0.5 |", "|---|---|---|---|---|---|"]
        out += [f"| {c['scenario']} | {c['n']} | {c['true_lc']:.3f} | {c['raw_win_rate']:.3f} | {c['mean_lc']:.3f} | "
                f"{_pct(c['ci_excludes_0.5'])} |" for c in lc]
    deg = [c for c in cells if c["test"] == "degenerate"]
    out += ["", "Degenerate inputs: " + "; ".join(
        f"{c['case']}: {'CLAIM' if c['significant'] or c['conditional_significant'] else 'no claim'} "
        f"({c['reason']})" for c in deg) + "."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="simulated runs per cell")
    ap.add_argument("--quick", action="store_true", help="a small grid of the pooled claim only")
    ap.add_argument("--no-lc", action="store_true", help="leave out the LC win rate cells")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--markdown", action="store_true", help="print the tables of docs/report.md")
    args = ap.parse_args(argv)
    result = run(args.runs, args.quick, args.seed, lc=not args.no_lc)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(markdown(result) if args.markdown or not args.out else f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
