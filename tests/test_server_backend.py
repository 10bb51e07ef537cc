"""generate.backend=server: the hf backend's prompts and settings sent to an OpenAI-compatible server as text
completions, the same rows, the cache, failures, the served names and the serve commands. The fast tests use the
in-process fake server; `test_llama_cpp_serves_a_merged_lora_checkpoint_like_the_hf_backend` a real llama.cpp
server on a GGUF exported from a SmolLM2 + LoRA checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from phased_ift import generation as gen
from phased_ift import modeling
from phased_ift.config import ServerConfig, load_config
from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError
from phased_ift.kvcache import KVCache
from phased_ift.runio import read_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer, Reply, Status  # noqa: E402

PROMPTS = ["Name three colours.", "What is 2 + 2?"]


def _prompts(texts, testset="t"):
    return [Example(id=str(i), messages=[{"role": "user", "content": t}], meta={"testset": testset})
            for i, t in enumerate(texts)]


def _options(srv, tmp_path, **kw):
    return {"server": ServerConfig(base_url=srv.base_url, concurrency=2, max_retries=0, timeout=20, **kw),
            "served_model": "phased-seed0-phase1", "cache_path": tmp_path / "cache" / "llm.sqlite"}


def _hf_prompt_ids(tok, text):
    from phased_ift.modeling import render, tokenize_example

    return tokenize_example(tok, render(tok, [{"role": "user", "content": text}], "chat")[0], "", 2048)["input_ids"]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from phased_ift.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def test_server_gets_the_hf_prompt_text_and_settings_and_rows_match_the_hf_format(tiny_model_dir, tok, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(modeling, "load_for_inference", lambda *a, **k: pytest.fail("the server backend loads no weights"))
    replies = {PROMPTS[0]: " red, green and blue", PROMPTS[1]: " 4"}

    def reply(body):
        return next(r for t, r in replies.items() if t in body["prompt"])

    with FakeLLMServer(reply=reply) as srv:
        out = gen.generate_answers(tiny_model_dir, _prompts(PROMPTS), 7, 4, "chat", tmp_path / "g" / "t.jsonl",
                                   backend="server", backend_options=_options(srv, tmp_path))
        bodies = sorted(srv.bodies, key=lambda b: b["prompt"])
    stops = gen.stop_token_ids(tok, "chat")
    for body in bodies:
        text = next(t for t in PROMPTS if t in body["prompt"])
        ids = _hf_prompt_ids(tok, text)
        # the text sent tokenises (without added special tokens) to exactly the hf backend's prompt ids
        assert tok(body["prompt"], add_special_tokens=False)["input_ids"] == ids
        assert body["prompt"].endswith("<|im_start|>assistant\n") and body["model"] == "phased-seed0-phase1"
        assert body["max_tokens"] == 7 and body["temperature"] == 0.0 and body["stop_token_ids"] == stops
        assert body["repeat_penalty"] == 1.0 and body["add_special_tokens"] is False and "cache_extra" not in body
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert rows["0"] == {"id": "0", "testset": "t", "instruction": PROMPTS[0], "output": "red, green and blue",
                         "output_tokens": len(tok(" red, green and blue", add_special_tokens=False)["input_ids"]),
                         "finish_reason": "stop"}
    assert rows["1"]["output"] == "4" and rows["1"]["finish_reason"] == "stop"
    settings = json.loads((tmp_path / "g" / "t.settings.json").read_text())
    assert settings["backend"] == "server" and settings["served_model"] == "phased-seed0-phase1"
    assert settings["max_new_tokens"] == 7 and settings["n"] == 2


def test_finish_reason_length_and_token_id_prompts(tiny_model_dir, tok, tmp_path):
    with FakeLLMServer() as srv:
        srv.queue(Reply(" a b c", finish_reason="length"))
        out = gen.generate_answers(tiny_model_dir, _prompts(PROMPTS[:1]), 3, 4, "chat", tmp_path / "t.jsonl",
                                   backend="server", backend_options=_options(srv, tmp_path, prompt="token_ids"))
        assert srv.bodies[0]["prompt"] == _hf_prompt_ids(tok, PROMPTS[0])
    assert next(iter(read_jsonl(out)))["finish_reason"] == "length"


def test_answers_are_cached_per_weights(tiny_model_dir, tmp_path):
    """A re-run of a deleted file is answered from the cache; new weights in the checkpoint dir are asked again."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    with FakeLLMServer(reply=" ok") as srv:
        out = tmp_path / "g" / "t.jsonl"
        gen.generate_answers(ckpt, _prompts(PROMPTS), 4, 4, "chat", out, backend="server",
                             backend_options=_options(srv, tmp_path))
        assert srv.count == 2
        shutil.rmtree(out.parent)
        gen.generate_answers(ckpt, _prompts(PROMPTS), 4, 4, "chat", out, backend="server",
                             backend_options=_options(srv, tmp_path))
        assert srv.count == 2 and len(list(read_jsonl(out))) == 2
        shutil.rmtree(out.parent)
        (ckpt / "config.json").write_text((ckpt / "config.json").read_text() + "\n")  # "new weights"
        gen.generate_answers(ckpt, _prompts(PROMPTS), 4, 4, "chat", out, backend="server",
                             backend_options=_options(srv, tmp_path))
        assert srv.count == 4


