"""Statistics of the evaluation: win rates, confidence intervals, the mid-p McNemar test, length statistics.

Pure functions over plain lists/arrays (no files, no plotting); `report.summary` feeds them the judgements,
generations and reference losses of a run dir. The descriptive intervals of means are seeded percentile bootstraps
that resample *prompts* (the unit the test sets sample), so the same inputs and seed always give the same interval;
win rates get Wilson intervals (never of zero width); the paired McNemar test is the mid-p one. The tests behind the
report's claims are `effects.py`'s; the length-controlled win rate is `lengthcontrol.py`'s.

    from phased_ift.stats import win_rate_cis
    win_rate_cis(["win", "tie", "loss", "unparseable"])

Counts and point win rates come from `phased_ift.winrate.aggregate` (one definition, numbers only, also the
verdict values); this module adds their intervals. Conventions (Pang et al. 2024, §4 and the PhasedSFT judge code):
  * a verdict is "win" | "tie" | "loss" from arm A's side, or "unparseable" when either judge order could not
    be parsed; unparseable verdicts are counted apart and never turned into a result;
  * win rate = (wins + ties/2) / N_parsed;
  * the paper's centred number = (wins + ties/2) / N_all - 0.5, with unparseable verdicts counted in N_all.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from phased_ift.winrate import verdict_values  # noqa: F401 (the values behind every interval here)


def round_half_up(x: float) -> int:
    """x rounded to the nearest integer, halves up (floor(x + 0.5)); Python's round() would round halves to even."""
    return int(math.floor(x + 0.5))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a statistic over items (prompts, examples).

    Args:
        values: N per-item values (NaN allowed when `statistic` handles it).
        statistic: maps a (B, N) array of resampled values to (B,) statistics; default: the row mean.
        n_resamples: B, the number of resamples (with replacement, N items each).
        confidence: e.g. 0.95 for the 2.5% and 97.5% percentiles.
        seed: numpy Generator seed; the same inputs and seed give the same interval.

    Returns:
        (lo, hi), or None for N = 0. Resamples whose statistic is NaN (e.g. no parsed verdict drawn) are dropped.

    Source: Efron & Tibshirani (1993), the percentile method.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None
    stat = statistic or (lambda a: a.mean(axis=1))
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    s = stat(x[idx])
    s = s[~np.isnan(s)]
    if s.size == 0:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(s, [alpha, 1 - alpha])
    return float(lo), float(hi)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> list[float] | None:
    """The Wilson score interval of a proportion successes / n (Wilson 1927, JASA 22(158)); successes may count a
    tie as half a success. Never of zero width for 0 < n, unlike a percentile bootstrap of 5 wins out of 5 ([1, 1]):
    5 of 5 gives [0.566, 1]. None for n = 0.

    Computed from its closed form, not `scipy.stats.binomtest(...).proportion_ci`, because that takes integer
    counts only and ties count half here.
    """
    from scipy.stats import norm

    if n <= 0:
        return None
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def win_rate_cis(verdicts: Sequence[str], confidence: float = 0.95) -> dict:
    """Wilson score intervals (`wilson_interval`, ties counted half a win) of the win rate and of the paper's centred
    number, for the descriptive per-test-set lines; the tested answer is `effects.paired_effect`.

    The point estimates and counts come from `phased_ift.winrate.aggregate` (one definition of the win rate): win
    rate over the parsed verdicts, centred number over all of them (unparseable counted in N) minus 0.5.

    Returns:
        {"win_rate_ci": [lo, hi] | None, "centred_ci": [lo, hi] | None} (None when nothing to count).
    """
    v = verdict_values(verdicts)
    parsed = v[~np.isnan(v)]
    wr = wilson_interval(float(parsed.sum()), int(parsed.size), confidence)
    c = wilson_interval(float(parsed.sum()), int(v.size), confidence)
    return {"win_rate_ci": wr, "centred_ci": [c[0] - 0.5, c[1] - 0.5] if c else None}


def mean_with_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean of per-item values with a bootstrap CI: {"n", "mean", "ci": [lo, hi]} (None when empty).

    Used for the offline reference loss (per-example mean token losses, nats).
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return {"n": 0, "mean": None, "ci": None}
    ci = bootstrap_ci(x, None, n_resamples, confidence, seed)
    return {"n": int(x.size), "mean": float(x.mean()), "ci": list(ci) if ci else None}


def length_stats(words: Sequence[int], tokens: Sequence[int | None] = ()) -> dict:
    """Answer-length statistics: {"n", "mean_words", "median_words", "mean_tokens", "median_tokens"}.

    Token statistics are None when no token counts are given (e.g. generations from an external file).
    """
    w = np.asarray(words, dtype=float)
    t = np.asarray([x for x in tokens if x is not None], dtype=float)
    return {
        "n": int(w.size),
        "mean_words": float(w.mean()) if w.size else None,
        "median_words": float(np.median(w)) if w.size else None,
        "mean_tokens": float(t.mean()) if t.size else None,
        "median_tokens": float(np.median(t)) if t.size else None,
    }


# Bins of the relative length difference (len_a - len_b) / mean(len_a, len_b).
LENGTH_BIN_EDGES = (-np.inf, -0.5, -0.1, 0.1, 0.5, np.inf)
LENGTH_BIN_NAMES = ("A much shorter (< -50%)", "A shorter (-50%..-10%)", "similar (±10%)",
                    "A longer (10%..50%)", "A much longer (> 50%)")


