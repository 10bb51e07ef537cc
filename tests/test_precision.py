"""autocast "auto": chosen from the hardware (issue 12), explicit settings kept, written where the user looks."""

from __future__ import annotations

import pytest
import yaml

from phased_ift.modeling import precision
from phased_ift.modeling.precision import Hardware, resolve_autocast

AVX2 = Hardware("cpu", "AMD EPYC", "AVX2", native_bf16=False, native_fp16=False)
SAPPHIRE = Hardware("cpu", "Intel Xeon 8480", "AVX512", native_bf16=True, native_fp16=False)
H100 = Hardware("cuda", "NVIDIA H100", "AVX512", native_bf16=True, native_fp16=True)
V100 = Hardware("cuda", "Tesla V100", "AVX2", native_bf16=False, native_fp16=True)


@pytest.mark.parametrize("hw, expected", [(AVX2, "none"), (SAPPHIRE, "bf16"), (H100, "bf16"), (V100, "fp16")])
def test_auto_picks_bf16_only_where_native_fp16_on_an_old_gpu_fp32_otherwise(hw, expected):
    value, reason = resolve_autocast("auto", hw)
    assert value == expected
    assert reason.startswith("auto: ") and hw.name in reason


@pytest.mark.parametrize("explicit", ["bf16", "fp16", "none"])
@pytest.mark.parametrize("hw", [AVX2, SAPPHIRE, H100, V100])
def test_an_explicit_setting_is_kept(explicit, hw):
    assert resolve_autocast(explicit, hw) == (explicit, "set explicitly")


def test_unknown_value_is_refused():
    with pytest.raises(ValueError, match="autocast must be one of"):
        resolve_autocast("fp8", AVX2)


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)])
def test_the_cpu_probe_reads_avx512_bf16_and_amx(monkeypatch, avx512_bf16, amx, native):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    hw = precision.probe_hardware()
    assert hw.device == "cpu" and hw.native_bf16 is native
    assert hw.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert resolve_autocast("auto")[0] == ("bf16" if native else "none")  # the default probe is the same one


def test_config_defaults_resolve_per_section_and_inference_dtype(monkeypatch):
    from phased_ift.config import Config, ModelConfig

    cfg = Config()
    assert cfg.model.autocast == "auto" and cfg.scoring.autocast == "auto"
    resolved, record = precision.resolve_config_precision(cfg, AVX2)
    assert (resolved.model.autocast, resolved.scoring.autocast) == ("none", "none")
    assert record["hardware"]["cpu_capability"] == "AVX2" and record["model.autocast"][0] == "none"
    line = precision.describe_precision(record)
    assert line.startswith("precision: model.autocast=none, scoring.autocast=none (auto: CPU AVX2")
    mixed = Config(model=ModelConfig(autocast="bf16"))
    resolved, record = precision.resolve_config_precision(mixed, AVX2)
    assert (resolved.model.autocast, resolved.scoring.autocast) == ("bf16", "none")
    assert "set explicitly" in precision.describe_precision(record)
    again, _ = precision.resolve_config_precision(resolved, SAPPHIRE)
    assert again is resolved  # nothing left to resolve: the same object
    assert precision.inference_dtype("float32", "auto", H100) == "bfloat16"
    assert precision.inference_dtype("float32", "auto", V100) == "float16"
    assert precision.inference_dtype("float32", "auto", SAPPHIRE) == "float32"  # CPU inference stays fp32
    assert precision.inference_dtype("bfloat16", "none", AVX2) == "bfloat16"  # an explicit dtype wins


@pytest.mark.parametrize("hw, expected", [(AVX2, "none"), (SAPPHIRE, "bf16")])
def test_the_run_dir_config_and_the_trainer_get_the_resolved_value(tmp_path, monkeypatch, hw, expected):
    """run_pipeline writes the concrete autocast and the reason into <run_dir>/config.yaml (which loads back) and
    every step sees the concrete value; the Trainer's bf16 flag follows it."""
    import dataclasses

    from rich.console import Console

    from phased_ift import pipeline
    from phased_ift.config import load_config
    from phased_ift.train.plan import phase_hparams
    from phased_ift.train.trainer import sft_config

    monkeypatch.setattr(precision, "probe_hardware", lambda: hw)
    seen = []
    monkeypatch.setattr(pipeline, "STEPS", [dataclasses.replace(
        s, run=lambda cfg, run, dry_run, console: seen.append((cfg.model.autocast, cfg.scoring.autocast)) or {})
        for s in pipeline.STEPS])
    monkeypatch.setattr(pipeline, "preflight", lambda cfg, dry_run=False: [])
    printed = []
    monkeypatch.setattr(pipeline, "plan_run", lambda cfg, console, missing=(), precision=None: printed.append(
        precision))
    cfg = load_config("configs/quickstart.yaml", [f"run_dir={tmp_path / 'r'}"])
    pipeline.run_pipeline(cfg, console=Console(file=open(tmp_path / "log.txt", "w")))
    assert set(seen) == {(expected, expected)}
    assert printed[0]["model.autocast"][0] == expected
    text = (tmp_path / "r" / "config.yaml").read_text(encoding="utf-8")
    assert text.startswith(f"# precision: model.autocast={expected}, scoring.autocast={expected} (auto: CPU")
    assert hw.cpu_capability in text.splitlines()[0]
    assert yaml.safe_load(text)["model"]["autocast"] == expected
    reloaded = load_config(str(tmp_path / "r" / "config.yaml"), [])
    hp = phase_hparams(reloaded, "phased", 1)
    assert hp.autocast == expected  # hparams.json records the concrete value
    assert sft_config(reloaded, hp, tmp_path / "t", 0, 10).bf16 is (expected == "bf16")


def test_release_memory_hands_freed_heap_back_to_the_os():
    """glibc keeps freed tensors in its heap when a live block sits above them; release_memory (malloc_trim)
    returns those pages, which is what keeps one step's freed memory from adding to the next step's peak."""
    import torch

    from phased_ift.modeling import release_memory

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    first = torch.ones(1 << 20)  # 4 MB, mmapped; freeing it raises glibc's mmap threshold above 4 MB
    del first
    blocks = [torch.ones(1 << 20) for _ in range(150)]  # 600 MB from the heap now
    last = blocks.pop()  # stays alive above the others, so free() alone cannot shrink the heap
    before = rss_mb()
    del blocks
    kept = rss_mb()
    release_memory()
    after = rss_mb()
    assert before - after > 400, (before, kept, after)
    assert last.sum() == 1 << 20


def test_config_accepts_exactly_what_the_rule_resolves():
    from phased_ift import config

    assert config.AUTOCAST_CHOICES == precision.AUTOCAST_CHOICES
