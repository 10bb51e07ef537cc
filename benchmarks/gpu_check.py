"""The driver of `benchmarks/gpu_check.sh`: every GPU measurement of issue 18 in one time budget.

    benchmarks/gpu_check.sh                              # on the GPU machine (installs the bundle's wheels first)
    PYTHONPATH=src python benchmarks/gpu_check.py --budget 450 --out benchmarks/results
    GPU_CHECK_ALLOW_CPU=1 PYTHONPATH=src python benchmarks/gpu_check.py --tiny --out /tmp/r   # CPU dry mode

Each part (`PARTS`, run in this order) runs in its own subprocess with its own cap (the part's `cap_s`, or what is
left of the budget); a part is skipped with a note when less than its `min_s` is left, and a part that runs past its
cap is killed (with its children) and recorded as timed out. Each part writes `<out>/gpu_<part>.json`; the summary
`<out>/gpu_summary.json` (status of every part, the targets and whether they were met) is rewritten after each part.
    machine         torch/CUDA facts, the versions used, the measured bf16 matmul rate (8192^3)
    mfu_<model>_<attn>  phased training (arm `phased`, 3 phases, `train_phases` through bench_train's
                    `_run_phased_ift`) with padding-free packing (train.batching=packing), full fine-tuning, bf16
                    weights + bf16 autocast, on a model with random weights built from the bundle's config:
                    `llama1b` (Llama-3.2-1B shapes, 1.24 B parameters) and `gemma` (Gemma-3-270M's config), attention
                    `sdpa` or `flex` (transformers' flex_attention). MFU = tokens/s x (6 N + attention) / 790e12,
                    N = the weights of every nn.Linear (LM head included; embeddings cost no matmul), attention =
                    12 x layers x heads x head_dim x causal (query, key) pairs per token of the packed documents
                    (sliding-window layers: pairs within the window); tokens/s over the steps after the first
                    `WARMUP_STEPS` of each phase (compilation), timed at each optimizer step after a CUDA sync
    ifd             bench_ifd's four arms (Cherry LLM's per-example reference loop, batch size 1, batched fp32,
                    batched bf16) on random_9k examples: examples/s and the speed-ups (target: batched >= 10x the
                    reference loop); on random weights IFD is ~1 for every example, so the bf16 rank check is
                    recorded, not enforced
    generate        bench_generate's `run`: greedy `hf` generation tokens/s batched vs one prompt at a time
    resume          kill -9 inside phase 2 of a 3-phase LoRA run (once a Trainer checkpoint is complete), rerun the
                    same command, compare losses and weights with an uninterrupted run of the same config
    qlora           train.method=qlora (4-bit NF4 base + LoRA) for 2 phases: phase 2 starts from phase 1's saved
                    adapter, the base layers are bitsandbytes Linear4bit, tokens/s and peak memory; in CPU dry mode
                    the clear PhasedIFTError is what is checked
The models have random weights (the bundle carries configs and tokenizers only; benchmarks/gpu_bundle.py): MFU and
speeds do not depend on the weights' values. `--tiny` (or GPU_CHECK_ALLOW_CPU=1) shrinks every size so the whole
driver runs on a CPU in about a minute (its numbers mean nothing; flex parts are GPU only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEAK_BF16 = 790e12  # H200 bf16 dense matrix products, FLOP/s (issue 18)
WARMUP_STEPS = (2, 1)  # (GPU, tiny CPU): optimizer steps of each phase left out of the steady-state timing
TARGETS = {"mfu_llama1b": 0.40, "ifd_speedup_vs_reference": 10.0}
# Llama-3.2-1B's shapes (tied embeddings, 128256 vocabulary); the token ids come from SmolLM2's tokenizer.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=8192,
                rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16)
# Per-mode sizes: (GPU, tiny CPU).
SIZES = {
    "mfu": {"n": (3000, 36), "batch_size": (16, 4), "max_length": (2048, 128), "max_steps": (6, 3)},
    "ifd": {"n": (256, 8), "batch_size": (32, 4), "max_length": (512, 128)},
    "generate": {"n": (32, 4), "max_new_tokens": (64, 4), "batch_size": (32, 4)},
    "resume": {"n": (240, 24), "max_steps": (6, 3), "save_steps": (2, 1), "batch_size": (8, 2),
               "max_length": (512, 64)},
    "qlora": {"n": (160, 16), "max_steps": (4, 2), "batch_size": (8, 2), "max_length": (512, 64)},
}


@dataclass
class Ctx:
    """What a part needs: CPU dry mode or not, the work dir (model dirs, run dirs), the bundle, the device."""

    tiny: bool
    work: Path
    bundle: Path
    device: str

    def size(self, part: str, key: str):
        return SIZES[part][key][1 if self.tiny else 0]


@dataclass(frozen=True)
class Part:
    name: str
    cap_s: float
    min_s: float
    run: Callable[[Ctx], dict]
    gpu_only: bool = False


PARTS: dict[str, Part] = {}


def register_part(part: Part) -> None:
    if part.name in PARTS:
        raise ValueError(f"part {part.name!r} is already registered")
    PARTS[part.name] = part


# --------------------------------------------------------------------------------------------------------------
# Models with random weights, from the bundle's configs
# --------------------------------------------------------------------------------------------------------------


def model_dir(ctx: Ctx, kind: str) -> Path:
    """A saved model with random weights (seed 0): `gemma` (Gemma-3-270M config + tokenizer), `llama1b`
    (`LLAMA_1B` + SmolLM2's tokenizer) or `smollm2` (SmolLM2-135M config + tokenizer); `TINY` shapes in dry mode.
    Built once per work dir, on the device (bf16 on a GPU, fp32 on a CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from gpu_bundle import unpack_model

    out = ctx.work / "models" / kind
    if (out / "DONE").is_file():
        return out
    src = ctx.bundle / "models" / ("gemma-3-270m" if kind == "gemma" else "smollm2-135m")
    if not src.is_dir():
        raise SystemExit(f"gpu_check: {src} is missing: build the bundle with benchmarks/gpu_wheelhouse.sh")
    config = AutoConfig.from_pretrained(src) if kind != "llama1b" else None
    if ctx.tiny:  # SmolLM2's tokenizer for every model: the vocabulary is what makes a tiny model slow on a CPU
        src = ctx.bundle / "models" / "smollm2-135m"
    tmp = unpack_model(src, ctx.work / "models" / f".{kind}.tmp")
    tok = AutoTokenizer.from_pretrained(tmp)
    if kind == "llama1b":
        config = LlamaConfig(**LLAMA_1B, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    if ctx.tiny:
        for key, value in {**TINY, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                           "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}.items():
            setattr(config, key, value)
        if getattr(config, "layer_types", None):
            config.layer_types = ["sliding_attention", "full_attention"]
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if ctx.device == "cuda" else None)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "DONE").write_text("random weights, seed 0\n")
    tmp.rename(out)
    return out


def template_of(path: Path) -> str:
    """chat when the tokenizer has a chat template (SmolLM2), else the paper's template (Gemma-3 base has none)."""
    from transformers import AutoTokenizer

    return "chat" if getattr(AutoTokenizer.from_pretrained(path), "chat_template", None) else "paper"


# --------------------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------------------


def part_machine(ctx: Ctx) -> dict:
    import torch
    from importlib.metadata import version

    from machine import machine_facts, matmul_gflops

    facts = machine_facts()
    facts["versions"] = {p: version(p) for p in ("torch", "transformers", "trl", "peft", "accelerate", "datasets",
                                                 "pyarrow", "numpy", "pandas")}
    facts["python"] = sys.version.split()[0]
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
        facts["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    n = 256 if ctx.tiny else 8192
    facts["bf16_matmul_tflops"] = matmul_gflops("bfloat16", n=n, seconds=0.5 if ctx.tiny else 3.0) / 1e3
    return facts


class StepClock:
    """A TrainerCallback (built lazily: transformers is imported by the part) timing each optimizer step."""

    @staticmethod
    def make(warmup: int):
        import torch
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self, warmup: int) -> None:
                self.warmup = warmup
                self.phases: list[list[tuple[float, int]]] = []
                self.linear_params = 0

            def on_train_begin(self, args, state, control, model=None, **kw):
                self.phases.append([])
                self.linear_params = sum(m.weight.numel() for m in model.modules()
                                         if isinstance(m, torch.nn.Linear))

            def on_step_end(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.phases[-1].append((time.perf_counter(), int(state.num_input_tokens_seen)))

            def steady(self) -> tuple[int, float, int]:
                """(tokens, seconds, steps) over the steps after the first `warmup` of each phase."""
                tokens, secs, steps, w = 0, 0.0, 0, max(self.warmup, 1)
                for ph in self.phases:  # ph[i]: (time, tokens) at the end of step i + 1
                    if len(ph) > w:
                        tokens += ph[-1][1] - ph[w - 1][1]
                        secs += ph[-1][0] - ph[w - 1][0]
                        steps += len(ph) - w
                return tokens, secs, steps

        return _Clock(warmup)


def attention_flops_per_token(config, lengths: list[int]) -> float:
    """Training FLOPs of the attention scores and values per token (forward 4 x heads x head_dim per causal
    (query, key) pair and layer, backward twice that), averaged over documents of the given token lengths;
    a sliding-window layer counts only the pairs within its window."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    window = getattr(config, "sliding_window", None) or 0

    def pairs(n: int, w: int) -> int:
        if not w or n <= w:
            return n * (n + 1) // 2
        return w * (w + 1) // 2 + (n - w) * w

    total = sum(pairs(n, window if t == "sliding_attention" else 0) for n in lengths for t in types)
    return 12 * heads * head_dim * total / max(sum(lengths), 1)


def mfu_part(kind: str, attn: str, target: float | None = None) -> Callable[[Ctx], dict]:
    def run(ctx: Ctx) -> dict:
        import argparse as ap

        import torch
        from transformers import AutoConfig

        from bench_train import _run_phased_ift, sample_examples
        from phased_ift.modeling import load_tokenizer
        from phased_ift.train import tokenize_examples

        path = model_dir(ctx, kind)
        template, max_length = template_of(path), ctx.size("mfu", "max_length")
        args = ap.Namespace(n=ctx.size("mfu", "n"), seed=0, autocast="bf16" if ctx.device == "cuda" else "none",
                            threads=0)
        overrides = [f"model.name_or_path={path}", f"model.template={template}", f"model.max_length={max_length}",
                     f"model.dtype={'bfloat16' if ctx.device == 'cuda' else 'float32'}",
                     f"model.attn_implementation={'flex_attention' if attn == 'flex' else 'sdpa'}",
                     "train.method=full", "train.batching=packing", "train.logging_steps=1",
                     f"train.batch_size={ctx.size('mfu', 'batch_size')}", "train.learning_rate=1e-5",
                     f"train.max_steps={ctx.size('mfu', 'max_steps')}"]
        clock = StepClock.make(WARMUP_STEPS[1 if ctx.tiny else 0])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        res = _run_phased_ift(args, ctx.work / f"mfu_{kind}_{attn}", "phased", overrides, callbacks=[clock])
        config = AutoConfig.from_pretrained(path)
        rows = tokenize_examples(load_tokenizer(str(path)), sample_examples(args.n, args.seed), template, max_length)
        lengths = [len(r["input_ids"]) for r in rows]
        tokens, secs, steps = clock.steady()
        per_token = {"dense": 6 * clock.linear_params, "attention": attention_flops_per_token(config, lengths)}
        tps = tokens / secs if secs > 0 else 0.0
        out = {"model": kind, "attn_implementation": attn, "template": template, "linear_params": clock.linear_params,
               "overrides": overrides, "mean_document_tokens": sum(lengths) / len(lengths),
               "steady": {"tokens": tokens, "seconds": secs, "steps": steps, "tokens_per_s": tps},
               "flops_per_token": per_token, "end_to_end": res,
               "mfu": tps * sum(per_token.values()) / PEAK_BF16, "peak_flops": PEAK_BF16}
        if torch.cuda.is_available():
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if target is not None:
            out["target"], out["met"] = target, out["mfu"] >= target
        return out

    return run


def part_ifd(ctx: Ctx) -> dict:
    from bench_ifd import ifd_arms, run_arms
    from bench_train import sample_examples
    from phased_ift.modeling import load_scoring_model

    path = str(model_dir(ctx, "smollm2"))
    n, bs, max_length = ctx.size("ifd", "n"), ctx.size("ifd", "batch_size"), ctx.size("ifd", "max_length")
    default = "bf16" if ctx.device == "cuda" else "none"
    model, tok = load_scoring_model(path, "none")
    model_default = load_scoring_model(path, default)[0] if default != "none" else model
    examples = sample_examples(n, 0)
    arms, labels = ifd_arms(model, model_default, tok, examples, max_length, bs, default)
    out = run_arms(arms, labels, n, low_precision=default != "none", strict=False)
    t = {k: out[k]["seconds"] for k in arms}
    out["speedup_vs_reference"] = {k: t["reference"] / t[k] for k in ("loop", "batched", "default")}
    out["speedup_vs_loop"] = {k: t["loop"] / t[k] for k in ("batched", "default")}
    out["setup"] = {"n": n, "batch_size": bs, "max_length": max_length, "default_autocast": default,
                    "model": "smollm2-135m architecture, random weights"}
    best = max(out["speedup_vs_reference"]["batched"], out["speedup_vs_reference"]["default"])
    out["target"], out["met"] = TARGETS["ifd_speedup_vs_reference"], best >= TARGETS["ifd_speedup_vs_reference"]
    return out


def part_generate(ctx: Ctx) -> dict:
    import argparse as ap

    from bench_generate import run

    path = model_dir(ctx, "smollm2")
    args = ap.Namespace(model=str(path), n=ctx.size("generate", "n"), max_new_tokens=ctx.size("generate",
                        "max_new_tokens"), batch_size=ctx.size("generate", "batch_size"), max_batch_tokens=0, seed=0,
                        threads=0, device=ctx.device)
    out = run(args)
    out["note"] = "random weights: answers rarely stop before max_new_tokens; outputs are not compared for quality"
    return out


def make_run(ctx: Ctx, name: str, model: Path, n: int, k: int, train: dict) -> tuple[Path, Path]:
    """A run dir with data/train.jsonl (n random_9k examples), a random meta score, its split, and config.yaml.
    Returns (config path, run dir)."""
    import random

    import yaml

    from bench_train import sample_examples
    from phased_ift.config import load_config
    from phased_ift.data import write_examples
    from phased_ift.pipeline import step_split
    from phased_ift.rundir import RunDir
    from phased_ift.runio import write_jsonl

    run = RunDir(ctx.work / name)
    examples = sample_examples(n, 0)
    write_examples(run.train_data, examples)
    rng = random.Random(0)
    write_jsonl(run.scores("meta"), [{"id": e.id, "score": rng.uniform(1, 5), "error": None} for e in examples])
    raw = {"run_dir": str(run.root), "scoring": {"scorer": "meta"}, "generate": {"test_sets": []},
           "model": {"name_or_path": str(model), "template": template_of(model), "max_length": train.pop("max_length"),
                     "autocast": "bf16" if ctx.device == "cuda" else "none"},
           "phases": {"k": k, "method": "quantiles", "seed": 0}, "train": {"arms": ["phased"], "seeds": [0], **train}}
    path = ctx.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    step_split(load_config(path))
    return path, run.root


def _saved(phase_dir: Path) -> dict:
    from safetensors.torch import load_file

    f = phase_dir / "adapter_model.safetensors"
    return load_file(f if f.is_file() else phase_dir / "model.safetensors")


def _max_rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max() / b[k].float().abs().max().clamp(min=1e-12))
               for k in b)


def part_resume(ctx: Ctx) -> dict:
    from phased_ift.rundir import RunDir
    from phased_ift.runio import read_jsonl

    model = model_dir(ctx, "smollm2")
    train = {"method": "lora", "batching": "bucket", "max_steps": ctx.size("resume", "max_steps"),
             "save_steps": ctx.size("resume", "save_steps"), "batch_size": ctx.size("resume", "batch_size"),
             "max_length": ctx.size("resume", "max_length"), "threads": 1 if ctx.tiny else 0}
    n = ctx.size("resume", "n")
    ref_cfg, ref_dir = make_run(ctx, "resume_ref", model, n, 3, dict(train))
    cut_cfg, cut_dir = make_run(ctx, "resume_cut", model, n, 3, dict(train))
    cmd, env = [sys.executable, "-m", "phased_ift.cli", "train"], {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run(cmd + [str(ref_cfg)], check=True, env=env, capture_output=True)
    ref_s = time.perf_counter() - t0
    cut, ref = RunDir(cut_dir), RunDir(ref_dir)
    proc = subprocess.Popen(cmd + [str(cut_cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trainer_dir = cut.checkpoint("phased", 2) / "trainer"
    while not any(trainer_dir.glob("checkpoint-*/trainer_state.json")):
        if proc.poll() is not None:
            raise RuntimeError("training finished before it could be killed inside phase 2")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = sorted(p.parent.name for p in trainer_dir.glob("checkpoint-*/trainer_state.json"))
    interrupted = (cut.checkpoint("phased", 1) / "DONE").is_file() and not (cut.checkpoint("phased", 2) / "DONE").exists()
    res = subprocess.run(cmd + [str(cut_cfg)], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"the resumed run failed (exit {res.returncode}): {res.stderr[-2000:]}")
    phases = {}
    for k in (1, 2, 3):
        a, b = ref.checkpoint("phased", k), cut.checkpoint("phased", k)
        la, lb = list(read_jsonl(a / "losses.jsonl")), list(read_jsonl(b / "losses.jsonl"))
        phases[k] = {"steps": [r["step"] for r in lb], "max_abs_loss_diff": max(
            abs(x["loss"] - y["loss"]) for x, y in zip(la, lb)) if la else None,
            "same_steps": [r["step"] for r in la] == [r["step"] for r in lb],
            "max_rel_weight_diff": _max_rel_diff(_saved(b), _saved(a))}
    done2 = json.loads((cut.checkpoint("phased", 2) / "DONE").read_text())
    tol = 1e-4 if ctx.tiny else 2e-2  # GPU kernels (atomics, split-K) need not repeat bit for bit
    matches = all(p["same_steps"] and (p["max_abs_loss_diff"] or 0) <= tol and p["max_rel_weight_diff"] <= tol
                  for p in phases.values())
    return {"interrupted_inside_phase_2": interrupted, "killed_after": killed_at, "resumed_from": done2["resumed_from"],
            "phases": phases, "tolerance": tol, "matches": bool(matches and interrupted and done2["resumed_from"]),
            "uninterrupted_seconds": ref_s, "train": train}


def part_qlora(ctx: Ctx) -> dict:
    import torch
    from transformers import TrainerCallback

    from phased_ift.config import load_config
    from phased_ift.errors import PhasedIFTError
    from phased_ift.rundir import RunDir
    from phased_ift.train import train_phases

    class Start(TrainerCallback):
        def __init__(self) -> None:
            self.starts, self.linear4bit = [], []

        def on_train_begin(self, args, state, control, model=None, **kw):
            from peft import get_peft_model_state_dict

            self.starts.append({k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(model).items()})
            self.linear4bit.append(sum(type(m).__name__ == "Linear4bit" for m in model.modules()))

    train = {"method": "qlora", "batching": "bucket", "max_steps": ctx.size("qlora", "max_steps"), "save_steps": 0,
             "batch_size": ctx.size("qlora", "batch_size"), "max_length": ctx.size("qlora", "max_length")}
    cfg_path, run_dir = make_run(ctx, "qlora", model_dir(ctx, "smollm2"), ctx.size("qlora", "n"), 2, train)
    cfg, start = load_config(cfg_path), Start()
    if ctx.device != "cuda":
        try:
            train_phases(cfg, RunDir(run_dir), callbacks=[start])
        except PhasedIFTError as e:
            return {"cpu_error": str(e), "loaded_weights": bool(start.starts), "ok": "CUDA" in str(e) and not start.starts}
        raise RuntimeError("train.method=qlora trained on a CPU instead of raising PhasedIFTError")
    torch.cuda.reset_peak_memory_stats()
    dirs = train_phases(cfg, RunDir(run_dir), callbacks=[start])["phased"][0]
    saved = [{k: v.float() for k, v in _saved(d).items()} for d in dirs]
    done = [json.loads((d / "DONE").read_text()) for d in dirs]
    hparams = [json.loads((d / "hparams.json").read_text()) for d in dirs]
    chained = all(torch.allclose(start.starts[1][k], saved[0][k], atol=1e-6) for k in saved[0])
    changed = [not all(torch.allclose(start.starts[i][k], saved[i][k], atol=1e-6) for k in saved[i]) for i in range(2)]
    return {"phase2_starts_from_phase1_adapter": chained, "adapters_changed": changed,
            "linear4bit_layers": start.linear4bit, "checkpoint_kinds": [h["checkpoint_kind"] for h in hparams],
            "tokens_per_s": [d["tokens"] / d["wall_seconds"] for d in done],
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
            "ok": chained and all(changed) and all(n > 0 for n in start.linear4bit)}


register_part(Part("machine", 30, 10, part_machine))
register_part(Part("mfu_llama1b_flex", 110, 60, mfu_part("llama1b", "flex", TARGETS["mfu_llama1b"]), gpu_only=True))
register_part(Part("mfu_gemma_sdpa", 70, 40, mfu_part("gemma", "sdpa")))
register_part(Part("ifd", 50, 25, part_ifd))
register_part(Part("generate", 45, 25, part_generate))
register_part(Part("resume", 70, 40, part_resume))
register_part(Part("qlora", 50, 30, part_qlora))
register_part(Part("mfu_llama1b_sdpa", 90, 50, mfu_part("llama1b", "sdpa", TARGETS["mfu_llama1b"])))
register_part(Part("mfu_gemma_flex", 60, 40, mfu_part("gemma", "flex"), gpu_only=True))


# --------------------------------------------------------------------------------------------------------------
# Preflight, the orchestrator and one part's process
# --------------------------------------------------------------------------------------------------------------

# What the measured code paths import: the project's pins of these, and the requirements of the bundle's packages.
RUNTIME = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "pyyaml", "rich", "scipy")
CHECKED_DISTS = ("trl", "datasets", "pandas", "peft", "accelerate", "transformers", "bitsandbytes")


def unmet_requirements() -> list[str]:
    """Requirements not met by the installed packages (the box's plus the bundle's): the project's pins of
    `RUNTIME` (pyproject.toml) and the Requires-Dist of `CHECKED_DISTS` (markers and extras honoured). Cheap: reads
    metadata only."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    pins = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    reqs = [(Requirement(r), "phased-ift") for r in pins if Requirement(r).name in RUNTIME]
    for name in CHECKED_DISTS:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        reqs += [(Requirement(r), name) for r in dist.requires or []]
    unmet = []
    for req, by in reqs:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = distribution(req.name).version
        except PackageNotFoundError:
            unmet.append(f"{req} (needed by {by}): not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{req} (needed by {by}): {have} installed")
    return sorted(set(unmet))


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_part(part: Part, argv: list[str], timeout: float) -> dict:
    """One part in its own process group: its RESULT line as a dict with status ok | failed | timeout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--part", part.name, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part and its children (the resume part's training processes)
        stdout, stderr = proc.communicate()
        return {"status": "timeout", "seconds": time.perf_counter() - t0, "cap_s": timeout,
                "stderr_tail": stderr[-3000:]}
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"status": "failed", "returncode": proc.returncode, "seconds": time.perf_counter() - t0,
                "stderr_tail": stderr[-3000:]}
    return {"status": "ok", "seconds": time.perf_counter() - t0, "result": json.loads(line[len("RESULT "):])}


def _headline(name: str, rec: dict) -> str:
    r = rec.get("result", {})
    if rec["status"] != "ok":
        return f"{name}: {rec['status']} {rec.get('note', '')}".strip()
    if name.startswith("mfu_"):
        return f"{name}: MFU {r['mfu']:.1%} ({r['steady']['tokens_per_s']:.0f} tokens/s)"
    if name == "ifd":
        return f"ifd: {r['speedup_vs_reference']['default']:.1f}x the reference loop (bf16 batched), " \
               f"{r['speedup_vs_reference']['batched']:.1f}x (fp32 batched)"
    if name == "generate":
        return f"generate: {r['batched']['tokens_per_s']:.0f} vs {r['single']['tokens_per_s']:.0f} tokens/s " \
               f"({r['speedup']}x)"
    if name == "resume":
        return f"resume: matches={r['matches']} (resumed from {r['resumed_from']})"
    return f"{name}: ok"


def orchestrate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.tiny and (unmet := unmet_requirements()):
        print("gpu_check: packages do not meet the requirements: " + "; ".join(unmet), file=sys.stderr)
        return 2
    names = args.parts.split(",") if args.parts else list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        print(f"gpu_check: unknown parts {unknown}; known: {list(PARTS)}", file=sys.stderr)
        return 2
    t_end = time.monotonic() + args.budget
    summary: dict = {"budget_s": args.budget, "tiny": args.tiny, "targets": TARGETS, "peak_flops": PEAK_BF16,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}
    child = ["--work", args.work, "--bundle", args.bundle] + (["--tiny"] if args.tiny else [])
    for name in names:
        part, left = PARTS[name], t_end - time.monotonic()
        if args.tiny and part.gpu_only:
            rec = {"status": "skipped", "note": "GPU only (not in the CPU dry mode)"}
        elif left < part.min_s:
            rec = {"status": "skipped", "note": f"{left:.0f} s of the budget left, the part needs {part.min_s:.0f} s"}
        else:
            rec = run_part(part, child, min(part.cap_s * (4 if args.tiny else 1), left))
        rec.setdefault("cap_s", part.cap_s)
        if rec["status"] == "ok":
            _write_json(out / f"gpu_{name}.json", rec["result"])
        summary["parts"][name] = {k: v for k, v in rec.items() if k != "result"}
        summary["parts"][name]["headline"] = _headline(name, rec)
        print(summary["parts"][name]["headline"], flush=True)
        _write_json(out / "gpu_summary.json", summary)
    met = {}
    for name, rec in summary["parts"].items():
        res = json.loads((out / f"gpu_{name}.json").read_text()) if rec["status"] == "ok" else {}
        if "met" in res:
            met[name] = res["met"]
    summary["targets_met"] = met
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_json(out / "gpu_summary.json", summary)
    bad = [n for n, r in summary["parts"].items() if r["status"] in ("failed", "timeout")]
    print(f"gpu_check: {len(summary['parts']) - len(bad)} of {len(summary['parts'])} parts ok or skipped; "
          f"targets met: {met}; results in {out}", flush=True)
    return 1 if bad else 0


def child_main(args: argparse.Namespace) -> None:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ctx = Ctx(tiny=args.tiny, work=Path(args.work), bundle=Path(args.bundle),
              device="cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    ctx.work.mkdir(parents=True, exist_ok=True)
    if ctx.tiny:
        torch.set_num_threads(1)
    res = PARTS[args.part].run(ctx)
    print("RESULT " + json.dumps(res, default=str), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=450, help="seconds for all parts together")
    p.add_argument("--out", default=str(HERE / "results"), help="where gpu_*.json go")
    p.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "/tmp/phased_ift_gpu_check"),
                   help="scratch: model dirs with random weights, run dirs")
    p.add_argument("--bundle", default=str(HERE / "gpu_bundle"))
    p.add_argument("--parts", default="", help=f"comma-separated subset of {list(PARTS)}")
    p.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_CHECK_ALLOW_CPU") == "1",
                   help="CPU dry mode: tiny sizes (also GPU_CHECK_ALLOW_CPU=1)")
    p.add_argument("--part", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    data = Path(args.bundle) / "data"
    if data.is_dir() and "PHASED_IFT_DATA_HOME" not in os.environ:
        os.environ["PHASED_IFT_DATA_HOME"] = str(data)
    if args.part:
        return child_main(args)
    sys.exit(orchestrate(args))


if __name__ == "__main__":
    main()
