"""Statistics of the report on hand-computed cases: bootstrap CIs, win rates, length control, seed spread."""

from __future__ import annotations

import numpy as np
import pytest

from phased_ift import lengthcontrol, stats
from phased_ift.pairwise.judge import aggregate


def _rows(verdicts):
    return [{"verdict": v} for v in verdicts]


def test_bootstrap_ci_is_deterministic_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(123)
    small = rng.normal(2.0, 1.0, 40)
    big = rng.normal(2.0, 1.0, 1600)
    a = stats.bootstrap_ci(small, n_resamples=1000, seed=7)
    assert a == stats.bootstrap_ci(small, n_resamples=1000, seed=7)
    assert a != stats.bootstrap_ci(small, n_resamples=1000, seed=8)
    assert a[0] < small.mean() < a[1]
    b = stats.bootstrap_ci(big, n_resamples=1000, seed=7)
    assert b[0] < big.mean() < b[1]
    # the width of a mean's CI shrinks like 1/sqrt(n): 40x the data -> about 1/6.3 the width
    assert (b[1] - b[0]) < (a[1] - a[0]) / 4
    # and it has the textbook width, 2 * 1.96 * sd / sqrt(n), within 15%
    assert (b[1] - b[0]) == pytest.approx(2 * 1.96 * big.std() / np.sqrt(big.size), rel=0.15)


def test_bootstrap_ci_edge_cases():
    assert stats.bootstrap_ci([]) is None
    assert stats.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    lo, hi = stats.bootstrap_ci([0.0, 1.0], n_resamples=4000, confidence=0.5, seed=0)
    # resample means of two 0/1 values are 0, 0.5, 0.5, 1 with prob 1/4, 1/2, 1/4 -> middle 50% is 0.5
    assert lo == hi == 0.5


def test_win_rate_and_centred_on_hand_counts():
    # 5 wins, 2 ties, 3 losses, 4 unparseable
    verdicts = ["win"] * 5 + ["tie"] * 2 + ["loss"] * 3 + ["unparseable"] * 4
    agg = aggregate(_rows(verdicts))
    counts = tuple(agg[k] for k in ("wins", "ties", "losses", "unparseable", "n", "n_parsed"))
    assert counts == (5, 2, 3, 4, 14, 10)
    assert agg["win_rate"] == pytest.approx((5 + 1) / 10)
    assert agg["centred"] == pytest.approx(6 / 14 - 0.5)
    # Wilson intervals with ties counted half: 6 of 10 parsed, 6 of 14 for the centred number
    cis = stats.win_rate_cis(verdicts)
    assert cis["win_rate_ci"] == pytest.approx(stats.wilson_interval(6, 10))
    assert cis["centred_ci"] == pytest.approx([x - 0.5 for x in stats.wilson_interval(6, 14)])
    assert cis["win_rate_ci"][0] < 0.6 < cis["win_rate_ci"][1]


def test_wilson_interval_against_scipy_and_never_of_zero_width():
    from scipy.stats import binomtest

    for k, n in ((5, 5), (0, 12), (7, 20), (40, 80)):
        want = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert stats.wilson_interval(k, n) == pytest.approx([want.low, want.high])
    lo, hi = stats.wilson_interval(5, 5)  # 5 of 5 wins: the bootstrap gave [1, 1]
    assert lo == pytest.approx(0.566, abs=1e-3) and hi == 1.0
    assert stats.wilson_interval(0, 0) is None


def test_win_rate_cis_all_unparseable_and_unknown_verdict():
    cis = stats.win_rate_cis(["unparseable"] * 3)
    assert cis["win_rate_ci"] is None
    assert cis["centred_ci"] == pytest.approx([x - 0.5 for x in stats.wilson_interval(0, 3)])
    with pytest.raises(ValueError, match="'maybe'"):
        stats.verdict_values(["win", "maybe"])


def test_verdict_math_has_one_owner():
    # winrate.py owns the verdict names, their values and the counts; judge and stats use the same objects.
    from phased_ift import winrate
    from phased_ift.pairwise import judge

    assert tuple(winrate.VALUES) == winrate.VERDICTS == judge.VERDICTS
    assert stats.verdict_values is winrate.verdict_values and judge.aggregate is winrate.aggregate


def test_length_stats_and_bins_by_hand():
    s = stats.length_stats([10, 20, 60], [12, None, 70])
    assert s == {"n": 3, "mean_words": 30.0, "median_words": 20.0, "mean_tokens": 41.0, "median_tokens": 41.0}
    assert stats.length_stats([], [])["mean_words"] is None
    # relative differences: (100-10)/55 = 1.64, (10-100)/55 = -1.64, (50-48)/49 = 0.04, (30-20)/25 = 0.4
    bins = stats.length_binned_win_rates(["win", "loss", "tie", "win"], [100, 10, 50, 30], [10, 100, 48, 20])
    by = {b["bin"]: b for b in bins}
    assert by["A much longer (> 50%)"]["win_rate"] == 1.0 and by["A much longer (> 50%)"]["n"] == 1
    assert by["A much shorter (< -50%)"]["win_rate"] == 0.0
    assert by["similar (±10%)"]["win_rate"] == 0.5
    assert by["A longer (10%..50%)"]["n"] == 1
    assert by["A shorter (-50%..-10%)"]["n"] == 0 and by["A shorter (-50%..-10%)"]["win_rate"] is None


