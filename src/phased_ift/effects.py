"""The answer to "did this arm help?": paired arm-vs-baseline effects on a crossed seeds x prompts design.

Owns the statistics that turn a run into a statement (issue 26):
  * `paired_effect`: the mean paired difference (arm - baseline on the same prompts) pooled over training seeds,
    with two results that answer two different questions:
      - the claim about the arms (`significant`): a t-test on the crossed random-effects model, where both the
        training seeds and the prompts are random samples, so a significant result generalises over both. It is made
        only with at least `MIN_SEEDS` seeds and `MIN_PROMPTS` prompts;
      - `conditional`: the result conditional on these training runs (the seeds are fixed, only prompts are
        sampled), a sign-flip test on the per-prompt differences: "these runs differ on these prompts", never
        "this arm is better";
  * `variance_components` and `minimum_detectable_effect`: how large an effect the run's seeds and prompts could
    detect at 80% power, and how many prompts or seeds a smaller one needs;
  * `holm_adjust`: Holm's step-down adjustment (every arm x metric is one comparison);
  * `effect_sentence`: the verdict sentence of one comparison.

Pure functions over (S, N) arrays: S training seeds (rows) x N prompts (columns), the same prompts in every row,
NaN where a value is missing (an unparseable verdict). `report.answer` builds the arrays from the run dir.

The pooled test. Model: d_ij = mu + a_i + b_j + e_ij (seed effect a, prompt effect b, residual e, all random;
every seed answers every prompt: a crossed design). With the two-way ANOVA mean squares MS_seed (S - 1 df),
MS_prompt (N - 1 df) and MS_res, the test is Clark's quasi-F min F' (Clark 1973, "The language-as-fixed-effect
fallacy", J. Verbal Learn. Verbal Behav. 12(4)) written as a t-test: t = mean / sqrt((MS_seed + MS_prompt) / (S N)),
whose variance estimate has expectation Var(mean) + var_res / (S N) (so it is slightly conservative), with
Satterthwaite's degrees of freedom (Satterthwaite 1946, Biometrics Bull. 2(6)) for the sum of the two mean squares.
Plain Satterthwaite df are too large exactly when MS_seed happens to be small, which makes the test reject 7-8% at
3 seeds when the seed variance dominates (benchmarks/bench_calibration.py measures it beside ours). So the df are
computed from upper confidence bounds of the expected mean squares (MS x f / chi2_f(DF_QUANTILE), DF_QUANTILE =
0.25: a 75% upper bound), which keeps every measured cell at <= 7% (docs/report.md, "Calibration"). This df rule is
this project's, chosen and proven by that simulation, not a published method.

Why not the hierarchical bootstrap the project used before: resampling S seeds with replacement gives the seed term
a variance of var_seed (S - 1) / S^2 (half of var_seed / S at S = 2) and the seed level has only a few distinct
draws; it rejected 15-30% under the null with 2 seeds (Owen 2007, Ann. Appl. Stat. 1(2), is asymptotic in both
factors). A single seed says nothing about seed-to-seed variation, so with one seed no claim about the arms is made.

The conditional test flips the sign of each prompt's seed-averaged difference (a randomization test, null-centred as
Hall & Wilson 1991, Biometrics 47(2), ask of bootstrap tests): exactly, with the mid-p value, when the differences
lie on a lattice (binary outcomes, verdicts, ratings; for one seed and 0/1 outcomes it is the mid-p McNemar test that
Fagerland, Lydersen & Laake 2013, BMC Med. Res. Methodol. 13:91, recommend), else by Monte Carlo with the
(1 + k) / (B + 1) p-value (Davison & Hinkley 1997, ch. 4).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

POWER = 0.8  # the conventional power of a minimum detectable effect (Cohen 1988)
MIN_SEEDS = 3  # fewest training seeds per arm for a claim about the arms (docs/report.md, "Calibration")
MIN_PROMPTS = 10  # fewest paired prompts for any claim
DF_QUANTILE = 0.25  # the df use MS x f / chi2_f(q): upper confidence bounds of the expected mean squares
_EXACT_MAX_STATES = 2_000_000  # largest lattice sum the exact sign-flip distribution is computed for
CLAIM = "crossed-model t-test (min F', Satterthwaite df)"


def _as_matrix(diffs: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
        raise ValueError(f"paired differences must be a non-empty (seeds, prompts) matrix, got shape {d.shape}")
    if np.isnan(d).all(axis=1).any():
        raise ValueError("a seed has no paired value at all (every prompt missing); leave that seed out")
    return d


def mean_squares(d: np.ndarray) -> dict:
    """The two-way ANOVA without replication of a complete (S, N) matrix, S >= 2, N >= 2.

    Returns:
        {"seed", "prompt", "residual": the mean squares, "df_seed": S - 1, "df_prompt": N - 1,
         "df_residual": (S - 1)(N - 1)}.
    """
    s, n = d.shape
    grand = d.mean()
    row, col = d.mean(axis=1), d.mean(axis=0)
    return {"seed": float(n * ((row - grand) ** 2).sum() / (s - 1)),
            "prompt": float(s * ((col - grand) ** 2).sum() / (n - 1)),
            "residual": float(((d - row[:, None] - col[None, :] + grand) ** 2).sum() / ((s - 1) * (n - 1))),
            "df_seed": s - 1, "df_prompt": n - 1, "df_residual": (s - 1) * (n - 1)}


def _satterthwaite(terms: Sequence[tuple[float, float]]) -> float:
    """Satterthwaite's df of a sum of mean squares [(ms, df), ...]."""
    num = sum(m for m, _ in terms) ** 2
    den = sum(m * m / f for m, f in terms if f > 0)
    return float(num / den) if den > 0 else math.inf


