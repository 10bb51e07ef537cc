"""judge-check: the configured judge against known GPT-4 preferences (agreement, kappa, position and length bias,
anchor) and the win-rate arithmetic checked against AlpacaEval's own functions."""

from __future__ import annotations

import json
import re

import pytest

from fake_llm_server import FakeLLMServer
from phased_ift.errors import PhasedIFTError

# Six pairs: GPT-4's preference, the word counts of output_1 / output_2, and the judge's reply when output_1 is
# shown first (order 1) and when output_2 is shown first (order 2). Scores are (Assistant 1, Assistant 2).
PAIRS = [
    (1, 20, 5, "8 4", "4 8"),        # judge prefers output_1 in both orders: agrees with GPT-4
    (2, 20, 5, "8 4", "8 4"),        # the first shown always wins: inconsistent -> tie (disagrees with GPT-4)
    (2, 5, 20, "3 9", "9 3"),        # output_2 in both orders: agrees
    (1.5, 10, 10, "5 5", "5 5"),     # tie, GPT-4 tie
    (1, 20, 5, "garbage", "6 2"),    # order 1 does not parse -> unparseable
    (0, 20, 5, "7 3", "3 7"),        # output_1 both orders; GPT-4 draw (AlpacaEval's old 0)
]


def annotations_file(tmp_path):
    recs = []
    for i, (pref, n1, n2, _, _) in enumerate(PAIRS):
        recs.append({"instruction": f"Question {i}?", "output_1": " ".join([f"ANS1-{i}"] + ["w"] * (n1 - 1)),
                     "output_2": " ".join([f"ANS2-{i}"] + ["w"] * (n2 - 1)), "preference": pref,
                     "generator_1": "base", "generator_2": "model"})
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(recs))
    return path


# The same verdicts as FastChat's pair-v2 replies: [[A]] = Assistant A (shown first) better, [[C]] = tie.
AS_PAIR_V2 = {"8 4": "[[A]]", "7 3": "[[A]]", "6 2": "[[A]]", "4 8": "[[B]]", "3 7": "[[B]]", "3 9": "[[B]]",
              "9 3": "[[A]]", "5 5": "[[C]]", "garbage": "Both are fine."}


def reply_for(template):
    def reply(body):
        text = body["messages"][-1]["content"]
        i = int(re.search(r"ANS1-(\d+)", text).group(1))
        first_is_1 = text.index(f"ANS1-{i}") < text.index(f"ANS2-{i}")
        scores = PAIRS[i][3] if first_is_1 else PAIRS[i][4]
        return scores if template == "pairwise" else f"Explanation. {AS_PAIR_V2[scores]}"
    return reply


