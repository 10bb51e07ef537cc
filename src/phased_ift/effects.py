"""The answer to "did this arm help?": paired arm-vs-baseline effects pooled over seeds, with their uncertainty.

Owns the statistics that turn a run into a statement (issue 16, item 2):
  * `paired_effect`: the mean paired difference (arm - baseline on the same prompts) pooled over training seeds,
    its 95% CI and a two-sided p-value from a hierarchical bootstrap that resamples seeds, then prompts;
  * `variance_components` and `minimum_detectable_effect`: how large an effect the run's number of prompts and
    seeds could detect at 80% power, and how many prompts or seeds a smaller effect needs;
  * `holm_adjust`: Holm's step-down adjustment of the run's p-values (every arm x metric is one comparison), so a
    run with many arms and metrics does not call its luckiest comparison a finding;
  * `effect_sentence`: the verdict, e.g. "phased vs one-off, reference loss: -0.019 [-0.050, +0.010], p = 0.21,
    not significant; this run could detect ±0.040 (80% power); for ±0.020 use about 3,200 prompts or 8 seeds".

Pure functions over (S, N) arrays: S training seeds (rows) x N prompts (columns), the same prompts in every row,
NaN where a value is missing (an unparseable verdict). `report.summary` builds the arrays from the run dir.

The design is crossed: every seed answers every prompt, so prompt difficulty is shared across seeds. Resampling
seeds and prompts independently (one prompt draw shared by the drawn seeds) is Owen's "pigeonhole" bootstrap for
crossed random effects (Owen 2007, Ann. Appl. Stat. 1(1)); it is mildly conservative (the seed-by-prompt residual
enters twice), so a p-value below 0.05 is not an artefact of the resampling. With one seed the seed-to-seed
variance is unknown and the interval covers prompt sampling only; `effect_sentence` says so.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

POWER = 0.8  # the conventional power of a minimum detectable effect (Cohen 1988)


def _as_matrix(diffs: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
        raise ValueError(f"paired differences must be a non-empty (seeds, prompts) matrix, got shape {d.shape}")
    if np.isnan(d).all(axis=1).any():
        raise ValueError("a seed has no paired value at all (every prompt missing); leave that seed out")
    return d


def _pooled_mean(x: np.ndarray) -> np.ndarray:
    """Mean over seeds of each seed's mean over prompts; x (..., S, N) -> (...). NaN cells are skipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": a draw of only missing cells
        return np.nanmean(np.nanmean(x, axis=-1), axis=-1)


def paired_effect(diffs: Sequence[Sequence[float]] | np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                  seed: int = 0, chunk: int = 250) -> dict:
    """The pooled paired difference with a hierarchical (seeds, then prompts) bootstrap CI and p-value.

    Args:
        diffs: (S, N) per-prompt differences arm - baseline for S seeds on the same N prompts (column j is the
            same prompt in every row); NaN = missing. For a win rate pass verdict value - 0.5 (win 0.5, tie 0,
            loss -0.5), so the difference is the win rate minus 0.5.
        n_resamples: B bootstrap draws; each draws S seeds with replacement and N prompts with replacement (one
            prompt draw shared by the drawn seeds).
        confidence: the CI's level.
        seed: numpy Generator seed (same inputs, same result).
        chunk: draws computed at once (memory: chunk x S x N floats).

    Returns:
        {"n_seeds": S, "n_prompts": N, "difference": mean over seeds of the per-seed mean, "ci": [lo, hi],
         "se": the bootstrap standard error, "p_value": two-sided, 2 x the smaller share of draws on either side of
         0 (at least 1/B: a p-value of 1/B means "below 1/B"), "n_resamples": B, "confidence", "significant": 0
         outside the CI}.

    Raises:
        ValueError: not a non-empty 2-D matrix, or a seed whose values are all missing.

    Source: Efron & Tibshirani (1993), percentile intervals and the bootstrap test by CI inversion; Owen (2007) for
    resampling both factors of a crossed design.
    """
    d = _as_matrix(diffs)
    s, n = d.shape
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        si = rng.integers(0, s, size=(b, s)) if s > 1 else np.zeros((b, 1), dtype=int)
        pi = rng.integers(0, n, size=(b, n))
        draws.append(_pooled_mean(d[si[:, :, None], pi[:, None, :]]))
    boot = np.concatenate(draws)
    boot = boot[~np.isnan(boot)]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return {"n_seeds": s, "n_prompts": n, "difference": float(_pooled_mean(d)), "ci": [float(lo), float(hi)],
            "se": float(boot.std(ddof=1)), "p_value": max(p, 1 / n_resamples), "n_resamples": n_resamples,
            "confidence": confidence, "significant": bool(lo > 0 or hi < 0)}


