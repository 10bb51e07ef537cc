"""Sharded phase handoff check: a phased arm trained with N processes under FSDP or DeepSpeed ZeRO-3 against the
same arm trained by one process with the same global batch.

    python benchmarks/sharded_handoff.py --backend fsdp  --out benchmarks/results/sharded_fsdp_cpu.json
    python benchmarks/sharded_handoff.py --backend zero3 --out ...      # needs deepspeed (e.g. /tmp/ds-venv)
    python benchmarks/sharded_handoff.py --backend fsdp --device cuda   # on a GPU machine: one process per GPU

What it does (all offline: a tiny random Llama and a word-level tokenizer built here, no download):
  1. a run dir with 24 examples in 2 phases (quantiles of a meta score), full fine-tuning, train.order=sequential,
     train.batching=pad, so one optimizer step sees the same examples whatever the process count;
  2. `accelerate launch` with N processes (`--use_fsdp` FSDP2 / `--use_deepspeed` configs/accelerate/ds_zero3.json)
     runs this script's `worker`, i.e. `train.train_phases` with a callback that saves each phase's starting
     weights (gathered in full) to snapshots/phase_<k>_start.safetensors;
  3. this process trains the same arm with per-device batch N x B (the same global batch);
  4. checks: phase k+1 started from exactly phase k's saved weights (max |diff| = 0); the saved files passed
     `train.sharded.verify_saved_weights` (training did not raise); hparams.json records the backend; the final
     weights of the two runs agree: max |diff| <= --atol and the difference is under --rtol of the size of the
     update training made (max |final - base|).
Writes a JSON report (--out) and exits 1 when a check fails.

On a CPU-only machine accelerate 1.16 never selects FSDP (`AcceleratorState` switches to FSDP only for GPU-like
distributed types; MULTI_CPU falls back to DDP without a word), while torch 2.13's FSDP2 itself runs on CPU with
gloo. The worker lifts that one gate (`lift_accelerate_cpu_fsdp_gate`) so the real accelerate FSDP2 code paths
(`fully_shard`, `get_state_dict`, `save_fsdp_model`) run; on a GPU nothing is patched. docs/training.md, "Sharded
training", has the details.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def lift_accelerate_cpu_fsdp_gate() -> None:
    """Let accelerate run FSDP on a CPU-only machine (test harness only; never used by phased-ift itself).

    accelerate 1.16's `AcceleratorState.__init__` sets distributed_type=FSDP only when the process group's type is
    one of MULTI_GPU / MULTI_XPU / ... (state.py, the `elif self.distributed_type in [...]` branch); MULTI_CPU is not
    in the list, so `accelerate launch --use_fsdp` on CPU trains with DDP. This wrapper applies the same switch for
    MULTI_CPU, every time the (shared) state is re-initialised.
    """
    import accelerate.state as st
    from accelerate.utils import DistributedType

    original = st.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None:
            self.fsdp_plugin = fsdp_plugin
        if getattr(self, "fsdp_plugin", None) is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP

    st.AcceleratorState.__init__ = init


def full_state(model) -> dict | None:
    """The full state dict of a live (possibly sharded) model on rank 0 (None on other ranks). Collective."""
    import torch
    import torch.distributed as dist

    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):  # DeepSpeed ZeRO-3 placeholders
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if rank0 else None
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in params):  # FSDP2
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if rank0 else None
    with torch.no_grad():
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if rank0 else None


def worker(cfg_path: str, snap_dir: str) -> None:
    """Inside `accelerate launch`: train the config's arms, saving each phase's starting weights."""
    import torch

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        lift_accelerate_cpu_fsdp_gate()
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from phased_ift.config import load_config
    from phased_ift.rundir import RunDir
    from phased_ift.train import train_phases

    class StartSnapshot(TrainerCallback):
        def __init__(self):
            self.phase = 0

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.phase += 1
            sd = full_state(model)
            if sd is not None:
                Path(snap_dir).mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in sd.items()}, f"{snap_dir}/phase_{self.phase}_start.safetensors")

    cfg = load_config(cfg_path)
    train_phases(cfg, RunDir(cfg.run_dir), callbacks=[StartSnapshot()])


def build_tiny(out: Path, texts: list[str]) -> None:
    """A 2-layer random Llama (hidden 64) with a word-level tokenizer of `texts` and a ChatML template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(texts + ["user assistant system"], trainers.WordLevelTrainer(special_tokens=specials))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>", unk_token="<unk>")
    tok.chat_template = CHATML
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)


