"""Trainer callbacks of a phase: the rich progress bar (steps, rate, ETA, last loss) on the main process.

Imports transformers at module level; `train.loop` imports it only when a phase trains.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback


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

        from phased_ift.progress import LoggedProgress

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