def variance_components(diffs: Sequence[Sequence[float]] | np.ndarray) -> dict:
    """Seed, prompt and residual variance of paired differences, from the two-way crossed ANOVA without
    replication on the prompts that every seed answered (expected mean squares, negative estimates set to 0).

    Returns:
        {"seed": var, "prompt": var, "residual": var, "n_complete": prompts used}; with one seed "seed" is None
        (not estimable) and "prompt" holds the whole per-prompt variance (prompt + residual confounded).

    Source: Searle, Casella & McCulloch (1992), Variance Components, ch. 4 (the two-way crossed random model).
    """
    d = _as_matrix(diffs)
    d = d[:, ~np.isnan(d).any(axis=0)]
    s, n = d.shape
    if n < 2:
        return {"seed": None, "prompt": None, "residual": None, "n_complete": n}
    if s == 1:
        return {"seed": None, "prompt": float(d[0].var(ddof=1)), "residual": 0.0, "n_complete": n}
    grand = d.mean()
    row, col = d.mean(axis=1), d.mean(axis=0)
    ms_seed = n * ((row - grand) ** 2).sum() / (s - 1)
    ms_prompt = s * ((col - grand) ** 2).sum() / (n - 1)
    ms_resid = ((d - row[:, None] - col[None, :] + grand) ** 2).sum() / ((s - 1) * (n - 1))
    return {"seed": float(max(0.0, (ms_seed - ms_resid) / n)), "prompt": float(max(0.0, (ms_prompt - ms_resid) / s)),
            "residual": float(ms_resid), "n_complete": n}


def _design_variance(vc: dict, s: float, n: float) -> float:
    """Variance of the pooled mean with s seeds and n prompts under the crossed model."""
    return (vc["seed"] or 0.0) / s + vc["prompt"] / n + vc["residual"] / (s * n)


def minimum_detectable_effect(effect: dict, vc: dict, confidence: float = 0.95, power: float = POWER,
                              target: float | None = None) -> dict:
    """The smallest |difference| this run detects with the given power, and what a smaller one needs.

    MDE = (z_(1 - alpha/2) + z_power) x SE, with SE the bootstrap standard error of `paired_effect` (the same test
    the verdict uses). Other designs are scaled by the crossed model of `variance_components`:
    SE(S', N') = SE x sqrt(V(S', N') / V(S, N)), V(S, N) = var_seed/S + var_prompt/N + var_residual/(S N).

    Args:
        effect: the result of `paired_effect`.
        vc: the result of `variance_components` on the same matrix.
        target: the smaller effect to plan for; default: half the MDE.

    Returns:
        {"mde", "power", "target", "prompts_for_target": N' at the run's S (None when more prompts alone cannot
         reach it: the seed variance is too large), "seeds_for_target": S' at the run's N (None with one seed:
         the seed variance is unknown, or when more seeds alone cannot reach it)}.

    Source: Bloom (1995), "Minimum detectable effects", Evaluation Review 19(5); Cohen (1988) for 80% power.
    """
    from scipy.stats import norm

    z = norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(power)
    mde = z * effect["se"]
    target = mde / 2 if target is None else abs(target)
    out = {"mde": float(mde), "power": power, "target": float(target), "prompts_for_target": None,
           "seeds_for_target": None}
    s, n = effect["n_seeds"], effect["n_prompts"]
    if vc.get("prompt") is None or target <= 1e-12 or mde <= 1e-12:  # no spread at all: nothing to scale
        return out
    v_now = _design_variance(vc, s, n)
    if v_now <= 0:
        return out
    v_goal = v_now * (target / mde) ** 2  # the design variance at which the MDE equals the target
    seed_var = vc["seed"] or 0.0
    room = v_goal - seed_var / s
    if room > 0:
        out["prompts_for_target"] = math.ceil((vc["prompt"] + vc["residual"] / s) / room)
    if vc["seed"] is not None:
        room = v_goal - vc["prompt"] / n
        if room > 0:
            out["seeds_for_target"] = max(2, math.ceil((seed_var + vc["residual"] / n) / room))
    return out


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6(2)), in the input order.

    Sorted ascending, the i-th smallest (0-based) of m becomes max over j <= i of min(1, (m - j) p_(j)); rejecting
    adjusted p < alpha controls the family-wise error rate at alpha for any dependence between the tests.
    NaN p-values are left NaN and do not count in m.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    p = np.asarray(p_values, dtype=float)
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)].tolist()}")
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, np.nan)
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out.tolist()


