"""The LLM-judge difficulty scorer: parsing, expected score from top_logprobs, samples, templates, dry run, a kill -9
mid-run followed by a resume (fake server), and a real llama.cpp server (slow, server)."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer, Reply, Status  # noqa: E402

from phased_ift.config import EndpointConfig  # noqa: E402
from phased_ift.data import Example  # noqa: E402
from phased_ift.errors import PhasedIFTError  # noqa: E402
from phased_ift.scoring.judge import (  # noqa: E402
    estimate_judge, expected_score, load_difficulty_template, parse_difficulty_reply, score_with_judge,
)


def _ex(i: int, text: str | None = None) -> Example:
    return Example(str(i), [{"role": "user", "content": text or f"Instruction number {i}."},
                            {"role": "assistant", "content": f"Answer {i}."}])


def _ep(srv, **kw) -> EndpointConfig:
    return EndpointConfig(base_url=srv.base_url, model="fake", concurrency=kw.pop("concurrency", 2),
                          max_retries=kw.pop("max_retries", 2), timeout=5.0, backoff=0.01, **kw)


@pytest.fixture
def server():
    with FakeLLMServer(reply="3") as srv:
        yield srv


@pytest.mark.parametrize("text,want", [
    ("4", 4.0), (" 4.", 4.0), ("Score: 2", 2.0), ("4/5", 4.0), ("I'd rate it 5 out of 5", 5.0),
    ("3.5", 3.5), ("Difficulty (1-5): 1", 1.0), ("1. Very easy", 1.0),
    ("", None), (None, None), ("hard", None), ("7", None), ("3 or 4", None), ("0", None), ("10/10", None),
])
def test_parse_score(text, want):
    assert parse_difficulty_reply(text) == want


def test_expected_score_renormalises_over_scale_tokens():
    def lp(p):
        import math
        return math.log(p)

    toks = [{"token": "4", "logprob": lp(0.4), "top_logprobs": [
        {"token": "4", "logprob": lp(0.4)}, {"token": " 5", "logprob": lp(0.2)}, {"token": "5", "logprob": lp(0.2)},
        {"token": "Hello", "logprob": lp(0.2)}]}]
    assert expected_score(toks) == pytest.approx(4.5)  # (4*.4 + 5*.4) / .8
    lead = [{"token": "Score", "logprob": -0.1, "top_logprobs": []},
            {"token": ":", "logprob": -0.1, "top_logprobs": []}] + toks
    assert expected_score(lead) == pytest.approx(4.5)  # the digit's position, not the first token
    assert expected_score([{"token": "hard", "logprob": -0.1, "top_logprobs": []}]) is None
    assert expected_score(None) is None


def test_logprob_path_gives_expected_score(server, tmp_path):
    server.queue(Reply("4", digits={"3": 0.25, "4": 0.75}))
    [row] = score_with_judge([_ex(0)], _ep(server), tmp_path / "c.sqlite", console=Console(file=io.StringIO()))
    assert row == {"id": "0", "score": pytest.approx(3.75), "error": None, "raw": ["4"], "samples": [4],
                   "expected": pytest.approx(3.75)}
    assert server.bodies[0]["logprobs"] is True and server.bodies[0]["top_logprobs"] == 5


def test_without_logprobs_the_parsed_number_is_the_score(server, tmp_path):
    server.queue(Reply("4", digits={"3": 0.25, "4": 0.75}))
    [row] = score_with_judge([_ex(0)], _ep(server), tmp_path / "c.sqlite", use_logprobs=False,
                             console=Console(file=io.StringIO()))
    assert row["score"] == 4.0 and row["expected"] is None
    assert "logprobs" not in server.bodies[0]


def test_unparseable_reply_and_failed_request_have_no_score(server, tmp_path):
    server.queue(Reply("This one is quite tricky."), Status(500), Status(500), Status(500))
    out = io.StringIO()
    rows = score_with_judge([_ex(0), _ex(1), _ex(2)], _ep(server, concurrency=1), tmp_path / "c.sqlite",
                            console=Console(file=out, width=200))
    assert rows[0]["score"] is None and rows[0]["raw"] == ["This one is quite tricky."]
    assert "no single 1-5 number" in rows[0]["error"]
    assert rows[1]["score"] is None and rows[1]["raw"] == [None] and "request failed" in rows[1]["error"]
    assert rows[2]["score"] == 3.0 and rows[2]["error"] is None
    assert "2 of 3 examples have no score" in out.getvalue()


def test_samples_mean_with_distinct_seeds_and_warning_at_temperature_zero(server, tmp_path):
    server.reply = lambda body: str(2 + body["seed"])  # seeds 0, 1, 2 -> replies 2, 3, 4
    rows = score_with_judge([_ex(0)], _ep(server, temperature=0.7), tmp_path / "c.sqlite", samples=3,
                            use_logprobs=False, console=Console(file=io.StringIO()))
    assert rows[0]["samples"] == [2, 3, 4] and rows[0]["score"] == pytest.approx(3.0)
    assert sorted(b["seed"] for b in server.bodies) == [0, 1, 2]
    assert {b["temperature"] for b in server.bodies} == {0.7}
    out = io.StringIO()
    score_with_judge([_ex(1)], _ep(server), tmp_path / "c.sqlite", samples=2, use_logprobs=False,
                     console=Console(file=out, width=200))
    assert "temperature 0" in out.getvalue()


def test_partial_sample_failure_keeps_score_from_the_rest(server, tmp_path):
    server.reply = lambda body: "5" if body["seed"] == 0 else "no idea"
    [row] = score_with_judge([_ex(0)], _ep(server, temperature=1.0), tmp_path / "c.sqlite", samples=2,
                             use_logprobs=False, console=Console(file=io.StringIO()))
    assert row["score"] == 5.0 and row["samples"] == [5]
    assert row["error"].startswith("1 of 2 samples unusable")


def test_template_prompt_and_custom_templates(server, tmp_path):
    tpl = load_difficulty_template("difficulty")
    assert "1 to 5" in tpl.user and "{instruction}" in tpl.user and "input" in tpl.user
    score_with_judge([_ex(0, "Write a {haiku} about {response} tokens.")], _ep(server), tmp_path / "c.sqlite",
                     console=Console(file=io.StringIO()))
    msgs = server.bodies[0]["messages"]
    assert msgs[0]["role"] == "system" and "Write a {haiku} about {response} tokens." in msgs[1]["content"]
    custom = tmp_path / "mine.txt"
    custom.write_text("<<user>>\nHow hard is this? {instruction}\nReference: {response}\nOne digit 1-5.\n")
    score_with_judge([_ex(7)], _ep(server), tmp_path / "c.sqlite", template=str(custom),
                     console=Console(file=io.StringIO()))
    assert server.bodies[-1]["messages"] == [
        {"role": "user", "content": "How hard is this? Instruction number 7.\nReference: Answer 7.\nOne digit 1-5."}]
    bad = tmp_path / "bad.txt"
    bad.write_text("<<user>>\nRate it.\n")
    with pytest.raises(PhasedIFTError, match=r"\{instruction\}"):
        score_with_judge([_ex(0)], _ep(server), tmp_path / "c.sqlite", template=str(bad))
    with pytest.raises(PhasedIFTError, match="neither a packaged template"):
        score_with_judge([_ex(0)], _ep(server), tmp_path / "c.sqlite", template="nonexistent")


def test_dry_run_sends_nothing_and_prints_the_estimate(server, tmp_path):
    exs = [_ex(i) for i in range(6)]
    score_with_judge(exs[:2], _ep(server), tmp_path / "c.sqlite", console=Console(file=io.StringIO()))
    n = server.count
    out = io.StringIO()
    assert score_with_judge(exs, _ep(server), tmp_path / "c.sqlite", samples=1, dry_run=True,
                            console=Console(file=out, width=300)) == []
    assert server.count == n
    est = estimate_judge(exs, _ep(server, max_tokens=16), tmp_path / "c.sqlite")
    assert est["requests"] == 6 and est["cached"] == 2 and est["to_send"] == 4
    assert est["completion_tokens"] == 4 * 16 and 4 * 50 < est["prompt_tokens"] < 4 * 400
    assert "6 requests" in out.getvalue() and "2 cached, 4 to send" in out.getvalue()


def test_score_step_streams_the_requests_under_one_bar_and_one_summary(server, tmp_path, monkeypatch):
    from phased_ift.config import load_config
    from phased_ift.runio import read_jsonl
    from phased_ift.scoring import score_examples

    monkeypatch.setenv("PHASED_IFT_PROGRESS_INTERVAL", "0")
    exs = [_ex(i) for i in range(150)]
    cfg = load_config(None, [f"run_dir={tmp_path}", "scoring.scorer=judge", f"scoring.judge.base_url={server.base_url}",
                             "scoring.judge.model=fake", "scoring.judge.concurrency=4", "scoring.samples=2",
                             "scoring.judge.temperature=0.7"])
    out = io.StringIO()
    s = score_examples(exs, cfg, tmp_path / "judge.jsonl", cache_dir=tmp_path / "cache",
                       console=Console(file=out, width=200))
    assert s.scored == 150 and server.count == 300
    rows = list(read_jsonl(tmp_path / "judge.jsonl"))
    assert [r["id"] for r in rows] == [e.id for e in exs] and [r["samples"] for r in rows] == [[3, 3]] * 150
    # each row's two requests are its own instruction's (seeds 0 and 1)
    asked = {(b["messages"][-1]["content"], b["seed"]) for b in server.bodies}
    assert all(any(f"Instruction number {i}." in c and seed == k for c, seed in asked) for i in range(150)
               for k in (0, 1))
    log = out.getvalue()
    assert "difficulty judge ━" not in log  # no request bar: the score step's bar counts the examples
    assert "score judge" in log and "150/150" in log
    summaries = [ln for ln in log.splitlines() if ln.startswith("difficulty judge:")]
    assert len(summaries) == 1 and summaries[0].startswith(
        "difficulty judge: 300 requests (300 distinct), sent 300, cache hits 0, failures 0, retries 0, tokens ")


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from rich.console import Console
    from phased_ift.config import EndpointConfig
    from phased_ift.data import Example
    from phased_ift.scoring.judge import score_with_judge
    exs = [Example(str(i), [{"role": "user", "content": f"Instruction number {i}."},
                            {"role": "assistant", "content": f"Answer {i}."}]) for i in range(int(sys.argv[3]))]
    ep = EndpointConfig(base_url=sys.argv[1], model="fake", concurrency=2, max_retries=2, timeout=5.0)
    score_with_judge(exs, ep, sys.argv[2], console=Console(quiet=True))
""")


