"""Phased training: a plain loop over phases, one TRL `SFTTrainer` run per phase from the previous phase's weights.

    phased-ift train CONFIG [key=value ...]            train every arm in train.arms for every seed in train.seeds
    phased-ift train CONFIG --dry-run                  examples, tokens and optimizer steps per phase (no weights)
    accelerate launch --config_file configs/accelerate/ddp.yaml -m phased_ift.cli train CONFIG    (multi-process)

Arms (Pang et al., ACL Findings 2024, Section 3-4):
    phased    phases/phase_1..K (easy -> hard), phase k starts from phase k-1's saved weights
    one-off   the union of all phases shuffled into one phase: same examples x epochs, same optimiser settings
    random    phases/random/phase_k (same sizes, examples assigned at random: the paper's control)
    reverse   phases/reverse/phase_k (hard -> easy)

Each phase is a fresh `SFTTrainer` run (new optimiser and LR schedule unless train.carry_optimizer) that starts
from the previous phase's saved model or LoRA adapter. Resuming a Trainer checkpoint across phases is never done
(the step count and schedule would carry over); `resume_from_checkpoint` is used only inside an interrupted phase.
Each phase dir `checkpoints/<arm>/seed_<s>/phase_<k>/` holds the model or adapter + tokenizer, `hparams.json`,
`losses.jsonl` and `DONE` (written last); Trainer checkpoints for resuming live in its `trainer/` subdir and are
deleted once the phase is DONE.

Batching (train.batching) and what it does to the order inside a phase:
    bucket   `bucket_order`: a seeded permutation cut into mega-batches of 50 batches, each sorted by length and cut
             into batches of similar length (padded only to their own longest row); the batches are then shuffled,
             the one with the longest example first. Random batch order, no length curriculum inside a phase.
    pad      TRL's default: random order, each batch padded to its longest row.
    packing  TRL padding-free packing (bfd): examples concatenated without padding, position ids restart per
             example so attention never crosses examples with flash-attention varlen kernels (GPU). bfd reorders
             examples longest-first. Slow on CPU (one long sequence per batch with an O(L^2) mask).
    train.order=sequential keeps the phase file's order (easy -> hard within a phase) with any batching.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from phased_ift.config import Config
from phased_ift.data import Example, read_examples
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir

TRAINER_SUBDIR = "trainer"
# TRL 1.16 calls a transformers 5 property deprecated in favour of is_activation_checkpointing once per phase.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)


# ---------------------------------------------------------------------------------------------------------------
# Arms: which data each phase of an arm trains on
# ---------------------------------------------------------------------------------------------------------------


def read_manifest(run: RunDir) -> dict:
    """The phases manifest. Raises PhasedIFTError when `phased-ift split` has not run."""
    if not run.phases_manifest.is_file():
        raise PhasedIFTError(f"train: {run.phases_manifest} does not exist; run `phased-ift split CONFIG` first.")
    return json.loads(run.phases_manifest.read_text(encoding="utf-8"))


def arm_phases(run: RunDir, arm: str, k: int, seed: int = 0) -> list[list[Example]]:
    """The examples of each phase of an arm, in training order of phases.

    Args:
        run: the run dir holding phases/.
        arm: phased | one-off | random | reverse.
        k: the number of phases in the manifest.
        seed: shuffles the one-off union (all phases' data shuffled together into one phase).

    Returns:
        A list of phases (one phase for one-off), each a list of Examples in file order.

    Raises:
        PhasedIFTError: a phase file of the arm is missing (the split was made without that control).
    """
    if arm == "one-off":
        union = [e for i in range(1, k + 1) for e in read_examples(run.phase_file(i))]
        random.Random(seed).shuffle(union)
        return [union]
    out = []
    for i in range(1, k + 1):
        path = run.phase_file(i, arm)
        if not path.is_file():
            raise PhasedIFTError(f"train: {path} does not exist; re-run `phased-ift split` with `{arm}` in "
                                 f"train.arms so the control files are written.")
        out.append(read_examples(path))
    return out


def phase_hparams(cfg: Config, arm: str, k: int) -> dict[str, Any]:
    """Resolved hyperparameters of phase k (1-based) of an arm.

    Per-phase epochs / learning rates (train.phase_epochs / phase_learning_rates) apply to the phased, random and
    reverse arms by position; one-off uses train.epochs and train.learning_rate (equal budget when the per-phase
    values are not set).
    """
    t = cfg.train
    epochs = t.epochs if arm == "one-off" or not t.phase_epochs else float(t.phase_epochs[k - 1])
    lr = t.learning_rate if arm == "one-off" or not t.phase_learning_rates else float(t.phase_learning_rates[k - 1])
    return {
        "arm": arm, "phase": k, "epochs": epochs, "learning_rate": lr, "method": t.method,
        "lora": asdict(t.lora) if t.method == "lora" else None, "batch_size": t.batch_size,
        "grad_accum": t.grad_accum, "lr_scheduler": t.lr_scheduler, "warmup_ratio": t.warmup_ratio,
        "weight_decay": t.weight_decay, "adam_beta2": t.adam_beta2, "max_grad_norm": t.max_grad_norm,
        "carry_optimizer": t.carry_optimizer, "order": t.order, "batching": t.batching, "max_steps": t.max_steps,
        "model": cfg.model.name_or_path, "template": cfg.model.template, "max_length": cfg.model.max_length,
        "dtype": cfg.model.dtype, "autocast": cfg.model.autocast, "lm_head": t.lm_head,
        "max_batch_tokens": t.max_batch_tokens, "math_attention_max_len": t.math_attention_max_len,
    }


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------------------------


def tokenize_examples(tokenizer, examples: Sequence[Example], template: str, max_length: int) -> list[dict]:
    """Render and tokenise examples with `modeling.render` + `tokenize_example` (labels -100 on the prompt).

    Returns:
        One dict per example: input_ids [T], labels [T], attention_mask [T] (T <= max_length), length (= T).
    """
    from phased_ift.modeling import render, tokenize_example

    rows = []
    for e in examples:
        prompt, response = render(tokenizer, e.messages, template)
        row = tokenize_example(tokenizer, prompt, response, max_length)
        row["length"] = len(row["input_ids"])
        rows.append(row)
    return rows


def steps_per_phase(n_examples: int, epochs: float, batch_size: int, grad_accum: int, world_size: int = 1,
                    max_steps: int = -1) -> int:
    """Optimizer steps of one phase as transformers' Trainer counts them (ceil batches, floor-ish accumulation)."""
    if max_steps > 0:
        return max_steps
    batches = math.ceil(n_examples / (batch_size * world_size))
    per_epoch = max(batches // grad_accum, 1)
    return math.ceil(per_epoch * epochs)


# ---------------------------------------------------------------------------------------------------------------
# Plan (dry run)
# ---------------------------------------------------------------------------------------------------------------


def _token_counter(cfg: Config):
    """(count(examples) -> tokens, note). Uses the tokenizer when it loads offline, else chars/4 (said so)."""
    from phased_ift.modeling import load_tokenizer

    try:
        tok = load_tokenizer(cfg.model.name_or_path)
    except Exception as e:  # offline / unknown hub id: estimate, and say so
        def estimate(examples):
            return sum((len(e.instruction) + len(e.response)) // 4 + 1 for e in examples)

        return estimate, f"tokens estimated as characters/4 (tokenizer of {cfg.model.name_or_path!r} not " \
                         f"available offline: {type(e).__name__})"

    def count(examples):
        return sum(r["length"] for r in tokenize_examples(tok, examples, cfg.model.template, cfg.model.max_length))

    return count, f"tokens counted with the {cfg.model.name_or_path} tokenizer, truncated to {cfg.model.max_length}"


def plan_training(cfg: Config, run: RunDir, world_size: int | None = None) -> dict:
    """Examples, tokens and optimizer steps per phase per arm, without loading model weights.

    Args:
        cfg: the config (train, model, phases sections).
        run: the run dir; phases come from phases/ when split, else the data is assumed cut into K equal phases
            (said in the returned note).
        world_size: data-parallel processes (default: $WORLD_SIZE or 1).

    Returns:
        {"note": str, "world_size": int, "arms": {arm: [{"phase", "examples", "tokens", "epochs", "learning_rate",
        "steps", "tokens_trained"}]}, "total_steps": {arm: int}}.
    """
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    count, note = _token_counter(cfg)
    if run.phases_manifest.is_file():
        k = read_manifest(run)["k"]
        phases_of = {arm: arm_phases(run, arm, k) for arm in cfg.train.arms}
    else:
        if not run.train_data.is_file():
            raise PhasedIFTError(f"train --dry-run: neither {run.phases_manifest} nor {run.train_data} exists; run "
                                 f"`phased-ift score CONFIG` (or at least the data step) first.")
        data = read_examples(run.train_data)
        k = cfg.phases.k
        size = math.ceil(len(data) / k)
        eq = [data[i * size:(i + 1) * size] for i in range(k)]
        phases_of = {arm: ([data] if arm == "one-off" else eq) for arm in cfg.train.arms}
        note += f"; phases not split yet: assumed {k} equal-size phases of data/train.jsonl"
    t = cfg.train
    if "one-off" in cfg.train.arms and any(float(e) != t.epochs for e in t.phase_epochs):
        note += (f"; train.phase_epochs {t.phase_epochs} differ from train.epochs={t.epochs:g}, which one-off uses: "
                 f"compare tokens_trained, the budgets are not equal")
    plan: dict[str, Any] = {"note": note, "world_size": world_size, "arms": {}, "total_steps": {}}
    tokens_cache: dict[int, int] = {}
    for arm, phases in phases_of.items():
        rows = []
        for i, ph in enumerate(phases, 1):
            hp = phase_hparams(cfg, arm, i)
            key = hash(tuple(e.id for e in ph))
            if key not in tokens_cache:
                tokens_cache[key] = count(ph)
            steps = steps_per_phase(len(ph), hp["epochs"], cfg.train.batch_size, cfg.train.grad_accum, world_size,
                                    cfg.train.max_steps)
            rows.append({"phase": i, "examples": len(ph), "tokens": tokens_cache[key], "epochs": hp["epochs"],
                         "learning_rate": hp["learning_rate"], "steps": steps,
                         "tokens_trained": int(tokens_cache[key] * hp["epochs"])})
        plan["arms"][arm] = rows
        plan["total_steps"][arm] = sum(r["steps"] for r in rows)
    return plan


def print_plan(cfg: Config, run: RunDir, console=None) -> dict:
    """Print `plan_training` as a rich table (to the console) and return it."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    plan = plan_training(cfg, run)
    table = Table("arm", "phase", "examples", "tokens", "epochs", "lr", "optimizer steps",
                  title=f"training plan ({cfg.train.method}, batch {cfg.train.batch_size} x accum "
                        f"{cfg.train.grad_accum} x {plan['world_size']} processes, seeds {cfg.train.seeds})")
    for arm, rows in plan["arms"].items():
        for r in rows:
            table.add_row(arm, str(r["phase"]), str(r["examples"]), str(r["tokens"]), f"{r['epochs']:g}",
                          f"{r['learning_rate']:g}", str(r["steps"]))
    console.print(table)
    console.print(plan["note"] + f"; steps for {plan['world_size']} data-parallel process(es): under "
                  f"N processes use `WORLD_SIZE=N phased-ift train CONFIG --dry-run`")
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Progress and logging
# ---------------------------------------------------------------------------------------------------------------


def _progress_callback(label: str):
    """A TrainerCallback showing a rich progress bar (steps, rate, ETA, last loss) on the main process."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.progress = None
            self.task = None

        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            from phased_ift.progress import LoggedProgress

            self.progress = LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                           TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                           TimeRemainingColumn(), TextColumn("loss {task.fields[loss]}"),
                                           transient=True)
            self.progress.start()
            self.task = self.progress.add_task(label, total=state.max_steps, completed=state.global_step,
                                               loss="-", rate="")
            self._t0, self._s0 = time.perf_counter(), state.global_step

        def on_step_end(self, args, state, control, **kw):
            if self.progress is not None:
                dt = time.perf_counter() - self._t0
                rate = (state.global_step - self._s0) / dt if dt > 0 else 0.0
                self.progress.update(self.task, completed=state.global_step, rate=f"{rate:.2f} steps/s")

        def on_log(self, args, state, control, logs=None, **kw):
            if self.progress is not None and logs and "loss" in logs:
                self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichProgress()


# ---------------------------------------------------------------------------------------------------------------
# One phase
# ---------------------------------------------------------------------------------------------------------------


def _model_for_phase(cfg: Config, init_dir: str | None, base: str):
    """Load the starting weights of a phase: the base model (phase 1) or the previous phase's saved weights.

    LoRA continue: base + the previous adapter with is_trainable=True (otherwise PEFT loads it frozen).
    LoRA merge: the previous phase saved a merged full model; a new adapter goes on top.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    from phased_ift.modeling import load_model

    m = cfg.model
    kw = dict(dtype=m.dtype, attn_implementation=m.attn_implementation, trust_remote_code=m.trust_remote_code)
    t = cfg.train
    if t.method == "full":
        return load_model(init_dir or base, **kw)
    if init_dir is not None and t.lora.across_phases == "continue":
        model = PeftModel.from_pretrained(load_model(base, **kw), init_dir, is_trainable=True)
    else:
        model = load_model(init_dir or base, **kw)
        target = t.lora.target_modules
        lora = PeftLoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                              task_type="CAUSAL_LM", target_modules=target[0] if target == ["all-linear"] else
                              list(target))
        model = get_peft_model(model, lora)
    if m.autocast == "bf16" and t.lora.across_phases == "continue":
        frozen_base_to_bf16(model)
    return model


def frozen_base_to_bf16(model) -> int:
    """Store the frozen base weights of LoRA-wrapped linear layers in bfloat16; returns how many were cast.

    Under bf16 autocast every such matmul runs in bf16 anyway, and autocast rounds an fp32 weight to bf16 the same
    way on every forward, so the results are identical while the per-step weight casts and the fp32 copies are
    saved (SmolLM2-135M LoRA r16, 8x256: see benchmarks/bench_train.py). Embeddings, norms, the LM head and the
    trainable LoRA matrices stay as loaded (fp32): the residual stream and the optimizer state keep full precision.
    Not used with lora.across_phases=merge, which adds the adapter into these weights after each phase.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), torch.nn.Linear):
            base = module.get_base_layer()
            if base.weight.dtype == torch.float32 and not base.weight.requires_grad:
                base.to(torch.bfloat16)
                n += 1
    return n