def test_a_server_that_reads_another_prompt_stops_the_run_and_caches_nothing(tiny_model_dir, tok, tmp_path):
    n = len(_hf_prompt_ids(tok, PROMPTS[0]))
    with FakeLLMServer() as srv:
        srv.queue(Reply(" x", prompt_tokens=n + 1))  # e.g. llama.cpp adding its own BOS
        with pytest.raises(PhasedIFTError, match=f"as {n + 1} tokens, the hf backend's prompt has {n}.*add_bos"):
            gen.generate_answers(tiny_model_dir, _prompts(PROMPTS[:1]), 4, 4, "chat", tmp_path / "t.jsonl",
                                 backend="server", backend_options=_options(srv, tmp_path))
    with KVCache(tmp_path / "cache" / "llm.sqlite", "responses", value_column="response", note_column="request") as c:
        assert len(c) == 0
    assert not (tmp_path / "t.settings.json").exists()


def test_a_failed_prompt_is_reported_and_asked_again_by_the_next_run(tiny_model_dir, tmp_path):
    out = tmp_path / "t.jsonl"
    with FakeLLMServer(reply=" fine") as srv:
        srv.queue(Status(400))  # e.g. the prompt is longer than the server's context
        with pytest.raises(PhasedIFTError, match=r"1 of 2 prompts got no answer from the server backend.*HTTP 400"):
            gen.generate_answers(tiny_model_dir, _prompts(PROMPTS), 4, 4, "chat", out, backend="server",
                                 backend_options=_options(srv, tmp_path))
        assert len(list(read_jsonl(out))) == 1 and not (tmp_path / "t.settings.json").exists()
        gen.generate_answers(tiny_model_dir, _prompts(PROMPTS), 4, 4, "chat", out, backend="server",
                             backend_options=_options(srv, tmp_path))
        assert srv.count == 3  # only the failed prompt was asked again
    assert sorted(r["id"] for r in read_jsonl(out)) == ["0", "1"] and (tmp_path / "t.settings.json").is_file()


def _fake_run(tmp_path, tiny_model_dir, monkeypatch, *extra):
    from test_judge import make_fake_run

    return make_fake_run(tmp_path, tiny_model_dir, monkeypatch,
                         extra=["generate.backend=server", "generate.server.base_url=http://127.0.0.1:9/v1", *extra])


