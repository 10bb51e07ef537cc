"""effects: the hierarchical paired bootstrap, variance components and the MDE on constructed data with known answers."""

import numpy as np
import pytest

from phased_ift.effects import (effect_sentence, holm_adjust, minimum_detectable_effect, paired_effect,
                                variance_components)


def _crossed(rng, effect=0.0, s=3, n=200, seed_sd=0.05, prompt_sd=0.5, resid_sd=0.3):
    """(S, N) paired differences: effect + seed offset + prompt offset (shared by the seeds) + residual."""
    return (effect + rng.normal(0, seed_sd, (s, 1)) + rng.normal(0, prompt_sd, (1, n))
            + rng.normal(0, resid_sd, (s, n)))


def test_a_known_effect_is_detected_and_covered():
    d = _crossed(np.random.default_rng(1), effect=0.15, n=400)
    e = paired_effect(d)
    assert e["n_seeds"] == 3 and e["n_prompts"] == 400 and e["claim"] and e["reason"] is None
    assert e["difference"] == pytest.approx(d.mean())
    assert e["ci"][0] < 0.15 < e["ci"][1] and e["ci"][0] > 0
    assert e["significant"] and e["p_value"] < 0.01


def test_the_crossed_test_is_min_f_prime_with_satterthwaite_df_from_upper_bounds():
    from scipy.stats import chi2, t

    from phased_ift.effects import DF_QUANTILE, crossed_test, mean_squares

    d = _crossed(np.random.default_rng(11), effect=0.05, s=4, n=30, seed_sd=0.2)
    ms = mean_squares(d)
    # the ANOVA by hand
    g, r, c = d.mean(), d.mean(1), d.mean(0)
    assert ms["seed"] == pytest.approx(30 * ((r - g) ** 2).sum() / 3)
    assert ms["prompt"] == pytest.approx(4 * ((c - g) ** 2).sum() / 29)
    se = np.sqrt((ms["seed"] + ms["prompt"]) / 120)
    a, b = ms["seed"] * 3 / chi2.ppf(DF_QUANTILE, 3), ms["prompt"] * 29 / chi2.ppf(DF_QUANTILE, 29)
    df = (a + b) ** 2 / (a * a / 3 + b * b / 29)
    got = crossed_test(d)
    assert got["se"] == pytest.approx(se) and got["df"] == pytest.approx(df)
    assert got["p_value"] == pytest.approx(2 * t.sf(abs(g / se), df))
    assert got["ci"] == pytest.approx([g - t.ppf(0.975, df) * se, g + t.ppf(0.975, df) * se])


def test_no_effect_is_detected_at_most_at_the_nominal_rate_when_seeds_dominate():
    # 3 seeds, the seed term 10x the prompt term of the pooled mean's variance: the old hierarchical bootstrap
    # rejected ~20% here; the crossed test keeps 5% (400 runs: binomial SE 1.1 points)
    rng = np.random.default_rng(2)
    n, s = 48, 3
    seed_sd = np.sqrt(10 * 0.5 ** 2 / n * s)
    hits = [paired_effect(_crossed(rng, s=s, n=n, seed_sd=seed_sd), n_resamples=200)["significant"]
            for _ in range(400)]
    assert 0.01 <= float(np.mean(hits)) <= 0.07


def test_fewer_than_three_seeds_make_no_claim_but_a_conditional_result():
    rng = np.random.default_rng(3)
    for s in (1, 2):
        d = _crossed(rng, effect=0.5, s=s, n=200)
        e = paired_effect(d)
        assert not e["claim"] and not e["significant"] and e["p_value"] is None and e["ci"] is None
        assert e["reason"] == f"{s} training run{'s' if s > 1 else ''} per arm"
        c = e["conditional"]
        assert c["estimable"] and c["significant"] and c["p_value"] < 0.001
        x = d.mean(0)
        assert c["difference"] == pytest.approx(x.mean())
        assert c["test"] == "sign-flip test, Monte Carlo"


def test_degenerate_input_makes_no_claim():
    for d in ([[0.01]], [[0.1], [0.2]], [[0.5] * 5], [[0.01] * 48] * 3):
        e = paired_effect(d)
        assert not e["significant"] and not e["conditional"]["significant"]
        assert e["conditional"]["p_value"] is None or e["conditional"]["ci"] is None or not e["claim"]
    assert "5 paired prompts" in paired_effect([[0.5] * 5])["conditional"]["reason"]
    flat = paired_effect([[0.01] * 48] * 3)
    assert not flat["claim"] and "identical differences" in flat["reason"]
    assert not flat["conditional"]["estimable"] and "same difference on every prompt" in flat["conditional"]["reason"]