def test_kill_mid_run_then_resume_repeats_no_completed_request(tmp_path):
    n, concurrency = 24, 2
    cache = tmp_path / "cache" / "llm.sqlite"
    with FakeLLMServer(reply="3", latency=0.1) as srv:
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, srv.base_url, str(cache), str(n)],
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 60
        while srv.count < 10 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the scorer finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        con = sqlite3.connect(cache)
        done = {json.loads(r)["messages"][-1]["content"] for (r,) in con.execute("SELECT request FROM responses")}
        con.close()
        assert 6 <= len(done) < n
        rows = score_with_judge([_ex(i) for i in range(n)], EndpointConfig(base_url=srv.base_url, model="fake"),
                                cache, console=Console(file=io.StringIO()))
        seen = [b["messages"][-1]["content"] for b in srv.bodies]
    assert [r["score"] for r in rows] == [3.0] * n
    counts = {c: seen.count(c) for c in set(seen)}
    assert len(counts) == n  # every distinct request reached the server
    assert all(counts[c] == 1 for c in done)  # nothing answered before the kill was sent again
    repeats = len(seen) - len(counts)
    assert repeats <= concurrency  # only the requests in flight at the kill were re-sent


def _alpaca_examples(data_home: Path, n: int) -> list[Example]:
    from phased_ift.data import read_file

    return read_file(data_home / "alpagasus" / "random_9k.json", "alpaca").examples[:n]


