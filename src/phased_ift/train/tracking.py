"""Experiment tracking (train.report_to): one TensorBoard or wandb run per arm x seed whose step axis runs on across
the phases.

Owns:
  * `require`: a PhasedIFTError naming the `pip install` when the package of train.report_to is missing.
  * `ArmTracker`: the run of one arm x seed: one `SummaryWriter` per process on `RunDir.tracking(arm, seed)`, opened
    by the first phase this process trains, or one wandb run named `<arm>-seed<s>` (offline unless WANDB_MODE says
    otherwise) under `RunDir.tracking_dir / "wandb"`; closed by `close` when the arm's phases end.
  * `PhaseReporter`: the TrainerCallback of one phase. It forwards the phase's events to transformers' own
    `TensorBoardCallback` / `WandbCallback` with `state.global_step` shifted by `offset` (the steps of phases
    1..k-1, from their DONE), so phase k's first step is phase k-1's last + 1, and adds `phase` to each loss log
    (`train/phase`; `train/learning_rate` comes from the Trainer's own logs).

Resume: transformers' callbacks log at `state.global_step` with no offset of their own, hence the shifted state. A
process that is killed mid-phase has written events past the Trainer checkpoint it will resume from (or, before the
first checkpoint, past the phase's start); the writer of the next process opens with `purge_step` = offset + the
resumed step + 1, and TensorBoard drops every older event at or after that step, so the curve shows each step once.
One writer per process (not one per phase): a writer per phase would start a new event file per phase, and
TensorBoard reads a run's files in name order, where the names of files opened in the same second sort by a counter
as text ("...10" before "...9").

Imports transformers at module level; `train.loop` imports this module only when train.report_to is not none.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback

from phased_ift.errors import PhasedIFTError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def require(kind: str) -> None:
    """Raise a PhasedIFTError naming the pip install when train.report_to=`kind` needs a package that is missing."""
    package = PACKAGES.get(kind)
    if package is not None and importlib.util.find_spec(package) is None:
        extra = " (or `pip install phased-ift[track]`)" if kind == "tensorboard" else ""
        raise PhasedIFTError(f"train.report_to={kind} needs the {package} package, which is not installed: run "
                             f"`pip install {package}`{extra}, or set train.report_to=none.")


class ArmTracker:
    """The tracking run of one arm x seed (see the module docstring): `kind` tensorboard (events in `log_dir`) or
    wandb (run `name` with `config`, files under `wandb_dir`). Opened lazily on the main process by the first
    `PhaseReporter`."""

    def __init__(self, kind: str, log_dir: Path, name: str, wandb_dir: Path, config: dict | None = None) -> None:
        self.kind, self.log_dir, self.name, self.wandb_dir = kind, Path(log_dir), name, Path(wandb_dir)
        self.config = dict(config or {})
        self.writer = None
        self.wandb_run = None

    def reporter(self, phase: int, offset: int) -> "PhaseReporter":
        """The callback of phase `phase`, whose steps start after global step `offset`."""
        return PhaseReporter(self, phase, offset)

    def tensorboard_writer(self, purge_step: int):
        """This process's SummaryWriter of the run, opened on first use with `purge_step` (TensorBoard hides the
        events at or after it that an earlier, killed process wrote)."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        return self.writer

    def start_wandb(self) -> None:
        """Start the wandb run (once); `WandbCallback` then logs into it instead of starting its own. Offline unless
        the environment sets WANDB_MODE; no API key is read or written here (wandb's own login does that)."""
        if self.wandb_run is not None:
            return
        import wandb

        self.wandb_dir.mkdir(parents=True, exist_ok=True)
        self.wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT", "phased-ift"), name=self.name,
                                    dir=str(self.wandb_dir), mode=os.environ.get("WANDB_MODE", "offline"),
                                    config=self.config)

    def close(self) -> None:
        """Close the writer / finish the wandb run (the arm's phases are over or training stopped)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


class PhaseReporter(TrainerCallback):
    """Forwards one phase's train-begin / log / train-end events to transformers' reporting callback of the
    tracker's kind with `state.global_step + offset`, on the world-process-zero only; adds `phase` to loss logs.

    The TensorBoard writer is the tracker's and stays open at the phase's end (flushed, not closed: a closed
    `SummaryWriter` reopens a new event file on the next write)."""

    def __init__(self, tracker: ArmTracker, phase: int, offset: int) -> None:
        self.tracker, self.phase, self.offset = tracker, phase, offset
        self.inner = None

    def _shifted(self, state):
        shifted = copy.copy(state)
        shifted.global_step = state.global_step + self.offset
        return shifted

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        if self.tracker.kind == "tensorboard":
            # state.global_step is the resumed checkpoint's step here (0 for a fresh phase)
            writer = self.tracker.tensorboard_writer(self.offset + state.global_step + 1)
            self.inner = TensorBoardCallback(tb_writer=writer)
        else:
            self.tracker.start_wandb()
            self.inner = WandbCallback()
        self.inner.on_train_begin(args, self._shifted(state), control, **kw)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.inner is None or not logs:
            return
        if "loss" in logs:
            logs = {**logs, "phase": self.phase}
        self.inner.on_log(args, self._shifted(state), control, logs=logs, **kw)

    def on_train_end(self, args, state, control, **kw):
        if self.inner is None:
            return
        if isinstance(self.inner, TensorBoardCallback):
            self.inner.tb_writer.flush()
        else:
            self.inner.on_train_end(args, self._shifted(state), control, **kw)
        self.inner = None