def test_the_conditional_test_on_one_run_of_0_1_outcomes_is_the_mid_p_mcnemar_test():
    from scipy.stats import binom

    from phased_ift.stats import mcnemar_midp

    a = np.zeros(80, dtype=bool)
    b = np.zeros(80, dtype=bool)
    a[:5] = True  # 5 discordant prompts, all favouring a: mid-p = 2 (P(X <= 0) - P(X = 0) / 2) = 1/32
    c = paired_effect([a.astype(float) - b])["conditional"]
    assert c["p_value"] == pytest.approx(1 / 32) and c["test"] == "sign-flip test, exact mid-p"
    assert mcnemar_midp(a, b)["p_value"] == pytest.approx(1 / 32)
    a[5:17], b[17:21] = True, True  # 17 vs 4 discordant
    want = 2 * (binom.cdf(4, 21, 0.5) - 0.5 * binom.pmf(4, 21, 0.5))
    assert paired_effect([a.astype(float) - b])["conditional"]["p_value"] == pytest.approx(want)
    assert mcnemar_midp(a, b)["p_value"] == pytest.approx(want)


def test_exact_sign_flip_on_verdicts_matches_enumeration():
    import itertools

    from phased_ift.effects import sign_flip_test

    x = np.array([0.5, 0.5, -0.5, 0.25, 0.0, 0.5, 0.25, -0.25])  # two seeds' verdict values averaged
    got = sign_flip_test(x, n_seeds=2)
    sums = np.array([abs(np.dot(sg, x)) for sg in itertools.product([-1, 1], repeat=x.size)])
    obs = abs(x.sum())
    want = (sums > obs + 1e-12).mean() + 0.5 * (np.abs(sums - obs) < 1e-12).mean()
    assert got["method"] == "exact mid-p" and got["p_value"] == pytest.approx(want)
    assert sign_flip_test(np.array([1.0, -1.0] * 10))["p_value"] == 1.0  # sum 0: the doubled mid-p is 1


def test_monte_carlo_sign_flip_agrees_with_the_t_test_on_normal_data():
    from scipy.stats import ttest_1samp

    from phased_ift.effects import sign_flip_test

    x = np.random.default_rng(4).normal(0.2, 1, 60)
    got = sign_flip_test(x, n_resamples=20000)
    assert got["method"] == "Monte Carlo"
    assert got["p_value"] == pytest.approx(ttest_1samp(x, 0).pvalue, abs=0.02)
    assert got == sign_flip_test(x, n_resamples=20000)  # seeded