def relative_length_difference(len_a: Sequence[float], len_b: Sequence[float]) -> np.ndarray:
    """(len_a - len_b) / mean(len_a, len_b) per prompt, in [-2, 2]; 0 when both answers are empty."""
    a = np.asarray(len_a, dtype=float)
    b = np.asarray(len_b, dtype=float)
    m = (a + b) / 2
    return np.where(m > 0, (a - b) / np.where(m > 0, m, 1), 0.0)


def length_binned_win_rates(verdicts: Sequence[str], len_a: Sequence[float], len_b: Sequence[float]) -> list[dict]:
    """Win rate inside bins of the relative length difference (a length-matched view).

    The "similar" bin compares answers of about the same length, where the judge's length bias cannot act.

    Returns:
        one dict per bin of `LENGTH_BIN_NAMES`: {"bin", "n", "n_parsed", "win_rate"} (win_rate None when empty).
    """
    v = verdict_values(verdicts)
    r = relative_length_difference(len_a, len_b)
    which = np.digitize(r, LENGTH_BIN_EDGES[1:-1], right=True)
    rows = []
    for i, name in enumerate(LENGTH_BIN_NAMES):
        sel = v[which == i]
        parsed = sel[~np.isnan(sel)]
        rows.append({"bin": name, "n": int(sel.size), "n_parsed": int(parsed.size),
                     "win_rate": float(parsed.mean()) if parsed.size else None})
    return rows


def seed_spread(values: Sequence[float]) -> dict:
    """Mean and spread of one number across training seeds: {"n_seeds", "mean", "std", "min", "max"}.

    std is the sample standard deviation (ddof=1); None for a single seed.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return {"n_seeds": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n_seeds": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else None,
            "min": float(x.min()), "max": float(x.max())}


def ratio_with_ci(numerators: Sequence[float], denominators: Sequence[float], n_resamples: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> dict:
    """sum(numerators) / sum(denominators) with a bootstrap CI that resamples items (prompts), both sums from
    the same resample: {"n", "value", "ci": [lo, hi]} (value and ci None when the denominators sum to 0).

    Used for IFEval's instruction-level accuracy: per prompt, instructions followed / instructions given, pooled
    over prompts (Zhou et al. 2023, §3), with the prompt as the resampled unit.
    """
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if num.size == 0 or den.sum() <= 0:
        return {"n": int(num.size), "value": None, "ci": None}

    def ratio(idx: np.ndarray) -> np.ndarray:
        i = idx.astype(int)
        d = den[i].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, num[i].sum(axis=1) / np.maximum(d, 1e-300), np.nan)

    ci = bootstrap_ci(np.arange(num.size, dtype=float), ratio, n_resamples, confidence, seed)
    return {"n": int(num.size), "value": float(num.sum() / den.sum()), "ci": list(ci) if ci else None}


def mcnemar_midp(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """The mid-p McNemar test of two paired binary outcomes (the same prompts under two arms).

    Only discordant pairs carry information: a_only (a right, b wrong) and b_only. Under H0 (same accuracy)
    a_only ~ Binomial(a_only + b_only, 1/2); the two-sided mid-p value is 2 [P(X <= k) - P(X = k) / 2] with
    k = min(a_only, b_only), capped at 1 (Fagerland, Lydersen & Laake 2013, BMC Med. Res. Methodol. 13:91, who
    found the exact conditional test too conservative and recommend this one). It equals the exact sign-flip test
    of `effects.sign_flip_test` on a - b, so the IFEval line and the report's answer give the same p.

    Returns:
        {"n": pairs, "a_only", "b_only", "both", "neither", "p_value"} (p_value 1.0 when nothing is discordant).
    Raises:
        ValueError: a and b differ in length.
    """
    from scipy.stats import binom

    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"mcnemar_midp: {x.size} outcomes for a but {y.size} for b; pair the same items")
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    n_disc, k = a_only + b_only, min(a_only, b_only)
    p = 1.0 if n_disc == 0 else min(1.0, float(2 * (binom.cdf(k, n_disc, 0.5) - 0.5 * binom.pmf(k, n_disc, 0.5))))
    return {"n": int(x.size), "a_only": a_only, "b_only": b_only, "both": int((x & y).sum()),
            "neither": int((~x & ~y).sum()), "p_value": p}


def preference_win_rate(preferences: Sequence[float]) -> dict:
    """AlpacaEval's head-to-head numbers of pairwise preferences (1 = the baseline's answer preferred, 2 = the
    model's, 1.5 or 0 = a draw): win rate = mean(preference - 1) in %, i.e. (wins + draws/2) / n, and its standard
    error = the sample standard error of the mean (ddof 1) in %, as `alpaca_eval.metrics.pairwise_to_winrate`
    (AbsoluteScoringRule.describe_head2head) computes them; a test checks the equality.

    Returns:
        {"win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total"} (rates None for n = 0).
    Raises:
        ValueError: a preference that is not 0, 1, 1.5 or 2.
    """
    p = np.asarray(preferences, dtype=float)
    bad = [x for x in p if x not in (0.0, 1.0, 1.5, 2.0)]
    if bad:
        raise ValueError(f"preference_win_rate: preferences must be 0, 1, 1.5 or 2, got {bad[0]}")
    x = np.where(p == 0, 1.5, p) - 1
    n = int(x.size)
    return {"win_rate": float(x.mean() * 100) if n else None,
            "standard_error": float(x.std(ddof=1) / np.sqrt(n) * 100) if n > 1 else None,
            "n_wins": int((x > 0.5).sum()), "n_wins_base": int((x < 0.5).sum()), "n_draws": int((x == 0.5).sum()),
            "n_total": n}
