"""Batched greedy generation with the tiny model: left padding, stop tokens, resume, settings, backends."""

from __future__ import annotations

import json

import pytest

from phased_ift import generation as gen
from phased_ift import modeling
from phased_ift.generation import step as generate_step
from phased_ift.data import Example
from phased_ift.runio import read_jsonl
from phased_ift.errors import PhasedIFTError


def _prompts(texts, testset="t"):
    return [Example(id=str(i), messages=[{"role": "user", "content": t}], meta={"testset": testset})
            for i, t in enumerate(texts)]


PROMPTS = ["Hi", "Explain in detail how a bicycle works and why it stays upright while moving.",
           "Name three colours.", "What is 2 + 2?"]


def _rows(path):
    return {r["id"]: r for r in read_jsonl(path)}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return modeling.load_for_inference(tiny_model_dir)


def test_stop_ids_include_eos_and_end_of_turn(tiny):
    _, tok = tiny
    stops = gen.stop_token_ids(tok, "chat")
    assert tok.eos_token_id in stops and tok.convert_tokens_to_ids("<|im_end|>") in stops
    assert gen.stop_token_ids(tok, "paper") == [tok.eos_token_id]


def test_trim_at_stop():
    assert gen.trim_at_stop([5, 6, 2, 2], [2], 4) == gen.Completion([5, 6], "stop")
    assert gen.trim_at_stop([5, 6, 7], [2], 3) == gen.Completion([5, 6, 7], "length")


def test_plan_batches_caps_padded_tokens():
    lengths = [50, 2000, 60, 40, 600, 55]
    assert gen.plan_batches(lengths, 4) == [[1, 4, 2, 5], [0, 3]]
    # With a cap of 1300 padded tokens the 2000-token prompt runs alone and 600 pairs with at most one more.
    assert gen.plan_batches(lengths, 4, 1300) == [[1], [4, 2], [5, 0, 3]]
    assert sorted(i for b in gen.plan_batches(lengths, 2, 100) for i in b) == list(range(6))


def test_left_padded_batch_equals_one_at_a_time(tiny_model_dir, tiny, tmp_path):
    ex = _prompts(PROMPTS)
    batched = gen.generate_answers(tiny_model_dir, ex, 8, 4, "chat", tmp_path / "b" / "t.jsonl", loaded=tiny)
    single = gen.generate_answers(tiny_model_dir, ex, 8, 1, "chat", tmp_path / "s" / "t.jsonl", loaded=tiny)
    rb, rs = _rows(batched), _rows(single)
    assert set(rb) == {"0", "1", "2", "3"}
    for i in rb:
        assert rb[i]["output"] == rs[i]["output"] and rb[i]["output_tokens"] == rs[i]["output_tokens"]
        assert rb[i]["instruction"] == PROMPTS[int(i)] and rb[i]["testset"] == "t"
    # A random tiny model rarely emits EOS: every answer runs to the budget.
    assert {r["finish_reason"] for r in rb.values()} == {"length"} and rb["0"]["output_tokens"] == 8
    settings = json.loads((tmp_path / "b" / "t.settings.json").read_text())
    assert settings["max_new_tokens"] == 8 and settings["n"] == 4 and settings["template"] == "chat"