def _length_judge(seed, n, quality=0.0, slope=None):
    """Word counts with arm A 1.5x longer on average (A longer on ~80% of prompts) and verdicts of a judge that
    rewards length: the longer answer always wins (slope None; equal lengths tie) or y ~ Bernoulli(sigmoid(quality
    + slope * tanh(delta / sd)))."""
    rng = np.random.default_rng(seed)
    prompt = rng.normal(np.log(120), 0.5, n)
    len_b = np.maximum(1, np.round(np.exp(prompt + rng.normal(0, 0.35, n))))
    len_a = np.maximum(1, np.round(np.exp(prompt + np.log(1.5) + rng.normal(0, 0.35, n))))
    delta = len_a - len_b
    if slope is None:
        return ["win" if d > 0 else "loss" if d < 0 else "tie" for d in delta], len_a, len_b
    p = 1 / (1 + np.exp(-(quality + slope * np.tanh(delta / delta.std()))))
    return ["win" if u < q else "loss" for u, q in zip(rng.random(n), p)], len_a, len_b


@pytest.mark.parametrize("slope", [1.5, 3.0, None])
def test_length_controlled_rate_removes_a_pure_length_effect(slope):
    """A judge that rewards length only, arm A usually longer: the raw win rate is well above 0.5, LC is near 0.5
    and its CI contains 0.5 (benchmarks/calibration_lc.py measures how often it does not)."""
    verdicts, len_a, len_b = _length_judge(0, 300, slope=slope)
    raw = aggregate(_rows(verdicts))["win_rate"]
    lc = lengthcontrol.length_controlled_win_rate(verdicts, len_a, len_b)
    assert raw > 0.6 and lc["n"] == 300 and lc["method"] == "firth-wald"
    assert lc["lc_ci"][0] < 0.5 < lc["lc_ci"][1]
    if slope is None:  # a step: Firth keeps the slope finite; the preference at equal length is not identified,
        # so LC varies from run to run (0.59 here, 0.51 on average) and its CI is wide
        assert 10 < lc["slope"] < 1e3 and abs(lc["lc_win_rate"] - 0.5) < 0.15
        assert lc["lc_ci"][1] - lc["lc_ci"][0] > 0.3
    else:
        assert lc["slope"] == pytest.approx(slope, abs=0.6) and abs(lc["lc_win_rate"] - 0.5) < 0.05
        assert lc["lc_ci"][1] < raw


def test_length_controlled_rate_keeps_a_real_preference():
    """No length effect: LC stays near the raw rate. A real preference on top of a length effect: LC finds it."""
    rng = np.random.default_rng(1)
    n = 400
    len_a, len_b = rng.integers(50, 300, n), rng.integers(50, 300, n)
    verdicts = list(rng.choice(["win", "tie", "loss", "unparseable"], n, p=[0.55, 0.1, 0.3, 0.05]))
    raw = aggregate(_rows(verdicts))["win_rate"]
    lc = lengthcontrol.length_controlled_win_rate(verdicts, len_a, len_b)
    assert lc["n"] == n - verdicts.count("unparseable")
    assert lc["lc_win_rate"] == pytest.approx(raw, abs=0.03)
    assert 0.5 < lc["lc_ci"][0] < lc["lc_win_rate"] < lc["lc_ci"][1]
    verdicts, len_a, len_b = _length_judge(2, 400, quality=0.6, slope=1.5)  # true LC sigmoid(0.6) = 0.646
    raw = aggregate(_rows(verdicts))["win_rate"]
    lc = lengthcontrol.length_controlled_win_rate(verdicts, len_a, len_b)
    assert raw > 0.7 and lc["lc_win_rate"] == pytest.approx(0.646, abs=0.06) and lc["lc_ci"][0] > 0.5


def test_length_controlled_rate_degenerate_inputs():
    none = {"lc_win_rate": None, "lc_ci": None, "slope": None, "se_logit": None}
    for verdicts in (["win"], ["win", "unparseable"], []):
        lc = lengthcontrol.length_controlled_win_rate(verdicts, [1] * len(verdicts), [2] * len(verdicts))
        assert {k: lc[k] for k in none} == none and lc["n"] == (1 if verdicts else 0)
    # Every length difference equal: no slope to fit; the intercept-only Firth rate (wins + 1/2) / (n + 1).
    lc = lengthcontrol.length_controlled_win_rate(["win", "win", "loss", "tie"], [5] * 4, [3] * 4)
    assert lc["slope"] == 0.0 and lc["lc_win_rate"] == pytest.approx(3 / 5)
    assert lc["lc_ci"][0] < 0.6 < lc["lc_ci"][1]