def _sft_config(cfg: Config, hp: dict, out_dir: Path, seed: int, save_steps: int):
    import torch
    from trl import SFTConfig

    t, m = cfg.train, cfg.model
    on_cpu = not torch.cuda.is_available()
    sampling = "sequential" if t.order == "sequential" else ("group_by_length" if t.batching == "bucket" else "random")
    return SFTConfig(
        output_dir=str(out_dir), seed=seed, data_seed=seed,
        num_train_epochs=hp["epochs"], max_steps=t.max_steps, learning_rate=hp["learning_rate"],
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        # transformers 5: warmup_steps < 1 is a fraction of the phase's steps (warmup_ratio is gone)
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        adam_beta2=t.adam_beta2, max_grad_norm=t.max_grad_norm,
        # fp32 weights + bf16 autocast: Trainer refuses bf16 on a machine without a bf16 GPU unless use_cpu is set.
        bf16=m.autocast == "bf16", fp16=m.autocast == "fp16", use_cpu=on_cpu,
        train_sampling_strategy=sampling, length_column_name="length",
        packing=t.batching == "packing", padding_free=t.batching == "packing", max_length=m.max_length,
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=save_steps, save_total_limit=1,
        report_to="none", disable_tqdm=True, include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=t.dataloader_workers, deepspeed=t.deepspeed or None,
        # The labels column from tokenize_example is used as is (loss on the response only).
        dataset_kwargs={"skip_prepare_dataset": t.batching != "packing"}, remove_unused_columns=False,
    )


