"""The experiment design: the arms, what each one trains on, and the grid arm x seed x phase.

Owns:
  * `Arm` and the registry `ARMS` (refuses duplicate names). An arm says which phase files it trains on, how many
    phases it has, and whether the per-phase schedule (`train.phase_epochs`, `train.phase_learning_rates`)
    applies to it. Adding an arm is one `register_arm(Arm(...))` here plus its tests; no other module names an arm.
  * The phase count of a run (`phase_count`: the manifest's K once the split exists, else `phases.k`).
  * The grid: `training_cells` (every phase of every arm and seed), `evaluation_cells` (the final phase, or every
    phase with `generate.every_phase`) and `judge_jobs` (which generations are compared).

Arms (Pang et al. 2024, arXiv 2406.04371, section 3-4):
  phased   the paper's Phased IFT: phases/phase_1..K (easy -> hard), each phase from the previous weights.
  one-off  the paper's baseline, One-off IFT: the union of all phases, shuffled with the seed, one phase.
  random   the paper's control: K phases of the same sizes with random difficulty (phases/random/).
  reverse  hard -> easy: the phases in reverse order (phases/reverse/), the order ablation.

Reads only `phases/` through `RunDir`; the config is passed in (typed as `Config`, imported for type checks only,
so `config` can derive its choices from `ARMS`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from phased_ift.data import Example, read_examples
from phased_ift.errors import PhasedIFTError
from phased_ift.phases import ControlBuilder, random_control, read_manifest, reverse_control
from phased_ift.rundir import RunDir

if TYPE_CHECKING:
    from phased_ift.config import Config, TrainConfig



@dataclass(frozen=True)
class Arm:
    """One way of training on the split data.

    Attributes:
        name: the arm's name in configs and run-dir paths (`checkpoints/<name>/...`).
        description: one line for docs, plans and `phased-ift config`.
        source: where the arm comes from (paper and section).
        single_phase: trains once on the union of the phased split (one-off) instead of phase after phase.
        control: builds the arm's own phase files from the phased split, `(phases, seed) -> phases`, written to
            `phases/<name>/phase_<k>.jsonl` by the split step; None = the arm reads the phased files.
        phase_schedule: `train.phase_epochs` / `train.phase_learning_rates` apply by phase position (False: the
            arm uses `train.epochs` and `train.learning_rate`).
        baseline: the arm other arms are judged against by default (at most one).
        default: trained when `train.arms` is not set.
    """

    name: str
    description: str
    source: str
    single_phase: bool = False
    control: ControlBuilder | None = field(default=None, compare=False)
    phase_schedule: bool = True
    baseline: bool = False
    default: bool = False

    def n_phases(self, k: int) -> int:
        """Phases this arm trains when the split has k phases."""
        return 1 if self.single_phase else k

    def phase_files(self, run: RunDir, k: int) -> list[Path]:
        """The files this arm's phases are read from, in training order (one-off: all phased files, one phase)."""
        return [run.phase_file(i, self.name if self.control else None) for i in range(1, k + 1)]

    def phase_data(self, run: RunDir, k: int, seed: int = 0) -> list[list[Example]]:
        """The examples of each phase, in training order of phases (a list of phases, each in file order).

        Raises:
            PhasedIFTError: a phase file of the arm is missing (the split was made without this control).
        """
        files = self.phase_files(run, k)
        for path in files:
            if not path.is_file():
                raise PhasedIFTError(f"train: {path} does not exist; re-run `phased-ift split` with `{self.name}` "
                                     f"in train.arms so the control files are written.")
        phases = [read_examples(p) for p in files]
        return self.assemble(phases, seed)

    def assemble(self, phases: list[list[Example]], seed: int) -> list[list[Example]]:
        """This arm's phases from phase-ordered data (a single-phase arm joins them, shuffled with `seed`)."""
        if not self.single_phase:
            return phases
        union = [e for ph in phases for e in ph]
        random.Random(seed).shuffle(union)
        return [union]

    def schedule(self, t: "TrainConfig", phase: int) -> tuple[float, float]:
        """(epochs, peak learning rate) of a phase (1-based) under the train config."""
        if not self.phase_schedule:
            return float(t.epochs), float(t.learning_rate)
        epochs = float(t.phase_epochs[phase - 1]) if t.phase_epochs else float(t.epochs)
        lr = float(t.phase_learning_rates[phase - 1]) if t.phase_learning_rates else float(t.learning_rate)
        return epochs, lr


ARMS: dict[str, Arm] = {}


def register_arm(arm: Arm) -> Arm:
    """Add an arm to `ARMS`; names are unique and at most one arm is the baseline.

    Raises:
        ValueError: a duplicate name or a second baseline (a programming error, not a user error).
    """
    if arm.name in ARMS:
        raise ValueError(f"arm {arm.name!r} is already registered")
    if arm.baseline and any(a.baseline for a in ARMS.values()):
        raise ValueError(f"arm {arm.name!r}: there is already a baseline arm")
    ARMS[arm.name] = arm
    return arm


register_arm(Arm("phased", "phases of increasing difficulty, each from the previous phase's weights",
                 "Pang et al. 2024, Phased IFT (section 3)", default=True))
