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
    e = paired_effect(d, n_resamples=2000)
    assert e["n_seeds"] == 3 and e["n_prompts"] == 400
    assert e["difference"] == pytest.approx(d.mean())
    assert e["ci"][0] < 0.15 < e["ci"][1] and e["ci"][0] > 0
    assert e["significant"] and e["p_value"] < 0.01


def test_no_effect_is_detected_at_most_at_the_nominal_rate():
    rng = np.random.default_rng(2)
    hits = [paired_effect(_crossed(rng, n=100), n_resamples=400, seed=i)["significant"] for i in range(200)]
    rate = float(np.mean(hits))
    # nominal 5%; the pigeonhole bootstrap is mildly conservative. 200 runs: binomial SE 1.5 points.
    assert rate <= 0.09
    assert rate >= 0.005  # and not so conservative that it never fires


def test_p_value_and_ci_agree_and_the_result_is_reproducible():
    d = _crossed(np.random.default_rng(3), effect=0.05, n=150)
    a, b = paired_effect(d, seed=7), paired_effect(d, seed=7)
    assert a == b
    assert a["significant"] == (a["p_value"] < 0.05) or abs(a["p_value"] - 0.05) < 0.01


def test_missing_cells_are_skipped_not_counted_as_zero():
    d = np.array([[1.0, np.nan, 3.0], [2.0, 2.0, np.nan]])
    e = paired_effect(d, n_resamples=200)
    assert e["difference"] == pytest.approx((2.0 + 2.0) / 2)  # seed means 2.0 and 2.0
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


def test_an_effect_of_the_mde_is_detected_with_about_80_percent_power():
    rng = np.random.default_rng(5)
    pilot = _crossed(rng, n=200)
    mde = minimum_detectable_effect(paired_effect(pilot), variance_components(pilot))["mde"]
    hits = [paired_effect(_crossed(rng, effect=mde, n=200), n_resamples=400, seed=i)["significant"]
            for i in range(120)]
    assert 0.65 <= float(np.mean(hits)) <= 0.95


def test_sample_size_advice_follows_the_crossed_model():
    rng = np.random.default_rng(6)
    # prompt variance only: halving the MDE needs 4x the prompts; more seeds cannot help a shared prompt effect
    d = np.repeat(rng.normal(0, 1, (1, 500)), 2, axis=0)
    e = paired_effect(d)
    m = minimum_detectable_effect(e, variance_components(d))
    assert m["target"] == pytest.approx(m["mde"] / 2)
    assert m["prompts_for_target"] == pytest.approx(2000, rel=0.01)
    assert m["seeds_for_target"] is None
    # seed variance dominating: more prompts cannot reach a small target, more seeds can
    d2 = _crossed(rng, s=4, n=500, seed_sd=0.5, prompt_sd=0.01, resid_sd=0.01)
    m2 = minimum_detectable_effect(paired_effect(d2), variance_components(d2), target=0.01)
    assert m2["prompts_for_target"] is None and m2["seeds_for_target"] > 4


def test_effect_sentence_states_the_verdict_the_mde_and_the_advice():
    rng = np.random.default_rng(8)
    d = _crossed(rng, effect=-0.3, n=300)
    e = paired_effect(d)
    m = minimum_detectable_effect(e, variance_components(d))
    text = effect_sentence("phased", "one-off", "reference loss", e, m, lower_is_better=True)
    assert text.startswith("phased vs one-off, reference loss: \u2212")
    assert "significant, phased is better" in text and "3 seeds x 300 prompts" in text
    assert f"could detect ±{m['mde']:.3f} at 80% power" in text
    one = paired_effect(_crossed(rng, s=1, n=50))
    text1 = effect_sentence("random", "one-off", "win rate", one,
                            minimum_detectable_effect(one, {"seed": None, "prompt": 0.3, "residual": 0.0}),
                            offset=0.5)
    assert "not significant" in text1 or "significant" in text1
    assert "one seed" in text1 and text1.startswith(f"random vs one-off, win rate: {0.5 + one['difference']:.3f}, ")