def test_missing_cells_leave_their_prompt_out_of_both_tests():
    d = np.array([[1.0, np.nan, 3.0, 2.0], [2.0, 2.0, np.nan, 2.0]])
    e = paired_effect(d)
    assert e["n_prompts"] == 2 and e["n_missing"] == 2
    assert e["difference"] == pytest.approx((1.0 + 2.0 + 2.0 + 2.0) / 4)
    with pytest.raises(ValueError, match="no paired value"):
        paired_effect(np.array([[np.nan, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="matrix"):
        paired_effect([1.0, 2.0])


def test_variance_components_recover_the_constructed_ones():
    d = _crossed(np.random.default_rng(4), s=40, n=2000, seed_sd=0.2, prompt_sd=0.5, resid_sd=0.3)
    vc = variance_components(d)
    assert vc["n_complete"] == 2000
    assert vc["seed"] == pytest.approx(0.04, rel=0.5)  # 40 seeds: the seed variance is the noisiest estimate
    assert vc["prompt"] == pytest.approx(0.25, rel=0.1)
    assert vc["residual"] == pytest.approx(0.09, rel=0.05)
    one = variance_components(d[:1])
    assert one["seed"] is None and one["prompt"] == pytest.approx(d[0].var(ddof=1))


def test_an_effect_of_the_true_mde_is_detected_with_about_80_percent_power():
    from phased_ift.effects import _mde_at

    rng = np.random.default_rng(5)
    vc = {"seed": 0.05 ** 2, "prompt": 0.25, "residual": 0.09}
    mde = _mde_at(vc, 3, 200, 0.95, 0.8)
    hits = [paired_effect(_crossed(rng, effect=mde, n=200), n_resamples=200)["significant"] for _ in range(300)]
    assert 0.7 <= float(np.mean(hits)) <= 0.9


def test_mde_uses_t_multipliers_at_the_designs_df():
    from scipy.stats import t

    from phased_ift.effects import _expected_design

    vc = {"seed": 0.01, "prompt": 0.2, "residual": 0.1}
    e = {"n_seeds": 3, "n_prompts": 80}
    m = minimum_detectable_effect(e, vc)
    var, df = _expected_design(vc, 3, 80)
    assert var == pytest.approx(0.01 / 3 + 0.2 / 80 + 2 * 0.1 / 240)
    assert m["mde"] == pytest.approx((t.ppf(0.975, df) + t.ppf(0.8, df)) * np.sqrt(var))


def test_mde_gives_no_prompt_advice_without_a_seed_variance():
    for s in (1, 2):
        m = minimum_detectable_effect({"n_seeds": s, "n_prompts": 48}, {"seed": 0.0, "prompt": 0.3, "residual": 0.1})
        assert m["mde"] is None and m["prompts_for_target"] is None and m["seeds_for_target"] is None
        assert "cannot be told" in m["advice"] and "run at least 3 seeds (train.seeds=[0,1,2])" in m["advice"]


def test_sample_size_advice_follows_the_crossed_model():
    # prompt variance only: halving the MDE needs about 4x the prompts; more seeds cannot help a shared prompt effect
    vc = {"seed": 0.0, "prompt": 1.0, "residual": 0.0}
    m = minimum_detectable_effect({"n_seeds": 3, "n_prompts": 500}, vc)
    assert m["target"] == pytest.approx(m["mde"] / 2)
    assert m["prompts_for_target"] == pytest.approx(2000, rel=0.02)
    assert m["seeds_for_target"] is None and m["advice"].startswith(f"for ±{m['target']:.3g} use about")
    # seed variance dominating: more prompts cannot reach a small target, more seeds can, and the advice says seeds
    vc2 = {"seed": 0.25, "prompt": 1e-4, "residual": 1e-4}
    m2 = minimum_detectable_effect({"n_seeds": 4, "n_prompts": 500}, vc2, target=0.3)
    assert m2["prompts_for_target"] is None and m2["seeds_for_target"] > 4
    assert m2["seed_share"] > 0.99 and m2["advice"] == f"for ±0.3 use {m2['seeds_for_target']} seeds"


def test_effect_sentence_with_a_claim_states_the_verdict_the_mde_and_the_advice():
    rng = np.random.default_rng(8)
    d = _crossed(rng, effect=-0.3, n=300)
    e = paired_effect(d)
    m = minimum_detectable_effect(e, variance_components(d))
    text = effect_sentence("phased", "one-off", "reference loss", e, m, lower_is_better=True)
    assert text.startswith("phased vs one-off, reference loss: \u2212")
    assert "significant, phased is better (a claim about the arms" in text and "3 seeds x 300 prompts" in text
    assert f"crossed-model t-test, df {e['df']:.1f}" in text
    assert f"could detect ±{m['mde']:.3f} at 80% power" in text


def test_effect_sentence_without_a_claim_never_says_better():
    rng = np.random.default_rng(9)
    one = paired_effect(_crossed(rng, effect=0.4, s=1, n=50))
    m = minimum_detectable_effect(one, variance_components(_crossed(rng, s=1, n=50)))
    text = effect_sentence("random", "one-off", "win rate", one, m, offset=0.5, holm_conditional=(0.001, 2))
    assert text.startswith(f"random vs one-off, win rate: {0.5 + one['difference']:.3f}, ")
    assert "no claim about the arms from 1 training run per arm" in text and "better" not in text
    assert "Conditional on these training runs" in text and "these two runs differ on these prompts" in text
    assert "Holm over 2 comparisons: p = 0.001" in text
    lost = effect_sentence("random", "one-off", "win rate", one, m, offset=0.5, holm_conditional=(0.2, 2))
    assert "differ on these prompts alone, but not after Holm's correction" in lost


def test_holm_adjustment_on_hand_computed_cases():
    # sorted 0.005, 0.01, 0.03, 0.04 of m = 4: 4 x 0.005 = 0.02; 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 0.04 -> max 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm_adjust([0.2, float("nan"), 0.6])  # NaN stays NaN and is not counted: m = 2
    assert got[0] == pytest.approx(0.4) and np.isnan(got[1]) and got[2] == pytest.approx(0.6)
    assert np.isnan(holm_adjust([None, 0.3])[0]) and holm_adjust([None, 0.3])[1] == pytest.approx(0.3)
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0] and holm_adjust([0.02]) == [0.02]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm_adjust([0.1, 1.2])


def test_a_finding_that_does_not_survive_holm_is_called_so():
    rng = np.random.default_rng(8)
    d = _crossed(rng, effect=-0.3, n=300)
    e = paired_effect(d)
    m = minimum_detectable_effect(e, variance_components(d))
    assert e["significant"]
    kept = effect_sentence("phased", "one-off", "reference loss", e, m, True, holm=(0.01, 6))
    assert "Holm over 6 comparisons: p = 0.01): significant, phased is better" in kept
    lost = effect_sentence("phased", "one-off", "reference loss", e, m, True, holm=(0.2, 6))
    assert "significant alone but not after Holm's correction" in lost and "phased is better" not in lost
    alone = effect_sentence("phased", "one-off", "reference loss", e, m, True, holm=(e["p_value"], 1))
    assert "Holm" not in alone


# --- the summary's answer on a constructed run dir ------------------------------------------------------------

def _answer_run(tmp_path, n=60, shift=-0.2, ifeval=True, seeds=(0, 1, 2)):
    """`seeds` of phased (final phase 3) and one-off (phase 1): reference losses with a known paired shift plus
    noise, IFEval per-prompt results, and judged win rates; a non-final phased checkpoint with other values."""
    import json

    from phased_ift.config import config_from_dict
    from phased_ift.evals.ifeval import ifeval_metrics
    from phased_ift.runio import write_jsonl
    from phased_ift.rundir import RunDir

    run = RunDir(tmp_path / "run")
    cfg = config_from_dict({"run_dir": str(run.root), "train": {"arms": ["phased", "one-off"], "seeds": list(seeds)},
                            "report": {"bootstrap": 500}})
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, n)
    diffs = {}
    for seed in seeds:
        d = shift + rng.normal(0, 0.1, n)
        diffs[seed] = d
        for arm, phase, per in (("phased", 3, base + d), ("one-off", 1, base), ("phased", 1, base + 5.0)):
            p = run.evaluation(arm, phase, seed)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"testsets": {"vicuna": {"n": n, "per_example": per.tolist()}}}))
            if not ifeval:
                continue
            strict = [bool((i + seed + (arm == "phased")) % 2) for i in range(20)]
            rows = [{"key": i, "instruction_id_list": ["detectable_format:title"], "strict": [f], "loose": [f],
                     "answered": True, "prompt_strict": f, "prompt_loose": f} for i, f in enumerate(strict)]
            p.with_name("ifeval.json").write_text(json.dumps({"metrics": ifeval_metrics(rows, 200),
                                                              "per_prompt": rows}))
        verdicts = ["win"] * 20 + ["tie"] * 4 + ["loss"] * (12 + 4 * seed) + ["unparseable"] * 2
        write_jsonl(run.judgements("phased", "one-off", "vicuna", seed),
                    [{"id": str(i), "verdict": v} for i, v in enumerate(verdicts)])
    return run, cfg, diffs