register_arm(Arm("one-off", "all the data at once, shuffled, one phase (the same budget)",
                 "Pang et al. 2024, One-off IFT baseline (section 4)", single_phase=True, phase_schedule=False,
                 baseline=True, default=True))
register_arm(Arm("random", "phases of the same sizes with random difficulty",
                 "Pang et al. 2024, random-phase control (section 5)",
                 control=lambda phases, seed: random_control(phases, seed), default=True))
register_arm(Arm("reverse", "phases hard -> easy, each phase in descending difficulty",
                 "the order ablation of Pang et al. 2024 (section 5)",
                 control=lambda phases, seed: reverse_control(phases)))


def get_arm(name: str) -> Arm:
    """The registered arm `name`.

    Raises:
        PhasedIFTError: an unknown arm (names the known ones).
    """
    try:
        return ARMS[name]
    except KeyError:
        raise PhasedIFTError(f"unknown arm {name!r}; known arms: {', '.join(ARMS)}.") from None


def controls(arms: Sequence[str]) -> dict[str, ControlBuilder]:
    """The control builders of the given arms, {name: builder}, for the split step (arms without one left out)."""
    return {a: ARMS[a].control for a in arms if ARMS[a].control is not None}


def baseline_arm(arms: Sequence[str]) -> str:
    """The arm others are judged against by default: the registered baseline when trained, else the first arm."""
    return next((a for a in arms if ARMS[a].baseline), arms[0])


def phase_count(cfg: "Config", run: RunDir | None = None) -> int:
    """K, the number of phases of the split: the manifest's once `phases/` exists, else `cfg.phases.k` (plans)."""
    if run is not None and run.phases_manifest.is_file():
        return int(read_manifest(run)["k"])
    return int(cfg.phases.k)


def assumed_phases(data: list[Example], k: int) -> list[list[Example]]:
    """K equal-size consecutive chunks of data (the plan's stand-in before the split exists)."""
    size = math.ceil(len(data) / k)
    return [data[i * size:(i + 1) * size] for i in range(k)]


@dataclass(frozen=True)
class Cell:
    """One point of the grid: the checkpoint of `phase` (1-based) of `arm` trained with `seed`.

    `final` says whether it is the arm's final model.
    """

    arm: str
    seed: int
    phase: int
    final: bool


def training_cells(cfg: "Config", run: RunDir | None = None) -> list[Cell]:
    """Every (arm, seed, phase) that training produces, arm-major, then seed, then phase."""
    k = phase_count(cfg, run)
    out = []
    for arm in cfg.train.arms:
        n = ARMS[arm].n_phases(k)
        out += [Cell(arm, seed, p, p == n) for seed in cfg.train.seeds for p in range(1, n + 1)]
    return out


def evaluation_cells(cfg: "Config", run: RunDir | None = None) -> list[Cell]:
    """The checkpoints that are generated from and evaluated: each arm's final phase per seed, or every phase with
    `generate.every_phase` (the paper's Figure 1 trend)."""
    return [c for c in training_cells(cfg, run) if c.final or cfg.generate.every_phase]


def final_phase(cfg: "Config", arm: str, run: RunDir | None = None) -> int:
    """The phase whose checkpoint is the arm's final model."""
    return ARMS[arm].n_phases(phase_count(cfg, run))


@dataclass(frozen=True)
class JudgeJob:
    """Generations to compare: arm_a's phase_a against arm_b's phase_b for one seed; `phase` is None for the
    final comparison, else k (phase k of arm_a against arm_b's final model: the trend)."""

    arm_a: str
    arm_b: str
    seed: int
    phase_a: int
    phase_b: int
    phase: int | None


def judge_pairs_of(cfg: "Config") -> list[tuple[str, str]]:
    """`judge.pairs`, or every trained arm against the baseline (see `baseline_arm`).

    Raises:
        PhasedIFTError: a pair names an arm that is not in train.arms, or an arm against itself.
    """
    arms = list(cfg.train.arms)
    if cfg.judge.pairs:
        pairs = [tuple(p) for p in cfg.judge.pairs]
    else:
        base = baseline_arm(arms)
        pairs = [(a, base) for a in arms if a != base]
    for a, b in pairs:
        for arm in (a, b):
            if arm not in arms:
                raise PhasedIFTError(f"config: judge.pairs names arm {arm!r}, which is not in train.arms {arms}; "
                                     "add it to train.arms or fix the pair.")
        if a == b:
            raise PhasedIFTError(f"config: judge.pairs has [{a}, {b}]: an arm cannot be judged against itself.")
    return pairs


def judge_jobs(cfg: "Config", run: RunDir | None = None) -> list[JudgeJob]:
    """Which generations to compare for a config: for each pair and seed the final models, and with
    `generate.every_phase` also phase k of arm A against arm B's final model for every k.

    Raises:
        PhasedIFTError: see `judge_pairs_of`.
    """
    jobs = []
    for a, b in judge_pairs_of(cfg):
        fa, fb = final_phase(cfg, a, run), final_phase(cfg, b, run)
        for seed in cfg.train.seeds:
            jobs.append(JudgeJob(a, b, seed, fa, fb, None))
            if cfg.generate.every_phase:
                jobs += [JudgeJob(a, b, seed, k, fb, k) for k in range(1, fa + 1)]
    return jobs