def test_holm_adjustment_on_hand_computed_cases():
    # sorted 0.005, 0.01, 0.03, 0.04 of m = 4: 4 x 0.005 = 0.02; 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 0.04 -> max 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm_adjust([0.2, float("nan"), 0.6])  # NaN stays NaN and is not counted: m = 2
    assert got[0] == pytest.approx(0.4) and np.isnan(got[1]) and got[2] == pytest.approx(0.6)
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
    assert "significant, phased is better (also after Holm's correction for 6 comparisons, p = 0.01)" in kept
    lost = effect_sentence("phased", "one-off", "reference loss", e, m, True, holm=(0.2, 6))
    assert "but not after Holm's correction for 6 comparisons (p = 0.2)" in lost and "phased is better" not in lost
    alone = effect_sentence("phased", "one-off", "reference loss", e, m, True, holm=(e["p_value"], 1))
    assert "Holm" not in alone


# --- the summary's answer on a constructed run dir ------------------------------------------------------------

def _answer_run(tmp_path, n=60, shift=-0.2, ifeval=True):
    """Two seeds of phased (final phase 3) and one-off (phase 1): reference losses with a known paired shift plus
    noise, IFEval per-prompt results, and judged win rates; a non-final phased checkpoint with other values."""
    import json

    from phased_ift.config import config_from_dict
    from phased_ift.runio import write_jsonl
    from phased_ift.rundir import RunDir

    run = RunDir(tmp_path / "run")
    cfg = config_from_dict({"run_dir": str(run.root), "train": {"arms": ["phased", "one-off"], "seeds": [0, 1]},
                            "report": {"bootstrap": 500}})
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, n)
    diffs = {}
    for seed in (0, 1):
        d = shift + rng.normal(0, 0.1, n)
        diffs[seed] = d
        for arm, phase, per in (("phased", 3, base + d), ("one-off", 1, base), ("phased", 1, base + 5.0)):
            p = run.evaluation(arm, phase, seed)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"testsets": {"vicuna": {"n": n, "per_example": per.tolist()}}}))
            if not ifeval:
                continue
            strict = [bool((i + seed + (arm == "phased")) % 2) for i in range(20)]
            p.with_name("ifeval.json").write_text(json.dumps(
                {"metrics": {}, "per_prompt": [{"key": i, "prompt_strict": s} for i, s in enumerate(strict)]}))
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
    assert ref["arm"] == "phased" and ref["baseline"] == "one-off" and ref["seeds"] == [0, 1]
    assert ref["n_prompts"] == 60 and ref["unpaired"] == 0
    assert ref["difference"] == pytest.approx(np.mean([diffs[0].mean(), diffs[1].mean()]))
    assert ref["significant"] and "significant, phased is better" in ref["sentence"]
    # IFEval: phased follows prompts with (i + seed + 1) odd, one-off (i + seed) odd: same rate, opposite prompts
    assert eff["IFEval prompt-level strict accuracy"]["difference"] == pytest.approx(0.0)
    # seed 1 judged 42 prompts, seed 0 only the first 38: the 4 others are left out and counted. Win rate over
    # parsed verdicts: seed 0 (20 + 4/2) / 36 (2 unparseable), seed 1 on the 38: (20 + 4/2) / 38
    wr = eff["win rate"]
    assert wr["n_prompts"] == 38 and wr["unpaired"] == 4
    assert wr["difference"] + 0.5 == pytest.approx(np.mean([22 / 36, 22 / 38]))
    assert wr["sentence"].startswith(f"phased vs one-off, win rate: {0.5 + wr['difference']:.3f}")
    # the three comparisons are one family: Holm's adjusted p-values, in the summary and the sentences
    got = [eff[k]["p_holm"] for k in ("reference loss", "IFEval prompt-level strict accuracy", "win rate")]
    assert got == pytest.approx(holm_adjust([eff[k]["p_value"] for k in ("reference loss",
                                "IFEval prompt-level strict accuracy", "win rate")]))
    assert all(e["n_comparisons"] == 3 for e in eff.values())
    assert "after Holm's correction for 3 comparisons" in ref["sentence"]


def test_the_answer_leads_the_verdicts_and_has_its_report_section(tmp_path):
    from phased_ift.report import build_report

    run, cfg, _ = _answer_run(tmp_path, ifeval=False)
    s = build_report(run, cfg)
    assert len(s["effects"]) == 2 and s["verdicts"][:2] == [e["sentence"] for e in s["effects"]]
    md = (run.report_dir / "report.md").read_text()
    assert "## Did it help? Each arm against the baseline" in md
    assert s["effects"][0]["sentence"] in md