def uses_response_head(lm_head: str) -> bool:
    """Whether train.lm_head resolves to the response-only LM head ("auto": everywhere but CUDA)."""
    import torch

    return lm_head == "response" or (lm_head == "auto" and not torch.cuda.is_available())


def response_head_loss(model, inputs: dict, num_items_in_batch=None, num_processes: int = 1,
                       average_across_devices: bool = False):
    """Next-token cross-entropy on the response tokens, with the LM head applied only where it is needed.

    The model runs its own forward (PEFT, DDP and autocast wrappers included) with `logits_to_keep` = the sequence
    positions that predict a labelled token in at least one row of the batch, so the logits of shared prompt
    positions and trailing padding are never computed: [B, T, V] becomes [B, K, V], K <= T - 1.

    Args:
        model: the (wrapped) causal LM, as `Trainer.compute_loss` receives it.
        inputs: a collated batch: input_ids [B, T], labels [B, T] (-100 = no loss), attention_mask / position_ids.
        num_items_in_batch: labelled next-token targets in the whole (accumulated, all-rank) batch, as Trainer
            counts them over labels[..., 1:]; None = this micro-batch's count.
        num_processes, average_across_devices: as TRL's SFTTrainer: the loss is multiplied by the number of
            processes when the token count covers all ranks (DDP averages the gradients).

    Returns:
        (loss: scalar tensor, outputs of the model forward).

    Source: the same loss as TRL's SFTTrainer (sum of -log p over labels[:, 1:] != -100, divided by the token
    count); TRL computes it with a fused chunked LM head that, without Triton (CPU), scores every position in
    float32 and recomputes the head in backward (measured here: 240 vs. 333 tokens/s on a plain LoRA step).
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    target = labels[:, 1:]
    mask = target != -100
    keep = mask.any(dim=0).nonzero().squeeze(1)
    if keep.numel() == 0:  # no labelled token: keep one position so the loss stays connected to the graph
        keep = torch.zeros(1, dtype=torch.long, device=labels.device)
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    outputs = model(**forward, use_cache=False, logits_to_keep=keep)
    logits = outputs.logits  # [B, K, V]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target[:, keep].reshape(-1),
                           ignore_index=-100, reduction="sum")
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
    if average_across_devices and num_items_in_batch is not None:
        loss = loss * num_processes
    return loss, outputs


def split_batch(inputs: dict, max_tokens: int) -> list[dict]:
    """Cut a collated batch into row groups of at most `max_tokens` padded tokens (rows x longest row) each.

    Rows stay in order; each group is trimmed to its own longest row (right padding, from attention_mask). A batch
    within the budget, one without attention_mask (padding-free packing) or a single row comes back whole.

    Args:
        inputs: tensors [B, T] (input_ids, labels, attention_mask, optional position_ids); other values are kept.
        max_tokens: the budget; <= 0 means no limit.

    Returns:
        A list of batches with the same keys.
    """
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if max_tokens <= 0 or mask is None or ids.size(0) == 1 or ids.numel() <= max_tokens:
        return [inputs]
    lengths = mask.sum(dim=1).tolist()
    groups, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * max(longest, n) > max_tokens:
            groups.append((start, i, longest))
            start, longest = i, 0
        longest = max(longest, n)
    groups.append((start, len(lengths), longest))
    return [{k: (v[a:b, :width] if hasattr(v, "dim") and v.dim() == 2 and v.shape[:2] == ids.shape else v)
             for k, v in inputs.items()} for a, b, width in groups]


def bucket_order(lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = 50) -> list[int]:
    """A training order of indices whose consecutive `batch_size` slices are batches of similar length.

    A seeded permutation is cut into mega-batches of `mega_batches` x `batch_size` examples, each sorted by length
    and cut into batches; then the order of all batches is shuffled (seeded), except that the batch holding the
    longest example comes first (an out-of-memory shows at once, as in transformers' LengthGroupedSampler).
    Unlike LengthGroupedSampler, whose mega-batches shrink to a quarter of the data (48 examples in a phase of 200,
    so small phases get more padding than the one-off union), the mega-batch size does not depend on the phase
    size, and batches do not run from long to short inside a mega-batch (no length curriculum inside a phase).

    Returns:
        A permutation of range(len(lengths)).
    """
    rng = random.Random(seed)
    perm = list(range(len(lengths)))
    rng.shuffle(perm)
    size = mega_batches * batch_size
    batches = []
    for m in range(0, len(perm), size):
        mega = sorted(perm[m: m + size], key=lambda i: lengths[i], reverse=True)
        batches += [mega[b: b + batch_size] for b in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    if batches:
        first = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(first))
    return [i for b in batches for i in b]


def short_pass_attention(input_ids, max_len: int):
    """A context for one forward pass: SDPA's math backend when the pass runs on CPU with at most `max_len`
    positions (input_ids [B, T], T <= max_len), else a null context.

    On CPU, PyTorch's flash-attention kernel has a slow backward for short sequences: in a SmolLM2-135M LoRA step on
    8 rows of ~140 tokens it took ~18% of the step, while the math backend (matmul, softmax, matmul; O(T^2)
    memory, hence the length limit) ran the same step ~12% faster. Both compute the same attention. Only
    `F.scaled_dot_product_attention` reads the choice (attn_implementation="sdpa", the default of `load_model`).
    """
    if max_len <= 0 or input_ids.device.type != "cpu" or input_ids.shape[-1] > max_len:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _trainer_class(response_head: bool, max_batch_tokens: int, bucket: bool, math_attention_max_len: int = 0):
    """SFTTrainer, or a subclass with `response_head_loss`, micro-batches capped by `split_batch`, the
    `bucket_order` sampler and/or SDPA's math backend for short CPU passes (`short_pass_attention`)."""
    import torch
    from trl import SFTTrainer

    if not response_head and max_batch_tokens <= 0 and not bucket and math_attention_max_len <= 0:
        return SFTTrainer

    class BucketSampler(torch.utils.data.Sampler):
        """`bucket_order` of the dataset's "length" column, reshuffled each epoch (seed + epoch)."""

        def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
            self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return len(self.lengths)

        def __iter__(self):
            return iter(bucket_order(self.lengths, self.batch_size, self.seed + self.epoch))

    class PhaseSFTTrainer(SFTTrainer):
        """SFTTrainer with the response-only LM head (logs the loss only: no entropy / token accuracy metrics) and
        batches above train.max_batch_tokens run as several forward/backward passes of one optimizer step; short CPU
        passes use SDPA's math backend (`short_pass_attention`)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # The attention backend is fixed at forward time; autograd runs the matching backward.
            with short_pass_attention(inputs["input_ids"], math_attention_max_len):
                if not response_head:
                    return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                loss, outputs = response_head_loss(model, inputs, num_items_in_batch,
                                                   self.accelerator.num_processes,
                                                   self.args.average_tokens_across_devices)
            return (loss, outputs) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if not bucket or "length" not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            return BucketSampler(dataset["length"], self.args.per_device_train_batch_size, self.args.data_seed
                                 if self.args.data_seed is not None else self.args.seed)

        def training_step(self, model, inputs, num_items_in_batch=None):
            parts = split_batch(inputs, max_batch_tokens)
            # Without a token count for the whole step the loss is a per-pass mean: splitting would reweight it.
            if len(parts) == 1 or num_items_in_batch is None:
                return super().training_step(model, inputs, num_items_in_batch)
            total = 0.0
            for i, part in enumerate(parts):
                # One gradient all-reduce per step (DDP): the passes before the last one accumulate locally.
                sync = i == len(parts) - 1
                with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                    total = total + super().training_step(model, part, num_items_in_batch)
            return total

    return PhaseSFTTrainer


def train_phase(cfg: Config, rows: list[dict], tokenizer, phase_dir: Path, init_dir: str | None, hp: dict,
                seed: int, label: str, prev_optimizer: Path | None = None, callbacks: Sequence = ()) -> dict:
    """Train one phase: a fresh SFTTrainer run from `init_dir` (None = the base model) on pre-tokenised rows.

    Resumes from the last Trainer checkpoint in `phase_dir/trainer/` when one exists (an interrupted phase).
    Writes the model/adapter + tokenizer, hparams.json, losses.jsonl (and optimizer.pt with carry_optimizer) and
    finally DONE into `phase_dir` (main process only), then waits for all ranks.

    Returns:
        The train metrics written to DONE (train_loss: mean per-step loss of the whole phase, also after a resume;
        train_runtime, tokens (non-padding, all ranks), wall_seconds, global_step, resumed_from).
    """
    import torch
    from datasets import Dataset
    from transformers import set_seed

    from phased_ift.modeling import resolve_model_path

    base = resolve_model_path(cfg.model.name_or_path)
    trainer_dir = phase_dir / TRAINER_SUBDIR
    save_steps = cfg.train.save_steps if cfg.train.save_steps > 0 else 10**9
    # The training arguments come first: under DeepSpeed ZeRO-3 they make from_pretrained load the weights sharded.
    args = _sft_config(cfg, hp, trainer_dir, seed, save_steps)
    set_seed(seed)  # the LoRA initialisation of phase 1 is seeded too
    model = _model_for_phase(cfg, init_dir, base)
    columns = ["input_ids", "labels", "attention_mask", "length"] if cfg.train.batching != "packing" else \
        ["input_ids", "labels"]
    dataset = Dataset.from_list([{c: r[c] for c in columns} for r in rows])
    bucket = args.train_sampling_strategy == "group_by_length"  # _sft_config's choice: replaced by bucket_order
    # Not with activation checkpointing: its recomputation runs outside compute_loss, and torch's checkpoint
    # refuses a recomputed forward that saves other tensors than the first one did.
    math_len = 0 if cfg.train.gradient_checkpointing else cfg.train.math_attention_max_len
    trainer_cls = _trainer_class(uses_response_head(cfg.train.lm_head), cfg.train.max_batch_tokens, bucket, math_len)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[_progress_callback(label), *callbacks])
    # disable_tqdm makes Trainer print every log dict to stdout; the rich bar and losses.jsonl replace that.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    resume = last_complete_checkpoint(trainer_dir)
    if resume is None and prev_optimizer is not None and prev_optimizer.is_file():
        # carry_optimizer: the AdamW moments continue; the learning rate and schedule restart for this phase.
        trainer.create_optimizer()
        trainer.optimizer.load_state_dict(torch.load(prev_optimizer, weights_only=True))
        for group in trainer.optimizer.param_groups:
            group["lr"] = hp["learning_rate"]
            group.pop("initial_lr", None)
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(out.metrics)
    metrics["tokens"] = int(trainer.state.num_input_tokens_seen)
    metrics["wall_seconds"] = time.perf_counter() - t0
    metrics["resumed_from"] = resume
    metrics["global_step"] = trainer.state.global_step
    if resume is not None and (mean := logged_mean_loss(trainer.state.log_history)) is not None:
        # transformers 5 averages train_loss over the steps of this call only (0.0 when the checkpoint was the
        # phase's last step); the restored log history covers the whole phase.
        metrics["train_loss"] = mean
    merge = cfg.train.method == "lora" and cfg.train.lora.across_phases == "merge"
    if merge:
        merged = trainer.model.merge_and_unload()
    else:
        # Every rank calls save_model: under ZeRO-3 / FSDP gathering the weights is collective; it writes on rank 0.
        trainer.save_model(str(phase_dir))
    if trainer.is_world_process_zero():
        phase_dir.mkdir(parents=True, exist_ok=True)
        if merge:
            merged.save_pretrained(phase_dir)
        tokenizer.save_pretrained(phase_dir)
        if cfg.train.carry_optimizer:
            torch.save(trainer.optimizer.state_dict(), phase_dir / "optimizer.pt")
        kind = "full" if cfg.train.method == "full" or merge else "adapter"
        hparams = {**hp, "seed": seed, "examples": len(rows), "init_from": init_dir or base, "base_model": base,
                   "checkpoint_kind": kind, "world_size": trainer.args.world_size}
        (phase_dir / "hparams.json").write_text(json.dumps(hparams, indent=2), encoding="utf-8")
        # log_history is restored from the Trainer checkpoint on resume, so the losses equal an uninterrupted run's.
        from phased_ift.data import write_jsonl

        write_jsonl(phase_dir / "losses.jsonl",
                    ({"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate"),
                      "epoch": h.get("epoch")} for h in trainer.state.log_history if "loss" in h))
        tmp = phase_dir / "DONE.tmp"
        tmp.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        tmp.replace(phase_dir / "DONE")
        shutil.rmtree(trainer_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return metrics


def logged_mean_loss(log_history: Sequence[dict]) -> float | None:
    """Step-weighted mean of the logged training losses: an entry at step s averages the steps after the previous
    entry up to s. Over every step when logging_steps divides the phase's steps (the default logging_steps=1 always
    does); None when nothing was logged."""
    prev, total, steps = 0, 0.0, 0
    for h in log_history:
        if "loss" in h:
            total += h["loss"] * (h["step"] - prev)
            steps += h["step"] - prev
            prev = h["step"]
    return total / steps if steps else None


def last_complete_checkpoint(trainer_dir: Path) -> str | None:
    """The newest Trainer checkpoint that was written to the end, or None.

    A kill -9 while Trainer saves leaves a `checkpoint-N` dir without `trainer_state.json` (Trainer writes it after
    the weights, optimizer and RNG state, with a plain non-atomic `open(..., "w")`, so it can also be empty or cut
    short); transformers' `get_last_checkpoint` would pick such a dir and `train()` would then fail, so incomplete
    dirs are removed here and the previous complete one is used.
    """
    if not trainer_dir.is_dir():
        return None
    ckpts = sorted((d for d in trainer_dir.glob("checkpoint-*") if d.name.split("-")[-1].isdigit()),
                   key=lambda d: int(d.name.split("-")[-1]), reverse=True)
    for d in ckpts:
        try:
            json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
            return str(d)
        except (OSError, ValueError):  # missing, empty or truncated: the save was interrupted
            shutil.rmtree(d, ignore_errors=True)
    return None


def is_done(phase_dir: Path) -> bool:
    """Whether a phase finished (its DONE marker exists)."""
    return (phase_dir / "DONE").is_file()


def train_arm(cfg: Config, run: RunDir, arm: str, seed: int, tokenizer=None, console=None,
              callbacks: Sequence = ()) -> list[Path]:
    """Train one arm for one seed: a plain loop over its phases, each from the previous phase's saved weights.

    Finished phases (DONE) are skipped; an unfinished phase resumes from its last Trainer checkpoint.

    Returns:
        The phase dirs, in order.
    """
    from phased_ift.modeling import load_tokenizer

    k = read_manifest(run)["k"]
    phases = arm_phases(run, arm, k, seed)
    tokenizer = tokenizer or load_tokenizer(cfg.model.name_or_path)
    dirs, prev = [], None
    for i, examples in enumerate(phases, 1):
        phase_dir = run.checkpoint(arm, i, seed)
        dirs.append(phase_dir)
        if not is_done(phase_dir):
            hp = phase_hparams(cfg, arm, i)
            rows = tokenize_examples(tokenizer, examples, cfg.model.template, cfg.model.max_length)
            prev_opt = prev / "optimizer.pt" if (prev is not None and cfg.train.carry_optimizer) else None
            m = train_phase(cfg, rows, tokenizer, phase_dir, str(prev) if prev else None, hp, seed,
                            f"{arm} seed {seed} phase {i}/{len(phases)}", prev_opt, callbacks)
            gc.collect()  # the Trainer holds reference cycles: free the phase's model before loading the next
            if console is not None and _is_main():
                console.print(f"train: {arm} seed {seed} phase {i}/{len(phases)}: {len(rows)} examples, "
                              f"{m['global_step']} steps, loss {m.get('train_loss', float('nan')):.4f}, "
                              f"{m['tokens'] / max(m['wall_seconds'], 1e-9):.0f} tokens/s -> {phase_dir}")
        prev = phase_dir
    return dirs


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train_phases(cfg: Config, run: RunDir, console=None, callbacks: Sequence = ()) -> dict[str, dict[int, list[Path]]]:
    """Train every arm in cfg.train.arms for every seed in cfg.train.seeds (see `train_arm`).

    Args:
        callbacks: extra transformers TrainerCallbacks added to every phase's trainer (e.g. for inspection).

    Returns:
        {arm: {seed: [phase dirs]}}.
    """
    import torch

    from phased_ift.modeling import load_tokenizer

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    out: dict[str, dict[int, list[Path]]] = {}
    for arm in cfg.train.arms:
        for seed in cfg.train.seeds:
            out.setdefault(arm, {})[seed] = train_arm(cfg, run, arm, seed, tokenizer, console, callbacks)
    return out
