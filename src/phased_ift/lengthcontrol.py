"""Length control: the win rate a judge would give at equal answer length, fitted so that a pure length effect is
removed at the error rate the interval states.

Owns `fit_length_logistic` (Firth's bias-reduced logistic regression of the verdict on the length difference,
vectorised over weightings) and `length_controlled_win_rate` (the LC win rate and its Wald interval). Pure
functions over plain arrays; `report.summary` calls `length_controlled_win_rate` once per comparison.

The idea is AlpacaEval 2's (Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic
Evaluators"): regress the judge's preference on the length difference and report the preference the fit predicts
when both answers have the same length. AlpacaEval chooses its penalty by cross-validation; this fit needs none:
Firth's (1993, "Bias reduction of maximum likelihood estimates", Biometrika 80(1):27-38) estimate has no O(1/n)
bias and stays finite under separation (the longer answer always wins). The fixed L2 penalty 1 on the slope that
this replaces kept the slope too small at every n, so a pure verbosity advantage was still called a preference in
10-75% of simulated runs (the 2026-12 statistics review, A7).

Measured (`benchmarks/calibration_lc.py`, 2000 runs per cell; arm A's answers 1.5x longer on average, A longer on
~79% of prompts, no quality difference, so the true LC is 0.5; nominal 5%): the CI excludes 0.5 in
  * 0.2 / 0.0 / 0.0 % of runs at n = 40 / 80 / 300 when the longer answer always wins (raw win rate 0.79);
  * 2.6 / 4.2 / 3.8 % for y ~ Bernoulli(sigmoid(1.5 tanh(delta / sd))) (raw 0.63);
  * 2.5 / 3.9 / 5.5 % for slope 3 (raw 0.71).
The percentile bootstrap of the same Firth fit gave 14 / 8.5 % (longer always wins, n = 40 / 80; 200 runs), so the
interval is the Wald interval of the Firth intercept (Heinze & Schemper 2002, Stat Med 21(16):2409-2419, on
inference after Firth's fit; their profile-penalised-likelihood interval was no better calibrated here at many
times the cost). Power with a real preference (logit +0.6 at equal length, true LC 0.646): 22 / 49 / 97 % at
n = 40 / 80 / 300, the same with the slope 1.5 on top. When the longer answer always wins the data say nothing
about the preference at equal length and the CI says so (about 0.7 wide). Not removed: a length effect of another
shape than tanh(delta / sd); with logit 2 log(len_a / len_b) the mean LC is 0.52 and the CI excludes 0.5 in
5.9 / 7.9 % at n = 80 / 300. Cost: one fit, about 1 ms at n = 805.

LC is a controlled-direct-effect reading: if arm A makes answers longer *as part of* what it does better, LC
removes that part too (Dubois et al. 2024 discuss this).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from phased_ift.winrate import verdict_values


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


def _flat_weightings(y: np.ndarray, x: np.ndarray, w: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """Mask of the weightings whose x does not vary (a singular design); sets their intercept-only Firth fit,
    sigmoid(b0) = (sum w y + 1/2) / (sum w + 1), b1 = 0, in place."""
    total = w.sum(axis=1)
    mean_x = (w * x).sum(axis=1) / np.maximum(total, 1e-300)
    flat = (w * (x - mean_x[:, None]) ** 2).sum(axis=1) <= 1e-12 * np.maximum(total, 1.0)
    if flat.any():
        q = ((w[flat] * y).sum(axis=1) + 0.5) / (total[flat] + 1.0)
        b0[flat], b1[flat] = np.log(q / (1.0 - q)), 0.0
    return flat


def _newton_step(y, x, w, b0, b1, old):
    """One Newton step on Firth's modified score with the ordinary Fisher information, at most 5 per coefficient,
    halved until the penalised log-likelihood does not fall: (d0, d1, new penalised log-likelihood)."""
    p, v, s0, s1, s2 = _firth_terms(b0, b1, x, w)
    det = s0 * s2 - s1 * s1
    h = v * (s2[:, None] - 2.0 * s1[:, None] * x + s0[:, None] * x * x) / det[:, None]  # the hat values
    r = w * (y - p) + h * (0.5 - p)
    u0, u1 = r.sum(axis=1), (r * x).sum(axis=1)
    d0, d1 = (s2 * u0 - s1 * u1) / det, (s0 * u1 - s1 * u0) / det
    big = np.maximum(np.abs(d0), np.abs(d1))
    shrink = np.where(big > 5.0, 5.0 / np.maximum(big, 1e-300), 1.0)
    d0, d1 = d0 * shrink, d1 * shrink
    new = _firth_loglik(b0 + d0, b1 + d1, y, x, w)
    for _ in range(40):  # step-halving: never accept a step that lowers the penalised log-likelihood
        worse = new < old - 1e-12 * np.abs(old)
        if not worse.any():
            break
        d0, d1 = np.where(worse, d0 / 2, d0), np.where(worse, d1 / 2, d1)
        new = np.where(worse, _firth_loglik(b0 + d0, b1 + d1, y, x, w), new)
    return d0, d1, new


def fit_length_logistic(y: np.ndarray, x: np.ndarray, weights: np.ndarray, start: tuple[float, float] | None = None,
                        iterations: int = 500, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Firth's bias-reduced logistic regression P(A wins) = sigmoid(b0 + b1 * x), for B weightings at once.

    Maximises the log-likelihood plus half the log-determinant of the Fisher information I (Firth 1993). With two
    coefficients the hat values have a closed form, h_i = v_i (s2 - 2 s1 x_i + s0 x_i^2) / det I, so the fit
    vectorises over a (B, N) weight matrix: Newton steps on the modified score U* = X^T (w (y - p) + h (1/2 - p))
    (as Heinze & Schemper 2002 and R's logistf). Ties enter as the fractional outcome y = 0.5 (I and h do not
    depend on y). A weighting whose x does not vary gets the intercept-only Firth fit and b1 = 0.

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
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    b0 = np.full(w.shape[0], float(start[0]) if start else 0.0)
    b1 = np.full(w.shape[0], float(start[1]) if start else 0.0)
    active = np.flatnonzero(~_flat_weightings(y, x, w, b0, b1))
    pl = np.full(w.shape[0], -np.inf)
    if active.size:
        pl[active] = _firth_loglik(b0[active], b1[active], y, x, w[active])
    for _ in range(iterations):
        if active.size == 0:
            break
        d0, d1, new = _newton_step(y, x, w[active], b0[active], b1[active], pl[active])
        b0[active], b1[active], pl[active] = b0[active] + d0, b1[active] + d1, new
        active = active[np.maximum(np.abs(d0), np.abs(d1)) >= tol]
    return b0, b1


def length_controlled_win_rate(verdicts: Sequence[str], len_a: Sequence[float], len_b: Sequence[float],
                               n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Win rate predicted at zero length difference by Firth's logistic regression on the length difference, with
    the Wald interval of the intercept, sigmoid(b0 -/+ z se), se^2 = (I^-1)_00 at the estimate (module docstring:
    what it guarantees, measured).

    As in AlpacaEval 2 the covariate is tanh((len_a - len_b) / sd(len_a - len_b)), so a few very long answers
    cannot dominate. Unparseable verdicts are left out; ties count as 0.5 (the model variance p (1 - p) bounds
    the variance of any outcome in [0, 1] with mean p, so ties widen the interval, never narrow it).

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
