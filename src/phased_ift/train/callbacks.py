"""Trainer callbacks of a phase: the rich progress bar (steps, rate, ETA, last loss) on the main process, no
Trainer checkpoint at the last step (`NoFinalSave`: the phase saves its own weights), and the graceful stop on
SIGTERM / SIGINT (`StopOnSignal`: a Trainer checkpoint at the end of the current optimizer step, then stop).

Imports transformers at module level; `train.loop` imports it only when a phase trains.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback

from phased_ift import shutdown
from phased_ift.progress import LoggedProgress


class RichProgress(TrainerCallback):
    """A rich progress bar for one phase, labelled `label`, shown by the world-process-zero only; transient (gone
    when the phase ends, the loop prints a summary line instead)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress = None
        self.task = None

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                       TimeRemainingColumn(), TextColumn("loss {task.fields[loss]}"),
                                       transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=state.max_steps, completed=state.global_step,
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


class NoFinalSave(TrainerCallback):
    """Cancels the Trainer checkpoint transformers writes when a phase's last step is reached
    (`DefaultFlowCallback` sets `should_save` there under save_strategy="steps").

    That checkpoint (weights, optimizer and scheduler state: about 12 bytes per parameter with AdamW, ~84 GB for a
    7B model) would be deleted a moment later with the phase's trainer/ dir, since the phase's weights are saved by
    `trainer.save_phase_weights` and DONE marks the phase finished. Periodic checkpoints (train.save_steps) are kept:
    they are what resumes a phase after kill -9. Must come after DefaultFlowCallback (transformers adds its default
    callbacks first).
    """

    def on_step_end(self, args, state, control, **kw):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = False
        return control


class StopOnSignal(TrainerCallback):
    """Stops a phase at the end of the optimizer step during which SIGTERM / SIGINT arrived (`shutdown.requested`),
    with a Trainer checkpoint of that step (`control.should_save`, in the phase's trainer/ dir, like the
    train.save_steps ones): the same command resumes from it (`loop.last_complete_checkpoint`).

    Not at the phase's last step: the phase then finishes, saves its weights and DONE, and the loop stops before the
    next phase. Under several processes the decision is all-reduced (max of the signal numbers) at every step end,
    so every rank stops after the same step even when the launcher's signal reaches the ranks at different moments
    (a rank that stopped alone would leave the others waiting in the next step's gradient all-reduce).

    Attributes:
        stopped_at: the global step the phase stopped at, None while it did not stop.
        signum: the signal that stopped it (the largest over the ranks).
    """

    def __init__(self) -> None:
        self.stopped_at: int | None = None
        self.signum = 0

    def on_step_end(self, args, state, control, **kw):
        signum = _agreed(shutdown.requested(), args)
        if signum and state.global_step < state.max_steps:
            self.stopped_at, self.signum = state.global_step, signum
            control.should_save = True
            control.should_training_stop = True
        return control


def _agreed(signum: int, args) -> int:
    """The largest stop request over all ranks (this rank's own when training runs in one process)."""
    import torch
    import torch.distributed as dist

    if args.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return signum
    flag = torch.tensor([signum], dtype=torch.int64, device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