@pytest.mark.slow
@pytest.mark.server
def test_real_llama_cpp_server_scores_alpaca_with_logprobs_and_cache(llama_server, data_home, tmp_path):
    exs = _alpaca_examples(data_home, 8)
    ep = EndpointConfig(base_url=llama_server, model="smollm2-135m-instruct", concurrency=2, timeout=120,
                        max_tokens=4)
    out = io.StringIO()
    rows = score_with_judge(exs, ep, tmp_path / "c.sqlite", console=Console(file=out, width=200))
    assert [r["id"] for r in rows] == [e.id for e in exs]
    assert "sent 8, cache hits 0, failures 0" in out.getvalue()
    scored = [r for r in rows if r["score"] is not None]
    # SmolLM2-135M is a weak judge: demand most, not all, replies to hold a number; none may be made up.
    assert len(scored) >= 4
    for r in rows:
        assert len(r["raw"]) == 1 and isinstance(r["raw"][0], str)
        assert (r["score"] is None) == (parse_difficulty_reply(r["raw"][0]) is None)
    # The logprob path: expected scores strictly from the server's top_logprobs, inside the scale.
    assert all(r["expected"] is not None and 1.0 <= r["expected"] <= 5.0 for r in scored)
    assert all(r["score"] == r["expected"] for r in scored)
    out2 = io.StringIO()
    again = score_with_judge(exs, ep, tmp_path / "c.sqlite", console=Console(file=out2, width=200))
    assert again == rows and "sent 0, cache hits 8" in out2.getvalue()
