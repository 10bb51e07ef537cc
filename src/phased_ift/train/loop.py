"""The phase loop: every arm x seed, phase after phase, each phase from the previous phase's saved weights.

Owns the protocol of a phase dir `checkpoints/<arm>/seed_<s>/phase_<k>/` (its files are `phasedir.PhaseDir`'s):
what goes into `hparams.json` (`PhaseHparams` + seed, examples, init_from, base_model, checkpoint_kind, world_size,
distributed: the backend that ran, `sharded.Backend`), `losses.jsonl` and `DONE` (the train metrics, written last
by `PhaseDir.write`: a phase with DONE is finished and skipped), and the Trainer
checkpoints in `trainer/` that an interrupted phase resumes from (`last_complete_checkpoint`, which skips torn ones;
deleted once the phase is DONE), and whether train.method can run here (`require_method_support`). SIGTERM /
SIGINT (`shutdown`) stop a phase after the current step with a Trainer checkpoint (`callbacks.StopOnSignal`, then
`shutdown.Stopped`), or the loop before the next phase. What each arm trains on comes from `design.ARMS`.
With train.report_to, `train_arm` opens one tracking run per arm x seed (`tracking.ArmTracker`) and gives each phase
it trains its step offset (`phasedir.step_offsets`: the DONE global_steps of the phases before it).

No torch / transformers / trl at module level: `train.trainer` and `train.callbacks` are imported when a phase
trains.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from phased_ift import integrity, modeling, shutdown  # modeling.load_tokenizer: tests patch it
from phased_ift.config import Config
from phased_ift.data import Example
from phased_ift.phases.design import get_arm, phase_count, training_cells
from phased_ift.diskerrors import writing
from phased_ift.errors import PhasedIFTError
from phased_ift.modeling import release_memory
from phased_ift.phasedir import PhaseDir, step_offsets
from phased_ift.rundir import RunDir
from phased_ift.train import sharded
from phased_ift.train.plan import PhaseHparams, phase_hparams, print_plan, tokenize_examples

TRAINER_SUBDIR = "trainer"


def train_phases(cfg: Config, run: RunDir, console=None, callbacks: Sequence = ()) -> dict[str, dict[int, list[Path]]]:
    """Train every arm in cfg.train.arms for every seed in cfg.train.seeds (see `train_arm`).

    Args:
        callbacks: extra transformers TrainerCallbacks added to every phase's trainer (e.g. for inspection).

    Returns:
        {arm: {seed: [phase dirs]}}.
    Raises:
        PhasedIFTError: see `train_arm`.
    """
    import torch

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    tokenizer = modeling.load_tokenizer(cfg.model.name_or_path)
    out: dict[str, dict[int, list[Path]]] = {}
    for arm in cfg.train.arms:
        for seed in cfg.train.seeds:
            out.setdefault(arm, {})[seed] = train_arm(cfg, run, arm, seed, tokenizer, console, callbacks)
    return out


def train_arm(cfg: Config, run: RunDir, arm: str, seed: int, tokenizer=None, console=None,
              callbacks: Sequence = ()) -> list[Path]:
    """Train one arm for one seed: a plain loop over its phases (`Arm.phase_data`), each from the previous
    phase's saved weights.

    Finished phases (DONE) are skipped; an unfinished phase resumes from its last Trainer checkpoint. With
    train.report_to, phase k reports at the steps after those of phases 1..k-1 (`tracking.PhaseReporter`).

    Returns:
        The phase dirs, in order.
    Raises:
        PhasedIFTError: the split has not run (no phases/manifest.json); a phase file of the arm is missing; the
            package of train.report_to is not installed; train.method=qlora without a CUDA GPU or bitsandbytes
            while a phase is still to train (`require_method_support`, before any weights load).
    """
    if not run.phases_manifest.is_file():
        raise PhasedIFTError(f"train: {run.phases_manifest} does not exist; run `phased-ift split CONFIG` first.")
    require_method_support(cfg, run, [arm], [seed])
    tracker = _tracker(cfg, run, arm, seed)
    phases = get_arm(arm).phase_data(run, phase_count(cfg, run), seed, cfg.train)
    tokenizer = tokenizer or modeling.load_tokenizer(cfg.model.name_or_path)
    dirs: list[Path] = []
    prev = None
    try:
        for i, examples in enumerate(phases, 1):
            phase_dir = run.checkpoint(arm, i, seed)
            dirs.append(phase_dir)
            if not PhaseDir(phase_dir).done:
                shutdown.check(f"before phase {i}/{len(phases)} of {arm} seed {seed} (phases 1-{i - 1} are DONE)")
                offset = step_offsets(dirs)[-1]  # the DONE global_steps of phases 1..i-1 (`phasedir.step_offsets`)
                cbs = [*callbacks, tracker.reporter(i, offset)] if tracker is not None else callbacks
                _train_and_log(cfg, arm, seed, i, len(phases), examples, tokenizer, phase_dir, prev, console, cbs)
            prev = phase_dir
    finally:
        if tracker is not None:
            tracker.close()
    return dirs


def require_method_support(cfg: Config, run: RunDir, arms: Sequence[str] | None = None,
                           seeds: Sequence[int] | None = None) -> None:
    """Fail before any weights load when train.method cannot run on this machine and a phase of `arms` x `seeds`
    (default: the config's) still has to train: qlora needs a CUDA GPU and bitsandbytes (`modeling.require_qlora`).

    Raises:
        PhasedIFTError: naming the fix (train.method=lora on a CPU, or `pip install bitsandbytes`).
    """
    if cfg.train.method != "qlora":
        return

    todo = [c for c in training_cells(cfg, run) if (arms is None or c.arm in arms) and (seeds is None or c.seed in seeds)
            and not PhaseDir(run.checkpoint(c.arm, c.phase, c.seed)).done]
    if todo:
        modeling.require_qlora()


def _tracker(cfg: Config, run: RunDir, arm: str, seed: int):
    """The `tracking.ArmTracker` of an arm x seed, or None with train.report_to=none.

    Raises:
        PhasedIFTError: the tracking package is missing (names the `pip install`).
    """
    if cfg.train.report_to == "none":
        return None
    from phased_ift.train import tracking

    tracking.require(cfg.train.report_to)
    return tracking.ArmTracker(cfg.train.report_to, run.tracking(arm, seed), f"{arm}-seed{seed}",
                               run.tracking_dir / "wandb", {"arm": arm, "seed": seed, "run_dir": str(run.root)})


def _train_and_log(cfg: Config, arm: str, seed: int, i: int, n: int, examples: list[Example], tokenizer,
                   phase_dir: Path, prev: Path | None, console, callbacks: Sequence) -> None:
    """Tokenise and train phase i of n of an arm from `prev` (None = the base model); print its summary line."""
    hp = phase_hparams(cfg, arm, i)
    rows = tokenize_examples(tokenizer, examples, cfg.model.template, cfg.model.max_length)
    prev_opt = prev / "optimizer.pt" if (prev is not None and cfg.train.carry_optimizer) else None
    m = train_phase(cfg, rows, tokenizer, phase_dir, str(prev) if prev else None, hp, seed,
                    f"{arm} seed {seed} phase {i}/{n}", prev_opt, callbacks)
    release_memory()  # the Trainer holds reference cycles, glibc keeps freed memory: free both before the next
    if console is not None and _is_main():
        console.print(f"train: {arm} seed {seed} phase {i}/{n}: {len(rows)} examples, "
                      f"{m['global_step']} steps, loss {m.get('train_loss', float('nan')):.4f}, "
                      f"{m['tokens'] / max(m['wall_seconds'], 1e-9):.0f} tokens/s -> {phase_dir}")


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train_phase(cfg: Config, rows: list[dict], tokenizer, phase_dir: Path, init_dir: str | None, hp: PhaseHparams,
                seed: int, label: str, prev_optimizer: Path | None = None, callbacks: Sequence = ()) -> dict:
    """Train one phase: a fresh SFTTrainer run from `init_dir` (None = the base model) on pre-tokenised rows.

    Resumes from the last Trainer checkpoint in `phase_dir/trainer/` when one exists (an interrupted phase); else
    with `prev_optimizer` (train.carry_optimizer) the previous phase's AdamW state continues. Writes the
    model/adapter + tokenizer, hparams.json, losses.jsonl (and optimizer.pt with carry_optimizer) and finally DONE
    into `phase_dir` (main process only), then waits for all ranks.

    Under FSDP / ZeRO-3 the setup is checked before training (`sharded.check_backend`) and the saved weights are
    checked to be complete before DONE (`sharded.verify_saved_weights`, in `trainer.save_phase_weights`).

    Returns:
        The train metrics written to DONE (train_loss: mean per-step loss of the whole phase, also after a resume;
        train_runtime, tokens (non-padding, all ranks), wall_seconds, global_step, resumed_from).
    Raises:
        PhasedIFTError: a sharded setup that cannot save complete weights; an incomplete save (no DONE written).
        DiskWriteError: the disk refused a Trainer checkpoint or the phase's save (full, quota, read-only,
            permission); no DONE is written and the same command resumes from the last complete checkpoint.
    """
    from phased_ift.train import trainer as tr
    from phased_ift.train.callbacks import NoFinalSave, RichProgress, StopOnSignal

    base = modeling.resolve_model_path(cfg.model.name_or_path)
    trainer_dir = phase_dir / TRAINER_SUBDIR
    stop = StopOnSignal()
    trainer = tr.build_trainer(cfg, rows, tokenizer, init_dir, base, hp, seed, trainer_dir,
                               [RichProgress(label), NoFinalSave(), stop, *callbacks])
    merge = cfg.train.method == "lora" and cfg.train.lora.across_phases == "merge"
    backend = sharded.backend_of(trainer.accelerator)
    sharded.check_backend(backend, carry_optimizer=cfg.train.carry_optimizer, merge=merge,
                          config_hint=cfg.train.deepspeed or "the DeepSpeed JSON of the accelerate config")
    resume = last_complete_checkpoint(trainer_dir)
    if resume is None and prev_optimizer is not None and prev_optimizer.is_file():
        tr.load_optimizer_state(trainer, prev_optimizer, hp.learning_rate)
    full = cfg.train.method == "full" or merge
    with writing(trainer_dir, *save_bytes(trainer.model, full, optimizer=True)):  # train.save_steps checkpoints
        metrics = _run(trainer, resume)
    _raise_if_stopped(trainer, stop, label, trainer_dir)
    with writing(phase_dir, *save_bytes(trainer.model, full, cfg.train.carry_optimizer)):
        tr.save_phase_weights(trainer, tokenizer, phase_dir, merge, cfg.train.carry_optimizer, backend.name)
    if trainer.is_world_process_zero():
        kind = "full" if full else "adapter"
        hparams = {**asdict(hp), "seed": seed, "examples": len(rows), "init_from": init_dir or base,
                   "base_model": base, "checkpoint_kind": kind, "world_size": trainer.args.world_size,
                   "distributed": backend.name}
        PhaseDir(phase_dir).write(hparams, trainer.state.log_history, metrics)
        shutil.rmtree(trainer_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return metrics


def _raise_if_stopped(trainer, stop, label: str, trainer_dir: Path) -> None:
    """After a phase that SIGTERM / SIGINT stopped mid-way (`callbacks.StopOnSignal`): wait until every rank has
    written its part of the Trainer checkpoint, then raise `shutdown.Stopped` (no weights, no DONE).

    Raises:
        Stopped: naming the step, the checkpoint and the exit status 128 + signal.
    """
    if stop.stopped_at is None:
        return
    trainer.accelerator.wait_for_everyone()
    ckpt = trainer_dir / f"checkpoint-{stop.stopped_at}"
    raise shutdown.Stopped(f"{label} at step {stop.stopped_at} of {trainer.state.max_steps}; its Trainer "
                           f"checkpoint is {ckpt} (no DONE: the same command resumes the phase from that step)",
                           stop.signum)


def save_bytes(model, full: bool, optimizer: bool) -> tuple[int | None, str]:
    """An estimate of what a save of `model` writes, and its note for `diskerrors.writing`: every parameter
    (`full`) or the trainable ones (an adapter), + AdamW's two fp32 moments of the trainable ones (`optimizer`)."""
    try:
        params = list(model.parameters())
    except Exception:  # not a torch module (a stub): no estimate
        return None, ""
    trainable = [p for p in params if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in (params if full else trainable))
    moments = 8 * sum(p.numel() for p in trainable) if optimizer else 0
    what = ("full model" if full else "adapter") + (" + optimizer state" if optimizer else "")
    return weights + moments, f" (estimate: the {what})"


