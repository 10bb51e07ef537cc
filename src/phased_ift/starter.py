"""`phased-ift new`: a commented starter config for a user's own model and data, and the commands to run next.

    phased-ift new my-run.yaml --model Qwen/Qwen2.5-0.5B-Instruct --data my_data.jsonl [--gpus N]

Owns the starter template (`starter_config`: the keys of configs/quickstart.yaml, each with a comment that says
what it does and what to change; sized for the hardware `--gpus` names: 0 = CPU, 1 = one GPU, N > 1 = N GPUs of
one machine under `accelerate launch`, docs/training.md "Scale out"), the two commands to run next
(`next_commands`) and writing it (`write_starter`: never over an existing file). Every key it writes is a key of
`config.Config`; the text is loaded back with `config_from_dict` before it is written, so a starter config always
validates.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from phased_ift.config import config_from_dict
from phased_ift.data import SOURCES
from phased_ift.errors import PhasedIFTError

_TEMPLATE = """\
# phased-ift starter config: {model} on {data}, {hardware}.
# Written by `phased-ift new`. `phased-ift config` lists every key with its default and help; any key can be changed
# for one run after the config, e.g. `phased-ift run {path} train.epochs=2 run_dir=runs/epochs2`.
#
# Next:
#   {cmd1}
#   {cmd2}
#
# What runs: your data is scored for difficulty (IFD, offline, with the model itself), split into 3 phases of
# increasing difficulty, and trained three ways: phased (easy -> hard, each phase from the previous phase's
# weights), one-off (all the data at once with the same budget: the baseline) and random (phases of the same sizes
# with random difficulty: the paper's control). The report (<run_dir>/report/report.html) compares phased with
# one-off on the same prompts, with confidence intervals; a claim about the arms ("phased is better") needs 3 or
# more training seeds (train.seeds below): with one seed it says how these two runs differ, and what to run next.

run_dir: {run_dir}
seed: 0

data:
  train:
    - {data_key}: {data_value}
      format: auto          # detected: alpaca {{instruction, input, output}}, sharegpt, messages, phasedsft; parquet,
                            # csv or a datasets folder / hub id: format hf with columns: {{instruction: q, output: a}}
      limit: 0              # 0 = every record; e.g. 2000 = a seeded sample for a first, faster run
      seed: 0
  dedupe: true              # exact duplicates go to <run_dir>/data/rejects.jsonl, with every other rejected record

model:
  name_or_path: {model_value}
  template: chat            # the tokenizer's chat template; paper = the PhasedSFT prompt, for base models without one
  max_length: 1024          # tokens per example (prompt + response); longer examples are truncated
  dtype: float32            # master weights; compute precision is autocast
  autocast: auto            # bf16 where the hardware runs it natively ({autocast_note}), else fp32

scoring:
  scorer: ifd               # loss(response | instruction) / loss(response) with the model itself; judge (an LLM,
                            # 1-5) needs scoring.judge.base_url; length is label-free and instant
  batch_size: {score_batch:<14}# sequences per forward pass
  max_length: 1024

phases:
  k: 3
  method: quantiles         # equal-size phases by score rank; thresholds = fixed boundaries (phases.thresholds)

train:
  arms: [phased, one-off, random]
  method: lora              # lora | full (every weight) | qlora (4-bit base: CUDA + bitsandbytes)
  lora: {{r: 16, alpha: 32, target_modules: [all-linear]}}
  epochs: 1                 # per phase; one-off trains the same number of example-epochs in one phase
  learning_rate: 2.0e-4     # peak, restarted each phase (cosine, 10% warmup); the paper's full FT: 5e-6
  batch_size: 8             # {batch_note}
  grad_accum: 1
  gradient_checkpointing: false   # true trades compute for memory (long examples, big models)
  seeds: [0]                # 3 or more seeds (e.g. [0, 1, 2]) let the report make a claim about the arms
{deepspeed_line}
generate:
  test_sets: [vicuna, ifeval]   # answers to 80 open questions; IFEval's verifiable instructions (no judge needed)
  limit: 0                  # 0 = every prompt; e.g. 100 for a faster first look
  batch_size: {gen_batch:<14}# prompts per batch

evaluation:
  reference_loss: true      # loss of GPT-4's reference answers (AlpacaEval) under each model: lower = closer