def _complete(d: np.ndarray) -> np.ndarray:
    """The columns (prompts) of d without a missing cell."""
    return d[:, ~np.isnan(d).any(axis=0)]


def _test_df(ms_seed: float, ms_prompt: float, s: int, n: int) -> float:
    """The crossed test's df: Satterthwaite's for MS_seed + MS_prompt, each mean square replaced by its upper
    confidence bound MS x f / chi2_f(DF_QUANTILE) (module docstring)."""
    from scipy.stats import chi2

    up = lambda m, f: m * f / chi2.ppf(DF_QUANTILE, f)  # noqa: E731
    return _satterthwaite([(up(ms_seed, s - 1), s - 1), (up(ms_prompt, n - 1), n - 1)])


def crossed_test(d: np.ndarray, confidence: float = 0.95) -> dict:
    """The pooled test on a complete (S, N) matrix (module docstring): {"se", "df", "t", "p_value", "ci"}.

    se = sqrt((MS_seed + MS_prompt) / (S N)); df = Satterthwaite's, from MS x f / chi2_f(DF_QUANTILE); two-sided p
    and the t interval at `confidence`. se is 0 when the matrix is constant (then p and ci are None).
    """
    from scipy.stats import t as t_dist

    s, n = d.shape
    ms = mean_squares(d)
    var = (ms["seed"] + ms["prompt"]) / (s * n)
    if var <= 0:
        return {"se": 0.0, "df": None, "t": None, "p_value": None, "ci": None}
    df = _test_df(ms["seed"], ms["prompt"], s, n)
    se, mean = math.sqrt(var), float(d.mean())
    tval = mean / se
    half = float(t_dist.ppf(1 - (1 - confidence) / 2, df)) * se
    return {"se": se, "df": df, "t": tval, "p_value": float(2 * t_dist.sf(abs(tval), df)),
            "ci": [mean - half, mean + half]}


def _lattice(x: np.ndarray, n_seeds: int) -> np.ndarray | None:
    """x as integer multiples of a common step when it lies on the lattice of a verdict, binary outcome or rating
    averaged over `n_seeds` seeds (step 1/(2 S), 1/(4 S) or 1/(12 S)), else None."""
    for m in (2 * n_seeds, 4 * n_seeds, 12 * n_seeds):
        k = np.round(x * m)
        if np.allclose(x * m, k, atol=1e-9, rtol=0) and np.abs(k).sum() <= _EXACT_MAX_STATES:
            return k.astype(np.int64)
    return None