def test_summarize_effects_pairs_final_checkpoints_pooled_over_seeds(tmp_path):
    from phased_ift.report.answer import summarize_effects
    from phased_ift.report.summary import read_judgements

    run, cfg, diffs = _answer_run(tmp_path)
    eff = {e["metric"]: e for e in summarize_effects(run, cfg, read_judgements(run))}
    assert set(eff) == {"reference loss", "IFEval prompt-level strict accuracy", "win rate"}
    ref = eff["reference loss"]
    assert ref["arm"] == "phased" and ref["baseline"] == "one-off" and ref["seeds"] == [0, 1, 2]
    assert ref["n_prompts"] == 60 and ref["unpaired"] == 0 and ref["claim"]
    assert ref["difference"] == pytest.approx(np.mean([diffs[s].mean() for s in (0, 1, 2)]))
    assert ref["significant"] and "significant, phased is better" in ref["sentence"]
    # IFEval: phased follows prompts with (i + seed + 1) odd, one-off (i + seed) odd: same rate, opposite prompts
    assert eff["IFEval prompt-level strict accuracy"]["difference"] == pytest.approx(0.0)
    # seed s judged 38 + 4 s prompts (ids 36 + 4 s and 37 + 4 s unparseable): the pooled test uses the 38 every
    # seed has and leaves out the 2 with an unparseable verdict (seed 0's): 36 prompts, 20 wins and 4 ties each
    wr = eff["win rate"]
    assert wr["unpaired"] == 8 and wr["n_missing"] == 2 and wr["n_prompts"] == 36
    assert wr["difference"] + 0.5 == pytest.approx(22 / 36)
    assert wr["sentence"].startswith(f"phased vs one-off, win rate: {0.5 + wr['difference']:.3f}")
    # the unparseable verdicts: counted, and the sensitivity with each counted as a loss for the arm
    u = wr["unparseable"]
    assert u["count"] == 2 and u["rate"] == pytest.approx(2 / (3 * 38))
    assert u["as_loss"]["difference"] + 0.5 == pytest.approx(22 / 38)  # seeds 1, 2 lost ids 36, 37 anyway
    assert "2 unparseable verdicts" in wr["sentence"] and "counted as losses for phased: " in wr["sentence"]
    assert "(the claim's test, p = " in wr["sentence"] and "significant, p" not in wr["sentence"]
    # the three comparisons are one family: Holm's adjusted p-values, in the summary and the sentences
    keys = ("reference loss", "IFEval prompt-level strict accuracy", "win rate")
    assert [eff[k]["p_holm"] for k in keys] == pytest.approx(holm_adjust([eff[k]["p_value"] for k in keys]))
    assert all(e["n_comparisons"] == 3 for e in eff.values())
    assert "Holm over 3 comparisons" in ref["sentence"]


