"""train.method=qlora on a machine without a CUDA GPU: the config accepts it, the plan runs, and every path that
would load weights fails first with a PhasedIFTError naming the fix; the phase's model request (4-bit NF4 base,
LoRA on top, the previous adapter continued) is checked by capturing what `model_for_phase` asks for. The 4-bit
training itself runs in benchmarks/gpu_check.py (part `qlora`) on a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from phased_ift.config import config_from_dict
from phased_ift.errors import PhasedIFTError
from phased_ift.modeling import loading, qlora_quantization
from phased_ift.pipeline import preflight, step_split
from phased_ift.rundir import RunDir
from phased_ift.train import phase_hparams, plan_training, require_method_support, train_phases

from test_train import _setup

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only errors of qlora")


def _qlora(tmp_path, tiny_model_dir, **train):
    raw = _setup(tmp_path, tiny_model_dir, method="qlora", **train)
    raw["generate"] = {"test_sets": []}
    return config_from_dict(raw)


def _no_weights(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the qlora check")

    monkeypatch.setattr(loading, "load_model", refuse)


def test_config_accepts_qlora_and_refuses_merge(tmp_path, tiny_model_dir):
    cfg = _qlora(tmp_path, tiny_model_dir)
    assert cfg.train.method == "qlora"
    with pytest.raises(PhasedIFTError, match="qlora cannot be combined with train.lora.across_phases=merge"):
        _qlora(tmp_path, tiny_model_dir, lora={"across_phases": "merge"})


def test_training_on_cpu_fails_before_any_weights_load_and_names_the_fix(tmp_path, tiny_model_dir, monkeypatch):
    cfg = _qlora(tmp_path, tiny_model_dir)
    step_split(cfg)
    _no_weights(monkeypatch)
    with pytest.raises(PhasedIFTError, match=r"needs a CUDA GPU.*use train.method=lora"):
        train_phases(cfg, RunDir(cfg.run_dir))
    assert not RunDir(cfg.run_dir).checkpoint("phased", 1).exists()
    # `phased-ift run` stops in its preflight, before the data and score steps; a dry run plans as usual
    with pytest.raises(PhasedIFTError, match="needs a CUDA GPU"):
        preflight(cfg)
    preflight(cfg, dry_run=True)
    plan = plan_training(cfg, RunDir(cfg.run_dir))
    assert [row["steps"] for row in plan["arms"]["phased"]] == [2, 2, 2]
    assert phase_hparams(cfg, "phased", 1).lora["r"] == cfg.train.lora.r  # hparams.json records the adapter


def test_without_bitsandbytes_the_error_names_the_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(PhasedIFTError, match=r"pip install 'bitsandbytes"):
        loading.require_qlora()


def test_finished_qlora_phases_need_no_gpu(tmp_path, tiny_model_dir):
    """Generation and reports of a run trained elsewhere: with every phase DONE nothing is required."""
    cfg = _qlora(tmp_path, tiny_model_dir)
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    with pytest.raises(PhasedIFTError):
        require_method_support(cfg, run)
    for k in (1, 2, 3):
        run.checkpoint("phased", k).mkdir(parents=True)
        (run.checkpoint("phased", k) / "DONE").write_text(json.dumps({"global_step": 2}))
    require_method_support(cfg, run)
    preflight(cfg)


def test_loading_a_4bit_checkpoint_on_cpu_raises_before_loading(tiny_model_dir, monkeypatch):
    _no_weights(monkeypatch)
    with pytest.raises(PhasedIFTError, match="needs a CUDA GPU"):
        loading.load_checkpoint(str(tiny_model_dir), trainable=True, quantize_4bit="bfloat16")


def test_quantization_is_nf4_with_double_quantization_in_the_compute_dtype():
    q = qlora_quantization("bfloat16")
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert qlora_quantization("float16").bnb_4bit_compute_dtype == torch.float16


@pytest.mark.parametrize("autocast,compute", [("bf16", "bfloat16"), ("none", "float32")])
def test_each_phase_asks_for_the_4bit_base_and_continues_the_previous_adapter(tmp_path, tiny_model_dir, monkeypatch,
                                                                              autocast, compute):
    from phased_ift.train import trainer

    calls = []
    monkeypatch.setattr(loading, "load_checkpoint", lambda path, **kw: calls.append((path, kw)))
    monkeypatch.setattr("phased_ift.modeling.load_checkpoint", loading.load_checkpoint)
    cfg = _qlora(tmp_path, tiny_model_dir)
    cfg.model.autocast = autocast
    base = str(tiny_model_dir)
    trainer.model_for_phase(cfg, None, base)
    trainer.model_for_phase(cfg, str(tmp_path / "phase_1"), base)
    (p1, kw1), (p2, kw2) = calls
    assert (p1, p2) == (base, str(tmp_path / "phase_1"))
    for kw in (kw1, kw2):
        assert kw["quantize_4bit"] == compute and kw["trainable"] and kw["base"] == base
        assert kw["lora"] is cfg.train.lora and not kw["bf16_frozen_base"]