def test_generate_all_asks_each_checkpoint_under_its_served_name(tmp_path, tiny_model_dir, monkeypatch):
    from rich.console import Console

    with FakeLLMServer(reply=" yes") as srv:
        cfg, run = _fake_run(tmp_path, tiny_model_dir, monkeypatch, f"generate.server.base_url={srv.base_url}")
        gen.generate_all(cfg, run, console=Console(file=open(tmp_path / "log.txt", "w")))
        assert sorted({b["model"] for b in srv.bodies}) == ["one-off-seed0-phase1", "phased-seed0-phase1",
                                                             "phased-seed0-phase2"]
    assert [r["output"] for r in gen.read_generations(run.generations("phased", 2, "vicuna"))] == ["yes", "yes"]


def test_served_names_must_be_distinct_and_well_formed(tmp_path, tiny_model_dir, monkeypatch):
    from phased_ift.generation.serving import served_checkpoints

    cfg, run = _fake_run(tmp_path, tiny_model_dir, monkeypatch, "generate.server.model_template=m-{arm}")
    with pytest.raises(PhasedIFTError, match="names both .* 'm-phased'.*put \\{arm\\}, \\{seed\\} and \\{phase\\}"):
        served_checkpoints(cfg, run)
    cfg, run = _fake_run(tmp_path, tiny_model_dir, monkeypatch, "generate.server.model_template=a b{arm}{seed}{phase}")
    with pytest.raises(PhasedIFTError, match="only letters, digits"):
        served_checkpoints(cfg, run)
    with pytest.raises(PhasedIFTError, match="does not format.*use only \\{arm\\}"):
        load_config(None, ["generate.server.model_template={arm}-{step}"])
    with pytest.raises(PhasedIFTError, match="needs generate.server.base_url"):
        load_config(None, ["generate.backend=server"])


def _adapter_run(tmp_path, tiny_model_dir, monkeypatch):
    """The fake run with the phased checkpoints replaced by LoRA adapters (rank 12) of the tiny model."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg, run = _fake_run(tmp_path, tiny_model_dir, monkeypatch)
    for k in (1, 2):
        d = run.checkpoint("phased", k, 0)
        shutil.rmtree(d)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                              LoraConfig(r=12, target_modules=["q_proj", "v_proj"]))
        peft.save_pretrained(d)
        (d / "hparams.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
        if k == 2:
            (d / "DONE").write_text("{}")
    return cfg, run


def test_serve_command_for_vllm_and_llama_cpp(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from phased_ift.cli import main

    cfg, run = _adapter_run(tmp_path, tiny_model_dir, monkeypatch)
    (tmp_path / "c.yaml").write_text(json.dumps({"run_dir": cfg.run_dir, "train": {"arms": ["phased", "one-off"]},
                                                 "phases": {"k": 2}, "generate": {"every_phase": True}}))
    assert main(["serve-command", str(tmp_path / "c.yaml"), "--port", "8100"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    p2, oneoff = run.checkpoint("phased", 2, 0).resolve(), run.checkpoint("one-off", 1, 0).resolve()
    assert lines[0].startswith("# generate.backend=server generate.server.base_url=http://127.0.0.1:8100/v1")
    assert lines[1] == f"# not trained yet, left out: phased-seed0-phase1 ({run.checkpoint('phased', 1, 0)})"
    assert lines[2] == (f"vllm serve {tiny_model_dir} --port 8100 --generation-config vllm --enable-lora "
                        f"--max-lora-rank 16 --max-loras 1 --max-cpu-loras 1 --lora-modules phased-seed0-phase2={p2}")
    assert lines[3] == (f"vllm serve {oneoff} --port 8101 --generation-config vllm --served-model-name "
                        "one-off-seed0-phase1")
    assert main(["serve-command", str(tmp_path / "c.yaml"), "--server", "llama-cpp", "--gguf-dir",
                 str(tmp_path / "gguf")]) == 0
    out = capsys.readouterr().out
    assert f"phased-ift export-gguf {run.checkpoint('phased', 2, 0)} {(tmp_path / 'gguf').resolve()}/" in out
    config = json.loads(out.split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0])
    assert [m["model_alias"] for m in config["models"]] == ["phased-seed0-phase2", "one-off-seed0-phase1"]
    assert config["models"][0]["kv_overrides"] == ["tokenizer.ggml.add_bos_token=bool:false"]
    assert out.rstrip().endswith(f"python -m llama_cpp.server --config_file {tmp_path / 'gguf'}/llama_cpp_server.json")


# ---------------------------------------------------------------------------------------------------------------
# A real server: llama.cpp serving a GGUF exported from a SmolLM2-135M + LoRA checkpoint
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_lora_gguf(smollm2_path, tmp_path_factory):
    """A LoRA checkpoint of SmolLM2-135M-Instruct as training writes one (adapter + tokenizer + hparams.json
    base_model), its adapter weights random but small (seeded; B is zero at init, which would leave the base
    unchanged), and its f32 GGUF export (`modeling.export_gguf`: merged into the base, llama.cpp's converter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phased_ift.modeling import export_gguf

    d = tmp_path_factory.mktemp("smollm2_lora")
    ckpt = d / "phase_1"
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_path),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.02)
    model.save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(smollm2_path).save_pretrained(ckpt)
    (ckpt / "hparams.json").write_text(json.dumps({"base_model": smollm2_path, "checkpoint_kind": "adapter"}))
    return ckpt, export_gguf(ckpt, d / "phase_1.gguf")


