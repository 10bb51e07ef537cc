"""The preflight's disk estimate (`train.disk`, `preflight.check_disk_space`): the bytes a run's training still
writes for a tiny offline model in LoRA and full modes, computed here from the parameter count, and the warning
when the run dir's filesystem has less free space."""

from __future__ import annotations

import io
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import save_file

from phased_ift.config import config_from_dict
from phased_ift.modeling import weight_shapes
from phased_ift.preflight import check_disk_space
from phased_ift.rundir import RunDir
from phased_ift.train.disk import SMALL_FILES, estimate_disk_need, lora_params

V, H, I, L, KV = 100, 64, 128, 2, 32  # vocab, hidden, intermediate, layers, k/v width (2 kv heads x 16)
SIDE = {"tokenizer.json": 5000, "tokenizer_config.json": 300, "config.json": 700}


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    """A tiny Llama-shaped checkpoint (tied head: no lm_head tensor, as save_pretrained writes it) + side files."""
    d = tmp_path / "tiny"
    d.mkdir()
    t = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(L):
        p = f"model.layers.{i}."
        t |= {p + "self_attn.q_proj.weight": (H, H), p + "self_attn.k_proj.weight": (KV, H),
              p + "self_attn.v_proj.weight": (KV, H), p + "self_attn.o_proj.weight": (H, H),
              p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I),
              p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)}
    save_file({k: np.zeros(s, dtype=np.float32) for k, s in t.items()}, str(d / "model.safetensors"))
    for name, size in SIDE.items():
        (d / name).write_bytes(b" " * size)
    return d


def _cfg(tmp_path, model: Path, **train):
    t = {"arms": ["phased", "one-off"], "seeds": [0, 1], "method": "lora", "lora": {"r": 8}} | train
    return config_from_dict({"run_dir": str(tmp_path / "run"), "phases": {"k": 3},
                             "model": {"name_or_path": str(model)}, "train": t})


PARAMS = V * H + H + L * (2 * H * H + 2 * KV * H + 3 * H * I + 2 * H)
LORA_8 = L * 8 * (2 * (H + H) + 2 * (H + KV) + 3 * (H + I))  # r x (in + out) per linear layer of each block
PHASES = 2 * (3 + 1)  # seeds x (phased: 3 phases + one-off: 1)


def test_lora_need_counts_the_adapter_per_phase_and_two_trainer_checkpoints(tmp_path, tiny_dir):
    need = estimate_disk_need(_cfg(tmp_path, tiny_dir))
    side = sum(SIDE.values())
    assert (need.params, need.trainable) == (PARAMS, LORA_8)
    assert need.phase_parts == {"adapter": 4 * LORA_8, "tokenizer and configs": side, "small files": SMALL_FILES}
    assert need.checkpoint_bytes == 4 * LORA_8 + 8 * LORA_8 + side + SMALL_FILES  # fp32 adapter + AdamW's 2 moments
    assert (need.phases_left, need.checkpoints_at_once) == (PHASES, 2)
    assert need.total == PHASES * (4 * LORA_8 + side + SMALL_FILES) + 2 * need.checkpoint_bytes
    # named modules only: q_proj and v_proj of each block
    need = estimate_disk_need(_cfg(tmp_path, tiny_dir, lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}))
    assert need.trainable == L * 4 * ((H + H) + (H + KV))


def test_full_and_merge_keep_the_whole_model_per_phase(tmp_path, tiny_dir):
    side = sum(SIDE.values())
    need = estimate_disk_need(_cfg(tmp_path, tiny_dir, method="full", carry_optimizer=True, save_steps=0))
    assert need.trainable == PARAMS
    assert need.phase_parts == {"full model": 4 * PARAMS, "tokenizer and configs": side,
                                "optimizer.pt": 8 * PARAMS, "small files": SMALL_FILES}
    assert need.checkpoints_at_once == 1  # save_steps <= 0: only the checkpoint a SIGTERM writes
    assert need.total == PHASES * (12 * PARAMS + side + SMALL_FILES) + (12 * PARAMS + side + SMALL_FILES)
    bf16 = estimate_disk_need(config_from_dict({
        "run_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tiny_dir), "dtype": "bfloat16"},
        "train": {"arms": ["one-off"], "seeds": [0], "method": "full"}}))
    assert bf16.phase_parts["full model"] == 2 * PARAMS  # model.dtype's bytes; AdamW's moments are zeros_like(param)
    assert bf16.checkpoint_bytes == 2 * PARAMS + 4 * PARAMS + side + SMALL_FILES
    merge = estimate_disk_need(_cfg(tmp_path, tiny_dir, lora={"r": 8, "across_phases": "merge"}))
    assert merge.phase_parts["full model"] == 4 * PARAMS  # the merged model is saved; training saves the adapter
    assert merge.checkpoint_bytes == 12 * LORA_8 + side + SMALL_FILES


