"""Statistics of the evaluation: win rates, bootstrap confidence intervals, length statistics, length control.

Pure functions over plain lists/arrays (no files, no plotting); `report.summary` feeds them the judgements,
generations and reference losses of a run dir. The descriptive intervals of means are seeded percentile bootstraps
that resample *prompts* (the unit the test sets sample), so the same inputs and seed always give the same interval;
win rates get Wilson intervals (never of zero width); the length-controlled win rate a Wald interval from Firth's
bias-reduced fit; the paired McNemar test is the mid-p one. The tests behind the report's claims are `effects.py`'s.

    from phased_ift.stats import win_rate_cis
    win_rate_cis(["win", "tie", "loss", "unparseable"])

Counts and point win rates come from `phased_ift.judge.aggregate` (one definition); this module adds their
intervals. Conventions (Pang et al. 2024, §4 and the PhasedSFT judge code):
  * a verdict is "win" | "tie" | "loss" from arm A's side, or "unparseable" when either judge order could not
    be parsed; unparseable verdicts are counted apart and never turned into a result;
  * win rate = (wins + ties/2) / N_parsed;
  * the paper's centred number = (wins + ties/2) / N_all - 0.5, with unparseable verdicts counted in N_all.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# The verdict names of `judge.VERDICTS`, with their values (a test keeps them equal). stats imports nothing of the
# package: judge -> mtbench -> stats would otherwise be an import cycle.
_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0, "unparseable": np.nan}


def verdict_values(verdicts: Sequence[str]) -> np.ndarray:
    """Per-prompt outcome for arm A: win 1.0, tie 0.5, loss 0.0, unparseable NaN.

    Args:
        verdicts: N verdict strings from arm A's side.

    Returns:
        float array of shape (N,).

    Raises:
        ValueError: a verdict that is not one of `judge.VERDICTS` (names the value and its index).
    """
    out = np.empty(len(verdicts), dtype=float)
    for i, v in enumerate(verdicts):
        if v not in _VALUE:
            raise ValueError(f"verdict #{i} is {v!r}; expected one of {list(_VALUE)}")
        out[i] = _VALUE[v]
    return out


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

    The point estimates and counts come from `phased_ift.judge.aggregate` (one definition of the win rate): win rate
    over the parsed verdicts, centred number over all of them (unparseable counted in N) minus 0.5.

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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _firth_terms(
    b0: np.ndarray, b1: np.ndarray, x: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """p (B, N), v = w p (1 - p) (B, N) and the Fisher information [[s0, s1], [s1, s2]] of the design [1, x],
    s_k = sum_i v_i x_i^k (each (B,)), at B coefficient pairs."""
    p = _sigmoid(b0[:, None] + b1[:, None] * x[None, :])
    v = w * p * (1.0 - p)
    return p, v, v.sum(axis=1), (v * x).sum(axis=1), (v * x * x).sum(axis=1)


def _firth_loglik(b0: np.ndarray, b1: np.ndarray, y: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Firth's penalised log-likelihood l(b) + log det I(b) / 2 (the Jeffreys prior) of each of B coefficient pairs."""
    eta = b0[:, None] + b1[:, None] * x[None, :]
    ll = -(w * (y * np.logaddexp(0.0, -eta) + (1.0 - y) * np.logaddexp(0.0, eta))).sum(axis=1)
    _, _, s0, s1, s2 = _firth_terms(b0, b1, x, w)
    return ll + 0.5 * np.log(np.maximum(s0 * s2 - s1 * s1, 1e-300))


