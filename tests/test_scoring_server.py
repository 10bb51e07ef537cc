"""The `ifd-server` scorer (`scoring.server_losses`) against the fake OpenAI-compatible server answering like vLLM
(every prompt token echoed, the first with logprob None, then one generated token), and the boundary rule."""

from __future__ import annotations

import pytest

from fake_llm_server import FakeLLMServer, Reply
from phased_ift import modeling
from phased_ift.config import load_config
from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError
from phased_ift.scoring import read_scores, score_examples
from phased_ift.scoring.server_losses import echoed_response_loss


def _lp(i: int) -> float:
    """The fake server's logprob of the i-th prompt token (i >= 1): a fixed, position-dependent value."""
    return -(0.05 + 0.1 * (i % 7))


def _vllm_like(tok):
    def reply(body: dict) -> Reply:
        ids = modeling.encode_texts(tok, [body["prompt"]])[0]
        lps = {"tokens": [tok.decode([i]) for i in ids] + ["<gen>"],
               "token_logprobs": [None] + [_lp(i) for i in range(1, len(ids))] + [-0.5],
               "text_offset": list(range(len(ids) + 1)), "top_logprobs": [None] * (len(ids) + 1)}
        return Reply("", logprobs=lps if body.get("echo") else None, prompt_tokens=len(ids), completion_tokens=1)
    return reply


def _examples() -> list[Example]:
    return [Example(id=f"e{i}", messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for i, (q, a) in enumerate([("Name a colour.", "Blue is a colour."),
                                        ("Add 2 and 3.", "2 + 3 = 5, so the answer is five."),
                                        ("Say hi.", "Hi!")])]


def _cfg(srv, smollm2_path):
    return load_config(None, [f"model.name_or_path={smollm2_path}", f"scoring.server.base_url={srv.base_url}",
                              "scoring.server.model=fake", "scoring.server.max_retries=0",
                              "scoring.server.backoff=0"])


def _expected(tok, ex: Example) -> tuple[float, float]:
    """Mean -logprob over the labelled tokens of each `tokenize_for_ifd` sequence, by the fake's _lp."""
    out = []
    for f in modeling.tokenize_for_ifd(tok, ex, "chat", 512):
        pos = [i for i, lab in enumerate(f["labels"]) if lab != -100]
        out.append(sum(-_lp(i) for i in pos) / len(pos))
    return out[0], out[1]


def test_ifd_server_values_match_hand_computed(tmp_path, smollm2_path):
    tok = modeling.load_tokenizer(smollm2_path)
    with FakeLLMServer(completion_reply=_vllm_like(tok)) as srv:
        s = score_examples(_examples(), _cfg(srv, smollm2_path), tmp_path / "scores/ifd-server.jsonl",
                           scorer="ifd-server")
        assert s.failed == 0 and srv.count == 6
        body = srv.bodies[0]
        assert body["echo"] is True and body["logprobs"] == 1 and body["max_tokens"] == 1
        assert body["add_special_tokens"] is False and body["logit_bias"] == {str(tok.eos_token_id): 100}
    rows = read_scores(tmp_path / "scores/ifd-server.jsonl")
    for ex in _examples():
        cond, uncond = _expected(tok, ex)
        r = rows[ex.id]
        assert r["loss_cond"] == pytest.approx(cond, rel=1e-12)
        assert r["loss_uncond"] == pytest.approx(uncond, rel=1e-12)
        assert r["score"] == pytest.approx(cond / uncond, rel=1e-12)


def test_ifd_server_resumes_from_the_loss_cache(tmp_path, smollm2_path):
    tok = modeling.load_tokenizer(smollm2_path)
    with FakeLLMServer(completion_reply=_vllm_like(tok)) as srv:
        cfg = _cfg(srv, smollm2_path)
        score_examples(_examples(), cfg, tmp_path / "a/scores/ifd-server.jsonl", scorer="ifd-server",
                       cache_dir=tmp_path / "cache")
        n = srv.count
        score_examples(_examples(), cfg, tmp_path / "b/scores/ifd-server.jsonl", scorer="ifd-server",
                       cache_dir=tmp_path / "cache")
        assert srv.count == n  # every loss read back from <cache>/losses.sqlite
    a = read_scores(tmp_path / "a/scores/ifd-server.jsonl")
    b = read_scores(tmp_path / "b/scores/ifd-server.jsonl")
    assert {k: v["score"] for k, v in a.items()} == {k: v["score"] for k, v in b.items()}


def test_server_without_prompt_logprobs_is_one_line_error(tmp_path, smollm2_path):
    with FakeLLMServer(completion_reply=lambda body: Reply("x", completion_tokens=1)) as srv:
        with pytest.raises(PhasedIFTError, match="returned no prompt-token logprobs.*logits_all true") as e:
            score_examples(_examples(), _cfg(srv, smollm2_path), tmp_path / "scores/ifd-server.jsonl",
                           scorer="ifd-server")
    assert srv.base_url in str(e.value) and "\n" not in str(e.value)


def test_ifd_server_needs_base_url(tmp_path, smollm2_path):
    cfg = load_config(None, [f"model.name_or_path={smollm2_path}"])
    with pytest.raises(PhasedIFTError, match="scoring.server.base_url"):
        score_examples(_examples(), cfg, tmp_path / "scores/ifd-server.jsonl", scorer="ifd-server")


def test_boundary_is_the_last_response_tokens_before_the_generated_ones():
    entries = [{"logprob": v} for v in (None, -9.0, -9.0, -1.0, -3.0, -7.0)]  # 5 prompt + 1 generated
    assert echoed_response_loss(entries, {"prompt_tokens": 5, "completion_tokens": 1}, 5, 0, False, 2) == (2.0, 2)
    # llama.cpp-like: the BOS left out of the echo (4 entries for 5 ids), nothing generated
    assert echoed_response_loss(entries[1:5], {"prompt_tokens": 5, "completion_tokens": 0}, 5, 1, True, 2) == (2.0, 2)
    # the server read another number of tokens: a failed row, not a wrong loss
    assert "tokenises this text differently" in echoed_response_loss(entries, {"prompt_tokens": 6,
                                                                               "completion_tokens": 1}, 5, 0, False, 2)
    # the whole prompt as the response: the first token has no context
    assert isinstance(echoed_response_loss(entries, {"prompt_tokens": 5, "completion_tokens": 1}, 5, 0, False, 5), str)
    holed = entries[:3] + [{"logprob": None}] + entries[4:]
    assert "no logprob" in echoed_response_loss(holed, {"prompt_tokens": 5, "completion_tokens": 1}, 5, 0, False, 2)


def test_llama_cpp_shifted_echo_stops_the_run():
    entries = [{"logprob": -1.0}] * 4  # 5 ids with one BOS inside, not first: llama-cpp-python's shifted echo
    with pytest.raises(PhasedIFTError, match="llama-cpp-python"):
        echoed_response_loss(entries, {"prompt_tokens": 5, "completion_tokens": 0}, 5, 1, False, 2)