def test_finished_phases_need_no_new_space(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path, tiny_dir)
    run = RunDir(cfg.run_dir)
    for arm, k, seed in [("phased", 1, 0), ("one-off", 1, 1)]:
        run.checkpoint(arm, k, seed).mkdir(parents=True)
        (run.checkpoint(arm, k, seed) / "DONE").write_text("{}")
    need = estimate_disk_need(cfg)
    assert (need.phases_left, need.phases_done) == (PHASES - 2, 2)
    assert need.total == (PHASES - 2) * need.phase_bytes + 2 * need.checkpoint_bytes
    for c in [(a, k, s) for a, n in (("phased", 3), ("one-off", 1)) for s in (0, 1) for k in range(1, n + 1)]:
        run.checkpoint(*c).mkdir(parents=True, exist_ok=True)
        (run.checkpoint(*c) / "DONE").write_text("{}")
    assert estimate_disk_need(cfg).total == 0  # no phase left: no Trainer checkpoint either


Usage = namedtuple("Usage", "total used free")


@pytest.mark.parametrize("free_factor, warned", [(0.5, True), (2.0, False)])
def test_the_plan_line_and_the_warning_when_the_filesystem_is_short(tmp_path, tiny_dir, monkeypatch, free_factor,
                                                                   warned):
    cfg = _cfg(tmp_path, tiny_dir)
    total = estimate_disk_need(cfg).total
    free = int(total * free_factor)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * total, 0, free))
    out = io.StringIO()
    need = check_disk_space(cfg, Console(file=out, width=2000))
    text = out.getvalue()
    assert need.total == total
    assert text.startswith(f"disk: training needs about {_h(total)}: {PHASES} phases x ")
    assert ("warning:" in text) == warned
    if warned:  # names the run dir, the free space, the need and the fix; a warning: nothing raised
        warning = text[text.index("warning:"):]
        for part in (f"run_dir {tmp_path / 'run'}", f"has {_h(free)} free", f"about {_h(total)}",
                     "Free space there", "point run_dir at a larger disk"):
            assert part in warning


def test_an_unreadable_model_makes_the_need_unknown_not_an_error(tmp_path):
    out = io.StringIO()
    assert check_disk_space(_cfg(tmp_path, tmp_path / "no-such-model"), Console(file=out, width=400)) is None
    assert out.getvalue().startswith("disk: the need of training is unknown")


def test_the_adapter_estimate_is_what_peft_counts_and_saves(tmp_path, tiny_model_dir):
    """The real tiny Llama of conftest with PEFT's all-linear LoRA: the trainable parameters PEFT makes and the
    tensor bytes of the adapter_model.safetensors it saves equal the estimate."""
    from types import SimpleNamespace

    from phased_ift.modeling import add_lora, load_model, safetensors_shapes

    shapes = weight_shapes(str(tiny_model_dir))
    model = add_lora(load_model(str(tiny_model_dir)), SimpleNamespace(r=8, alpha=16, dropout=0.0,
                                                                       target_modules=["all-linear"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_params(shapes.shapes, 8, ["all-linear"]) == trainable
    assert shapes.params == sum(p.numel() for p in model.base_model.model.parameters() if not p.requires_grad)
    model.save_pretrained(tmp_path / "adapter")
    saved = safetensors_shapes(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(int(np.prod(s)) for s in saved.values()) == trainable


def test_a_named_model_not_converted_yet_is_read_from_its_gguf(smollm2_path):
    """The GGUF's tensor infos (renamed to Hugging Face modules) give the converted checkpoint's numbers."""
    from phased_ift.modeling import gguf_path
    from phased_ift.modeling.sizes import _from_gguf

    converted, gguf = weight_shapes(smollm2_path), _from_gguf(gguf_path("smollm2-135m-instruct"))
    assert gguf.params == converted.params == 134_515_008
    assert lora_params(gguf.shapes, 16, ["all-linear"]) == lora_params(converted.shapes, 16, ["all-linear"])
    assert lora_params(gguf.shapes, 16, ["q_proj"]) == 30 * 16 * (576 + 576)
    assert gguf.side_bytes is None and converted.side_bytes > 3_000_000  # tokenizer.json is counted once converted


def _h(n: int) -> str:
    from phased_ift.diskerrors import human_bytes

    return human_bytes(n)