def test_one_seed_gives_conditional_results_in_their_own_holm_family(tmp_path):
    from phased_ift.report.answer import summarize_effects
    from phased_ift.report.summary import read_judgements

    run, cfg, diffs = _answer_run(tmp_path, seeds=(0,))
    eff = {e["metric"]: e for e in summarize_effects(run, cfg, read_judgements(run))}
    ref = eff["reference loss"]
    assert not ref["claim"] and not ref["significant"] and ref["p_holm"] is None and ref["n_comparisons"] == 0
    c = ref["conditional"]
    assert c["significant"] and c["difference"] == pytest.approx(diffs[0].mean())
    keys = [k for k in eff if eff[k]["conditional"]["estimable"]]
    assert [eff[k]["p_holm_conditional"] for k in keys] == pytest.approx(
        holm_adjust([eff[k]["conditional"]["p_value"] for k in keys]))
    assert "phased is better" not in ref["sentence"] and "these two runs differ on these prompts" in ref["sentence"]


def test_the_ifeval_line_and_the_answer_agree_on_one_seed(tmp_path):
    from phased_ift.report import build_report

    run, cfg, _ = _answer_run(tmp_path, seeds=(0,))
    s = build_report(run, cfg)
    ans = next(e for e in s["effects"] if e["metric"] == "IFEval prompt-level strict accuracy")
    comp = s["ifeval_comparisons"][0]
    assert comp["mcnemar"]["p_value"] == pytest.approx(ans["conditional"]["p_value"])
    assert comp["difference"] == pytest.approx(ans["conditional"]["difference"])
    assert comp["ci"] == pytest.approx(ans["conditional"]["ci"])
    line = next(v for v in s["verdicts"] if v.startswith("IFEval prompt-level strict accuracy"))
    assert f"mid-p McNemar p = {comp['mcnemar']['p_value']:.3g}" in line and "significant" not in line


def test_the_answer_leads_the_verdicts_and_is_listed_once(tmp_path):
    from phased_ift.report import build_report
    from phased_ift.report.verdicts import DESCRIPTIVE

    run, cfg, _ = _answer_run(tmp_path, ifeval=False)
    s = build_report(run, cfg)
    assert len(s["effects"]) == 2 and s["verdicts"][:2] == [e["sentence"] for e in s["effects"]]
    assert s["verdicts"][2] == DESCRIPTIVE
    assert not any("preferred" in v or "significant" in v for v in s["verdicts"][3:])
    md = (run.report_dir / "report.md").read_text()
    assert "## Did it help? Each arm against the baseline" in md
    assert md.count(s["effects"][0]["sentence"]) == 1