@pytest.mark.parametrize("template", ["pairwise", "pair-v2"])
def test_judge_check_numbers_equal_the_hand_computed_ones(tmp_path, capsys, template):
    from phased_ift.cli import main

    ann = annotations_file(tmp_path)
    reply = reply_for(template)
    with FakeLLMServer(reply=reply) as srv:
        rc = main(["judge-check", "configs/quickstart.yaml", f"run_dir={tmp_path / 'run'}", "--annotations", str(ann),
                   f"judge.base_url={srv.base_url}", "judge.model=fake", "report.bootstrap=200",
                   f"pairwise.template={template}"])
        assert rc == 0 and srv.count == 12
    out = json.loads(next((tmp_path / "run" / "judge_check").glob("*/judge_check.json")).read_text())
    assert out["n_pairs"] == 6 and out["judge"] == "fake" and out["template"] == template
    # Parsed pairs 0, 1, 2, 3, 5 as (GPT-4, judge, longer answer): (1,1,1) (2,tie,1) (2,2,2) (tie,tie,tie) (tie,1,1).
    # Without tie (FastChat): pairs 0 and 2 (both agree); with tie: 0, 2 and 3 of 5 agree. The length rule without
    # tie keeps 0, 1, 2 (2 of 3 agree), with tie 0, 2, 3 of 5.
    assert out["agreement"]["mean"] == 1.0 and out["agreement"]["n"] == 2
    assert out["agreement_with_tie"]["mean"] == pytest.approx(3 / 5) and out["agreement_with_tie"]["n"] == 5
    assert out["length_rule_agreement"]["mean"] == pytest.approx(2 / 3) and out["length_rule_agreement"]["n"] == 3
    assert out["length_rule_agreement_with_tie"]["mean"] == pytest.approx(3 / 5)
    assert out["qualified"] is False and out["qualification_threshold"] == 0.7
    # kappa over (GPT-4, judge) = (1,1) (2,tie) (2,2) (tie,tie) (tie,1): p_o = 3/5, p_e = (1*2 + 2*1 + 2*2)/25
    assert out["kappa"]["value"] == pytest.approx((0.6 - 8 / 25) / (1 - 8 / 25)) and out["kappa"]["n"] == 5
    assert out["position_consistency"]["mean"] == pytest.approx(4 / 5)
    fs = out["first_shown_win_rate"]  # 7 first-shown wins of 11 parsed orders; the CI resamples the 6 pairs
    assert fs["mean"] == pytest.approx(7 / 11) and fs["n"] == 6 and fs["n_orders"] == 11
    assert out["longer_win_rate"]["mean"] == 1.0 and out["longer_win_rate"]["n"] == 3
    assert out["gpt4_longer_win_rate"]["mean"] == 1.0 and out["gpt4_longer_win_rate"]["n"] == 2
    assert out["unparseable_rate"]["mean"] == pytest.approx(1 / 6)
    lo, hi = out["length_rule_agreement"]["ci"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1
    a = out["anchor"]
    assert (a["model"], a["baseline"], a["n_parsed"]) == ("model", "base", 5)
    assert a["judge_win_rate"] == pytest.approx(40.0) and a["gpt4_win_rate"]["win_rate"] == pytest.approx(50.0)
    assert a["published"] is None and out["cost"]["sent"] == 12
    err = capsys.readouterr().err
    assert "agreement with GPT-4, without tie" in err and "with tie" in err and "0.667" in err
    assert "anchor: model vs base" in err and "qualified: no" in err
    # Resume: a second run sends nothing (rows and cache).
    with FakeLLMServer(reply=reply) as srv:
        assert main(["judge-check", "configs/quickstart.yaml", f"run_dir={tmp_path / 'run'}", "--annotations",
                     str(ann), f"judge.base_url={srv.base_url}", "judge.model=fake",
                     f"pairwise.template={template}"]) == 0
        assert srv.count == 0


def _checked(pairs, n_resamples=500):
    """check_metrics of hand-built pairs (GPT-4 preference, words of output_1 / output_2, order-1 reply, order-2
    reply; scores are (Assistant 1, Assistant 2) as in PAIRS)."""
    from phased_ift.pairwise.judge import make_row
    from phased_ift.pairwise.check import check_metrics

    rows, ann = [], []
    for i, (pref, n1, n2, r1, r2) in enumerate(pairs):
        rows.append(make_row(str(i), "t", "output_1", "output_2", "w " * n1, "w " * n2, r1, r2))
        ann.append({"id": str(i), "preference": pref})
    return check_metrics(rows, ann, n_resamples=n_resamples, seed=0)


def test_agreement_in_fastchats_two_conventions_and_the_length_rule_with_the_same_tie_credit():
    out = _checked([
        (1, 20, 5, "8 4", "4 8"),      # GPT-4 1, judge 1, longer 1
        (2, 5, 20, "8 4", "4 8"),      # GPT-4 2, judge 1, longer 2
        (2, 10, 10, "8 4", "8 4"),     # GPT-4 2, judge tie (inconsistent orders), lengths equal: rule tie
        (1.5, 10, 10, "5 5", "5 5"),   # GPT-4 tie, judge tie, rule tie
        (1.5, 5, 20, "3 9", "9 3"),    # GPT-4 tie, judge 2, longer 2
        (1, 20, 5, "3 9", "9 3"),      # GPT-4 1, judge 2, longer 1
        (1, 20, 5, "garbage", "4 8"),  # unparseable: in no agreement
    ])
    # With tie (tie is a choice), the 6 parsed pairs: judge agrees on pairs 0 and 3; the rule on 0, 1, 3, 5.
    assert out["agreement_with_tie"]["mean"] == pytest.approx(2 / 6) and out["agreement_with_tie"]["n"] == 6
    assert out["length_rule_agreement_with_tie"]["mean"] == pytest.approx(4 / 6)
    assert out["length_rule_agreement_with_tie"]["n"] == 6
    # Without tie (drop a pair where GPT-4 or the rater says tie): judge keeps 0, 1, 5 (agrees on 0); the rule keeps
    # 0, 1, 5 too (its tie on pair 2 drops it), agreeing on all three.
    assert out["agreement"]["mean"] == pytest.approx(1 / 3) and out["agreement"]["n"] == 3
    assert out["length_rule_agreement"]["mean"] == 1.0 and out["length_rule_agreement"]["n"] == 3
    assert out["position_consistency"]["mean"] == pytest.approx(5 / 6) and out["qualified"] is False


def test_first_shown_win_rate_resamples_pairs():
    """A perfectly position-consistent judge: every pair gives exactly one first-shown win of two, so the pair-level
    CI is [0.5, 0.5] (resampling the 2n orders as independent items would give about [0.43, 0.57] at n = 100)."""
    pairs = [(1, 20, 5, "8 4", "4 8"), (2, 5, 20, "3 9", "9 3"), (1.5, 10, 10, "5 5", "5 5")] * 34
    fs = _checked(pairs[:100])["first_shown_win_rate"]
    assert fs["mean"] == 0.5 and fs["ci"] == [0.5, 0.5] and (fs["n"], fs["n_orders"]) == (100, 200)
    # One order unparsed: the pair contributes its one parsed order (first-shown wins: 1 + 2 + 1 of 2 + 2 + 1).
    fs = _checked([(1, 20, 5, "8 4", "4 8"), (2, 5, 20, "8 4", "8 4"), (1, 20, 5, "garbage", "6 2")])[
        "first_shown_win_rate"]
    assert fs["mean"] == pytest.approx(4 / 5) and (fs["n"], fs["n_orders"]) == (3, 5)
    lo, hi = fs["ci"]
    assert 0 <= lo <= 4 / 5 <= hi <= 1


def test_qualified_needs_both_lower_bounds_at_the_threshold():
    from phased_ift.pairwise.check import QUALIFY, qualified

    good = [(1, 20, 5, "8 4", "4 8"), (2, 5, 20, "3 9", "9 3")] * 30  # agrees with GPT-4, consistent: CIs [1, 1]
    out = _checked(good)
    assert out["agreement"]["ci"] == [1.0, 1.0] and out["position_consistency"]["ci"] == [1.0, 1.0]
    assert out["qualified"] is True and QUALIFY == 0.7
    # 15 of 20 agree (point 0.75 >= 0.7) but the lower CI bound is below 0.7: not qualified.
    close = [(1, 20, 5, "8 4", "4 8")] * 15 + [(2, 20, 5, "8 4", "4 8")] * 5
    out = _checked(close)
    assert out["agreement"]["mean"] == 0.75 and out["agreement"]["ci"][0] < 0.7 and out["qualified"] is False
    # Consistent and agreeing on decided pairs, but position consistency's lower bound is below 0.7.
    flaky = [(1, 20, 5, "8 4", "4 8")] * 40 + [(1, 20, 5, "8 4", "8 4")] * 20
    out = _checked(flaky)
    assert out["agreement"]["ci"][0] == 1.0 and out["position_consistency"]["ci"][0] < 0.7
    assert out["qualified"] is False
    assert qualified({"agreement": {"ci": None}, "position_consistency": {"ci": [0.9, 1.0]}}) is False
    assert qualified({"agreement": {"ci": [0.7, 0.9]}, "position_consistency": {"ci": [0.75, 1.0]}}) is True


def test_judge_check_needs_a_judge_and_good_annotations(tmp_path):
    from phased_ift.config import load_config
    from phased_ift.pairwise.check import load_annotations, run_judge_check

    with pytest.raises(PhasedIFTError, match="judge-check needs a judge"):
        run_judge_check(load_config(None, [f"run_dir={tmp_path}"]))
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps([{"instruction": "q", "output_1": "a", "output_2": "b", "preference": 3}]))
    with pytest.raises(PhasedIFTError, match=r"a.json: record 0 needs .* preference of 0, 1, 1.5 or 2"):
        load_annotations(bad)
    with pytest.raises(PhasedIFTError, match="does not exist"):
        load_annotations(tmp_path / "missing.json")
    full = load_annotations()
    sample = load_annotations(limit=100, seed=0)
    assert len(full) == 805 and len(sample) == 100 and sample == load_annotations(limit=100, seed=0)
    assert [int(r["id"]) for r in sample] == sorted(int(r["id"]) for r in sample)