# Pairwise judging (win rates, both answer orders) and MT-Bench / SeqEval grading switch on with an LLM judge, an
# OpenAI-compatible endpoint; the API key is read from the environment variable named here, never written anywhere:
# judge:
#   base_url: http://127.0.0.1:8000/v1
#   model: local
#   api_key_env: OPENAI_API_KEY
"""


def _scalar(value: str) -> str:
    """`value` as one YAML scalar: plain when YAML reads it back unchanged, else JSON-quoted (YAML reads JSON)."""
    text = yaml.safe_dump(value, width=10 ** 9).splitlines()[0]
    return text if yaml.safe_load(text) == value else json.dumps(value)


def next_commands(path: str | Path, gpus: int = 0) -> tuple[str, str]:
    """The two commands to run after `phased-ift new`: the checks and plan (nothing trains), then the run.

    With gpus > 1 training runs under `accelerate launch` with one process per GPU (DDP; docs/training.md "Scale
    out"), then `phased-ift run` does the rest (generate, evaluate, report) in one process, finding the phases
    trained.
    """
    cfg = shlex.quote(str(path))
    plan = f"phased-ift run {cfg} --dry-run"
    if gpus > 1:
        return plan, (f"accelerate launch --multi_gpu --num_processes {gpus} -m phased_ift.cli train {cfg} && "
                      f"phased-ift run {cfg}")
    return plan, f"phased-ift run {cfg}"


def starter_config(model: str, data: str, gpus: int = 0, path: str | Path = "config.yaml",
                   run_dir: str | None = None) -> str:
    """The text of a starter config (comments included) for `model` and `data`.

    Args:
        model: model.name_or_path: a named offline model (smollm2-135m-instruct, gemma-3-270m), a local checkpoint
            dir or a Hugging Face hub id.
        data: a named source (`phased-ift data sources`, written as `name:`) or a file / dataset (`path:`).
        gpus: 0 = CPU, 1 = one GPU, N > 1 = N GPUs of one machine (`accelerate launch`).
        path: where the config will be written (named in its comments; its stem names the run dir).
        run_dir: default runs/<stem of path>.

    Raises:
        PhasedIFTError: gpus < 0, an empty model or data, or (a bug) a text that does not validate.
    """
    if gpus < 0:
        raise PhasedIFTError(f"new: --gpus must be >= 0 (0 = CPU), got {gpus}.")
    if not model.strip() or not data.strip():
        raise PhasedIFTError("new: --model and --data must not be empty; e.g. --model smollm2-135m-instruct "
                             "--data my_data.jsonl.")
    cmd1, cmd2 = next_commands(path, gpus)
    hardware = "CPU" if gpus == 0 else "1 GPU" if gpus == 1 else f"{gpus} GPUs (accelerate launch, DDP)"
    text = _TEMPLATE.format(
        model=model, data=data, hardware=hardware, path=path, cmd1=cmd1, cmd2=cmd2,
        run_dir=_scalar(run_dir or f"runs/{Path(path).stem}"),
        data_key="name" if data in SOURCES else "path", data_value=_scalar(data), model_value=_scalar(model),
        autocast_note="CPUs with AVX512-BF16 / AMX" if gpus == 0 else "GPUs with bf16; fp16 on older GPUs",
        score_batch=8 if gpus == 0 else 16, gen_batch=16 if gpus == 0 else 32,
        batch_note=("examples per step" if gpus <= 1 else
                    f"per GPU: {gpus} GPUs x 8 x grad_accum 1 = {8 * gpus} examples per optimizer step"),
        deepspeed_line="" if gpus <= 1 else (
            "  # deepspeed: configs/accelerate/ds_zero3.json   # a model too big for one GPU: ZeRO-3 with\n"
            "  #   accelerate launch --config_file configs/accelerate/zero3.yaml (num_processes = your GPUs)\n"))
    config_from_dict(yaml.safe_load(text), f"the starter config for {path}")  # every key valid, or a bug here
    return text


def write_starter(path: str | Path, model: str, data: str, gpus: int = 0, run_dir: str | None = None) -> Path:
    """Write `starter_config(...)` to `path` (parent folders created); never replaces a file.

    Returns:
        The path written.

    Raises:
        PhasedIFTError: `path` exists (one line: choose another name or delete it), or see `starter_config`.
    """
    p = Path(path)
    if p.exists():
        raise PhasedIFTError(f"new: {p} already exists; phased-ift new never overwrites a file: choose another "
                             f"name or delete it first.")
    text = starter_config(model, data, gpus, p, run_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(p, "x", encoding="utf-8") as f:  # exclusive create: a file made meanwhile is not replaced
            f.write(text)
    except FileExistsError:
        raise PhasedIFTError(f"new: {p} already exists; phased-ift new never overwrites a file: choose another "
                             f"name or delete it first.") from None
    return p
