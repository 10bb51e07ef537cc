"""Statistics of the report on hand-computed cases: bootstrap CIs, win rates, length control, seed spread."""

from __future__ import annotations

import numpy as np
import pytest

from phased_ift import stats
from phased_ift.judge import aggregate


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


def test_verdict_names_are_the_judges():
    # stats keeps its own copy (importing judge would close judge -> mtbench -> stats into a cycle).
    from phased_ift.judge import VERDICTS

    assert tuple(stats._VALUE) == VERDICTS


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


def test_length_controlled_rate_removes_a_pure_length_effect():
    """Longer answer always wins and arm A is usually longer: raw win rate is high, length-controlled ~0.5."""
    rng = np.random.default_rng(0)
    n = 300
    len_b = rng.integers(50, 300, n).astype(float)
    delta = rng.normal(60, 60, n)  # A is longer on about 84% of prompts
    len_a = np.maximum(1, len_b + delta)
    verdicts = ["win" if a > b else "loss" for a, b in zip(len_a, len_b)]
    raw = aggregate(_rows(verdicts))["win_rate"]
    assert raw > 0.75
    lc = stats.length_controlled_win_rate(verdicts, len_a, len_b, n_resamples=500, seed=0)
    assert lc["n"] == n and lc["slope"] > 1
    assert abs(lc["lc_win_rate"] - 0.5) < 0.12
    assert lc["lc_ci"][0] < 0.6 and lc["lc_ci"][1] < raw


def test_length_controlled_rate_keeps_a_real_preference():
    """When the outcome does not depend on length, the length-controlled rate stays near the raw rate."""
    rng = np.random.default_rng(1)
    n = 400
    len_a, len_b = rng.integers(50, 300, n), rng.integers(50, 300, n)
    verdicts = list(rng.choice(["win", "tie", "loss", "unparseable"], n, p=[0.55, 0.1, 0.3, 0.05]))
    raw = aggregate(_rows(verdicts))["win_rate"]
    lc = stats.length_controlled_win_rate(verdicts, len_a, len_b, n_resamples=300, seed=0)
    assert lc["n"] == n - verdicts.count("unparseable")
    assert lc["lc_win_rate"] == pytest.approx(raw, abs=0.03)
    assert lc["lc_ci"][0] < lc["lc_win_rate"] < lc["lc_ci"][1]
    assert stats.length_controlled_win_rate(["win"], [1], [2])["lc_win_rate"] is None


def test_fit_length_logistic_matches_sklearn_with_ties_as_half():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    n = 200
    x = np.tanh(rng.normal(0, 1, n))
    p = 1 / (1 + np.exp(-(0.4 + 1.5 * x)))
    y = (rng.random(n) < p).astype(float)
    y[:10] = 0.5  # ties
    b0, b1 = stats.fit_length_logistic(y, x, np.ones(n))
    # sklearn: a tie is half a win and half a loss (sample weights); C=1 is our l2=1 on the slope
    m = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(
        np.concatenate([x, x])[:, None], np.r_[np.ones(n), np.zeros(n)], sample_weight=np.r_[y, 1 - y])
    assert b0[0] == pytest.approx(m.intercept_[0], abs=1e-3)
    assert b1[0] == pytest.approx(m.coef_[0, 0], abs=1e-3)


def test_seed_spread_and_mean_with_ci():
    s = stats.seed_spread([0.5, 0.6, 0.7])
    assert s["n_seeds"] == 3 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"]) == (0.5, 0.7)
    one = stats.seed_spread([0.4, None])
    assert one["n_seeds"] == 1 and one["std"] is None
    m = stats.mean_with_ci([1.0, 2.0, 3.0, 4.0], n_resamples=500, seed=0)
    assert m["n"] == 4 and m["mean"] == 2.5 and m["ci"][0] < 2.5 < m["ci"][1]
    assert stats.mean_with_ci([])["mean"] is None
