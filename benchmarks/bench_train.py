"""Training throughput: phased-ift's phased arm vs. TRL SFTTrainer defaults on the union, side by side.

    # the issue's setup (600 random_9k examples, SmolLM2-135M, LoRA r16 all-linear, bf16 autocast, 1 epoch, 2 threads)
    HF_HUB_OFFLINE=1 python benchmarks/bench_train.py --n 600 --threads 2 --out benchmarks/results/train.json
    # a quick check of the script itself
    HF_HUB_OFFLINE=1 python benchmarks/bench_train.py --n 48

Each configuration runs in its own subprocess, one after the other, so peak RSS (ru_maxrss) is per configuration:
    trl_default   TRL `SFTTrainer` defaults on the union: conversational dataset (TRL applies the chat template),
                  batch 8, pad to the longest in the batch, max length 1024, random order, gradient checkpointing
    trl_tuned     what a user who knows TRL picks on a small model: the same with gradient checkpointing off and
                  `train_sampling_strategy="group_by_length"` (length-grouped batches)
    phased        `phased_ift.train.train_phases`, arm `phased`: 3 phases (quantiles of a seeded random score, so
                  every phase has the same length mix), batching=bucket, batch 8, max length 1024
    one_off       the same settings as `phased` on the union in one run: the orchestration overhead is
                  phased wall time / one_off wall time - 1 (model loads, trainer setup and saves of 3 phases vs 1)
    phased_pad    (optional, --modes) the phased arm with batching=pad: what bucketing alone buys
    phased_gc     (optional, --modes) the phased arm with gradient checkpointing, as TRL's defaults have it (less
                  peak RSS for more compute)
    phased_nocap  (optional, --modes) the phased arm without train.max_batch_tokens (long batches in one pass)
    phased_fused  (optional, --modes) the phased arm with TRL's fused LM head (train.lm_head=fused)
    phased_flash  (optional, --modes) the phased arm with SDPA's flash kernel for every pass
                  (train.math_attention_max_len=0; the default uses the math backend for passes <= 256 positions)
Every configuration runs under the same precision: `--autocast` (default auto: `modeling.resolve_autocast`, bf16
only where the hardware runs it natively, else fp32), for TRL as Trainer `bf16=`/`fp16=`.
Reported: non-padding tokens/s (tokens with attention, counted by the Trainer, over the wall time of the training
call: for phased-ift this includes tokenisation, model loading and saving of every phase), peak RSS, the ratios,
and each configuration's fraction of this machine's compute limit: tokens/s x 4 x the model's Linear weights (LoRA:
forward + input-gradient backward, no weight gradients of the frozen layers; the LM head, embeddings and attention
scores not counted, so the fraction is a lower bound) over the measured matrix-product rate in that precision
(`machine.compute_limits`). The JSON carries the machine facts (CPU capability string, native bf16) and the
precision with its reason. Timings are only comparable within one invocation (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("PHASED_IFT_DATA_HOME", Path(__file__).resolve().parents[2] / "shared" / "data"))


def sample_examples(n: int, seed: int):
    """A seeded sample of n random_9k Alpaca examples as phased_ift Examples (instruction + input as the prompt)."""
    from phased_ift.data import Example

    records = json.loads((DATA / "alpagasus" / "random_9k.json").read_text(encoding="utf-8"))
    idx = random.Random(seed).sample(range(len(records)), n)
    out = []
    for i in idx:
        r = records[i]
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append(Example(f"r9k-{i}", [{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": r["output"]}]))
    return out


def _peft_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def run_trl(args, workdir: Path, tuned: bool = False) -> dict:
    """TRL SFTTrainer on the union: its defaults (trl_default, the baseline of the issue) or, `tuned`, with
    gradient checkpointing off and length-grouped batches (trl_tuned)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from phased_ift.modeling import load_model, load_tokenizer

    examples = sample_examples(args.n, args.seed)
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", dtype="float32")
    ds = Dataset.from_list([{"messages": e.messages} for e in examples])
    extra = {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"} if tuned else {}
    cfg = SFTConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=8, max_length=1024,
                    num_train_epochs=1, bf16=args.autocast == "bf16", fp16=args.autocast == "fp16",
                    use_cpu=not torch.cuda.is_available(), report_to="none",
                    save_strategy="no", logging_steps=10, disable_tqdm=True, seed=args.seed,
                    include_num_input_tokens_seen="non_padding", **extra)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=_peft_config())
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {"tokens": int(trainer.state.num_input_tokens_seen), "wall_s": wall, "steps": trainer.state.global_step}