def sign_flip_test(x: Sequence[float] | np.ndarray, n_seeds: int = 1, n_resamples: int = 10000,
                   seed: int = 0) -> dict:
    """Two-sided sign-flip (randomization) test of "the per-prompt differences x are symmetric about 0".

    The statistic is |sum x|. When x lies on a lattice (`_lattice`: 0/1 outcomes, win/tie/loss verdicts or integer
    ratings, averaged over `n_seeds` seeds) its null distribution is computed exactly and the doubled one-sided mid-p
    value 2 [P(T >= |t|) - P(T = |t|) / 2] is returned (= P(|T| > |t|) + P(|T| = |t|) / 2 for t != 0, 1 for t = 0);
    for one seed and 0/1 outcomes that is the mid-p McNemar test
    (Fagerland et al. 2013). Otherwise B random sign vectors give p = (1 + #{|T*| >= |t|}) / (B + 1)
    (Davison & Hinkley 1997, ch. 4).

    Args:
        x: (N,) per-prompt differences (NaN not allowed).
        n_seeds: the number of seeds x was averaged over (sets the lattice step).
        n_resamples: B for the Monte Carlo case.
        seed: numpy Generator seed of the Monte Carlo case.

    Returns:
        {"p_value", "method": "exact mid-p" | "Monte Carlo", "n_resamples": B or None}.
    """
    x = np.asarray(x, dtype=float)
    k = _lattice(x, n_seeds)
    if k is not None:
        return {"p_value": _exact_mid_p(k), "method": "exact mid-p", "n_resamples": None}
    rng = np.random.default_rng(seed)
    obs, hits, done = abs(x.sum()), 0, 0
    while done < n_resamples:
        b = min(1000, n_resamples - done)
        signs = rng.integers(0, 2, size=(b, x.size)) * 2 - 1
        hits += int((np.abs(signs @ x) >= obs - 1e-12 * max(1.0, obs)).sum())
        done += b
    return {"p_value": (1 + hits) / (n_resamples + 1), "method": "Monte Carlo", "n_resamples": n_resamples}


def _exact_mid_p(k: np.ndarray) -> float:
    """Mid-p of |sum eps_j k_j| under independent fair signs eps, for integers k (exact convolution)."""
    from scipy.stats import binom

    a = np.abs(k[k != 0])
    total = int(a.sum())
    if total == 0:
        return 1.0
    dist = np.ones(1)
    values, counts = np.unique(a, return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist()):
        # c signs of size v: v * (2 Binom(c, 1/2) - c), on a grid of step 2v from -c v
        step = np.zeros(2 * c * v + 1)
        step[::2 * v] = binom.pmf(np.arange(c + 1), c, 0.5)
        dist = np.convolve(dist, step)
    sums = np.arange(dist.size) - total  # dist[i] = P(T = i - total)
    obs = abs(int(k.sum()))
    # the doubled one-sided mid-p, 2 [P(T >= |t|) - P(T = |t|) / 2]: P(|T| > |t|) + P(|T| = |t|) / 2 for t != 0
    # (T is symmetric) and 1 at t = 0, as the mid-p McNemar test (Fagerland et al. 2013) defines it
    return min(1.0, float(2 * (dist[sums >= obs].sum() - 0.5 * dist[sums == obs].sum())))


def conditional_effect(diffs: Sequence[Sequence[float]] | np.ndarray, confidence: float = 0.95,
                       n_resamples: int = 10000, seed: int = 0) -> dict:
    """The difference conditional on these training runs: the mean of each prompt's seed-averaged difference, a t
    interval over prompts and the sign-flip test (`sign_flip_test`); prompts with a missing cell are left out.

    Returns:
        {"n_prompts", "difference", "ci", "p_value", "test", "estimable", "reason", "significant"}; not estimable
        (ci, p None, never significant) with fewer than MIN_PROMPTS prompts or no spread across prompts.
    """
    from scipy.stats import t as t_dist

    d = _as_matrix(diffs)
    d = _complete(d)
    x = d.mean(axis=0)
    n = int(x.size)
    out = {"n_prompts": n, "difference": float(x.mean()) if n else None, "ci": None, "p_value": None,
           "test": None, "estimable": False, "reason": None, "significant": False}
    if n < MIN_PROMPTS:
        out["reason"] = f"{n} paired prompts (a claim needs at least {MIN_PROMPTS})"
        return out
    sd = float(x.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(float(x.mean()))):
        out["reason"] = "the same difference on every prompt (no spread to estimate an uncertainty from)"
        return out
    half = float(t_dist.ppf(1 - (1 - confidence) / 2, n - 1)) * sd / math.sqrt(n)
    test = sign_flip_test(x, d.shape[0], n_resamples, seed)
    out.update(ci=[out["difference"] - half, out["difference"] + half], p_value=test["p_value"],
               test=f"sign-flip test, {test['method']}", estimable=True,
               significant=bool(test["p_value"] < 1 - confidence))
    return out