TEST_PROMPTS = ["Name three colours.", "What is the capital of France?", "Give me a tip for staying healthy.",
                "Write a haiku about the sea.", "Explain what a noun is in one sentence.", "What is 7 times 8?"]


@pytest.mark.slow
@pytest.mark.server
def test_llama_cpp_serves_a_merged_lora_checkpoint_like_the_hf_backend(smollm2_lora_gguf, tmp_path):
    """Greedy answers of llama.cpp (f32 GGUF of the merged checkpoint) and of the hf backend (torch fp32) on the
    same prompts: equal text (and output_tokens, finish_reason) for at least 5 of 6 prompts, and every answer
    equal over its first 8 words (measured: 6 of 6 equal here; bench_server.py: 16 of 16).
    Why not all 6 exactly: the two run different f32 kernels (llama.cpp's ggml vs torch's BLAS); a near-tie
    between the two best next tokens can flip once, after which the answers part."""
    from conftest import llama_server_at

    ckpt, gguf = smollm2_lora_gguf
    ex = _prompts(TEST_PROMPTS)
    hf = {r["id"]: r for r in read_jsonl(gen.generate_answers(ckpt, ex, 48, 6, "chat", tmp_path / "hf" / "t.jsonl"))}
    with llama_server_at(gguf, tmp_path) as base_url:
        opts = {"server": ServerConfig(base_url=base_url, concurrency=1, timeout=300), "served_model": "smol-lora",
                "cache_path": tmp_path / "llm.sqlite"}
        out = gen.generate_answers(ckpt, ex, 48, 6, "chat", tmp_path / "srv" / "t.jsonl", backend="server",
                                   backend_options=opts)
    srv = {r["id"]: r for r in read_jsonl(out)}
    assert set(srv) == set(hf) and {r["finish_reason"] for r in srv.values()} <= {"stop", "length"}
    same = [i for i in hf if hf[i]["output"] == srv[i]["output"]]
    assert len(same) >= 5, {i: (hf[i]["output"], srv[i]["output"]) for i in hf if i not in same}
    for i in hf:
        assert hf[i]["finish_reason"] == srv[i]["finish_reason"] or i not in same
        assert hf[i]["output_tokens"] == srv[i]["output_tokens"] or i not in same
        a, b = (hf[i]["output"].split(), srv[i]["output"].split())
        assert a[:8] == b[:8], (hf[i]["output"], srv[i]["output"])
