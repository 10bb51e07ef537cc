"""The phase folder `checkpoints/<arm>/seed_<s>/phase_<k>/` and its files, one owner for all of them.

    from phased_ift.phasedir import PhaseDir, step_offsets
    ph = PhaseDir(run.checkpoint("phased", 2, 0))
    ph.done, ph.global_step, ph.losses()

A phase dir holds the weights (the model or LoRA adapter + tokenizer, optimizer.pt with train.carry_optimizer),
`hparams.json` (the resolved hyperparameters, `train.plan.PhaseHparams` + seed, examples, init_from, ...),
`losses.jsonl` ({"step", "loss", "learning_rate", "epoch"} per logged step) and `DONE` (the train metrics, with
"global_step", and the weight files' sizes and sha256, `integrity.record`), written last by `write`: a phase with
DONE is finished. The Trainer checkpoints of an unfinished phase live in its `trainer/` subdir (`train.loop`).

One definition of a phase's step offset (`step_offsets`): the optimizer steps of the earlier phases of its arm x
seed, summed from their DONE "global_step" (`PhaseDir.global_step`). It is the x where a phase starts on a loss
curve (`report.summary`) and in a tracking run (`train.loop`); the last *logged* step is not it when
train.logging_steps does not divide a phase.

Owns: `PhaseDir` (done, the DONE record and its global_step, hparams.json, losses.jsonl, the weight check, writing
the files), `step_offsets` and `finished_checkpoint` (a phase that must have finished). The DONE file itself is read by `integrity.read_done` (also the converted-model
cache's marker).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from phased_ift import integrity
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_json, read_jsonl, write_jsonl

HPARAMS, LOSSES = "hparams.json", "losses.jsonl"


@dataclass(frozen=True)
class PhaseDir:
    """One phase folder; `path` need not exist yet."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def done(self) -> bool:
        """Whether the phase finished (its DONE marker exists)."""
        return (self.path / integrity.DONE).is_file()

    def done_record(self) -> dict[str, Any]:
        """DONE's content (the train metrics and "weights"); {} when DONE is missing or not a JSON object."""
        done = integrity.read_done(self.path)
        return done if isinstance(done, dict) else {}

    @property
    def global_step(self) -> int:
        """The optimizer steps the phase took: DONE's "global_step"; the last logged step of losses.jsonl when DONE
        does not record it (a DONE written by hand or by an old version); 0 when the phase has not finished."""
        if not self.done:
            return 0
        try:
            return int(self.done_record()["global_step"])
        except (KeyError, TypeError, ValueError):
            return max((int(r["step"]) for r in self.losses() if "step" in r), default=0)

    @property
    def hparams_file(self) -> Path:
        return self.path / HPARAMS

    @property
    def losses_file(self) -> Path:
        return self.path / LOSSES

    def hparams(self) -> dict[str, Any]:
        """hparams.json; {} when it is missing."""
        if not self.hparams_file.is_file():
            return {}
        return json.loads(self.hparams_file.read_text(encoding="utf-8"))

    def losses(self) -> list[dict[str, Any]]:
        """The rows of losses.jsonl ([] when it is missing; a torn last line is skipped).

        Raises:
            PhasedIFTError: a line that is not JSON (names the file and line, and the fix).
        """
        if not self.losses_file.is_file():
            return []
        try:
            return list(read_jsonl(self.losses_file, tolerate_torn_tail=True))
        except json.JSONDecodeError as e:
            raise PhasedIFTError(f"{self.losses_file}: line {e.lineno} is not valid JSON ({e.msg}); fix or delete the "
                                 f"file and re-run the step that writes it.") from None

    def verify_weights(self) -> None:
        """Check the weight files against DONE's record (`integrity.verify`)."""
        integrity.verify(self.path)

    def write(self, hparams: dict, log_history: Iterable[dict], metrics: dict) -> None:
        """hparams.json, losses.jsonl (the logged losses of `log_history`) and last DONE (`metrics`, atomically, with
        "weights": the size and sha256 of each weight file, `integrity.record`, checked before the phase loads)."""
        atomic_write_json(self.hparams_file, hparams, indent=2)
        write_jsonl(self.losses_file,
                    ({"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate"),
                      "epoch": h.get("epoch")} for h in log_history if "loss" in h))
        atomic_write_json(self.path / integrity.DONE, {**metrics, "weights": integrity.record(self.path)}, indent=2)


def step_offsets(phases: Sequence[PhaseDir | Path]) -> list[int]:
    """The step offset of each phase of one arm x seed, given in phase order (phase 1 first): the summed DONE
    global_step of the phases before it (0 for phase 1; an unfinished earlier phase counts 0)."""
    out, total = [], 0
    for ph in phases:
        out.append(total)
        total += (ph if isinstance(ph, PhaseDir) else PhaseDir(ph)).global_step
    return out


def finished_checkpoint(run: RunDir, arm: str, k: int, seed: int) -> Path:
    """The checkpoint dir of phase k of `arm` trained with `seed`, which must have finished (its DONE marker).

    Raises:
        PhasedIFTError: the phase has not finished training (names it and the fix).
    """
    d = run.checkpoint(arm, k, seed)
    if not PhaseDir(d).done:
        raise PhasedIFTError(f"{d} has no DONE marker: arm {arm!r} phase {k} seed {seed} has not finished "
                             "training; run `phased-ift train` (it resumes) before generating.")
    return d
