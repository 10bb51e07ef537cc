"""The report on synthetic run dirs written here in the formats of docs/architecture.md.

The helpers below write every run-dir file the report reads (scores, manifest, losses, generations, judgements,
reference losses, agreement), so the report is tested without training or judging anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from phased_ift.config import config_from_dict
from phased_ift.runio import write_jsonl
from phased_ift.errors import PhasedIFTError
from phased_ift.report import build_report, comparison_verdict, verdict_lines
from phased_ift.report.verdicts import DESCRIPTIVE
from phased_ift.rundir import RunDir

# 40 prompts: 24 wins, 6 ties, 8 losses, 2 unparseable -> win rate (24 + 3) / 38, centred 27 / 40 - 0.5
VERDICT_PATTERN = ["win"] * 24 + ["tie"] * 6 + ["loss"] * 8 + ["unparseable"] * 2


def make_cfg(root: Path, **sections) -> object:
    raw = {"run_dir": str(root), "report": {"bootstrap": 200}, **sections}
    return config_from_dict(raw)


def write_data(run: RunDir, n: int = 30) -> None:
    rng = np.random.default_rng(0)
    write_jsonl(run.train_data, [{"id": str(i), "messages": [{"role": "user", "content": f"q{i}"},
                                                             {"role": "assistant", "content": f"a{i}"}],
                                  "meta": {}} for i in range(n)])
    write_jsonl(run.rejects, [{"source": "x.json", "line": 3, "record": {}, "reason": "empty response"},
                              {"source": "x.json", "line": 9, "record": {}, "reason": "empty response"},
                              {"source": "x.json", "line": 11, "record": {}, "reason": "duplicate"}])
    scores = [{"id": str(i), "score": float(s), "error": None} for i, s in enumerate(rng.uniform(0.2, 1.0, n))]
    scores.append({"id": "bad", "score": None, "error": "nan loss"})
    write_jsonl(run.scores("ifd"), scores)
    sizes = [10, 10, 10]
    phases = [{"k": k + 1, "count": c, "score_min": 0.2 + 0.27 * k, "score_max": 0.2 + 0.27 * (k + 1),
               "score_mean": 0.33 + 0.27 * k, "file": f"phase_{k + 1}.jsonl"} for k, c in enumerate(sizes)]
    manifest = {"method": "quantiles", "k": 3, "thresholds": [], "seed": 0, "scorer": "ifd", "n_examples": n,
                "phases": phases,
                "controls": {"random": [{"k": k + 1, "count": 10, "file": f"random/phase_{k + 1}.jsonl"}
                                        for k in range(3)]}}
    run.phases_dir.mkdir(parents=True, exist_ok=True)
    run.phases_manifest.write_text(json.dumps(manifest))


def write_training(run: RunDir, seeds=(0,)) -> None:
    for seed in seeds:
        for arm, k_max, steps in (("phased", 3, 5), ("one-off", 1, 15)):
            for k in range(1, k_max + 1):
                d = run.checkpoint(arm, k, seed)
                d.mkdir(parents=True)
                write_jsonl(d / "losses.jsonl", [{"step": s, "loss": 2.0 - 0.05 * s - 0.1 * k + 0.01 * seed,
                                                  "learning_rate": 1e-4, "epoch": s / steps}
                                                 for s in range(1, steps + 1)])
                (d / "DONE").write_text("{}")


def write_generations(run: RunDir, seeds=(0,), phased_words: int = 30, oneoff_words: int = 30) -> None:
    for seed in seeds:
        for arm, k_max, words in (("phased", 3, phased_words), ("one-off", 1, oneoff_words)):
            for k in range(1, k_max + 1):
                rows = [{"id": str(i), "testset": "vicuna", "instruction": f"q{i}",
                         "output": " ".join(["w"] * (words + i % 3)), "output_tokens": words + 5,
                         "finish_reason": "stop"} for i in range(len(VERDICT_PATTERN))]
                write_jsonl(run.generations(arm, k, "vicuna", seed), rows)


def judgement_rows(verdicts, len_a: int = 30, len_b: int = 30) -> list[dict]:
    raws = {"win": ([8, 6], [6, 8]), "tie": ([7, 7], [7, 7]), "loss": ([5, 8], [8, 5]), "unparseable": (None, [7, 7])}
    rows = []
    for i, v in enumerate(verdicts):
        ab, ba = raws[v]
        rows.append({"id": str(i), "testset": "vicuna", "arm_a": "phased", "arm_b": "one-off",
                     "ab": {"raw": "x", "scores": ab}, "ba": {"raw": "y", "scores": ba}, "verdict": v,
                     "len_a": len_a + i % 3, "len_b": len_b + i % 3})
    return rows


def write_judgements(run: RunDir, seeds=(0,), every_phase: bool = True, len_a: int = 30, len_b: int = 30) -> None:
    for seed in seeds:
        pattern = VERDICT_PATTERN if seed == 0 else VERDICT_PATTERN[4:] + ["loss"] * 4  # seed 1 is worse
        write_jsonl(run.judgements("phased", "one-off", "vicuna", seed), judgement_rows(pattern, len_a, len_b))
        if every_phase:
            for k in (1, 2, 3):
                pat = ["win"] * (8 * k) + ["loss"] * (40 - 8 * k)
                write_jsonl(run.judgements("phased", "one-off", "vicuna", seed, phase=k), judgement_rows(pat))


def write_reference_loss(run: RunDir, seeds=(0,)) -> None:
    for seed in seeds:
        for arm, k_max, base in (("phased", 3, 1.5), ("one-off", 1, 1.6)):
            for k in range(1, k_max + 1):
                per = [base + 0.01 * i for i in range(20)]
                p = run.evaluation(arm, k, seed)
                p.parent.mkdir(parents=True)
                vic = [x + 0.5 for x in per[:10]]
                p.write_text(json.dumps({"arm": arm, "phase": k, "seed": seed, "testsets": {
                    "alpaca_eval": {"mean_loss": sum(per) / len(per), "n": len(per), "per_example": per},
                    "vicuna": {"mean_loss": sum(vic) / len(vic), "n": len(vic), "per_example": vic}}}))


def write_agreement(run: RunDir) -> None:
    write_jsonl(run.root / "agreement" / "full" / "agreement.json",
                [{"scorer": "ifd", "n": 100, "failed": 0, "auc": 0.61, "spearman_stage3": 0.2, "stats": {"x": 1},
                  "counts": None},
                 {"scorer": "length", "n": 100, "failed": 1, "auc": 0.55, "spearman_stage3": None, "stats": {},
                  "counts": None}])


def write_full_run(root: Path, seeds=(0,), every_phase: bool = True, **lengths) -> RunDir:
    run = RunDir(root)
    write_data(run)
    write_training(run, seeds)
    write_generations(run, seeds)
    write_judgements(run, seeds, every_phase, **lengths)
    write_reference_loss(run, seeds)
    write_agreement(run)
    return run


def md_table_after(md: str, heading: str) -> list[dict[str, str]]:
    """Parse the first pipe table after a '## heading' line into dicts (header -> cell)."""
    lines = md[md.index(f"## {heading}"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    headers, rows = table[0], table[2:]
    return [dict(zip(headers, r)) for r in rows]


def ci_text(value, ci) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def test_full_report_writes_files_and_tables_match_summary(tmp_path):
    run = write_full_run(tmp_path / "run")
    cfg = make_cfg(run.root)
    s = build_report(run, cfg)
    out = run.report_dir
    for name in ("report.md", "report.html", "summary.json", "difficulty.png", "training_loss.png",
                 "win_rate_trend.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(s, default=str))

    (c,) = s["comparisons"]
    assert (c["wins"], c["ties"], c["losses"], c["unparseable"], c["n"]) == (24, 6, 8, 2, 40)
    assert c["win_rate"] == pytest.approx(27 / 38) and c["centred"] == pytest.approx(27 / 40 - 0.5)
    assert c["win_rate_ci"][0] < 27 / 38 < c["win_rate_ci"][1]
    md = (out / "report.md").read_text()
    (row,) = md_table_after(md, "Win rates")
    assert row["comparison"] == "phased vs one-off" and row["test set"] == "vicuna"
    assert [row[k] for k in ("n", "win", "tie", "loss", "unparseable")] == ["40", "24", "6", "8", "2"]
    assert row["win rate [95% CI]"] == ci_text(c["win_rate"], c["win_rate_ci"])
    assert row["centred [95% CI]"] == ci_text(c["centred"], c["centred_ci"])
    assert row["LC win rate [95% CI]"] == ci_text(c["lc_win_rate"], c["lc_ci"])
    assert float(row["mean words A"]) == pytest.approx(c["mean_len_a"], abs=1e-3)

    trend = md_table_after(md, "Win rate after each phase")
    assert [r["phase"] for r in trend] == ["1", "2", "3"]
    assert [float(r["win rate [95% CI]"].split()[0]) for r in trend] == [0.2, 0.4, 0.6]

    ref = md_table_after(md, "Offline evaluation")
    phased3 = next(r for r in ref if r["arm"] == "phased" and r["phase"] == "3" and r["test set"] == "alpaca_eval")
    assert float(phased3["mean loss"]) == pytest.approx(1.5 + 0.01 * 9.5, abs=1e-3)
    entry = next(e for e in s["reference_loss"] if (e["arm"], e["phase"], e["testset"]) == ("phased", 3, "alpaca_eval"))
    assert phased3["95% CI"] == f"[{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"

    train = md_table_after(md, "Training loss")
    assert [(r["arm"], r["phase"], r["steps"]) for r in train] == [
        ("one-off", "1", "15"), ("phased", "1", "5"), ("phased", "2", "5"), ("phased", "3", "5")]
    # cumulative steps: phase 3 of the phased arm starts after 5 + 5 steps
    assert s["training"]["phased"]["0"][2]["points"][0][0] == 11

    phases = md_table_after(md, "Difficulty and phases")
    assert phases[0]["scored"] == "30" and phases[0]["failed"] == "1"
    assert sum(s["difficulty"]["histogram"]["counts"]) == 30
    assert "rejected: empty response | 2" in md
    assert "agreement/full/agreement.json" in md and "| ifd | 100 | 0 | 0.610 | 0.200 |" in md


def test_html_is_self_contained(tmp_path):
    run = write_full_run(tmp_path / "run")
    s = build_report(run, make_cfg(run.root))
    page = (run.report_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page
    assert page.count("src='data:image/png;base64,") == len(s["plots"]) == 3
    assert "phased vs one-off on vicuna: win rate 0.711" in page


def test_verdict_lines_name_significance_lc_and_reference_loss(tmp_path):
    run = write_full_run(tmp_path / "run")
    s = build_report(run, make_cfg(run.root))
    lines = verdict_lines(s)
    # the answer first (tests/test_effects.py), one sentence per arm and metric: reference loss, win rate
    assert [e["metric"] for e in s["effects"]] == ["reference loss", "win rate"]
    assert lines[:2] == [e["sentence"] for e in s["effects"]]
    assert lines == s["verdicts"]
    assert lines[2] == DESCRIPTIVE
    lines = lines[3:]
    wr = ci_text(27 / 38, s["comparisons"][0]["win_rate_ci"])
    assert lines[0].startswith(f"phased vs one-off on vicuna: win rate {wr} over 38 prompts (2 unparseable)")
    assert "preferred" not in lines[0] and "significant" not in lines[0]
    assert "length-controlled" in lines[0] and "Warning" not in lines[0]
    # vicuna was judged and evaluated: both numbers in one line (last phase of each arm)
    assert "; reference loss phased 2.045 [" in lines[0] and " vs one-off 2.145 [" in lines[0]
    ref = [l for l in lines if l.startswith("reference loss on")]
    assert len(ref) == 1 and ref[0].startswith("reference loss on alpaca_eval (final checkpoints; lower")
    assert "phased 1.595 [" in ref[0] and "one-off 1.695 [" in ref[0]


def test_length_warning_when_the_preferred_arm_is_much_longer(tmp_path):
    run = write_full_run(tmp_path / "run", len_a=90, len_b=30)
    s = build_report(run, make_cfg(run.root))
    line = next(v for v in s["verdicts"] if v.startswith("phased vs one-off on vicuna"))
    assert "Warning: phased, ahead here, answers 2.9x longer (91 vs 31 words)" in line
    assert "including any length difference that phased itself causes" in line
    assert "Warning" in (run.report_dir / "report.md").read_text()


def test_comparison_verdict_sentences():
    base = {"arm_a": "phased", "arm_b": "one-off", "testset": "koala", "seed": 0, "n": 100, "n_parsed": 100,
            "unparseable": 0, "lc_win_rate": None, "mean_len_a": 50.0, "mean_len_b": 50.0}
    assert comparison_verdict({**base, "win_rate": 0.64, "win_rate_ci": [0.54, 0.72]}) == (
        "phased vs one-off on koala: win rate 0.640 [0.540, 0.720] over 100 prompts.")  # descriptive: no verdict
    low = comparison_verdict({**base, "win_rate": 0.3, "win_rate_ci": [0.22, 0.39], "mean_len_b": 100.0})
    assert "preferred" not in low and "Warning: one-off, ahead here, answers 2.0x longer" in low
    none = comparison_verdict({**base, "win_rate": None, "win_rate_ci": None, "n_parsed": 0, "unparseable": 5,
                               "n": 5})
    assert "no parsed verdict among 5 prompts (5 unparseable)" in none


def test_missing_parts_give_lines_not_errors(tmp_path):
    run = RunDir(tmp_path / "run")
    write_data(run)
    s = build_report(run, make_cfg(run.root))
    md = (run.report_dir / "report.md").read_text()
    assert s["comparisons"] == [] and s["trend"] == [] and s["plots"] == {"difficulty": "difficulty.png"}
    assert not (run.report_dir / "win_rate_trend.png").exists()
    assert "set judge.base_url and judge.model" in md
    assert "run `phased-ift train CONFIG`" in md and "run `phased-ift generate CONFIG`" in md
    assert "evaluation.reference_loss" in md
    assert any("judge.base_url" in line for line in verdict_lines(s))

    empty = RunDir(tmp_path / "empty")
    s2 = build_report(empty, make_cfg(empty.root, judge={"base_url": "http://127.0.0.1:9/v1", "model": "m"}))
    assert "A judge is configured (m) but no judgements exist yet" in s2["notes"]["pairwise"]
    assert "phased-ift score" in (empty.report_dir / "report.md").read_text()


def test_no_every_phase_judgements_means_no_trend_plot(tmp_path):
    run = write_full_run(tmp_path / "run", every_phase=False)
    s = build_report(run, make_cfg(run.root))
    assert s["trend"] == [] and "trend" not in s["plots"]
    assert "generate.every_phase=true" in (run.report_dir / "report.md").read_text()


def test_one_seed_no_spread_several_seeds_spread(tmp_path):
    one = write_full_run(tmp_path / "one", every_phase=False)
    s1 = build_report(one, make_cfg(one.root))
    assert s1["seed_spread"] == [] and "train.seeds=[0,1,2]" in s1["notes"]["seeds"]

    two = write_full_run(tmp_path / "two", seeds=(0, 1), every_phase=False)
    s2 = build_report(two, make_cfg(two.root, train={"seeds": [0, 1]}))
    (sp,) = s2["seed_spread"]
    rates = [c["win_rate"] for c in s2["comparisons"]]
    assert rates[0] == pytest.approx(27 / 38) and rates[1] == pytest.approx(23 / 38)  # seed 1: 20 w, 6 t, 12 l
    assert sp["win_rate"]["n_seeds"] == 2 and sp["win_rate"]["mean"] == pytest.approx(np.mean(rates))
    assert sp["win_rate"]["std"] == pytest.approx(np.std(rates, ddof=1))
    (row,) = md_table_after((two.report_dir / "report.md").read_text(), "Across training seeds")
    assert row["mean win rate"] == f"{np.mean(rates):.3f}" and row["std"] == f"{np.std(rates, ddof=1):.3f}"
    assert any("(seed 1)" in line for line in s2["verdicts"])
    assert any("mean win rate" in line and "across 2 seeds" in line for line in s2["verdicts"])


def test_bad_verdict_names_file_and_line(tmp_path):
    run = RunDir(tmp_path / "run")
    rows = judgement_rows(["win", "win"])
    rows[1]["verdict"] = "maybe"
    write_jsonl(run.judgements("phased", "one-off", "vicuna"), rows)
    with pytest.raises(PhasedIFTError, match=r"vicuna\.jsonl: line 2 has verdict 'maybe'"):
        build_report(run, make_cfg(run.root))


def test_step_report_runs_the_earlier_steps_once_then_writes_report(tmp_path, monkeypatch):
    """`phased-ift report`: the steps it needs (here: split, train, then generate, judge, evaluate), each once and
    in STEPS order, then the report."""
    import dataclasses

    from phased_ift import pipeline

    run = write_full_run(tmp_path / "run", every_phase=False)
    called = []

    def record(name):
        return lambda cfg, run, dry_run, console: called.append(name)

    monkeypatch.setattr(pipeline, "STEPS", [s if s.name == "report" else dataclasses.replace(s, run=record(s.name))
                                            for s in pipeline.STEPS])
    s = pipeline.step_report(make_cfg(run.root))
    # scores/ifd.jsonl exists, so the split does not need the score step; no judge configured: judge needs nothing
    assert called == ["split", "train", "generate", "pairwise", "evaluate"] and (run.report_dir / "report.html").is_file()
    assert s["comparisons"][0]["wins"] == 24


@pytest.mark.slow
def test_report_renders_from_a_real_small_run(tmp_path, tiny_model_dir, monkeypatch):
    """generate -> judge (fake OpenAI-compatible server) -> evaluate -> report on tiny-model checkpoints: the
    report reads the files the real steps write (training is stubbed, as in test_judge)."""
    import hashlib
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_llm_server import FakeLLMServer
    from rich.console import Console
    from test_judge import make_fake_run

    from phased_ift import pipeline

    def reply(body):  # a deterministic mix of verdicts, including unparseable ones
        h = int(hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest(), 16) % 4
        return ["8 5", "5 8", "7 7", "no scores here"][h]

    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    with FakeLLMServer(reply=reply) as srv:
        cfg, run = make_fake_run(tmp_path, tiny_model_dir, monkeypatch,
                                 [f"judge.base_url={srv.base_url}", "judge.model=fake",
                                  "generate.limit=6", "report.bootstrap=200"])
        s = pipeline.step_report(cfg, console=console)
    assert "report: " in (tmp_path / "log.txt").read_text()
    (c,) = s["comparisons"]
    assert (c["arm_a"], c["arm_b"], c["testset"], c["n"]) == ("phased", "one-off", "vicuna", 6)
    assert c["wins"] + c["ties"] + c["losses"] + c["unparseable"] == 6
    assert sorted(t["phase"] for t in s["trend"]) == [1, 2]
    assert {(x["arm"], x["phase"]) for x in s["lengths"]} == {("phased", 1), ("phased", 2), ("one-off", 1)}
    assert all(x["mean_tokens"] is not None for x in s["lengths"])
    assert {(x["arm"], x["phase"]) for x in s["reference_loss"]} >= {("phased", 2), ("one-off", 1)}
    assert all(x["mean"] > 0 for x in s["reference_loss"])
    for png in ("win_rate_trend.png",):
        assert (run.report_dir / png).stat().st_size > 5000
    (row,) = md_table_after((run.report_dir / "report.md").read_text(), "Win rates")
    assert [row[k] for k in ("n", "win", "tie", "loss", "unparseable")] == [
        str(c[k]) for k in ("n", "wins", "ties", "losses", "unparseable")]
    if c["win_rate"] is not None:
        assert row["win rate [95% CI]"].startswith(f"{c['win_rate']:.3f}")


def test_a_test_set_without_reference_answers_gets_no_reference_loss_line(tmp_path):
    """IFEval has no AlpacaEval reference answers: its n = 0 entry stays in the file but not in the report."""
    run = RunDir(tmp_path / "run")
    write_reference_loss(run)
    for arm, k in (("phased", 3), ("one-off", 1)):
        p = run.evaluation(arm, k, 0)
        data = json.loads(p.read_text())
        data["testsets"]["ifeval"] = {"mean_loss": None, "n": 0, "per_example": [], "n_prompts": 48}
        p.write_text(json.dumps(data))
    s = build_report(run, make_cfg(run.root))
    assert {e["testset"] for e in s["reference_loss"]} == {"alpaca_eval", "vicuna"}
    assert not any("ifeval" in v for v in s["verdicts"])


def test_the_no_judge_note_comes_with_the_answer_not_among_the_descriptive_lines(tmp_path):
    """A run without judgements: the note on how to get win rates follows the answer's sentences and precedes
    DESCRIPTIVE, so the descriptive per-seed lines stay together under their heading."""
    run = write_full_run(tmp_path / "run")
    s = build_report(run, make_cfg(run.root))
    s = {**s, "comparisons": [], "seed_spread": [], "notes": {**s["notes"], "pairwise": "No pairwise judgements."}}
    lines = verdict_lines(s)
    n = len(s["effects"])
    assert n >= 1 and lines[:n] == [e["sentence"] for e in s["effects"]]
    assert lines[n:n + 2] == ["No pairwise judgements.", DESCRIPTIVE]
    assert lines.count("No pairwise judgements.") == 1 and len(lines) > n + 2