def _signed(x: float, nd: int) -> str:
    return f"{x:+.{nd}f}".replace("-", "\u2212")


def effect_sentence(arm: str, baseline: str, metric: str, effect: dict, mde: dict, lower_is_better: bool = False,
                    offset: float = 0.0, nd: int = 3, holm: tuple[float, int] | None = None) -> str:
    """One verdict sentence for an arm against the baseline on one metric.

    Args:
        metric: e.g. "reference loss", "IFEval prompt-level strict accuracy", "win rate".
        effect, mde: `paired_effect` and `minimum_detectable_effect` of the same comparison.
        lower_is_better: the metric improves downwards (a loss); the sentence says which arm is better.
        offset: shown next to the difference (0.5 for a win rate: "win rate 0.540, +0.040 over 0.5").
        holm: (Holm-adjusted p, number of comparisons) when the run made more than one; a comparison significant
            alone but not after the adjustment is called so ("not significant after Holm's correction for 6").

    Returns:
        e.g. "phased vs one-off, reference loss: −0.019 [−0.050, +0.010] (lower is better; 2 seeds x 805 prompts,
        p = 0.21): not significant; this run could detect ±0.040 at 80% power; for ±0.020 use about 3,200 prompts
        or 8 seeds."
    """
    d, (lo, hi) = effect["difference"], effect["ci"]
    head = f"{arm} vs {baseline}, {metric}: "
    if offset:
        head += f"{offset + d:.{nd}f}, "
    head += f"{_signed(d, nd)} [{_signed(lo, nd)}, {_signed(hi, nd)}]"
    design = f"{effect['n_seeds']} seed{'s' if effect['n_seeds'] > 1 else ''} x {effect['n_prompts']:,} prompts"
    p = effect["p_value"]
    floor = 1 / effect.get("n_resamples", 2000)
    ptxt = f"p < {floor:.2g}" if p <= floor else f"p = {p:.2g}"
    head += f" ({'lower is better; ' if lower_is_better else ''}{design}, {ptxt})"
    if effect["significant"]:
        better = arm if (d < 0) == lower_is_better else baseline
        verdict = f"significant, {better} is better"
        if holm is not None and holm[1] > 1:
            alpha = 1 - effect.get("confidence", 0.95)
            kept = holm[0] < alpha
            verdict = (f"{verdict} (also after Holm's correction for {holm[1]} comparisons, p = {holm[0]:.2g})"
                       if kept else f"significant alone but not after Holm's correction for "
                                    f"{holm[1]} comparisons (p = {holm[0]:.2g})")
    else:
        verdict = "not significant"
    text = f"{head}: {verdict}; this run could detect ±{mde['mde']:.{nd}f} at {int(mde['power'] * 100)}% power"
    advice = []
    if mde["prompts_for_target"]:
        advice.append(f"about {mde['prompts_for_target']:,} prompts")
    if mde["seeds_for_target"]:
        advice.append(f"{mde['seeds_for_target']} seeds")
    if advice:
        text += f"; for ±{mde['target']:.{nd}f} use " + " or ".join(advice)
    if effect["n_seeds"] == 1:
        text += "; one seed, so seed-to-seed variation is not in this interval (train.seeds=[0,1,2])"
    return text + "."