def test_generation_stops_at_a_stop_token(tiny_model_dir, tiny, tmp_path, monkeypatch):
    model, tok = tiny
    ex = _prompts(["Name three colours."])
    engine = gen.HFBackend(model, tok)
    from phased_ift.modeling import render, tokenize_example

    prompt = tokenize_example(tok, render(tok, ex[0].messages, "chat")[0], "", 512)["input_ids"]
    free = engine.complete([prompt], 6, [tok.eos_token_id])[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 6
    # Declare the 3rd greedy token a stop token: generation must end there, without it.
    stop = free.token_ids[2]
    first = free.token_ids.index(stop)
    monkeypatch.setattr(generate_step, "stop_token_ids", lambda tok, template: [stop])
    out = gen.generate_answers(tiny_model_dir, ex, 6, 2, "chat", tmp_path / "t.jsonl", loaded=tiny)
    row = next(iter(read_jsonl(out)))
    assert row["finish_reason"] == "stop" and row["output_tokens"] == first
    assert row["output"] == tok.decode(free.token_ids[:first], skip_special_tokens=True).strip()


def test_resume_skips_done_ids(tiny_model_dir, tiny, tmp_path, monkeypatch):
    out = tmp_path / "t.jsonl"
    ex = _prompts(PROMPTS)
    gen.generate_answers(tiny_model_dir, ex[:2], 4, 2, "chat", out, loaded=tiny)
    (tmp_path / "t.settings.json").unlink()  # as if killed before completion
    seen = []
    real = gen.HFBackend.complete

    def spy(self, prompts, *a, **k):
        seen.append(len(prompts))
        return real(self, prompts, *a, **k)

    monkeypatch.setattr(gen.HFBackend, "complete", spy)
    gen.generate_answers(tiny_model_dir, ex, 4, 8, "chat", out, loaded=tiny)
    assert seen == [2]  # only the two ids not yet done
    assert sorted(_rows(out)) == ["0", "1", "2", "3"] and len(out.read_text().splitlines()) == 4
    # Complete: a re-run loads nothing and generates nothing (no `loaded` given: loading would be visible).
    monkeypatch.setattr(modeling, "load_for_inference", lambda *a, **k: pytest.fail("model loaded on a finished set"))
    gen.generate_answers(tiny_model_dir, ex, 4, 8, "chat", out)
    assert seen == [2]


def test_resume_after_a_torn_last_line(tiny_model_dir, tiny, tmp_path):
    out = tmp_path / "t.jsonl"
    ex = _prompts(PROMPTS[:2])
    gen.generate_answers(tiny_model_dir, ex[:1], 4, 2, "chat", out, loaded=tiny)
    (tmp_path / "t.settings.json").unlink()
    with open(out, "a") as f:
        f.write('{"id": "1", "outp')  # kill -9 in the middle of an append
    gen.generate_answers(tiny_model_dir, ex, 4, 2, "chat", out, loaded=tiny)
    rows = list(read_jsonl(out))  # strict: every line parses, the torn one is gone
    assert [r["id"] for r in rows] == ["0", "1"] and all("output" in r for r in rows)


def test_changed_settings_are_refused(tiny_model_dir, tiny, tmp_path):
    out = tmp_path / "t.jsonl"
    gen.generate_answers(tiny_model_dir, _prompts(["Hi"]), 4, 2, "chat", out, loaded=tiny)
    with pytest.raises(PhasedIFTError, match="max_new_tokens: 4 -> 9"):
        gen.generate_answers(tiny_model_dir, _prompts(["Hi"]), 9, 2, "chat", out, loaded=tiny)


def test_backend_registry():
    assert set(gen.BACKENDS) >= {"hf", "vllm"}
    with pytest.raises(ValueError, match="already registered"):
        gen.register_backend("hf", gen.HFBackend)
    with pytest.raises(PhasedIFTError, match="not one of"):
        gen.generate_answers("x", _prompts(["Hi"]), 4, 1, "chat", "/tmp/never.jsonl", backend="tgi")


def test_vllm_backend_without_vllm_says_how_to_fix(tiny):
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed")
    except ImportError:
        pass
    with pytest.raises(PhasedIFTError, match="pip install phased-ift\\[vllm\\]"):
        gen.VLLMBackend(*tiny)


def test_adapter_checkpoint_loads_base_from_hparams(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from phased_ift import modeling

    model, tok = modeling.load_for_inference(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    ck = tmp_path / "ck"
    peft_model.save_pretrained(ck)
    tok.save_pretrained(ck)
    (ck / "hparams.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    assert modeling.base_model_of(ck) == str(tiny_model_dir)
    merged, tok2 = modeling.load_for_inference(ck)
    assert not hasattr(merged, "peft_config") and tok2.eos_token_id == tok.eos_token_id
    out = gen.generate_answers(ck, _prompts(["Hi"]), 3, 1, "chat", tmp_path / "g.jsonl")
    assert next(iter(read_jsonl(out)))["output_tokens"] == 3


@pytest.mark.slow
def test_smollm2_stops_at_its_end_of_turn_token(smollm2_path, tmp_path):
    """The real chat model ends a short answer with <|im_end|>: finish_reason "stop", no special token in the text."""
    ex = _prompts(["Reply with exactly one word: what colour is the sky on a clear day?"])
    out = gen.generate_answers(smollm2_path, ex, 48, 1, "chat", tmp_path / "t.jsonl")
    row = next(iter(read_jsonl(out)))
    assert row["finish_reason"] == "stop" and 0 < row["output_tokens"] < 48
    assert "<|im_end|>" not in row["output"] and row["output"]


@pytest.mark.slow  # saves three model copies (~10-20 s on a busy 2-core machine)
def test_generate_all_covers_the_evaluation_cells_and_skips_finished_sets(tmp_path, tiny_model_dir, monkeypatch):
    """generate_all: one generations file per evaluation cell (every phase with generate.every_phase), one log line
    each; a second call loads no model."""
    import sys
    from pathlib import Path

    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).parent))
    from test_judge import make_fake_run

    cfg, run = make_fake_run(tmp_path, tiny_model_dir, monkeypatch)
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    gen.generate_all(cfg, run, console=console)
    for arm, k in [("phased", 1), ("phased", 2), ("one-off", 1)]:
        rows = gen.read_generations(run.generations(arm, k, "vicuna"))
        assert len(rows) == 2 and all(r["output_tokens"] <= 4 for r in rows)
    console.file.flush()
    log = [ln for ln in (tmp_path / "log.txt").read_text().splitlines() if ln.startswith("generate: ")]
    assert log == [f"generate: {a} seed 0 phase {k} vicuna (2 prompts) -> {run.generations(a, k, 'vicuna')}"
                   for a, k in [("phased", 1), ("phased", 2), ("one-off", 1)]]
    monkeypatch.setattr(modeling, "load_for_inference", lambda *a, **k: pytest.fail("model loaded on a finished set"))
    gen.generate_all(cfg, run, console=console)
    (run.checkpoint("phased", 1, 0) / "DONE").unlink()
    with pytest.raises(PhasedIFTError, match="has no DONE marker: arm 'phased' phase 1 seed 0"):
        gen.generate_all(cfg, run, console=console)


def test_two_turn_generation_asks_turn_2_after_the_models_own_turn_1_answer(tmp_path, tiny_model_dir, monkeypatch):
    """MT-Bench: turn 1 -> mt_bench.jsonl, then turn 2's prompt holds question 1, the model's answer 1 and question 2
    in the chat template (FastChat's gen_model_answer), -> mt_bench_turn2.jsonl; budgets per test set."""
    import sys
    from pathlib import Path

    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).parent))
    from test_judge import make_fake_run

    cfg, run = make_fake_run(tmp_path, tiny_model_dir, monkeypatch, extra=[
        "generate.test_sets=[mt_bench]", "generate.every_phase=false", "generate.max_new_tokens_per_set={mt_bench: 5}"])
    seen: list[list[int]] = []
    real = gen.HFBackend.complete

    def spy(self, prompts, max_new_tokens, stop_ids):
        assert max_new_tokens == 5
        seen.extend(prompts)
        return real(self, prompts, max_new_tokens, stop_ids)

    monkeypatch.setattr(gen.HFBackend, "complete", spy)
    gen.generate_all(cfg, run, console=Console(file=open(tmp_path / "log.txt", "w")))
    t1 = gen.read_generations(run.generations("one-off", 1, "mt_bench"))
    t2 = gen.read_generations(run.generations("one-off", 1, "mt_bench_turn2"))
    assert [r["id"] for r in t1] == [r["id"] for r in t2] and len(t1) == 2
    from phased_ift.data import load_test_set

    questions = {str(e.id): e for e in load_test_set("mt_bench", limit=2, seed=0)}
    from phased_ift.modeling import render, tokenize_example

    _, tok = modeling.load_for_inference(run.checkpoint("one-off", 1, 0))
    for r1, r2 in zip(t1, t2):
        q = questions[r1["id"]]
        assert r2["turn"] == 2 and r2["question"] == q.meta["later_turns"][0] and r2["instruction"] == q.instruction
        messages = [{"role": "user", "content": q.instruction}, {"role": "assistant", "content": r1["output"]},
                    {"role": "user", "content": q.meta["later_turns"][0]}]
        expected = tokenize_example(tok, render(tok, messages, "chat")[0], "", gen.MAX_PROMPT_TOKENS)["input_ids"]
        assert expected in seen  # exactly this conversation was the turn-2 prompt
        assert tok.decode(expected).count("<|im_start|>assistant") == 2
    assert json.loads(gen.settings_path(run.generations("one-off", 1, "mt_bench_turn2")).read_text())[
        "max_new_tokens"] == 5
