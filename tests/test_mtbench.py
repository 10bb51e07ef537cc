"""MT-Bench single-answer grading (FastChat llm_judge): prompts, rating parser, grading through the real
LLMClient against the fake server, resume, aggregation, errors. The run dir is written by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from phased_ift.config import load_config
from phased_ift.data import load_test_set
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.mtbench import (
    References,
    grade_all,
    grade_file,
    grade_items,
    load_judge_prompts,
    load_references,
    mt_bench_table,
    parse_rating,
    read_grades,
    summarize_grades,
    template_name,
)
from phased_ift.runio import write_jsonl
from phased_ift.rundir import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer, Status  # noqa: E402
from grading_helpers import grading_cfg, log_console, write_generation  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# The rating parser: FastChat's [[x]], then [x]
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply,expected", [
    ("The answer is accurate and detailed.\n\nRating: [[8]]", 8.0),
    ("Rating: [7]", 7.0),
    ("[[7.5]]", 7.5),
    ("[[10]]", 10.0),
    ("first [2], then Rating: [[9]]", 9.0),  # the double-bracket pattern wins wherever it is
    ("Rating: [[5]] and [[3]]", 5.0),        # the first match
    ("The assistant's answer is wrong.", None),
    ("Rating: [[eight]]", None),
    ("", None),
    (None, None),
])
def test_parse_rating(reply, expected):
    assert parse_rating(reply) == expected


# ---------------------------------------------------------------------------------------------------------------
# Prompts: FastChat's choice of template, the reference answers, the filled messages
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prompts(data_home):
    return load_judge_prompts()


@pytest.fixture(scope="module")
def mt_bench():
    return {e.id: e for e in load_test_set("mt_bench")}


def _rows(mt_bench, ids, tag=""):
    """Turn-1 and turn-2 generation rows as `generate` writes them; answers carry a findable marker."""
    t1 = [{"id": i, "testset": "mt_bench", "instruction": mt_bench[i].instruction, "output": f"ANS-{i}-T1{tag}",
           "output_tokens": 3, "finish_reason": "stop"} for i in ids]
    t2 = [{"id": i, "testset": "mt_bench", "instruction": mt_bench[i].instruction, "output": f"ANS-{i}-T2{tag}",
           "output_tokens": 3, "finish_reason": "stop", "turn": 2, "question": mt_bench[i].meta["later_turns"][0]}
          for i in ids]
    return t1, t2


def _categories(mt_bench):
    return {i: e.meta["category"] for i, e in mt_bench.items()}


def test_template_choice_follows_fastchat():
    assert [template_name("writing", t) for t in (1, 2)] == ["single-v1", "single-v1-multi-turn"]
    for cat in ("math", "reasoning", "coding", "arena-hard-200"):
        assert [template_name(cat, t) for t in (1, 2)] == ["single-math-v1", "single-math-v1-multi-turn"]


def test_math_question_gets_the_reference_template_with_gpt4_answers(prompts, mt_bench, data_home):
    refs = load_references()
    q = mt_bench["111"]
    assert q.meta["category"] == "math" and len(refs.answers) == 30
    ref1, ref2 = refs.answers["111"]
    raw = next(json.loads(x) for x in (data_home / "fastchat/mt_bench/reference_answer/gpt-4.jsonl").open()
               if json.loads(x)["question_id"] == 111)
    assert [ref1, ref2] == raw["choices"][0]["turns"]
    assert ref1.startswith("To find the area of the triangle")  # GPT-4's own (wrong: "collinear") answer, as used
    t1, t2 = _rows(mt_bench, ["111"])
    t1[0]["output"] = "The area is {x} = 3"  # braces in an answer stay literal
    items = grade_items(t1, t2, _categories(mt_bench), prompts, refs)
    assert [(it.id, it.turn, it.template) for it in items] == [("111", 1, "single-math-v1"),
                                                               ("111", 2, "single-math-v1-multi-turn")]
    system, user = items[0].messages
    assert system == {"role": "system", "content": "You are a helpful assistant."} and user["role"] == "user"
    assert f"[Question]\n{q.instruction}\n\n[The Start of Reference Answer]\n{ref1}\n[The End of Reference Answer]" \
        in user["content"]
    assert "[The Start of Assistant's Answer]\nThe area is {x} = 3\n[The End of Assistant's Answer]" in user["content"]
    assert "Your evaluation should consider correctness and helpfulness" in user["content"]
    # Turn 2: the multi-turn template, both questions, both reference answers, both of the model's answers.
    system, user = items[1].messages
    assert system["content"] == prompts["single-math-v1-multi-turn"].system
    assert "focus on the assistant's answer to the second question" in system["content"]
    c = user["content"]
    assert f"### Reference answer:\n{ref1}\n\n### User:\n{q.meta['later_turns'][0]}\n\n### Reference answer:\n{ref2}" in c
    assert (f"### User:\n{q.instruction}\n\n### Assistant A:\nThe area is {{x}} = 3\n\n### User:\n"
            f"{q.meta['later_turns'][0]}\n\n### Assistant A:\nANS-111-T2") in c


def test_general_question_gets_the_plain_templates(prompts, mt_bench):
    t1, t2 = _rows(mt_bench, ["81"])
    items = grade_items(t1, t2, _categories(mt_bench), prompts, References(Path("/nonexistent.jsonl")))
    assert [it.template for it in items] == ["single-v1", "single-v1-multi-turn"]
    u1, u2 = items[0].messages[1]["content"], items[1].messages[1]["content"]
    assert "Reference" not in u1 + u2 and "ANS-81-T1" in u1 and "ANS-81-T2" not in u1
    assert u2.index("ANS-81-T1") < u2.index(mt_bench["81"].meta["later_turns"][0]) < u2.index("ANS-81-T2")
    assert "helpfulness, relevance, accuracy, depth, creativity" in items[1].messages[0]["content"]


def test_missing_prompts_or_references_name_the_file(tmp_path, prompts, mt_bench):
    with pytest.raises(PhasedIFTError, match=r"judge prompts .*nope\.jsonl, which is missing; copy .*FastChat"):
        load_judge_prompts(tmp_path / "nope.jsonl")
    partial = tmp_path / "judge_prompts.jsonl"
    write_jsonl(partial, [{"name": "single-v1", "type": "single", "system_prompt": "s", "prompt_template": "u",
                           "output_format": "[[rating]]"}])
    with pytest.raises(PhasedIFTError, match="lacks the judge prompts .*single-math-v1"):
        load_judge_prompts(partial)
    t1, t2 = _rows(mt_bench, ["111"])
    missing = load_references(tmp_path / "gpt-4.jsonl")
    assert missing.answers == {}
    with pytest.raises(PhasedIFTError, match=r"question 111 \(math\).*gpt-4\.jsonl is missing; copy"):
        grade_items(t1, t2, _categories(mt_bench), prompts, missing)
    no_111 = References(partial, {"112": ["a", "b"]})
    with pytest.raises(PhasedIFTError, match="has no answer for question 111"):
        grade_items(t1, [], _categories(mt_bench), prompts, no_111)
    with pytest.raises(PhasedIFTError, match="not a question of the mt_bench"):
        grade_items([{**t1[0], "id": "9999"}], [], _categories(mt_bench), prompts, no_111)


def test_grade_max_tokens_config():
    assert load_config(None, []).judge.grade_max_tokens == 2048
    with pytest.raises(PhasedIFTError, match="grade_max_tokens"):
        load_config(None, ["judge.grade_max_tokens=0"])


# ---------------------------------------------------------------------------------------------------------------
# Aggregation on constructed rows
# ---------------------------------------------------------------------------------------------------------------
def _grade(qid, turn, rating, category="writing", failed=False, judge="gpt-4"):
    return {"id": qid, "turn": turn, "category": category, "template": "t", "rating": rating,
            "reply": None if failed else "r", "judge": judge, "unparsed": rating is None and not failed,
            "failed": failed, "error": "HTTP 500" if failed else None}


def test_summarize_grades_known_means_and_counts():
    rows = [
        _grade("1", 1, 8.0), _grade("1", 2, 6.0),
        _grade("2", 1, None, failed=True), _grade("2", 1, 4.0),       # a retried failure: the last row counts
        _grade("2", 2, None),                                          # unparsed: counted, never scored
        _grade("3", 1, 9.0, "math"), _grade("3", 2, 5.0, "math"),
        _grade("4", 1, None, "math", failed=True),                     # still failed
    ]
    expected = [(q, t) for q in "12345" for t in (1, 2)]                # 4/2 and 5/1, 5/2 have no row
    s = summarize_grades(rows, n_boot=500, seed=1, expected=expected)
    assert (s["graded"], s["unparsed"], s["failed"], s["missing"]) == (5, 1, 1, 3)
    assert s["turn_1"]["n"] == 3 and s["turn_1"]["mean"] == pytest.approx(7.0)           # (8 + 4 + 9) / 3
    assert (s["turn_1"]["failed"], s["turn_1"]["unparsed"], s["turn_1"]["missing"]) == (1, 0, 1)
    assert s["turn_2"]["n"] == 2 and s["turn_2"]["mean"] == pytest.approx(5.5)           # (6 + 5) / 2
    assert (s["turn_2"]["failed"], s["turn_2"]["unparsed"], s["turn_2"]["missing"]) == (0, 1, 2)
    assert s["overall"]["mean"] == pytest.approx(32 / 5) and s["overall"]["n_questions"] == 3
    assert s["categories"]["writing"]["mean"] == pytest.approx(6.0)                      # (8 + 6 + 4) / 3
    assert s["categories"]["math"]["mean"] == pytest.approx(7.0) and s["categories"]["math"]["n"] == 2
    assert set(s["categories"]) == {"writing", "math"} and s["judges"] == ["gpt-4"]
    for part in (s["turn_1"], s["turn_2"], s["overall"], *s["categories"].values()):
        lo, hi = part["ci"]
        assert lo <= part["mean"] <= hi
    assert summarize_grades(rows, n_boot=500, seed=1, expected=expected) == s           # seeded: reproducible
    # The overall CI resamples questions: one question's ratings always move together.
    const = summarize_grades([_grade("1", 1, 7.0), _grade("1", 2, 3.0)], n_boot=200)
    assert const["overall"]["mean"] == 5.0 and const["overall"]["ci"] == [5.0, 5.0]


def test_summarize_grades_empty():
    s = summarize_grades([], n_boot=200)
    assert (s["graded"], s["unparsed"], s["failed"], s["missing"]) == (0, 0, 0, 0)
    assert s["turn_1"]["mean"] is None and s["overall"]["mean"] is None and s["categories"] == {}


# ---------------------------------------------------------------------------------------------------------------
# Grading a hand-written run dir through the evaluate step (evals.step.evaluate_all -> mtbench.BENCHMARK), the real LLMClient, the fake server
# ---------------------------------------------------------------------------------------------------------------
REPLIES = {("81", 1): "Helpful and detailed. Rating: [[8]]", ("81", 2): "Rating: [7]",
           ("111", 1): "The assistant did not answer the question.", ("111", 2): "[[6.5]]",
           ("101", 1): "Wrong. Rating: [[3]]", ("101", 2): "Correct. [[10]]"}


def judge_reply(body: dict) -> str:
    """The scripted rating of the answer a request grades (the last ANS-<id>-T<turn> marker in it)."""
    text = body["messages"][-1]["content"]
    marks = [w for w in text.replace("\n", " ").split() if w.startswith("ANS-")]
    _, qid, turn = marks[-1].split("-")
    return REPLIES[(qid, int(turn[1]))]


def write_answers(run: RunDir, mt_bench, arm="one-off", phase=1, seed=0, ids=("81", "111", "101")):
    """The two mt_bench generation files of one checkpoint and their settings files, as generate writes them."""
    t1, t2 = _rows(mt_bench, list(ids))
    for key, rows in (("mt_bench", t1), ("mt_bench_turn2", t2)):
        write_generation(run, arm, phase, seed, key, rows, 1024)


def _cfg(tmp_path, srv=None, extra=()):
    return grading_cfg(tmp_path, "mt_bench", srv, extra)


_log = log_console


def test_evaluate_step_grades_both_turns_resumes_and_retries_failures(tmp_path, mt_bench):
    from phased_ift.evals.step import evaluate_all
    from phased_ift.pairwise.judge import judge_all

    with FakeLLMServer(reply=judge_reply) as srv:
        cfg = _cfg(tmp_path, srv)
        run = RunDir(cfg.run_dir)
        write_answers(run, mt_bench)
        judge_all(cfg, run, console=_log(tmp_path))  # the pairwise step is pairwise only: no grading there
        assert srv.count == 0 and not (run.root / "grades").exists()
        evaluate_all(cfg, run, dry_run=True, console=_log(tmp_path))
        assert srv.count == 0 and not (run.root / "grades").exists()
        srv.queue(Status(400))  # concurrency 1: the first request (81, turn 1) fails
        evaluate_all(cfg, run, console=_log(tmp_path))
        out = run.grades("one-off", 1, "mt_bench", 0)
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert srv.count == 6 and len(rows) == 6
        by = {(r["id"], r["turn"]): r for r in rows}
        assert by[("81", 1)]["failed"] and by[("81", 1)]["rating"] is None and "400" in by[("81", 1)]["error"]
        assert by[("81", 2)]["rating"] == 7.0 and by[("101", 2)]["rating"] == 10.0
        assert by[("111", 1)]["rating"] is None and by[("111", 1)]["unparsed"] and not by[("111", 1)]["failed"]
        assert by[("111", 1)]["reply"] == REPLIES[("111", 1)] and by[("111", 2)]["rating"] == 6.5
        assert {r["template"] for r in rows if r["id"] == "111"} == {"single-math-v1", "single-math-v1-multi-turn"}
        assert {(r["category"], r["judge"]) for r in rows if r["id"] == "101"} == {("reasoning", "fake")}
        body = srv.bodies[1]
        assert body["temperature"] == 0.0 and body["max_tokens"] == 2048 and body["messages"][0]["role"] == "system"
        # Re-run: only the failed row is asked again; its new row supersedes it.
        evaluate_all(cfg, run, console=_log(tmp_path))
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert srv.count == 7 and len(rows) == 7 and rows[-1]["id"] == "81" and rows[-1]["rating"] == 8.0
        evaluate_all(cfg, run, console=_log(tmp_path))  # everything graded: nothing sent, nothing appended
        assert srv.count == 7 and len(out.read_text().splitlines()) == 7
        out.unlink()  # grading from scratch: every answer comes from the cache
        evaluate_all(cfg, run, console=_log(tmp_path))
        assert srv.count == 7 and len(out.read_text().splitlines()) == 6
        evaluate_all(cfg, run, dry_run=True, console=_log(tmp_path))
    log = (tmp_path / "log.txt").read_text()
    assert "grade (MT-Bench, dry run): 6 distinct requests, 0 cached, 6 to send" in log
    assert "grade (MT-Bench, dry run): 6 distinct requests, 6 cached, 0 to send" in log
    assert "grade: one-off seed 0 phase 1 mt_bench: 4 graded" in log and "1 FAILED (re-run to retry)" in log
    assert "grade: one-off seed 0 phase 1 mt_bench: 5 graded (turn 1 5.50, turn 2 7.83, overall 6.90)" in log
    # The report's reader and table: known means (111 turn 1 unparsed).
    part = read_grades(run, cfg)
    s = part["one-off"][0][1]
    assert (s["graded"], s["unparsed"], s["failed"], s["missing"]) == (5, 1, 0, 0)
    assert s["turn_1"]["mean"] == pytest.approx(5.5) and s["turn_2"]["mean"] == pytest.approx(23.5 / 3)
    assert s["overall"]["mean"] == pytest.approx(6.9)
    assert {c: v["mean"] for c, v in s["categories"].items()} == {"math": 6.5, "reasoning": 6.5, "writing": 7.5}
    (row,) = mt_bench_table(part)
    assert (row["arm"], row["seed"], row["phase"], row["overall"], row["graded"]) == ("one-off", 0, 1, 6.9, 5)
    assert row["turn_1_ci"] == s["turn_1"]["ci"] and row["categories"]["writing"] == 7.5
    # The report: the MT-Bench table, the per-category table and the verdict line carry the same numbers.
    from phased_ift.report import build_report

    rep = build_report(run, cfg)
    assert rep["mt_bench"][0]["final"] and rep["mt_bench"][0]["overall"] == pytest.approx(6.9)
    assert any(v.startswith("MT-Bench mean rating (final checkpoints, seed 0; 1-10, single-answer grading): one-off "
                            "6.90 [") and "(1 unparsed)" in v for v in rep["verdicts"])
    md = (run.report_dir / "report.md").read_text()
    assert "## Multi-turn chat: MT-Bench (single-answer grading)" in md and "| writing | 7.500 |" in md


def test_grade_file_resume_skips_graded_rows_and_refuses_another_judge(tmp_path, prompts, mt_bench):
    from phased_ift.config import EndpointConfig
    from phased_ift.llm_client import LLMClient

    t1, t2 = _rows(mt_bench, ["81", "101"])
    items = grade_items(t1, t2, _categories(mt_bench), prompts, load_references())
    out = tmp_path / "g" / "mt_bench.jsonl"
    with FakeLLMServer(reply=judge_reply) as srv:
        client = LLMClient(EndpointConfig(base_url=srv.base_url, model="fake"), tmp_path / "llm.sqlite",
                           console=_log(tmp_path))
        res = grade_file(client, items[:2], out, "fake")
        assert res == {"path": str(out), "graded": 2, "unparsed": 0, "failed": 0, "skipped_done": 0}
        res = grade_file(client, items, out, "fake")
        assert (res["graded"], res["skipped_done"]) == (2, 2) and srv.count == 4
        assert [(r["id"], r["turn"]) for r in map(json.loads, out.read_text().splitlines())] == [
            ("81", 1), ("101", 1), ("81", 2), ("101", 2)]
        with pytest.raises(PhasedIFTError, match="holds grades of judge 'fake', not 'other'"):
            grade_file(client, items, out, "other")
        client.close()


def test_grade_all_not_configured_not_requested_and_missing_prompts(tmp_path, mt_bench, monkeypatch):
    cfg = _cfg(tmp_path)
    run = RunDir(cfg.run_dir)
    write_answers(run, mt_bench)
    grade_all(cfg, run, console=_log(tmp_path))
    assert "grade (MT-Bench): not configured (set judge.base_url" in (tmp_path / "log.txt").read_text()
    with FakeLLMServer(reply=judge_reply) as srv:
        grade_all(_cfg(tmp_path, srv, ["generate.test_sets=[vicuna]"]), run, console=_log(tmp_path))
        assert srv.count == 0 and not (run.root / "grades").exists()
        home = tmp_path / "empty_home"
        home.mkdir()
        monkeypatch.setenv("PHASED_IFT_DATA_HOME", str(home))
        with pytest.raises(PhasedIFTError, match=r"empty_home/fastchat/judge_prompts\.jsonl, which is missing"):
            grade_all(_cfg(tmp_path, srv), run, console=_log(tmp_path))
        assert srv.count == 0