def _firth_reference(y, x, w):
    """Firth's penalised log-likelihood of the design [1, x] written with matrices, maximised by scipy."""
    from scipy.optimize import minimize

    X = np.c_[np.ones_like(x), x]

    def negative(b):
        eta = X @ b
        p = 1 / (1 + np.exp(-eta))
        ll = np.sum(w * (y * eta - np.logaddexp(0, eta)))
        return -(ll + 0.5 * np.linalg.slogdet(X.T @ (X * (w * p * (1 - p))[:, None]))[1])

    res = minimize(negative, np.zeros(2), method="BFGS", options={"gtol": 1e-11})
    return res.x, negative


def test_fit_length_logistic_is_firths_and_vectorises_over_weightings():
    rng = np.random.default_rng(2)
    n = 120
    x = np.tanh(rng.normal(0, 1, n))
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.4 + 1.5 * x)))).astype(float)
    y[:10] = 0.5  # ties
    weights = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1 / n), size=3)])  # the data + 3 resamples
    b0, b1 = lengthcontrol.fit_length_logistic(y, x, weights)
    for k, w in enumerate(weights):
        ref, _ = _firth_reference(y, x, w)
        assert (b0[k], b1[k]) == (pytest.approx(ref[0], abs=1e-6), pytest.approx(ref[1], abs=1e-6))
    # A bootstrap weight is a repeated row: the same fit as the data with its rows repeated (some rows 0 times).
    counts = weights[1].astype(int)
    rb0, rb1 = lengthcontrol.fit_length_logistic(np.repeat(y, counts), np.repeat(x, counts), np.ones(counts.sum()))
    assert (rb0[0], rb1[0]) == (pytest.approx(b0[1], abs=1e-8), pytest.approx(b1[1], abs=1e-8))
    assert (counts == 0).any()


def test_length_controlled_ci_is_the_wald_interval_of_the_firth_intercept():
    """LC = sigmoid(b0) and its CI sigmoid(b0 -/+ z se), se^2 = (I^-1)_00 at the Firth fit (computed here with
    matrices, independently of the vectorised closed forms)."""
    rng = np.random.default_rng(4)
    n = 150
    delta = rng.normal(0.3, 1.0, n)  # length differences (any unit: only delta / sd(delta) enters)
    x = np.tanh(delta / delta.std())
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.3 + 2.0 * x)))).astype(float)
    y[::15] = 0.5
    verdicts = ["win" if v == 1 else "loss" if v == 0 else "tie" for v in y]
    lc = lengthcontrol.length_controlled_win_rate(verdicts, delta, np.zeros(n), confidence=0.9)
    ref, _ = _firth_reference(y, x, np.ones(n))
    X = np.c_[np.ones(n), x]
    p = 1 / (1 + np.exp(-(X @ ref)))
    se = np.sqrt(np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))[0, 0])
    z = 1.6448536269514722  # 90%

    def expit(t):
        return 1 / (1 + np.exp(-t))

    assert lc["lc_win_rate"] == pytest.approx(expit(ref[0]), abs=1e-7)
    assert lc["slope"] == pytest.approx(ref[1], abs=1e-6)
    assert lc["se_logit"] == pytest.approx(se, rel=1e-6)
    assert lc["lc_ci"] == pytest.approx([expit(ref[0] - z * se), expit(ref[0] + z * se)], abs=1e-6)


def test_fit_length_logistic_is_finite_under_complete_separation():
    """The longer answer always wins: the plain MLE's slope is infinite; Firth's is finite and the maximum."""
    rng = np.random.default_rng(3)
    x = np.tanh(rng.normal(0.8, 1, 200))
    y = (x > 0).astype(float)
    b0, b1 = lengthcontrol.fit_length_logistic(y, x, np.ones(x.size))
    assert np.isfinite(b0[0]) and 5 < b1[0] < 1e3
    _, negative = _firth_reference(y, x, np.ones(x.size))
    best = negative(np.array([b0[0], b1[0]]))
    for d in ([1e-3, 0], [0, 1e-2], [-1e-3, 0], [0, -1e-2], [1e-3, 1e-2]):  # no nearby point is higher
        assert negative(np.array([b0[0], b1[0]]) + d) >= best - 1e-10

def test_seed_spread_and_mean_with_ci():
    s = stats.seed_spread([0.5, 0.6, 0.7])
    assert s["n_seeds"] == 3 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"]) == (0.5, 0.7)
    one = stats.seed_spread([0.4, None])
    assert one["n_seeds"] == 1 and one["std"] is None
    m = stats.mean_with_ci([1.0, 2.0, 3.0, 4.0], n_resamples=500, seed=0)
    assert m["n"] == 4 and m["mean"] == 2.5 and m["ci"][0] < 2.5 < m["ci"][1]
    assert stats.mean_with_ci([])["mean"] is None