def _run_phased_ift(args, workdir: Path, arm: str, overrides: list[str], callbacks=()) -> dict:
    """Train `arm` with phased-ift on args.n random_9k examples (3 quantile phases of a random score), the settings
    below changed by `overrides` (dotted key=value); `callbacks` go to every phase's Trainer (e.g. step timing)."""
    from phased_ift.config import config_from_dict
    from phased_ift.config import apply_overrides
    from phased_ift.data import write_examples
    from phased_ift.runio import write_jsonl
    from phased_ift.pipeline import step_split
    from phased_ift.rundir import RunDir
    from phased_ift.train import train_phases

    run = RunDir(workdir / f"run_{arm}")
    examples = sample_examples(args.n, args.seed)
    write_examples(run.train_data, examples)
    rng = random.Random(args.seed)
    # A random score: every phase gets the same mix of lengths, so phases differ only by orchestration.
    write_jsonl(run.scores("meta"), [{"id": e.id, "score": rng.uniform(1, 5), "error": None} for e in examples])
    raw = {"run_dir": str(run.root), "scoring": {"scorer": "meta"},
           "model": {"name_or_path": "smollm2-135m-instruct", "max_length": 1024, "autocast": args.autocast},
           "phases": {"k": 3, "method": "quantiles", "seed": args.seed},
           "train": {"arms": [arm], "method": "lora", "lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]},
                     "epochs": 1.0, "batch_size": 8, "batching": "bucket", "save_steps": 0, "logging_steps": 10,
                     "threads": args.threads, "seeds": [args.seed]}}
    cfg = config_from_dict(apply_overrides(raw, overrides))
    step_split(cfg)
    t0 = time.perf_counter()
    dirs = train_phases(cfg, run, callbacks=callbacks)[arm][args.seed]
    wall = time.perf_counter() - t0
    done = [json.loads((d / "DONE").read_text()) for d in dirs]
    return {"tokens": sum(d["tokens"] for d in done), "wall_s": wall, "steps": sum(d["global_step"] for d in done),
            "phase_wall_s": [round(d["wall_seconds"], 2) for d in done]}


MODES = {}


def register_mode(name: str, fn) -> None:
    if name in MODES:
        raise ValueError(f"mode {name!r} is already registered")
    MODES[name] = fn


register_mode("trl_default", run_trl)
register_mode("trl_tuned", lambda a, w: run_trl(a, w, tuned=True))
register_mode("phased", lambda a, w: _run_phased_ift(a, w, "phased", []))
register_mode("one_off", lambda a, w: _run_phased_ift(a, w, "one-off", []))
register_mode("phased_pad", lambda a, w: _run_phased_ift(a, w, "phased", ["train.batching=pad"]))
# No cap on tokens per forward pass (the default 2048 splits long batches): what the cap costs and saves.
register_mode("phased_nocap", lambda a, w: _run_phased_ift(a, w, "phased", ["train.max_batch_tokens=0"]))
# TRL's fused LM head (scores every position in fp32 without Triton) instead of the response-only head.
register_mode("phased_fused", lambda a, w: _run_phased_ift(a, w, "phased", ["train.lm_head=fused"]))
# SDPA's flash kernel for every pass (train.math_attention_max_len=0): what the math backend for short passes buys.
register_mode("phased_flash", lambda a, w: _run_phased_ift(a, w, "phased", ["train.math_attention_max_len=0"]))
# TRL's SFTConfig turns gradient checkpointing on by default (less memory, ~1/3 more compute); phased-ift does not.
register_mode("phased_gc", lambda a, w: _run_phased_ift(a, w, "phased", ["train.gradient_checkpointing=true"]))


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        res = MODES[args.child](args, Path(tmp))
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
    res["tokens_per_s"] = res["tokens"] / res["wall_s"]
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600, help="examples sampled from random_9k (the issue: 600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (the issue: 2)")
    p.add_argument("--modes", default="trl_default,trl_tuned,phased,one_off",
                   help=f"comma-separated, of {list(MODES)}")
    p.add_argument("--autocast", default="auto", help="auto | bf16 | fp16 | none, for every configuration")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import torch

    from machine import compute_limits, limit_for, linear_params, machine_facts, precision_facts

    torch.set_num_threads(args.threads)
    precision = precision_facts(args.autocast)
    facts, limits, n_linear = machine_facts(), compute_limits(), linear_params()
    print(f"{facts['hardware']}; {precision['autocast']} ({precision['reason']}); matmul limits {limits}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads)}
    results = {}
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--child", mode, "--n", str(args.n), "--seed", str(args.seed),
               "--threads", str(args.threads), "--autocast", precision["autocast"]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{mode} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        results[mode] = json.loads(line[len("RESULT "):])
        r = results[mode]
        r["fraction_of_limit"] = r["tokens_per_s"] * 4 * n_linear / 1e9 / limit_for(precision["autocast"], limits)
        print(f"{mode:12s} {r['tokens']:8d} tokens {r['wall_s']:8.1f} s {r['tokens_per_s']:8.1f} tokens/s "
              f"peak RSS {r['peak_rss_gb']:.2f} GB  steps {r['steps']}  {r['fraction_of_limit']:.0%} of the "
              f"matmul limit", flush=True)
    summary = {"setup": {"n": args.n, "seed": args.seed, "threads": args.threads, "model": "smollm2-135m-instruct",
                         "lora": "r16 all-linear", "epochs": 1, "batch_size": 8, "max_length": 1024,
                         "linear_params": n_linear},
               "machine": facts, "precision": precision, "limits": limits, "results": results}
    for base in ("trl_default", "trl_tuned"):
        if base in results and "phased" in results:
            speed = summary[f"speedup_vs_{base}"] = results["phased"]["tokens_per_s"] / results[base]["tokens_per_s"]
            rss = summary[f"rss_ratio_vs_{base}"] = results["phased"]["peak_rss_gb"] / results[base]["peak_rss_gb"]
            print(f"phased vs {base}: {speed:.2f}x tokens/s, {rss:.2f}x peak RSS")
    if "one_off" in results and "phased" in results:
        summary["orchestration_overhead"] = results["phased"]["wall_s"] / results["one_off"]["wall_s"] - 1
        print(f"orchestration overhead (3 phases vs one run, same settings): "
              f"{100 * summary['orchestration_overhead']:+.1f}% wall time")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
