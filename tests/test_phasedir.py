"""The phase folder's one owner (`phasedir.PhaseDir`) and the one definition of a phase's step offset."""

from __future__ import annotations

import json
from pathlib import Path

from phased_ift.phasedir import PhaseDir, step_offsets
from phased_ift.report.summary import _summarize_training
from phased_ift.rundir import RunDir


def _phase(run: RunDir, k: int, steps: int, logging_steps: int, seed: int = 0) -> PhaseDir:
    """A finished phase of `steps` optimizer steps whose losses were logged every `logging_steps`."""
    ph = PhaseDir(run.checkpoint("phased", k, seed))
    ph.path.mkdir(parents=True)
    (ph.path / "adapter_model.safetensors").write_bytes(b"")
    history = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-4, "epoch": 1.0}
               for s in range(logging_steps, steps + 1, logging_steps)]
    ph.write({"seed": seed}, history, {"global_step": steps, "train_loss": 0.5})
    return ph


def test_write_then_read_back(tmp_path):
    run = RunDir(tmp_path / "run")
    ph = _phase(run, 1, 4, 2)
    assert ph.done and ph.global_step == 4 and ph.hparams() == {"seed": 0}
    assert [r["step"] for r in ph.losses()] == [2, 4]
    assert set(json.loads((ph.path / "DONE").read_text())) == {"global_step", "train_loss", "weights"}
    assert not PhaseDir(tmp_path / "nowhere").done and PhaseDir(tmp_path / "nowhere").global_step == 0
    assert PhaseDir(tmp_path / "nowhere").losses() == [] and PhaseDir(Path("nowhere")).hparams() == {}


def test_step_offset_is_the_optimizer_steps_of_earlier_phases_when_logging_steps_does_not_divide(tmp_path):
    # 10, 7 and 5 steps logged every 3: the last logged steps are 9, 6 and 3, the optimizer steps 10, 7 and 5.
    run = RunDir(tmp_path / "run")
    phases = [_phase(run, k, steps, 3) for k, steps in enumerate((10, 7, 5), 1)]
    assert step_offsets(phases) == [0, 10, 17]
    assert step_offsets([p.path for p in phases]) == [0, 10, 17]  # train.loop passes paths
    curve = _summarize_training(run)["phased"]["0"]
    assert [p["offset"] for p in curve] == [0, 10, 17]  # the report's x is train.loop's tracking step
    assert [p["steps"] for p in curve] == [10, 7, 5]
    assert [x for x, _ in curve[1]["points"]] == [13, 16]
    assert [x for x, _ in curve[2]["points"]] == [20]


def test_an_unfinished_earlier_phase_counts_zero_steps(tmp_path):
    run = RunDir(tmp_path / "run")
    first = PhaseDir(run.checkpoint("phased", 1, 0))
    first.path.mkdir(parents=True)
    second = _phase(run, 2, 4, 1)
    assert step_offsets([first, second]) == [0, 0]