def setup_run(root: Path, model: Path, batch_size: int, method: str, threads: int) -> Path:
    """A run dir (data, meta scores, split done) and its config file; returns the config path."""
    import yaml

    from phased_ift.config import config_from_dict
    from phased_ift.data import Example, write_examples
    from phased_ift.pipeline import step_split
    from phased_ift.rundir import RunDir
    from phased_ift.runio import write_jsonl

    run = RunDir(root / "run")
    ex = [Example(f"e{i}", [{"role": "user", "content": f"Question number {i} ? " * (1 + i % 4)},
                            {"role": "assistant", "content": f"Answer {i} . " * (1 + i % 5)}]) for i in range(24)]
    write_examples(run.train_data, ex)
    write_jsonl(run.scores("meta"), [{"id": e.id, "score": float(i % 5) + 1, "error": None} for i, e in enumerate(ex)])
    raw = {"run_dir": str(run.root), "scoring": {"scorer": "meta"},
           "model": {"name_or_path": str(model), "max_length": 64, "autocast": "none"},
           "phases": {"k": 2, "method": "quantiles"},
           "train": {"arms": ["phased"], "method": method, "batch_size": batch_size, "max_steps": -1, "epochs": 1,
                     "learning_rate": 1e-3, "order": "sequential", "batching": "pad", "save_steps": 1000,
                     "threads": threads, "warmup_ratio": 0.0}}
    step_split(config_from_dict(raw))
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def launch_flags(backend: str, processes: int, device: str, port: int) -> list[str]:
    """`accelerate launch` arguments for a backend (fp32 everywhere, so the runs compare exactly)."""
    common = ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(port)]
    if backend == "fsdp":
        return ["--use_fsdp", "--fsdp_version", "2", "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
                "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_reshard_after_forward", "true", *common]
    if backend == "zero3":
        return ["--use_deepspeed", "--deepspeed_config_file", str(REPO / "configs/accelerate/ds_zero3.json"),
                "--zero3_init_flag", "true", *common]
    return ["--multi_gpu", *common]  # ddp (gloo on CPU)


def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def max_diff(a: dict, b: dict, keys) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in keys)


def compare(sharded_root: Path, ref_root: Path, model: Path, k: int, atol: float, rtol: float) -> dict:
    """The checks of step 4 as a dict (`ok` = all passed)."""
    from phased_ift.rundir import RunDir

    runs = RunDir(sharded_root / "run"), RunDir(ref_root / "run")
    saved = [_load(runs[0].checkpoint("phased", i) / "model.safetensors") for i in range(1, k + 1)]
    handoff = []
    for i in range(1, k):
        start = _load(sharded_root / "snapshots" / f"phase_{i + 1}_start.safetensors")
        keys = sorted(saved[i - 1])
        handoff.append({"phase": i + 1, "tensors": len(keys), "missing_in_start": sorted(set(keys) - set(start)),
                        "max_abs_diff": max_diff(start, saved[i - 1], set(keys) & set(start))})
    final_ref = _load(runs[1].checkpoint("phased", k) / "model.safetensors")
    base = _load(model / "model.safetensors")
    keys = sorted(set(saved[-1]) & set(final_ref) & set(base))
    diff, update = max_diff(saved[-1], final_ref, keys), max_diff(final_ref, base, keys)
    hp = json.loads((runs[0].checkpoint("phased", k) / "hparams.json").read_text())
    out = {"handoff": handoff, "final_max_abs_diff": diff, "update_max_abs": update, "atol": atol, "rtol": rtol,
           "final_keys": len(keys), "distributed": hp.get("distributed"), "world_size": hp.get("world_size"),
           "losses": [json.loads((r.checkpoint("phased", i) / "DONE").read_text())["train_loss"]
                      for r in runs for i in range(1, k + 1)]}
    out["ok"] = (all(h["max_abs_diff"] == 0.0 and not h["missing_in_start"] for h in handoff)
                 and diff <= atol and diff <= rtol * update)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["fsdp", "zero3", "ddp"], default="fsdp")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--processes", type=int, default=0, help="default: 2 on CPU, the GPU count on CUDA")
    ap.add_argument("--batch-size", type=int, default=2, help="per process; the reference uses processes x this")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--out", type=Path, default=None, help="the JSON report (default: print only)")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--rtol", type=float, default=1e-2)
    ap.add_argument("--port", type=int, default=29541)
    ap.add_argument("--python", default=sys.executable, help="the interpreter of the N-process run")
    args = ap.parse_args(argv)
    return run_check(args)


def run_check(args) -> int:
    import tempfile

    import torch

    n = args.processes or (torch.cuda.device_count() if args.device == "cuda" else 2)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sharded_handoff: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sharded_handoff_"))
    texts = [f"Question number {i} ? Answer {i} ." for i in range(24)]
    model = work / "tiny"
    build_tiny(model, texts)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    cfg = setup_run(work / "sharded", model, args.batch_size, "full", 1)
    cmd = [args.python, "-m", "accelerate.commands.launch", *launch_flags(args.backend, n, args.device, args.port),
           str(Path(__file__).resolve()), "worker", str(cfg), str(work / "sharded" / "snapshots")]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    t1 = time.perf_counter()
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-6000:], sep="\n", file=sys.stderr)
        return _report(args, {"ok": False, "error": f"{n}-process run failed ({res.returncode})"})
    # The reference runs in this process (one interpreter start less): the same code path as `phased-ift train`.
    from phased_ift.config import load_config
    from phased_ift.rundir import RunDir
    from phased_ift.train import train_phases

    ref_cfg = load_config(setup_run(work / "ref", model, args.batch_size * n, "full", 1))
    train_phases(ref_cfg, RunDir(ref_cfg.run_dir))
    out = {"backend": args.backend, "device": args.device, "processes": n, "batch_size": args.batch_size,
           "sharded_seconds": round(t1 - t0, 1), "reference_seconds": round(time.perf_counter() - t1, 1),
           "workdir": str(work), **compare(work / "sharded", work / "ref", model, 2, args.atol, args.rtol)}
    return _report(args, out)


def _report(args, out: dict) -> int:
    text = json.dumps(out, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