def fit_length_logistic(
    y: np.ndarray,
    x: np.ndarray,
    weights: np.ndarray,
    start: tuple[float, float] | None = None,
    iterations: int = 500,
    tol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """Firth's bias-reduced logistic regression P(A wins) = sigmoid(b0 + b1 * x), for B weightings at once.

    Firth (1993, "Bias reduction of maximum likelihood estimates", Biometrika 80(1):27-38): maximise the
    log-likelihood plus half the log-determinant of the Fisher information I (the Jeffreys prior). The estimate
    has no O(1/n) bias and stays finite under separation (e.g. when the longer answer always wins), so neither
    coefficient needs a penalty of arbitrary size (the fit this replaces had an L2 penalty 1 on b1 at every n,
    which kept the length slope too small: A7 of the 2026-12 statistics review). With two coefficients the hat
    values have a closed form, h_i = v_i (s2 - 2 s1 x_i + s0 x_i^2) / det I, so the fit vectorises over a
    (B, N) weight matrix. Newton steps on the modified score U* = X^T (w (y - p) + h (1/2 - p)) with the
    ordinary Fisher information (as Heinze & Schemper 2002 and R's logistf), at most 5 per coefficient per
    step, halved until the penalised log-likelihood does not fall.

    Ties enter as the fractional outcome y = 0.5 (the same fit as a tie counted half a win, half a loss: I and h
    do not depend on y). A weighting whose x does not vary (the design is singular) gets the intercept-only Firth
    fit, sigmoid(b0) = (sum w y + 1/2) / (sum w + 1), and b1 = 0.

    Args:
        y: (N,) outcomes in [0, 1].
        x: (N,) covariate.
        weights: (B, N) non-negative item weights (bootstrap counts), or (N,) for a single fit.
        start: (b0, b1) to start every weighting from (e.g. the full-data fit); default (0, 0).
        iterations: the most Newton steps (under separation the steps shrink linearly, not quadratically).
        tol: a weighting stops when its step is below tol in both coefficients.

    Returns:
        (b0, b1), each of shape (B,) (1-element arrays for a single fit).
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    n_fits = w.shape[0]
    b0 = np.full(n_fits, float(start[0]) if start else 0.0)
    b1 = np.full(n_fits, float(start[1]) if start else 0.0)
    # Weightings whose x does not vary: intercept only (closed form above).
    total = w.sum(axis=1)
    mean_x = (w * x).sum(axis=1) / np.maximum(total, 1e-300)
    spread = (w * (x - mean_x[:, None]) ** 2).sum(axis=1)
    flat = spread <= 1e-12 * np.maximum(total, 1.0)
    if flat.any():
        q = ((w[flat] * y).sum(axis=1) + 0.5) / (total[flat] + 1.0)
        b0[flat], b1[flat] = np.log(q / (1.0 - q)), 0.0
    active = np.flatnonzero(~flat)
    pl = np.full(n_fits, -np.inf)
    if active.size:
        pl[active] = _firth_loglik(b0[active], b1[active], y, x, w[active])
    for _ in range(iterations):
        if active.size == 0:
            break
        wa, a0, a1 = w[active], b0[active], b1[active]
        p, v, s0, s1, s2 = _firth_terms(a0, a1, x, wa)
        det = s0 * s2 - s1 * s1
        h = v * (s2[:, None] - 2.0 * s1[:, None] * x + s0[:, None] * x * x) / det[:, None]
        r = wa * (y - p) + h * (0.5 - p)
        u0, u1 = r.sum(axis=1), (r * x).sum(axis=1)
        d0, d1 = (s2 * u0 - s1 * u1) / det, (s0 * u1 - s1 * u0) / det
        big = np.maximum(np.abs(d0), np.abs(d1))
        shrink = np.where(big > 5.0, 5.0 / np.maximum(big, 1e-300), 1.0)
        d0, d1 = d0 * shrink, d1 * shrink
        old = pl[active]
        new = _firth_loglik(a0 + d0, a1 + d1, y, x, wa)
        for _ in range(40):  # step-halving: never accept a step that lowers the penalised log-likelihood
            worse = new < old - 1e-12 * np.abs(old)
            if not worse.any():
                break
            d0, d1 = np.where(worse, d0 / 2, d0), np.where(worse, d1 / 2, d1)
            new = np.where(worse, _firth_loglik(a0 + d0, a1 + d1, y, x, wa), new)
        b0[active], b1[active], pl[active] = a0 + d0, a1 + d1, new
        active = active[np.maximum(np.abs(d0), np.abs(d1)) >= tol]
    return b0, b1


def length_controlled_win_rate(
    verdicts: Sequence[str],
    len_a: Sequence[float],
    len_b: Sequence[float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Win rate predicted at zero length difference by Firth's logistic regression on the length difference.

    The idea of AlpacaEval 2's length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval: A
    Simple Way to Debias Automatic Evaluators"): regress the judge's preference on the length difference, then
    report the preference the fit predicts when both answers have the same length. As there, the covariate is
    tanh((len_a - len_b) / sd(len_a - len_b)), so a few very long answers cannot dominate. Unparseable verdicts are
    left out; ties count as 0.5. The fit is Firth's (`fit_length_logistic`): no penalty of arbitrary size on the
    slope (AlpacaEval chooses its penalty by cross-validation), finite when the longer answer always wins.

    The interval is the Wald interval of b0 from the Firth fit, sigmoid(b0 -/+ z se), se^2 = (I^-1)_00 at the
    estimate (Heinze & Schemper 2002, "A solution to the problem of separation in logistic regression", Stat Med
    21(16):2409-2419, on inference after Firth's fit; they prefer profile-penalised-likelihood intervals: a side
    check at n = 40 found those no better calibrated here, slightly more powerful, at many times the cost). The
    model variance p (1 - p) bounds the variance of any outcome in [0, 1] with mean p, so ties widen the interval,
    never narrow it.

    Measured (`benchmarks/calibration_lc.py`, 2000 runs per cell; arm A's answers 1.5x longer on average, A longer
    on ~79% of prompts, no quality difference, so the true LC is 0.5): the CI excludes 0.5 in
      * 0.2 / 0.0 / 0.0 % of runs at n = 40 / 80 / 300 when the longer answer always wins (raw win rate 0.79);
      * 2.6 / 4.2 / 3.8 % for y ~ Bernoulli(sigmoid(1.5 tanh(delta / sd))) (raw 0.63);
      * 2.5 / 3.9 / 5.5 % for slope 3 (raw 0.71);
    against a nominal 5 %. The percentile bootstrap of the same Firth fit gave 14 / 8.5 % (longer always wins,
    n = 40 / 80; 200 runs); the fixed L2 penalty 1 this replaces, 50-75 % and 10-15 % (the 2026-12 review's
    sims). Power with a real preference (logit +0.6 at equal length, true LC 0.646): 22 / 49 / 97 % at
    n = 40 / 80 / 300, the same with the slope 1.5 on top.
    When the longer answer always wins the data say nothing about the preference at equal length, and the CI
    says so (about 0.7 wide). Not removed: a length effect of another shape than tanh(delta / sd); with logit
    2 log(len_a / len_b) the mean LC is 0.52 and the CI excludes 0.5 in 5.9 / 7.9 % at n = 80 / 300. Cost: one
    fit, about 1 ms at n = 805 (the bootstrap it replaces refitted 2000 times, ~0.6 s).

    LC is a controlled-direct-effect reading: if arm A makes answers longer *as part of* what it does better, LC
    removes that part too (Dubois et al. 2024 discuss this).

    Args:
        verdicts: N verdicts from arm A's side.
        len_a, len_b: N answer lengths (words) of arm A and arm B.
        n_resamples, seed: unused (the interval needs no resampling); kept so callers pass the report's
            bootstrap settings unchanged.
        confidence: the Wald interval's level.

    Returns:
        {"n", "lc_win_rate", "lc_ci": [lo, hi], "slope", "se_logit", "method"}: slope = b1 (> 0 means the longer
        answer is favoured), se_logit = the standard error of b0, method = "firth-wald"; values None when fewer
        than 2 parsed verdicts.
    """
    from scipy.stats import norm

    v = verdict_values(verdicts)
    keep = ~np.isnan(v)
    y = v[keep]
    delta = np.asarray(len_a, dtype=float)[keep] - np.asarray(len_b, dtype=float)[keep]
    n = int(y.size)
    if n < 2:
        return {"n": n, "lc_win_rate": None, "lc_ci": None, "slope": None, "se_logit": None, "method": "firth-wald"}
    sd = delta.std()
    x = np.tanh(delta / sd) if sd > 0 else np.zeros(n)
    b0, b1 = fit_length_logistic(y, x, np.ones(n))
    if sd > 0:
        _, _, s0, s1, s2 = _firth_terms(b0, b1, x, np.ones((1, n)))
        se = float(np.sqrt(s2[0] / (s0[0] * s2[0] - s1[0] ** 2)))
    else:  # intercept only: se^2 = 1 / (n p (1 - p))
        p = float(_sigmoid(b0)[0])
        se = float(1.0 / np.sqrt(n * p * (1.0 - p)))
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    lo, hi = _sigmoid(np.array([b0[0] - z * se, b0[0] + z * se]))
    return {"n": n, "lc_win_rate": float(_sigmoid(b0)[0]), "lc_ci": [float(lo), float(hi)], "slope": float(b1[0]),
            "se_logit": se, "method": "firth-wald"}


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