def paired_effect(diffs: Sequence[Sequence[float]] | np.ndarray, n_resamples: int = 10000, confidence: float = 0.95,
                  seed: int = 0) -> dict:
    """The pooled paired difference: the claim about the arms (crossed model) and the result conditional on these
    training runs (sign-flip test), module docstring.

    Args:
        diffs: (S, N) per-prompt differences arm - baseline for S seeds on the same N prompts (column j is the
            same prompt in every row); NaN = missing, and a prompt with a missing cell is left out of both tests
            (counted in "n_missing"). For a win rate pass verdict value - 0.5 (win 0.5, tie 0, loss -0.5), so the
            difference is the win rate minus 0.5.
        n_resamples: B of the conditional test's Monte Carlo case (continuous differences).
        confidence: the CIs' level; a test is significant at alpha = 1 - confidence.
        seed: numpy Generator seed (same inputs, same result).

    Returns:
        {"n_seeds": S, "n_prompts": complete prompts, "n_missing", "difference": the mean over them, "claim": True
         when a claim about the arms can be made (S >= MIN_SEEDS, N >= MIN_PROMPTS, some spread), "reason": why
         not (else None), "test": CLAIM, "ci", "se", "df", "p_value" (None without a claim), "significant" (the claim
         about the arms: False without one), "confidence", "conditional": `conditional_effect`}.

    Raises:
        ValueError: not a non-empty 2-D matrix, or a seed whose values are all missing.
    """
    d = _as_matrix(diffs)
    s = d.shape[0]
    complete = _complete(d)
    n = complete.shape[1]
    out = {"n_seeds": s, "n_prompts": n, "n_missing": int(d.shape[1] - n),
           "difference": float(complete.mean()) if n else float("nan"), "claim": False, "reason": None,
           "test": CLAIM, "ci": None, "se": None, "df": None, "p_value": None, "significant": False,
           "confidence": confidence,
           "conditional": conditional_effect(complete if n else d, confidence, n_resamples, seed)}
    if s < MIN_SEEDS:
        out["reason"] = f"{s} training run{'s' if s > 1 else ''} per arm"
    elif n < MIN_PROMPTS:
        out["reason"] = f"{n} paired prompts (a claim needs at least {MIN_PROMPTS})"
    else:
        t = crossed_test(complete, confidence)
        if t["se"] <= 1e-12 * max(1.0, abs(out["difference"])):
            out["reason"] = "identical differences in every cell (no spread to estimate an uncertainty from)"
        else:
            out.update(claim=True, ci=t["ci"], se=t["se"], df=t["df"], p_value=t["p_value"],
                       significant=bool(t["p_value"] < 1 - confidence))
    return out


def variance_components(diffs: Sequence[Sequence[float]] | np.ndarray) -> dict:
    """Seed, prompt and residual variance of paired differences, from the two-way crossed ANOVA without
    replication on the prompts that every seed answered (expected mean squares, negative estimates set to 0).

    Returns:
        {"seed": var, "prompt": var, "residual": var, "n_complete": prompts used}; with one seed "seed" is None
        (not estimable) and "prompt" holds the whole per-prompt variance (prompt + residual confounded).

    Source: Searle, Casella & McCulloch (1992), Variance Components, ch. 4 (the two-way crossed random model).
    """
    d = _as_matrix(diffs)
    d = _complete(d)
    s, n = d.shape
    if n < 2:
        return {"seed": None, "prompt": None, "residual": None, "n_complete": n}
    if s == 1:
        return {"seed": None, "prompt": float(d[0].var(ddof=1)), "residual": 0.0, "n_complete": n}
    ms = mean_squares(d)
    return {"seed": max(0.0, (ms["seed"] - ms["residual"]) / n),
            "prompt": max(0.0, (ms["prompt"] - ms["residual"]) / s),
            "residual": ms["residual"], "n_complete": n}


def _expected_design(vc: dict, s: int, n: int) -> tuple[float, float]:
    """(variance of the test's estimate, its df) expected for s seeds x n prompts under the components `vc`:
    E[(MS_seed + MS_prompt) / (s n)] = var_seed / s + var_prompt / n + 2 var_res / (s n), and the df the test
    computes (`crossed_test`) at the expected mean squares."""
    ms_seed = vc["residual"] + n * vc["seed"]
    ms_prompt = vc["residual"] + s * vc["prompt"]
    return (ms_seed + ms_prompt) / (s * n), _test_df(ms_seed, ms_prompt, s, n)


def _multiplier(df: float, confidence: float, power: float) -> float:
    from scipy.stats import t as t_dist

    return float(t_dist.ppf(1 - (1 - confidence) / 2, df) + t_dist.ppf(power, df))


def _mde_at(vc: dict, s: int, n: int, confidence: float, power: float) -> float:
    var, df = _expected_design(vc, s, n)
    return _multiplier(df, confidence, power) * math.sqrt(var)