@pytest.mark.parametrize("name", ["alpaca-7b", "gpt4"])
def test_win_rate_and_standard_error_equal_alpaca_evals(data_home, name):
    """phased-ift's win rate and standard error of a preference file are AlpacaEval's own (pairwise_to_winrate)."""
    from alpaca_eval.metrics import pairwise_to_winrate

    from phased_ift.stats import preference_win_rate

    prefs = [r["preference"] for r in json.loads(
        (data_home / "alpaca_eval" / name / "alpaca_eval_gpt4" / "annotations.json").read_text())]
    ours, theirs = preference_win_rate(prefs), pairwise_to_winrate(prefs)
    for key in ("win_rate", "standard_error"):
        assert ours[key] == pytest.approx(float(theirs[key]), rel=1e-12)
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total"):
        assert ours[key] == int(theirs[key])
    if name == "alpaca-7b":  # AlpacaEval's published leaderboard number (commit cd543a1) is this file's
        from phased_ift.pairwise.check import PUBLISHED

        assert ours["win_rate"] == pytest.approx(PUBLISHED["alpaca-7b"]["win_rate"])
        assert ours["standard_error"] == pytest.approx(PUBLISHED["alpaca-7b"]["standard_error"])
    with pytest.raises(ValueError, match="must be 0, 1, 1.5 or 2"):
        preference_win_rate([1, 3])


