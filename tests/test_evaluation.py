"""Offline reference-answer loss: equals a direct computation, keeps per-example values, matches references."""

from __future__ import annotations

import math

import pytest

from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.reference_loss import attach_references, reference_loss

QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("Give two synonyms of happy.", "Joyful and content are two synonyms of happy, among many others."),
      ("Hi", "Hello! How can I help you today?")]


def _examples():
    return [Example(id=str(i), messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for i, (q, a) in enumerate(QA)]


def _direct_loss(model, tok, example, template="chat"):
    """Loss of the answer tokens, one example at a time, from the logits (no project helpers beyond render)."""
    import torch
    import torch.nn.functional as F

    from phased_ift.modeling import render

    prompt, response = render(tok, example.messages, template)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    # token t is predicted by the logits at t-1
    logprobs = F.log_softmax(logits[len(p) - 1:-1], dim=-1)
    return -logprobs[torch.arange(len(r)), torch.tensor(r)].mean().item(), len(r)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from phased_ift.modeling import load_for_inference

    return load_for_inference(tiny_model_dir)


def test_reference_loss_equals_direct_computation(tiny_model_dir, tiny):
    res = reference_loss(tiny_model_dir, _examples(), "chat", batch_size=2, max_length=512, loaded=tiny)
    direct = [_direct_loss(*tiny, e) for e in _examples()]
    assert res["n"] == 3 and res["ids"] == ["0", "1", "2"] and res["truncated"] == 0
    for got, (want, n_tok) in zip(res["per_example"], direct):
        assert got == pytest.approx(want, rel=1e-4)
    assert res["answer_tokens"] == [n for _, n in direct]
    assert res["mean_loss"] == pytest.approx(sum(w for w, _ in direct) / 3, rel=1e-4)
    total = sum(w * n for w, n in direct) / sum(n for _, n in direct)
    assert res["token_mean_loss"] == pytest.approx(total, rel=1e-4)
    # A random model over a ~49k vocabulary: about ln(49152) = 10.8 nats per token.
    assert 8 < res["mean_loss"] < 13


def test_batch_size_does_not_change_losses(tiny_model_dir, tiny):
    a = reference_loss(tiny_model_dir, _examples(), "chat", batch_size=1, loaded=tiny)["per_example"]
    b = reference_loss(tiny_model_dir, _examples(), "chat", batch_size=3, loaded=tiny)["per_example"]
    assert a == pytest.approx(b, rel=1e-4)


def test_truncation_is_counted(tiny_model_dir, tiny):
    res = reference_loss(tiny_model_dir, _examples(), "chat", max_length=16, loaded=tiny)
    assert res["truncated"] >= 2 and all(math.isfinite(x) for x in res["per_example"])


def test_empty_and_missing_reference(tiny_model_dir, tiny):
    assert reference_loss(tiny_model_dir, [], "chat", loaded=tiny)["mean_loss"] is None
    with pytest.raises(PhasedIFTError, match="no reference answer"):
        reference_loss(tiny_model_dir, [Example("x", [{"role": "user", "content": "q"}])], "chat", loaded=tiny)


def test_attach_references_matches_normalised_instruction():
    from phased_ift.data import normalize_text

    prompts = [Example(str(i), [{"role": "user", "content": q}]) for i, q in enumerate(["  Hello there ", "Other"])]
    refs = {normalize_text("Hello there"): "General Kenobi."}
    out = attach_references(prompts, refs)
    assert [e.id for e in out] == ["0"] and out[0].messages[-1] == {"role": "assistant", "content": "General Kenobi."}


@pytest.mark.slow  # saves three model copies and reads AlpacaEval (~8 s on a busy 2-core machine)
def test_evaluate_all_writes_reference_loss_per_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    """evals.step.evaluate_all writes one file per evaluation cell; the pipeline's evaluate step then skips them."""
    import json
    import sys
    from pathlib import Path

    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).parent))
    from test_judge import make_fake_run

    from phased_ift import pipeline
    from phased_ift.evals.step import evaluate_all

    cfg, run = make_fake_run(tmp_path, tiny_model_dir, monkeypatch,
                             ["generate.test_sets=[vicuna,wizardlm]", "generate.limit=3", "evaluation.batch_size=2",
                              "evaluation.max_length=128"])
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    evaluate_all(cfg, run, console=console)
    for arm, k in [("phased", 1), ("phased", 2), ("one-off", 1)]:
        data = json.loads(run.evaluation(arm, k, 0).read_text())
        assert (data["arm"], data["phase"], data["seed"]) == (arm, k, 0)
        v = data["testsets"]["vicuna"]
        # all vicuna prompts are AlpacaEval prompts; wizardlm's sample of 3 has none (1 of 218 overall)
        assert v["n"] == 3 and v["n_prompts"] == 3 and len(v["per_example"]) == 3
        assert v["mean_loss"] == pytest.approx(sum(v["per_example"]) / 3)
        assert data["testsets"]["wizardlm"]["n"] == 0 and data["testsets"]["wizardlm"]["mean_loss"] is None
    log = (tmp_path / "log.txt").read_text()
    assert "vicuna: 3 of 3 prompts have a reference answer" in log and "wizardlm: 0 of 3" in log
    before = run.evaluation("phased", 2, 0).stat().st_mtime_ns
    pipeline.step_evaluate(cfg, console=console)  # done: skipped
    assert run.evaluation("phased", 2, 0).stat().st_mtime_ns == before


def test_evaluate_all_is_skipped_without_reference_loss(tmp_path):
    from rich.console import Console

    from phased_ift.config import load_config
    from phased_ift.evals.step import evaluate_all
    from phased_ift.rundir import RunDir

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "evaluation.reference_loss=false"])
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    evaluate_all(cfg, RunDir(cfg.run_dir), console=console)
    console.file.flush()
    assert "evaluate: evaluation.reference_loss is false; skipped" in (tmp_path / "log.txt").read_text()
    assert not (tmp_path / "run" / "evaluation").exists()