def _smallest(f, lo: int, cap: int) -> int | None:
    """The smallest integer x in [lo, cap] with f(x) true (f monotone), else None."""
    if not f(cap):
        return None
    hi = cap
    while lo < hi:
        mid = (lo + hi) // 2
        if f(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def minimum_detectable_effect(effect: dict, vc: dict, confidence: float = 0.95, power: float = POWER,
                              target: float | None = None) -> dict:
    """The smallest |difference| the claim's test detects with the given power, and what a smaller one needs.

    MDE = (t_(1 - alpha/2, df) + t_(power, df)) x SE with the SE and Satterthwaite df of the crossed model at the
    variance components `vc` (Bloom 1995, "Minimum detectable effects", Evaluation Review 19(5): t multipliers at
    the design's degrees of freedom). The same formula at S' seeds or N' prompts gives the prompts (at the run's
    seeds) or seeds (at the run's prompts) that `target` needs; "n/a" when that alone cannot get there (a seed
    effect does not shrink with more prompts, a prompt effect not with more seeds).

    No MDE and no prompt advice when the seed variance is unknown (one seed) or rests on one degree of freedom
    (two seeds): the advice is then to run MIN_SEEDS seeds ("cannot tell whether more prompts suffice").

    Args:
        effect: the result of `paired_effect`.
        vc: the result of `variance_components` on the same matrix.
        target: the smaller effect to plan for; default: half the MDE.

    Returns:
        {"mde" (None when not estimable), "power", "target", "prompts_for_target", "seeds_for_target", "advice":
         a sentence fragment, "seed_share": the seed term's share of the SE^2 (None when unknown)}.
    """
    s, n = effect["n_seeds"], effect["n_prompts"]
    out = {"mde": None, "power": power, "target": None, "prompts_for_target": None, "seeds_for_target": None,
           "advice": None, "seed_share": None}
    if s < MIN_SEEDS:
        why = ("one seed the seed variance is unknown" if s == 1
               else "two seeds the seed variance rests on one degree of freedom")
        out["advice"] = (f"run at least {MIN_SEEDS} seeds (train.seeds=[{','.join(map(str, range(MIN_SEEDS)))}]): with "
                         f"{why}, so whether more prompts would suffice cannot be told")
        return out
    if vc.get("prompt") is None or n < 2:
        return out
    var, _ = _expected_design(vc, s, n)
    if var <= 0:
        return out
    mde = _mde_at(vc, s, n, confidence, power)
    target = mde / 2 if target is None else abs(target)
    out.update(mde=mde, target=target, seed_share=(vc["seed"] / s) / var)
    if target > 0:
        out["prompts_for_target"] = _smallest(lambda m: _mde_at(vc, s, m, confidence, power) <= target, n, 10**7)
        out["seeds_for_target"] = _smallest(lambda m: _mde_at(vc, m, n, confidence, power) <= target, s, 10**4)
    parts = []
    seeds_first = out["seed_share"] >= 0.5
    if out["seeds_for_target"]:
        parts.append(f"{out['seeds_for_target']} seeds")
    if out["prompts_for_target"]:
        parts.insert(len(parts) if seeds_first else 0, f"about {out['prompts_for_target']:,} prompts")
    if parts:
        out["advice"] = f"for ±{target:.3g} use " + " or ".join(parts)
    elif target > 0:
        out["advice"] = f"±{target:.3g} needs more seeds and more prompts together"
    return out


def holm_adjust(p_values: Sequence[float | None]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6(2)), in the input order.

    Sorted ascending, the i-th smallest (0-based) of m becomes max over j <= i of min(1, (m - j) p_(j)); rejecting
    adjusted p < alpha controls the family-wise error rate at alpha for any dependence between the tests.
    NaN (or None) p-values are left NaN and do not count in m.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    p = np.asarray([np.nan if v is None else v for v in p_values], dtype=float)
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


def _ptxt(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _holm_txt(holm: tuple[float, int] | None, alpha: float) -> tuple[str, bool]:
    """(" (Holm over m: p = ..)", survives) for a family of m > 1, ("", True) otherwise."""
    if holm is None or holm[1] <= 1 or holm[0] is None or math.isnan(holm[0]):
        return "", True
    return f"; Holm over {holm[1]} comparisons: p = {holm[0]:.2g}", holm[0] < alpha


def effect_sentence(arm: str, baseline: str, metric: str, effect: dict, mde: dict, lower_is_better: bool = False,
                    offset: float = 0.0, nd: int = 3, holm: tuple[float, int] | None = None,
                    holm_conditional: tuple[float, int] | None = None) -> str:
    """One verdict sentence for an arm against the baseline on one metric.

    With a claim (>= MIN_SEEDS seeds): the crossed-model CI and p, "significant: X is better" only when it survives
    Holm's correction over the run's claims, else "not significant" (or "significant alone but not after Holm's
    correction"), the MDE and the advice. Without one: why not and what it takes, then the result conditional on
    these training runs, worded as a difference between these runs on these prompts, never as "X is better".

    Args:
        metric: e.g. "reference loss", "IFEval prompt-level strict accuracy", "win rate".
        effect, mde: `paired_effect` and `minimum_detectable_effect` of the same comparison.
        lower_is_better: the metric improves downwards (a loss); the sentence says which arm is better.
        offset: shown next to the difference (0.5 for a win rate: "win rate 0.540, +0.040 over 0.5").
        holm, holm_conditional: (Holm-adjusted p, family size) of the claim and of the conditional result.

    Returns:
        e.g. "phased vs one-off, reference loss: −0.019 [−0.050, +0.010] (lower is better; 3 seeds x 805 prompts,
        crossed-model t-test, df 4.1, p = 0.21): not significant; this run could detect ±0.040 at 80% power; for
        ±0.020 use 8 seeds or about 3,200 prompts."
    """
    d = effect["difference"]
    s = effect["n_seeds"]
    design = f"{s} seed{'s' if s > 1 else ''} x {effect['n_prompts']:,} prompts"
    head = f"{arm} vs {baseline}, {metric}: " + (f"{offset + d:.{nd}f}, " if offset else "")
    lib = "lower is better; " if lower_is_better else ""
    if effect["claim"]:
        return _claim_sentence(arm, baseline, f"{head}{_signed(d, nd)} {_interval(effect['ci'], nd)} ({lib}{design}",
                               effect, mde, lower_is_better, nd, holm)
    text = f"{head}{_signed(d, nd)} ({lib}{design}): no claim about the arms from {effect['reason']}"
    if mde.get("advice"):
        text += f"; {mde['advice']}"
    return text + ". " + _conditional_sentence(effect, nd, holm_conditional)


def _interval(ci: list[float], nd: int) -> str:
    return f"[{_signed(ci[0], nd)}, {_signed(ci[1], nd)}]"


def _claim_sentence(arm: str, baseline: str, head: str, effect: dict, mde: dict, lower_is_better: bool, nd: int,
                    holm: tuple[float, int] | None) -> str:
    """The sentence of a comparison with a claim about the arms (crossed-model test, Holm, MDE, advice)."""
    htxt, survives = _holm_txt(holm, 1 - effect.get("confidence", 0.95))
    text = f"{head}, crossed-model t-test, df {effect['df']:.1f}, {_ptxt(effect['p_value'])}{htxt}): "
    if effect["significant"] and survives:
        better = arm if (effect["difference"] < 0) == lower_is_better else baseline
        text += f"significant, {better} is better (a claim about the arms: over training seeds and prompts)"
    elif effect["significant"]:
        text += "significant alone but not after Holm's correction"
    else:
        text += "not significant"
    if mde.get("mde") is not None:
        text += f"; this run could detect ±{mde['mde']:.{nd}f} at {int(mde['power'] * 100)}% power"
    if mde.get("advice"):
        text += f"; {mde['advice']}"
    return text + "."


def _conditional_sentence(effect: dict, nd: int, holm: tuple[float, int] | None) -> str:
    """The result conditional on these training runs, worded as a difference between runs, never "X is better"."""
    c, s = effect["conditional"], effect["n_seeds"]
    if not c["estimable"]:
        return f"Conditional on these training runs: not estimable ({c['reason']})."
    runs = "these two runs" if s == 1 else f"these {s} pairs of runs"
    htxt, survives = _holm_txt(holm, 1 - effect.get("confidence", 0.95))
    text = (f"Conditional on these training runs: {_signed(c['difference'], nd)} {_interval(c['ci'], nd)} on "
            f"{c['n_prompts']:,} prompts ({c['test']}, {_ptxt(c['p_value'])}{htxt}): ")
    if c["significant"] and survives:
        return text + f"{runs} differ on these prompts."
    if c["significant"]:
        return text + f"{runs} differ on these prompts alone, but not after Holm's correction."
    return text + f"{runs} cannot be told apart on these prompts."