def _run(trainer, resume: str | None) -> dict[str, Any]:
    """`trainer.train` (from `resume` when given) and the phase's metrics for DONE."""
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
    dirs are removed here and the previous complete one is used. So is a dir whose weight, optimizer or RNG file
    is empty or cut short (`integrity.complete`: a half-copied run dir), with a note on stderr; without any
    complete checkpoint the phase trains from its start.
    """
    if not trainer_dir.is_dir():
        return None
    ckpts = sorted((d for d in trainer_dir.glob("checkpoint-*") if d.name.split("-")[-1].isdigit()),
                   key=lambda d: int(d.name.split("-")[-1]), reverse=True)
    for d in ckpts:
        try:
            json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, empty or truncated: the save was interrupted
            shutil.rmtree(d, ignore_errors=True)
            continue
        torn = next(((f, why) for f in integrity.weight_files(d) if (why := integrity.complete(f))), None)
        if torn is None:
            return str(d)
        print(f"note: {torn[0]} is {torn[1]}; Trainer checkpoint {d.name} is removed and the phase resumes from an "
              f"earlier one (or its start).", file=sys.stderr)
        shutil.rmtree(d, ignore_errors=True)
    return None


def train_step(cfg: Config, run: RunDir, dry_run: bool = False, console: Any = None) -> None:
    """The train step's body (`pipeline.STEPS` orders it): every configured arm and seed, phase by phase ->
    checkpoints/ (`train_phases`); dry_run: the training plan (`train.plan.print_plan`), no weights."""
    if dry_run:
        print_plan(cfg, run, console=console)
        return
    train_phases(cfg, run, console=console)