def test_report_names_the_judge_and_its_check(tmp_path):
    """Win rates come with the judge's check (matched by model and template), or a warning that it has none."""
    from test_report import make_cfg, write_full_run

    from phased_ift.report import build_report
    from phased_ift.runio import atomic_write_json

    run = write_full_run(tmp_path / "run")
    cfg = make_cfg(run.root, judge={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    s = build_report(run, cfg)
    assert any("judge m (template pairwise) has not been checked" in v for v in s["verdicts"])
    check = {"judge": "m", "template": "pairwise", "annotations": "a.json", "n_pairs": 100,
             "agreement": {"n": 90, "mean": 0.62, "ci": [0.52, 0.72]}, "kappa": {"n": 95, "value": 0.2, "ci": None},
             "position_consistency": {"n": 95, "mean": 0.81, "ci": [0.73, 0.88]},
             "length_rule_agreement": {"n": 90, "mean": 0.66, "ci": None}, "unparseable_rate": {"n": 100, "mean": 0.05}}
    atomic_write_json(run.judge_check("x") / "judge_check.json", check)
    atomic_write_json(run.judge_check("other") / "judge_check.json", {**check, "judge": "other-model"})
    s = build_report(run, cfg)
    assert s["judge_check"]["matched"]["agreement"]["mean"] == 0.62 and len(s["judge_check"]["checks"]) == 2
    line = next(v for v in s["verdicts"] if v.startswith("judge m"))
    assert "agreement with GPT-4 without ties 0.620 [0.520, 0.720]" in line and "position consistency 0.810" in line
    assert "a lower CI bound is below 0.7" in line and "say little" in line  # the lower bound 0.52, not the 0.62
    assert "agreement with GPT-4 without ties 0.620" in (run.report_dir / "report.md").read_text()
    # Both lower CI bounds at 0.7 or above: the judge qualifies.
    atomic_write_json(run.judge_check("x") / "judge_check.json",
                      {**check, "agreement": {"n": 90, "mean": 0.85, "ci": [0.77, 0.92]}, "qualified": True})
    line = next(v for v in build_report(run, cfg)["verdicts"] if v.startswith("judge m"))
    assert "the judge qualifies" in line
