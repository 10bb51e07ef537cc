"""SeqEval (Hu et al. 2024): the test set and its depths, the following and quality parsers, the judge prompts,
grading through the real LLMClient against the fake server (resume, retry, cache), the by-depth numbers with CIs,
the paired comparison of arms in the report's answer, and the report's section. The run dirs are written by hand."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from phased_ift.config import load_config
from phased_ift.data import load_test_set
from phased_ift.errors import PhasedIFTError
from phased_ift.runio import write_jsonl
from phased_ift.rundir import RunDir
from phased_ift.evals.seqeval import (
    load_prompts,
    parse_following,
    parse_quality,
    per_prompt_values,
    read_seqeval,
    summarize_seqeval,
)

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer, Status  # noqa: E402
from grading_helpers import grading_cfg, log_console, write_generation  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# The test set: 805 upstream records, depths 81/161/242/321; the one empty record left out, nothing else
# ---------------------------------------------------------------------------------------------------------------
def test_seqeval_loads_with_its_iteration_depths(data_home):
    raw = json.loads((data_home / "seqins" / "seqEval.json").read_text())
    assert len(raw) == 805
    assert sorted(collections.Counter(r["iteration"] for r in raw).items()) == [(1, 81), (2, 161), (3, 242), (4, 321)]
    ex = load_test_set("seqeval")
    assert len(ex) == 804 and len({e.id for e in ex}) == 804
    assert sorted(collections.Counter(e.meta["iteration"] for e in ex).items()) == [(1, 81), (2, 161), (3, 241),
                                                                                      (4, 321)]
    # ids are the upstream positions: the one left out is record 547, the empty instruction at depth 3
    assert {e.id for e in ex} == {f"seqEval-{i}" for i in range(805)} - {"seqEval-547"}
    assert raw[547] == {"instruction": "", "iteration": 3}
    first = ex[0]
    assert first.id == "seqEval-0" and first.instruction == raw[0]["instruction"] and first.meta["testset"] == "seqeval"
    assert all(e.instruction == raw[int(e.id.split("-")[1])]["instruction"] for e in ex)
    # a seeded sample keeps the depths
    sample = load_test_set("seqeval", limit=40, seed=3)
    assert len(sample) == 40 and sample == load_test_set("seqeval", limit=40, seed=3)
    assert {e.meta["iteration"] for e in sample} <= {1, 2, 3, 4}


def test_seqeval_other_rejects_still_stop_loading(tmp_path, data_home, monkeypatch):
    raw = json.loads((data_home / "seqins" / "seqEval.json").read_text())
    home = tmp_path / "home"
    (home / "seqins").mkdir(parents=True)
    monkeypatch.setenv("PHASED_IFT_DATA_HOME", str(home))
    # the upstream bytes: only the known record is left out
    (home / "seqins" / "seqEval.json").write_bytes((data_home / "seqins" / "seqEval.json").read_bytes())
    assert len(load_test_set("seqeval")) == 804
    # one more empty record elsewhere is not a known defect: loading stops and names it
    broken = [dict(r) for r in raw]
    broken[3]["instruction"] = ""
    (home / "seqins" / "seqEval.json").write_text(json.dumps(broken, indent=4))
    with pytest.raises(PhasedIFTError, match=r"test set seqeval .*1 of 805 records cannot be used .*empty instruction"):
        load_test_set("seqeval")


# ---------------------------------------------------------------------------------------------------------------
# Parsers on constructed replies
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply,expected", [
    ("1. list the actors: attempted\n2. define famous: attempted\n[[YES]]", 1.0),
    ("Task 2 is not attempted.\nVerdict: [[NO]]", 0.0),
    ("[[yes]]", 1.0),
    ("[[ No ]]", 0.0),
    ("[[YES]] ... after checking again: [[YES]]", 1.0),      # the same tag repeated
    ("At first [[YES]], but on reflection [[NO]]", None),    # both: ambiguous, unparsed
    ("YES", None),                                           # no brackets
    ("[YES]", None),
    ("The response attempts every task.", None),
    ("", None),
    (None, None),
])
def test_parse_following(reply, expected):
    assert parse_following(reply) == expected


@pytest.mark.parametrize("reply,expected", [
    ("Clear and complete. Rating: [[4]]", 4.0),
    ("Rating: [3]", 3.0),
    ("[[5]]", 5.0),
    ("[[1]]", 1.0),
    ("[[2.5]]", 2.5),
    ("first [2], then Rating: [[4]]", 4.0),   # FastChat's rule: [[x]] wins wherever it is
    ("Rating: [[6]]", None),                 # outside 1-5: unparsed
    ("Rating: [[0]]", None),
    ("Rating: [[four]]", None),
    ("A good answer.", None),
    (None, None),
])
def test_parse_quality(reply, expected):
    assert parse_quality(reply) == expected


def test_packaged_prompts_say_they_are_ours_and_fill_literally(tmp_path):
    from importlib import resources

    prompts = load_prompts()
    assert set(prompts) == {"following", "quality"}
    for metric, p in prompts.items():
        text = (resources.files("phased_ift") / "templates" / f"seqeval-{metric}.txt").read_text()
        header = text.split("<<system>>")[0]
        assert "NOT published" in header and "hanxuhu/SeqIns" in header and "2403.07794" in header
        msgs = p.render({"{instruction}": "First {answer}, then translate it.",
                         "{answer}": "An answer with {instruction} in it"})
        assert [m["role"] for m in msgs] == ["system", "user"]
        user = msgs[1]["content"]
        assert "First {answer}, then translate it." in user and "An answer with {instruction} in it" in user
    assert "[[YES]]" in prompts["following"].user and "1 to 5" in prompts["quality"].user
    own = tmp_path / "mine.txt"
    own.write_text("my prompt\n<<user>>\nDid it do all of {instruction}?\n")
    with pytest.raises(PhasedIFTError, match=r"mine\.txt: the user prompt lacks the placeholder \{answer\}"):
        load_prompts(following=str(own))
    with pytest.raises(PhasedIFTError, match="evaluation.seqeval_quality_template = 'nope' is neither a packaged"):
        load_prompts(quality="nope")


# ---------------------------------------------------------------------------------------------------------------
# Grading through the evaluate step, against the fake server
# ---------------------------------------------------------------------------------------------------------------
def _pick(seqeval_by_depth):
    """Four SeqEval prompts: A at depth 1, B at depth 2, C and D at depth 4."""
    return {"A": seqeval_by_depth[1][0], "B": seqeval_by_depth[2][0], "C": seqeval_by_depth[4][0],
            "D": seqeval_by_depth[4][1]}


@pytest.fixture(scope="module")
def seqeval_by_depth(data_home):
    out = collections.defaultdict(list)
    for e in load_test_set("seqeval"):
        out[e.meta["iteration"]].append(e)
    return out


# (answer tag, metric) -> the judge's reply; C's two replies do not parse (both tags; a rating outside 1-5)
REPLIES = {("A", "following"): "1. attempted\n2. attempted\n[[YES]]", ("A", "quality"): "Good. Rating: [[4]]",
           ("B", "following"): "Task 2 not attempted. [[NO]]", ("B", "quality"): "Rating: [[2]]",
           ("C", "following"): "[[YES]] or maybe [[NO]]", ("C", "quality"): "Rating: [[9]]",
           ("D", "following"): "[[yes]]", ("D", "quality"): "Rating: [3]"}


def judge_reply(body: dict) -> str:
    text = body["messages"][-1]["content"]
    tag = next(w for w in text.replace("\n", " ").split() if w.startswith("ANS-")).split("-")[1]
    return REPLIES[(tag, "quality" if "1 to 5" in text else "following")]


def write_answers(run: RunDir, picked, arm="one-off", phase=1, seed=0):
    rows = [{"id": e.id, "testset": "seqeval", "instruction": e.instruction, "output": f"ANS-{tag}- some answer",
             "output_tokens": 4, "finish_reason": "stop"} for tag, e in picked.items()]
    write_generation(run, arm, phase, seed, "seqeval", rows, 512)


def _cfg(tmp_path, srv=None, extra=()):
    return grading_cfg(tmp_path, "seqeval", srv, extra)


_log = log_console


def test_evaluate_step_grades_seqeval_resumes_retries_and_caches(tmp_path, seqeval_by_depth):
    from phased_ift.evals.step import evaluate_all
    from phased_ift.pairwise.judge import judge_all

    picked = _pick(seqeval_by_depth)
    with FakeLLMServer(reply=judge_reply) as srv:
        cfg = _cfg(tmp_path, srv)
        run = RunDir(cfg.run_dir)
        write_answers(run, picked)
        judge_all(cfg, run, console=_log(tmp_path))  # the pairwise step is pairwise only: no grading there
        assert srv.count == 0 and not (run.root / "grades").exists()
        evaluate_all(cfg, run, dry_run=True, console=_log(tmp_path))
        assert srv.count == 0 and not (run.root / "grades").exists()
        srv.queue(Status(400))  # concurrency 1: the first request (A, following) fails
        evaluate_all(cfg, run, console=_log(tmp_path))
        out = run.grades("one-off", 1, "seqeval", 0)
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert srv.count == 8 and len(rows) == 8
        by = {(r["id"], r["metric"]): r for r in rows}
        a, b, c, d = (picked[t].id for t in "ABCD")
        assert by[(a, "following")]["failed"] and "400" in by[(a, "following")]["error"]
        assert by[(a, "quality")]["rating"] == 4.0 and by[(b, "following")]["rating"] == 0.0
        assert by[(c, "following")]["unparsed"] and by[(c, "following")]["rating"] is None
        assert by[(c, "quality")]["unparsed"] and by[(c, "quality")]["reply"] == REPLIES[("C", "quality")]
        assert by[(d, "following")]["rating"] == 1.0 and by[(d, "quality")]["rating"] == 3.0
        assert [by[(x, "quality")]["iteration"] for x in (a, b, c, d)] == [1, 2, 4, 4]
        assert {r["template"] for r in rows} == {"seqeval-following", "seqeval-quality"}
        assert {r["judge"] for r in rows} == {"fake"}
        body = srv.bodies[1]
        assert body["temperature"] == 0.0 and body["max_tokens"] == 2048 and body["messages"][0]["role"] == "system"
        # re-run: only the failed verdict is asked again; its row supersedes the failed one
        evaluate_all(cfg, run, console=_log(tmp_path))
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert srv.count == 9 and len(rows) == 9 and (rows[-1]["id"], rows[-1]["rating"]) == (a, 1.0)
        evaluate_all(cfg, run, console=_log(tmp_path))  # all graded: nothing sent or appended
        assert srv.count == 9 and len(out.read_text().splitlines()) == 9
        out.unlink()  # from scratch: every verdict from the cache
        evaluate_all(cfg, run, console=_log(tmp_path))
        assert srv.count == 9 and len(out.read_text().splitlines()) == 8
        evaluate_all(cfg, run, dry_run=True, console=_log(tmp_path))
    log = (tmp_path / "log.txt").read_text()
    assert "grade (SeqEval, dry run): 8 distinct requests, 0 cached, 8 to send" in log
    assert "grade (SeqEval, dry run): 8 distinct requests, 8 cached, 0 to send" in log
    assert "grade: one-off seed 0 phase 1 seqeval: following rate 0.500 (2 verdicts), quality 3.00 (3), 2 unparsed, " \
           "1 FAILED (re-run to retry)" in log
    assert "grade: one-off seed 0 phase 1 seqeval: following rate 0.667 (3 verdicts), quality 3.00 (3), 2 unparsed " \
           "->" in log
    # the report's reader: A 1/4, B 0/2, D 1/3 parsed; C counted as unparsed on both metrics
    (s,) = read_seqeval(run, cfg)
    assert (s["arm"], s["seed"], s["phase"], s["n_prompts"]) == ("one-off", 0, 1, 4)
    assert (s["graded"], s["unparsed"], s["failed"], s["missing"]) == (6, 2, 0, 0)
    assert s["following"]["mean"] == pytest.approx(2 / 3) and s["following"]["n"] == 3
    assert s["quality"]["mean"] == pytest.approx(3.0) and s["quality"]["unparsed"] == 1
    depth = {x["iteration"]: x for x in s["by_depth"]}
    assert sorted(depth) == [1, 2, 4] and depth[4]["n_prompts"] == 2
    assert (depth[1]["following"]["mean"], depth[2]["following"]["mean"], depth[4]["following"]["mean"]) == (1, 0, 1)
    assert (depth[1]["quality"]["mean"], depth[2]["quality"]["mean"], depth[4]["quality"]["mean"]) == (4, 2, 3)
    assert depth[4]["quality"]["n"] == 1  # C's rating 9 is unparsed


def test_grading_needs_the_test_set_and_a_judge(tmp_path, seqeval_by_depth):
    from phased_ift.evals.seqeval import grade_all

    run = RunDir(tmp_path / "run")
    write_answers(run, _pick(seqeval_by_depth))
    grade_all(_cfg(tmp_path), run, console=_log(tmp_path))
    assert "grade (SeqEval): not configured (set judge.base_url" in (tmp_path / "log.txt").read_text()
    with FakeLLMServer(reply=judge_reply) as srv:
        grade_all(_cfg(tmp_path, srv, ["generate.test_sets=[vicuna]"]), run, console=_log(tmp_path))
        assert srv.count == 0 and not (run.root / "grades").exists()
        # an answer file of another test set's prompts is refused before anything is sent
        rows = [{"id": "vicuna_1", "testset": "seqeval", "instruction": "x", "output": "y"}]
        write_jsonl(run.generations("one-off", 1, "seqeval", 0), rows)
        with pytest.raises(PhasedIFTError, match="SeqEval answer 'vicuna_1' is not a prompt of the seqeval test set"):
            grade_all(_cfg(tmp_path, srv), run, console=_log(tmp_path))
        assert srv.count == 0


def test_benchmark_registry_holds_the_graders():
    from phased_ift.evals import BENCHMARKS, mtbench, register_benchmark, seqeval

    assert list(BENCHMARKS) == ["reference_loss", "ifeval", "mt_bench", "seqeval"]
    assert [BENCHMARKS[n].requests for n in ("mt_bench", "seqeval")] == [mtbench.GRADER.requests,
                                                                       seqeval.GRADER.requests]
    with pytest.raises(PhasedIFTError, match="benchmark 'seqeval' is registered twice"):
        register_benchmark(seqeval.BENCHMARK)

def _row(i, metric, rating, depth, **kw):
    return {"id": f"p{i}", "metric": metric, "iteration": depth, "template": f"seqeval-{metric}", "rating": rating,
            "reply": "r", "judge": "j", "unparsed": rating is None and not kw.get("failed"),
            "failed": kw.get("failed", False), "error": None}


def test_summarize_seqeval_by_depth_with_cis_and_counts():
    rng = np.random.default_rng(1)
    rows, truth = [], collections.defaultdict(lambda: collections.defaultdict(list))
    for i in range(120):
        depth = 1 + i % 4
        follow = float(rng.random() < 0.2 * depth)  # deeper prompts followed more often, by construction
        quality = float(rng.integers(1, 6))
        rows += [_row(i, "following", follow, depth), _row(i, "quality", quality, depth)]
        truth[depth]["following"].append(follow)
        truth[depth]["quality"].append(quality)
    rows.append(_row(0, "following", None, 1, failed=True))    # a later failed row supersedes p0's verdict
    rows.append(_row(1, "quality", None, 2))                   # unparsed
    rows.append(_row(1, "quality", 5.0, 2))                    # ... then parsed on a retry: counts
    s = summarize_seqeval(rows, n_boot=400, expected=[("p0", "following"), ("p999", "following"),
                                                      ("p999", "quality")])
    assert (s["n_prompts"], s["failed"], s["unparsed"], s["missing"]) == (120, 1, 0, 2)
    assert s["following"]["failed"] == 1 and s["following"]["missing"] == 1 and s["quality"]["missing"] == 1
    truth[2]["quality"][0] = 5.0  # p1 (depth 2) retried to 5
    follow_all = [v for d in truth for v in truth[d]["following"]]
    assert s["following"]["n"] == 119  # p0 failed
    assert s["following"]["mean"] == pytest.approx((sum(follow_all) - truth[1]["following"][0]) / 119)
    assert s["quality"]["n"] == 120
    assert s["quality"]["mean"] == pytest.approx(np.mean([v for d in truth for v in truth[d]["quality"]]))
    by = {x["iteration"]: x for x in s["by_depth"]}
    assert sorted(by) == [1, 2, 3, 4] and all(by[d]["n_prompts"] == 30 for d in by)
    for d in (2, 3, 4):
        for m in ("following", "quality"):
            assert by[d][m]["mean"] == pytest.approx(np.mean(truth[d][m])) and by[d][m]["n"] == 30
    assert by[1]["following"]["n"] == 29
    for d in by:
        for m in ("following", "quality"):
            lo, hi = by[d][m]["ci"]
            assert lo <= by[d][m]["mean"] <= hi and hi - lo > 0
    assert s["following"]["ci"][1] - s["following"]["ci"][0] < by[1]["following"]["ci"][1] - by[1]["following"]["ci"][0]
    assert per_prompt_values(rows, "quality")["p1"] == 5.0 and "p0" not in per_prompt_values(rows, "following")
    empty = summarize_seqeval([])
    assert empty["following"] == {"n": 0, "mean": None, "ci": None, "unparsed": 0, "failed": 0, "missing": 0}
    assert empty["by_depth"] == []


# ---------------------------------------------------------------------------------------------------------------
# The paired comparison of arms (report.answer.effect_metrics) and the report section, on a constructed run dir
# ---------------------------------------------------------------------------------------------------------------
def _grades_run(tmp_path, n=40):
    """phased (final phase 3) and one-off, two seeds: phased follows prompts with i % 3 != 0, one-off those with
    i even; quality phased 4, one-off 3 (+1 on seed 1 for both); phased seed 0 has p5's following unparsed; a
    non-final phased checkpoint (phase 1) follows nothing."""
    from phased_ift.config import config_from_dict

    run = RunDir(tmp_path / "run")
    cfg = config_from_dict({"run_dir": str(run.root), "train": {"arms": ["phased", "one-off"], "seeds": [0, 1]},
                            "generate": {"test_sets": ["seqeval"]}, "report": {"bootstrap": 300}})
    for seed in (0, 1):
        for arm, phase in (("phased", 3), ("one-off", 1), ("phased", 1)):
            rows = []
            for i in range(n):
                follow = float(i % 3 != 0) if arm == "phased" else float(i % 2 == 0)
                follow = 0.0 if phase == 1 and arm == "phased" else follow
                if (arm, phase, seed, i) == ("phased", 3, 0, 5):
                    follow = None
                rows += [_row(i, "following", follow, 1 + i % 4), _row(i, "quality", (4.0 if arm == "phased" else 3.0)
                                                                      + seed, 1 + i % 4)]
            write_jsonl(run.grades(arm, phase, "seqeval", seed), rows)
    return run, cfg


def test_effects_compare_arms_on_the_same_seqeval_prompts(tmp_path):
    from phased_ift.report.answer import summarize_effects

    run, cfg = _grades_run(tmp_path)
    eff = {e["metric"]: e for e in summarize_effects(run, cfg, [])}
    fr, q = eff["SeqEval following rate"], eff["SeqEval quality (1-5)"]
    assert (fr["arm"], fr["baseline"], fr["seeds"]) == ("phased", "one-off", [0, 1])
    keep = [i for i in range(40) if i != 5]  # p5 is unparsed under phased seed 0: left out of both seeds
    assert fr["n_prompts"] == 39 and fr["unpaired"] == 1
    assert fr["difference"] == pytest.approx(np.mean([float(i % 3 != 0) - float(i % 2 == 0) for i in keep]))
    assert q["n_prompts"] == 40 and q["unpaired"] == 0 and q["difference"] == pytest.approx(1.0)
    # two seeds: no claim about the arms; the quality differs by exactly +1 on every prompt, so even the result
    # conditional on these runs has no spread to estimate an uncertainty from
    assert not q["claim"] and not q["significant"] and "better" not in q["sentence"]
    assert not q["conditional"]["estimable"] and "same difference on every prompt" in q["conditional"]["reason"]
    c = fr["conditional"]
    assert not fr["lower_is_better"] and c["estimable"] and c["ci"][0] <= fr["difference"] <= c["ci"][1]


def test_report_shows_seqeval_by_depth_and_its_verdict(tmp_path):
    from phased_ift.report import build_report

    run, cfg = _grades_run(tmp_path)
    s = build_report(run, cfg)
    entries = {(e["arm"], e["seed"], e["phase"]): e for e in s["seqeval"]}
    assert set(entries) == {(a, sd, p) for a, p in (("phased", 3), ("one-off", 1), ("phased", 1)) for sd in (0, 1)}
    assert entries[("phased", 1, 3)]["final"] and not entries[("phased", 1, 1)]["final"]  # (arm, seed, phase)
    assert entries[("one-off", 0, 1)]["following"]["mean"] == pytest.approx(0.5)
    assert entries[("phased", 0, 1)]["following"]["mean"] == 0.0
    assert entries[("phased", 0, 3)]["unparsed"] == 1
    md = (run.report_dir / "report.md").read_text()
    assert "## Sequential instructions: SeqEval (single-answer LLM judge)" in md
    assert "| arm | seed | phase | metric | depth 1 | depth 2 | depth 3 | depth 4 |" in md
    line = next(v for v in s["verdicts"] if v.startswith("SeqEval following rate (final checkpoints, seed 1;"))
    assert "one-off 0.500 [" in line and "(quality 4.00 [" in line
    assert any(e["metric"] == "SeqEval following rate" for e in s["effects"])
    assert json.loads((run.report_dir / "summary.json").read_text())["seqeval"][0]["by_depth"][0]["iteration"] == 1


# ---------------------------------------------------------------------------------------------------------------
# The pipeline: generate -> judge (pairwise) -> evaluate grades SeqEval for every evaluated checkpoint (training stubbed, tiny models)
# ---------------------------------------------------------------------------------------------------------------
def _pipeline_reply(body: dict) -> str:
    text = body["messages"][-1]["content"]
    if "1 to 5" in text:
        return "Rating: [[2]]"
    return "[[NO]]" if "[[YES]]" in text else "7 5"  # the following prompt names both tags; else pairwise


@pytest.mark.slow  # ~20 s on the shared 2-core machine (tiny models, 3 checkpoints generate)
def test_run_grades_seqeval_for_every_arm_and_phase(tmp_path, tiny_model_dir, monkeypatch):
    from test_judge import make_fake_run

    from phased_ift import pipeline
    from phased_ift.report import build_report

    console = Console(file=open(tmp_path / "log.txt", "w"), width=250)
    with FakeLLMServer(reply=_pipeline_reply) as srv:
        cfg, run = make_fake_run(tmp_path, tiny_model_dir, monkeypatch,
                                 [f"judge.base_url={srv.base_url}", "judge.model=fake",
                                  "generate.test_sets=[seqeval]", "evaluation.reference_loss=false"])
        pipeline.step_pairwise(cfg, console=console)  # pairwise only: no grade file yet
        assert not (run.root / "grades").exists() and run.judgement_files()
        pipeline.step_evaluate(cfg, console=console)  # the graded benchmarks run in the evaluate step
        cells = [("phased", 1), ("phased", 2), ("one-off", 1)]
        for arm, k in cells:
            rows = [json.loads(x) for x in run.grades(arm, k, "seqeval", 0).read_text().splitlines()]
            assert len(rows) == 4 and {(r["metric"], r["rating"]) for r in rows} == {("following", 0.0),
                                                                                      ("quality", 2.0)}
        sent = srv.count  # re-run: everything is graded and judged, nothing is sent
        pipeline.step_pairwise(cfg, console=console)
        pipeline.step_evaluate(cfg, console=console)
        assert srv.count == sent
        s = build_report(run, cfg)
    assert {(e["arm"], e["phase"]) for e in s["seqeval"]} == set(cells)
    assert all(e["following"]["mean"] == 0.0 and e["quality"]["mean"] == 2.0 for e in s["seqeval"])
    eff = {e["metric"]: e for e in s["effects"]}
    assert eff["SeqEval following rate"]["difference"] == 0.0 and eff["SeqEval quality (1-5)"]["n_prompts"] == 2
    console.file.flush()
    log = (tmp_path / "log.txt").read_text()
    assert log.count("grade: ") >= 3 and "grade (SeqEval): sent" in log


@pytest.mark.slow
@pytest.mark.server
def test_seqeval_grading_with_a_real_llama_cpp_judge(tmp_path, smollm2_path, llama_server, seqeval_by_depth):
    """SmolLM2-135M answers a depth-1 and a depth-4 SeqEval prompt and, served by llama.cpp, judges them: every
    verdict is a parsed value in range or counted as unparsed, never a crash; grading again from scratch sends
    nothing. (190 s on the shared 2-core machine, 90 s of it judging; SmolLM2 parsed 0 of 4 verdicts, and 0 of 8
    with 4 prompts: a 135M model is no judge, which is why unparsed verdicts are counted apart.)"""
    import time

    from phased_ift.config import EndpointConfig
    from phased_ift.generation import generate_answers, read_generations
    from phased_ift.evals.grading import grade_file
    from phased_ift.llm_client import LLMClient
    from phased_ift.evals.seqeval import depths, grade_items, make_grade_row

    ex = [seqeval_by_depth[d][0] for d in (1, 4)]
    gen = generate_answers(smollm2_path, ex, 16, 2, "chat", tmp_path / "seqeval.jsonl")
    answers = read_generations(gen)
    assert len(answers) == 2 and all(r["output"] for r in answers)
    items = grade_items(answers, depths(), load_prompts())
    endpoint = EndpointConfig(base_url=llama_server, model="smollm2", concurrency=2, timeout=300)
    client = LLMClient(endpoint, tmp_path / "llm.sqlite", console=_log(tmp_path))
    out = tmp_path / "grades.jsonl"
    t0 = time.perf_counter()
    res = grade_file(client, items, out, "smollm2", make_grade_row, "metric", max_tokens=32)
    seconds = time.perf_counter() - t0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and res["failed"] == 0 and res["graded"] + res["unparsed"] == 4
    for r in rows:
        assert isinstance(r["reply"], str) and r["iteration"] in (1, 4)
        assert r["unparsed"] == (r["rating"] is None)
        assert r["rating"] is None or (r["metric"] == "following" and r["rating"] in (0.0, 1.0)) or (
            r["metric"] == "quality" and 1.0 <= r["rating"] <= 5.0)
    sent = client.stats["sent"]
    out.unlink()
    grade_file(client, items, out, "smollm2", make_grade_row, "metric", max_tokens=32)
    assert client.stats["sent"] == sent and len(out.read_text().splitlines()) == 4
    client.close()
    print(f"llama.cpp SmolLM2 as SeqEval judge: {res['graded']} of 4 verdicts parsed, {seconds:.0f} s")


def test_preflight_stops_on_a_bad_seqeval_template_before_training(tmp_path):
    from phased_ift.pipeline import preflight

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "generate.test_sets=[seqeval]",
                             "judge.base_url=http://127.0.0.1:9/v1", "judge.model=m",
                             f"evaluation.seqeval_quality_template={tmp_path / 'missing.txt'}"])
    with pytest.raises(PhasedIFTError, match=r"evaluation.seqeval_quality_template = .*missing\.txt' is neither a packaged"):
        preflight(cfg, dry_run=True)
    cfg.evaluation.seqeval_quality_template = "seqeval-quality"
    preflight(cfg, dry_run=True)  # the packaged templates load
    cfg.judge.base_url = ""
    cfg.evaluation.seqeval_quality_template = str(tmp_path / "missing.txt")
    preflight(cfg, dry_run=True)  # no judge: nothing is graded, so nothing to check


def test_the_report_says_why_generated_seqeval_answers_have_no_grades(tmp_path):
    """Without a judge the note points at the generated answers and the judge, not at generate.test_sets."""
    from phased_ift.config import config_from_dict
    from phased_ift.report.summary import summarize_run
    from phased_ift.rundir import RunDir

    with_set = config_from_dict({"run_dir": str(tmp_path / "a"), "generate": {"test_sets": ["ifeval", "seqeval"]}})
    note = summarize_run(RunDir(tmp_path / "a"), with_set)["notes"]["seqeval"]
    assert "the SeqEval answers are generated" in note and "add seqeval" not in note and "judge" in note
    without = config_from_dict({"run_dir": str(tmp_path / "b"), "generate": {"test_sets": ["vicuna"]}})
    assert "add seqeval to generate.test_sets" in summarize_run(RunDir(tmp_path / "b"), without)["notes"]["seqeval"]
