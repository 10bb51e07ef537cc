"""Phased training: a plain loop over phases, one TRL `SFTTrainer` run per phase from the previous phase's weights.

    phased-ift train CONFIG [key=value ...]            train every arm in train.arms for every seed in train.seeds
    phased-ift train CONFIG --dry-run                  examples, tokens and optimizer steps per phase (no weights)
    accelerate launch --config_file configs/accelerate/ddp.yaml -m phased_ift.cli train CONFIG    (multi-process)

What each arm trains on (its phase files, phase count and per-phase schedule) is `phased_ift.phases.design.ARMS` (Pang et
al., ACL Findings 2024, Section 3-4). Each phase is a fresh `SFTTrainer` run (new optimiser and LR schedule unless
train.carry_optimizer) that starts from the previous phase's saved model or LoRA adapter. Resuming a Trainer
checkpoint across phases is never done (the step count and schedule would carry over); `resume_from_checkpoint` is
used only inside an interrupted phase. Each phase dir `checkpoints/<arm>/seed_<s>/phase_<k>/` holds the model or
adapter + tokenizer, `hparams.json`, `losses.jsonl` and `DONE` (written last; the files are `phasedir.PhaseDir`'s,
with the one definition of a phase's step offset, `phasedir.step_offsets`); Trainer checkpoints for resuming
live in its `trainer/` subdir and are deleted once the phase is DONE.

Batching (train.batching) and what it does to the order inside a phase:
    bucket   `bucket_order`: a seeded permutation cut into mega-batches of 50 batches, each sorted by length and cut
             into batches of similar length (padded only to their own longest row); the batches are then shuffled,
             the one with the longest example first. Random batch order, no length curriculum inside a phase.
    pad      TRL's default: random order, each batch padded to its longest row.
    packing  TRL padding-free packing (bfd): examples concatenated without padding, position ids restart per
             example so attention never crosses examples with flash-attention varlen kernels (GPU). bfd reorders
             examples longest-first. Slow on CPU (one long sequence per batch with an O(L^2) mask).
    train.order=sequential keeps the phase file's order (easy -> hard within a phase) with any batching.
    An arm with its own sampler (`design.Arm.sampler`: sorted, competence) overrides order and batching.

The package, one concern per module:
    plan       `PhaseHparams` (a phase's resolved hyperparameters, hparams.json), tokenisation, steps, the dry-run
               plan (`plan_training`, `print_plan`); no torch
    loop       `train_phases` / `train_arm` / `train_phase`, what goes into the phase dir (`phasedir.PhaseDir`)
               and resume (`last_complete_checkpoint`, `logged_mean_loss`); no torch at import
    trainer    `PhaseSFTTrainer`, `sft_config`, `response_head_loss`, `split_batch`, `bucket_order`,
               `short_pass_attention`, building and saving a phase's trainer (imports torch / trl)
    samplers   `SAMPLERS`: the orders an arm can choose inside a phase (`design.Arm.sampler`: sequential, the
               competence curriculum `CompetenceSampler`), used by `PhaseSFTTrainer` (imports torch)
    sharded    the phase handoff under FSDP / ZeRO-3: the backend that runs, the refusals before a phase
               trains, the full-state-dict save and the completeness check of each phase's saved weights
    callbacks  the rich progress bar of a phase (imports transformers)
    disk       the disk space training still needs, estimated from the model's file headers before any weights
               load (`estimate_disk_need`, the plan's disk line; no torch)
    tracking   train.report_to: one TensorBoard / wandb run per arm x seed, each phase at its step offset
               (`ArmTracker`, `PhaseReporter`; imports transformers, loaded only when report_to is not none)

`import phased_ift.train` loads no torch / transformers / trl: the names of `trainer` below are imported on first
use (PEP 562 `__getattr__`).
"""

from __future__ import annotations

from typing import Any

from phased_ift.modeling import frozen_base_to_bf16
from phased_ift.train.loop import (TRAINER_SUBDIR, last_complete_checkpoint, logged_mean_loss, require_method_support,
                                   train_arm, train_phase, train_phases, train_step)
from phased_ift.train.plan import (PhaseHparams, phase_hparams, plan_training, print_plan, steps_per_phase,
                                   token_counter, tokenize_examples)

_TRAINER_NAMES = ("BucketSampler", "PhaseSFTTrainer", "bucket_order", "build_trainer", "response_head_loss",
                  "sft_config", "short_pass_attention", "split_batch", "uses_response_head")

__all__ = ["TRAINER_SUBDIR", "PhaseHparams", "frozen_base_to_bf16", "last_complete_checkpoint",
           "logged_mean_loss", "phase_hparams", "plan_training", "print_plan", "require_method_support",
           "steps_per_phase", "token_counter", "tokenize_examples", "train_arm", "train_phase", "train_phases", "train_step",
           *_TRAINER_NAMES]


def __getattr__(name: str) -> Any:
    """The names of `phased_ift.train.trainer`, imported (with torch and trl) on first access."""
    if name in _TRAINER_NAMES:
        from phased_ift.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
