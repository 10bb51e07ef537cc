"""FastChat's pair-v2 pairwise template (pairwise.template=pair-v2): the [[A]]/[[B]]/[[C]] parser, its mapping onto
the paper's reconciliation, the packaged prompt, and a full judge_pairs run against the in-process fake server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from phased_ift.errors import PhasedIFTError
from phased_ift.pairwise.judge import (
    SCORES,
    VERDICT,
    judge_pairs,
    load_template,
    make_row,
    parse_verdict,
    plan_requests,
    reply_tokens,
    verdict_outcome,
)

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply,expected", [
    ("[[A]]", "A"),
    ("Assistant A is more accurate and detailed.\n\n[[A]]", "A"),
    ("Assistant B follows the instruction; A does not. Final verdict: [[B]]", "B"),
    ("Both answers are equally good. [[C]]", "tie"),
    ("[[A]]\nTo restate my verdict: [[A]]", "A"),  # the same tag twice is not ambiguous
])
def test_parse_verdict_good(reply, expected):
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize("reply", [
    "[A]", "Verdict: [B]", "A is better.", "[[a]]", "[[ A ]]", "[[D]]", "", None, "   \n",
])
def test_parse_verdict_malformed_is_none(reply):
    assert parse_verdict(reply) is None


@pytest.mark.parametrize("reply", [
    "[[A]] ... on reflection [[B]]",
    "I first thought [[B]], but the final verdict is [[A]]",
    'The format is "[[A]]" if A is better, "[[B]]" if B is better, "[[C]]" for a tie. [[C]]',
    "[[A]] or [[C]]",
])
def test_parse_verdict_more_than_one_distinct_tag_is_unparseable(reply):
    # FastChat's run_judge_pair checks "[[A]]" in judgment first, so it would call the first two of these "A"
    # (and the third "A" too). Deliberate deviation: an ambiguous reply is unparseable, never a result.
    assert parse_verdict(reply) is None


def test_verdict_outcome_from_arm_a_side():
    # Order ab: arm A is Assistant A.  Order ba: arm A is Assistant B.
    assert [verdict_outcome(w, "A") for w in ("A", "B", "tie", None)] == ["win", "loss", "tie", "unparseable"]
    assert [verdict_outcome(w, "B") for w in ("A", "B", "tie", None)] == ["loss", "win", "tie", "unparseable"]


def test_make_row_verdict_kind_reconciles_with_the_papers_rule():
    def verdict(ab, ba):
        return make_row("1", "t", "x", "y", "a", "b", ab, ba, kind=VERDICT)["verdict"]

    row = make_row("7", "vicuna", "phased", "one-off", "a b c", "d e", "A wins. [[A]]", "[[B]]", kind=VERDICT)
    assert row["ab"] == {"raw": "A wins. [[A]]", "winner": "A"} and row["ba"] == {"raw": "[[B]]", "winner": "B"}
    assert row["verdict"] == "win" and (row["len_a"], row["len_b"]) == (3, 2) and "scores" not in row["ab"]
    assert verdict("[[A]]", "[[A]]") == "tie"  # always Assistant A: position bias cancels -> tie
    assert verdict("[[C]]", "[[B]]") == "win"  # ties one order, wins the other
    assert verdict("[[A]]", "[[C]]") == "win"
    assert verdict("[[B]]", "[[B]]") == "tie"  # wins as B in order ba, loses as A in order ab
    assert verdict("[[B]]", "[[A]]") == "loss"
    assert verdict("[[C]]", "[[A]]") == "loss"
    assert verdict("[[C]]", "[[C]]") == "tie"
    assert verdict("[[A]]", "[A]") == "unparseable"
    assert verdict(None, "[[B]]") == "unparseable"
    assert verdict("[[A]]", "[[A]] or [[B]]") == "unparseable"
    # The default kind is unchanged: the paper's scores.
    assert make_row("1", "t", "x", "y", "a", "b", "8 6", "7 7")["ab"] == {"raw": "8 6", "scores": [8.0, 6.0]}


# ---------------------------------------------------------------------------------------------------------------
# The packaged template
# ---------------------------------------------------------------------------------------------------------------
def _fastchat_pair_v2(data_home):
    for line in (data_home / "fastchat" / "judge_prompts.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["name"] == "pair-v2":
            return rec
    raise AssertionError("pair-v2 not in judge_prompts.jsonl")


def test_packaged_pair_v2_is_fastchats_prompt_verbatim(data_home):
    rec = _fastchat_pair_v2(data_home)
    t = load_template("pair-v2")
    assert t.kind == VERDICT and not t.needs_reference
    assert t.system == rec["system_prompt"] and t.user == rec["prompt_template"]
    assert rec["output_format"] == "[[A]]"
    assert load_template("pairwise").kind == SCORES and load_template("reference").kind == SCORES


def test_pair_v2_loads_without_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASED_IFT_DATA_HOME", str(tmp_path / "missing"))
    t = load_template("pair-v2")
    assert t.system.startswith("Please act as an impartial judge") and t.system.endswith('"[[C]]" for a tie.')
    assert "FastChat" not in t.system + t.user  # the provenance header is a comment, not part of the prompt


def test_pair_v2_messages_show_the_first_answer_as_assistant_a():
    t = load_template("pair-v2")
    m = t.messages("Q {answer_b}?", "first {answer_a}", "second")
    assert [x["role"] for x in m] == ["system", "user"] and m[0]["content"] == t.system
    assert m[1]["content"] == ("[User Question]\nQ {answer_b}?\n\n[The Start of Assistant A's Answer]\n"
                               "first {answer_a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's "
                               "Answer]\nsecond\n[The End of Assistant B's Answer]")


def test_verdict_kind_follows_placeholders_of_a_custom_file(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("# my header\n<<system>>\nbe fair\n<<user>>\n{question}\nA: {answer_a}\nB: {answer_b}\n")
    t = load_template(str(mine))
    assert t.kind == VERDICT and t.system == "be fair"
    half = tmp_path / "half.txt"
    half.write_text("<<user>>\n{question} {answer_a}")
    with pytest.raises(PhasedIFTError, match=r"\{answer_b\}"):
        load_template(str(half))
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("<<user>>\n{question} {answer_a} {answer_b} {answer_1}")
    with pytest.raises(PhasedIFTError, match="mixes"):
        load_template(str(mixed))


def test_reply_tokens_give_a_verdict_reply_room_to_explain():
    from phased_ift.config import load_config

    cfg = load_config(None, ["pairwise.template=pair-v2"])
    assert reply_tokens(cfg, load_template(cfg.pairwise.template)) == cfg.judge.grade_max_tokens == 2048
    assert reply_tokens(cfg, load_template("pairwise")) == cfg.judge.max_tokens == 32


# ---------------------------------------------------------------------------------------------------------------
# judge_pairs with pairwise.template=pair-v2 through the real LLMClient and the in-process fake server
# ---------------------------------------------------------------------------------------------------------------
def _answers(user: str) -> tuple[str, str]:
    a = user.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End of Assistant A's Answer]")[0]
    b = user.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End of Assistant B's Answer]")[0]
    return a, b


def _judge_reply(body: dict) -> str:
    """A scripted judge: prefers answers containing 'strong'; 'bias' always picks A; 'half' wins as A and ties as
    B; 'ambiguous' names two verdicts; 'malformed' writes single brackets."""
    a, b = _answers(body["messages"][-1]["content"])
    both = a + " " + b
    if "ambiguous" in both:
        return "Hard to say. [[A]] Or rather [[B]]."
    if "malformed" in both:
        return "Assistant A is better. [A]"
    if "bias" in both:
        return "The first answer is better.\n\n[[A]]"
    if "half" in both:
        return "[[A]]" if "half" in a else "[[C]]"
    strong_a, strong_b = "strong" in a, "strong" in b
    return "Explanation.\n[[A]]" if strong_a > strong_b else "[[B]]" if strong_b > strong_a else "Equal. [[C]]"


def _gen(outputs):
    return [{"id": str(i), "testset": "t", "instruction": f"question {i}", "output": o, "output_tokens": 3,
             "finish_reason": "stop"} for i, o in enumerate(outputs)]


def test_judge_pairs_with_pair_v2_against_the_fake_server(tmp_path):
    from phased_ift.config import load_config
    from phased_ift.llm_client import LLMClient

    a = _gen(["strong one", "weak", "plain", "bias x", "ambiguous", "strong", "half"])
    b = _gen(["weak", "strong two", "plain too", "y", "z", "malformed", "other"])
    # Hand-checked, arm A's side (order ab / order ba -> verdict):
    #   0 strong vs weak: [[A]] win / [[B]] win -> win      1 weak vs strong: loss / loss -> loss
    #   2 plain vs plain: [[C]] tie / tie -> tie            3 bias: [[A]] win / [[A]] loss -> tie
    #   4 ambiguous in both orders -> unparseable            5 malformed ([A]) in both orders -> unparseable
    #   6 half: [[A]] win / [[C]] tie -> win
    expected = ["win", "loss", "tie", "tie", "unparseable", "unparseable", "win"]
    with FakeLLMServer(reply=_judge_reply) as srv:
        cfg = load_config(None, ["pairwise.template=pair-v2", f"judge.base_url={srv.base_url}",
                                 "judge.model=fake"])
        t = load_template(cfg.pairwise.template)
        client = LLMClient(cfg.judge, tmp_path / "llm.sqlite")
        try:
            out = tmp_path / "j" / "t.jsonl"
            res = judge_pairs(client, a, b, "phased", "one-off", out, t, "t", temperature=cfg.judge.temperature,
                              max_tokens=reply_tokens(cfg, t))
        finally:
            client.close()
        bodies = list(srv.bodies)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["verdict"] for r in rows] == expected
    assert (res["wins"], res["ties"], res["losses"], res["unparseable"]) == (2, 2, 1, 2)
    assert res["n"] == 7 and res["n_parsed"] == 5 and res["win_rate"] == pytest.approx(3 / 5)
    assert res["centred"] == pytest.approx(3 / 7 - 0.5)
    # Rows keep both raw replies and the letter the judge named in each order.
    assert rows[0]["ab"] == {"raw": "Explanation.\n[[A]]", "winner": "A"} and rows[0]["ba"]["winner"] == "B"
    assert rows[3]["ab"]["winner"] == rows[3]["ba"]["winner"] == "A"
    assert rows[4]["ab"]["raw"].startswith("Hard to say") and rows[4]["ab"]["winner"] is None
    # 14 requests, each with FastChat's system prompt as a system message and the verdict's reply budget; order ab
    # shows arm A's answer as Assistant A, order ba as Assistant B.
    assert len(bodies) == 14 == len(plan_requests(a, b, t))
    for body in bodies:
        assert body["messages"][0] == {"role": "system", "content": t.system} and len(body["messages"]) == 2
        assert body["messages"][1]["role"] == "user" and body["max_tokens"] == 2048
    shown = {_answers(body["messages"][1]["content"]) for body in bodies}
    assert ("strong one", "weak") in shown and ("weak", "strong one") in shown


def test_step_judge_with_pair_v2_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    """The pairwise step reads pairwise.template=pair-v2 from the config: FastChat's system prompt, the verdict budget
    (judge.grade_max_tokens) and verdict rows, for every judgement file of the run."""
    from rich.console import Console

    from test_judge import make_fake_run

    from phased_ift import pipeline

    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    with FakeLLMServer(reply="Assistant A is better.\n[[A]]") as srv:  # always the first shown: position bias
        cfg, run = make_fake_run(tmp_path, tiny_model_dir, monkeypatch,
                                 [f"judge.base_url={srv.base_url}", "judge.model=fake",
                                  "pairwise.template=pair-v2", "judge.grade_max_tokens=300"])
        pipeline.step_pairwise(cfg, console=console)
        bodies = list(srv.bodies)
    system = load_template("pair-v2").system
    assert bodies and all(b["max_tokens"] == 300 and b["messages"][0]["content"] == system for b in bodies)
    for f in [run.judgements("phased", "one-off", "vicuna", 0),
              *[run.judgements("phased", "one-off", "vicuna", 0, phase=k) for k in (1, 2)]]:
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        # [[A]] in both orders: arm A wins as Assistant A and loses as Assistant B -> tie.
        assert len(rows) == 2 and all(r["verdict"] == "tie" and r["ab"]["winner"] == r["ba"]["winner"] == "A"
                                      for r in rows)
    console.file.flush()
    assert "0W 2T 0L 0 unparseable" in (tmp_path / "log.txt").read_text()
