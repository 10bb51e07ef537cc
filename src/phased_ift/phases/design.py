"""The experiment design: the arms, what each one trains on, and the grid arm x seed x phase.

Owns:
  * `Arm` and the registry `ARMS` (refuses duplicate and path-unsafe names). What an arm is, as data, is its
    `config_choices.ArmChoice` (name, flags, family): which phase files it trains on and in which order
    (`phase_order`), how many phases it has, the train fields it reads (`params`), the order of examples inside a
    phase (`sampler`, a name in `train.samplers.SAMPLERS`), whether the per-phase schedule (`train.phase_epochs`,
    `train.phase_learning_rates`) applies to it, and whether it is a family (`expand`, `member`) that stands for
    several arms in train.arms (config expands it, `config_choices.expand_arms`). `Arm` adds how it builds its
    phases: its own phase files (`control`) and the arrangement at training time (`arrange`), registered against
    the declared names (`_IMPLEMENTATIONS`). Adding an arm is one `ArmChoice` in `config_choices.ARM_CHOICES`, its
    implementation here when it has one, plus its tests; no other module names an arm.
  * The phase count of a run (`phase_count`: the manifest's K once the split exists, else `phases.k`).
  * The grid: `training_cells` (every phase of every arm and seed), `evaluation_cells` (the final phase, or every
    phase with `generate.every_phase`) and `judge_jobs` (which generations are compared).

Arms (Pang et al. 2024, arXiv 2406.04371, section 3-4):
  phased   the paper's Phased IFT: phases/phase_1..K (easy -> hard), each phase from the previous weights.
  one-off  the paper's baseline, One-off IFT: the union of all phases, shuffled with the seed, one phase.
  random   the paper's control: K phases of the same sizes with random difficulty (phases/random/).
  reverse  hard -> easy: the phases in reverse order (phases/reverse/), the order ablation.

Arms that separate the causes of the gain (order, phase boundaries, forgetting, pacing):
  permutations  a family: every order of the K phases as its own arm `order-<i>-<j>-...` reading the phased files
                in that order (the paper's stage-order ablation, section 5); the identity order is `phased` itself,
                so it expands to K! arms. Refused above K = 4 (K! = 120 at K = 5); single orders can be named.
  sorted        one phase: the union sorted easy -> hard (ascending score, ties as in the split), fed in that order
                (sequential sampler, no bucketing), one LR schedule: ordering without phase boundaries (the
                curriculum of Bengio et al. 2009, ICML, "Curriculum Learning", without stages).
  replay        phased, and phase k also trains on round(train.replay_ratio x |phases < k|) examples (halves up)
                drawn without replacement from phases < k, seeded by the training seed (experience replay against
                forgetting: Robins 1995, Connection Science; de Masson d'Autume et al. 2019, NeurIPS). It ADDS
                examples: its budget exceeds one-off's, the plan says by how much.
  competence    one phase over the sorted union; batch of step t drawn uniformly from the ranks <= c(t) N,
                c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2)), c0 = train.competence_c0 (Platanios et al. 2019,
                NAACL, "Competence-based Curriculum Learning for Neural Machine Translation", the sqrt competence).

Arms on the sequential mix (sit.source; Hu et al. 2024, SIT, arXiv 2403.07794; `sit.mix`):
  sit           one-off on the mix: round(sit.ratio x N) sequential examples, each in place of one original.
  sit-phased    phased on the mix: the sequential examples are scored and split like every other example.
Every other arm drops the sequential examples, so it trains on exactly the originals of a run without them.

Every arm but replay sees the one-off budget, N examples x train.epochs example-epochs (with train.phase_epochs the
phased arms follow those; the plan reports each arm's example-epochs).

Reads only `phases/` through `RunDir`; the config is passed in.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from phased_ift.config import Config, TrainConfig
from phased_ift.config_checks import check_judge_pairs
from phased_ift.config_choices import ARM_CHOICES, ArmChoice, arm_choice, unknown_arm
from phased_ift.data import Example, read_examples
from phased_ift.errors import PhasedIFTError
from phased_ift.phases.split import (ControlBuilder, difficulty_sorted, random_control, read_manifest, replay_phases,
                               reverse_control)
from phased_ift.rundir import RunDir
from phased_ift.sit.mix import arm_phases

# (phases in training order, training seed, {train field: value} of Arm.params) -> the arm's phases
Arranger = Callable[[list[list[Example]], int, dict[str, Any]], list[list[Example]]]

# Arm names become path parts (checkpoints/<arm>/, judgements/<a>__vs__<b>/): letters, digits, '.', '_', '-'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Arm(ArmChoice):
    """One way of training on the split data: its `ArmChoice` (name and flags, documented there) and how it builds
    its phases.

    Attributes:
        control: builds the arm's own phase files from the phased split, `(phases, seed) -> phases`, written to
            `phases/<name>/phase_<k>.jsonl` by the split step; None = the arm reads the phased files.
        arrange: builds the arm's phases at training time from the phase data in training order, `(phases, seed,
            params) -> phases` (seed: the training seed; params: the `params` fields of train); None = as read (a
            single-phase arm: their union, shuffled with the seed).
    """

    control: ControlBuilder | None = field(default=None, compare=False)
    arrange: Arranger | None = field(default=None, compare=False)

    @classmethod
    def of(cls, choice: ArmChoice, **implementation: Any) -> "Arm":
        """The arm of a declared (or family member's) `ArmChoice`, with its `control` / `arrange`."""
        return cls(**{f.name: getattr(choice, f.name) for f in dataclasses.fields(ArmChoice)}, **implementation)

    def phase_files(self, run: RunDir, k: int) -> list[Path]:
        """The files this arm's phases are read from, in training order (one-off: all phased files, one phase)."""
        return [run.phase_file(i, self.name if self.control else None) for i in self.file_order(k)]

    def phase_data(self, run: RunDir, k: int, seed: int = 0, train: TrainConfig | None = None,
                   read: Callable[[Path], list[Example]] = read_examples) -> list[list[Example]]:
        """The examples of each phase, in training order of phases (a list of phases, each in training order).

        Args:
            train: the train config, needed by arms with `params` (e.g. replay reads train.replay_ratio).
            read: reads one phase file (default `data.read_examples`; the plan's reader keeps stand-ins without
                messages: `train.plan`).

        Raises:
            PhasedIFTError: a phase file of the arm is missing (the split was made without this control).
        """
        files = self.phase_files(run, k)
        for path in files:
            if not path.is_file():
                raise PhasedIFTError(f"train: {path} does not exist; re-run `phased-ift split` with `{self.name}` "
                                     f"in train.arms so the control files are written.")
        phases = [read(p) for p in files]
        return self.assemble(phases, seed, train)

    def arm_params(self, train: TrainConfig | None) -> dict[str, Any]:
        """{field: value} of the train fields in `params` (hparams.json `arm_params`).

        Raises:
            ValueError: the arm has params and no train config was given (a programming error).
        """
        if self.params and train is None:
            raise ValueError(f"arm {self.name!r} reads train.{', train.'.join(self.params)}: pass the train config")
        return {p: getattr(train, p) for p in self.params}

    def assemble(self, phases: list[list[Example]], seed: int, train: TrainConfig | None = None
                 ) -> list[list[Example]]:
        """This arm's phases from data in training order: its view of the sequential mix (`mix`), then `arrange`
        when set, else as given (a single-phase arm joins them, shuffled with `seed`)."""
        phases = arm_phases(phases, self.mix)
        if self.arrange is not None:
            return self.arrange(phases, seed, self.arm_params(train))
        if not self.single_phase:
            return phases
        union = [e for ph in phases for e in ph]
        random.Random(seed).shuffle(union)
        return [union]

    def schedule(self, t: TrainConfig, phase: int) -> tuple[float, float]:
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
        ValueError: a duplicate name, a second baseline or a name that is not path-safe (a programming error, not a
            user error).
    """
    if not _NAME.fullmatch(arm.name) or "__" in arm.name:
        raise ValueError(f"arm name {arm.name!r} is not path-safe (letters, digits, '.', '_', '-'; no '__')")
    if arm.name in ARMS:
        raise ValueError(f"arm {arm.name!r} is already registered")
    if arm.baseline and any(a.baseline for a in ARMS.values()):
        raise ValueError(f"arm {arm.name!r}: there is already a baseline arm")
    ARMS[arm.name] = arm
    return arm


# How the declared arms (`config_choices.ARM_CHOICES`) build their phases; an arm not named here reads the phased
# files as they are (a single-phase arm: their union, shuffled with the seed).
_IMPLEMENTATIONS: dict[str, dict[str, Any]] = {
    "random": {"control": lambda phases, seed: random_control(phases, seed)},
    "reverse": {"control": lambda phases, seed: reverse_control(phases)},
    "sorted": {"arrange": lambda phases, seed, p: [difficulty_sorted(phases)]},
    "replay": {"arrange": lambda phases, seed, p: replay_phases(phases, p["replay_ratio"], seed)},
    "competence": {"arrange": lambda phases, seed, p: [difficulty_sorted(phases)]},
}
for _choice in ARM_CHOICES.values():
    register_arm(Arm.of(_choice, **_IMPLEMENTATIONS.get(_choice.name, {})))


def resolve_arm(name: str) -> Arm | None:
    """The arm `name`: a registered one, else a family's member (`config_choices.arm_choice`, registered now), else
    None."""
    if name in ARMS:
        return ARMS[name]
    choice = arm_choice(name)
    return register_arm(Arm.of(choice)) if choice is not None else None


def get_arm(name: str) -> Arm:
    """The arm `name` (`resolve_arm`: registered, or a member of a family such as order-2-1-3).

    Raises:
        PhasedIFTError: an unknown arm (names the known ones).
    """
    arm = resolve_arm(name)
    if arm is None:
        raise unknown_arm(name)
    return arm


def controls(arms: Sequence[str]) -> dict[str, ControlBuilder]:
    """The control builders of the given arms, {name: builder}, for the split step (arms without one left out)."""
    return {a: get_arm(a).control for a in arms if get_arm(a).control is not None}


def baseline_arm(arms: Sequence[str]) -> str:
    """The arm others are judged against by default: the registered baseline when trained, else the first arm."""
    return next((a for a in arms if get_arm(a).baseline), arms[0])


def phase_count(cfg: Config, run: RunDir | None = None) -> int:
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


def training_cells(cfg: Config, run: RunDir | None = None) -> list[Cell]:
    """Every (arm, seed, phase) that training produces, arm-major, then seed, then phase."""
    k = phase_count(cfg, run)
    out = []
    for arm in cfg.train.arms:
        n = get_arm(arm).n_phases(k)
        out += [Cell(arm, seed, p, p == n) for seed in cfg.train.seeds for p in range(1, n + 1)]
    return out


def evaluation_cells(cfg: Config, run: RunDir | None = None) -> list[Cell]:
    """The checkpoints that are generated from and evaluated: each arm's final phase per seed, or every phase with
    `generate.every_phase` (the paper's Figure 1 trend)."""
    return [c for c in training_cells(cfg, run) if c.final or cfg.generate.every_phase]


def final_phase(cfg: Config, arm: str, run: RunDir | None = None) -> int:
    """The phase whose checkpoint is the arm's final model."""
    return get_arm(arm).n_phases(phase_count(cfg, run))


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


def judge_pairs_of(cfg: Config) -> list[tuple[str, str]]:
    """`pairwise.pairs`, or every trained arm against the baseline (see `baseline_arm`).

    Raises:
        PhasedIFTError: a pair names an arm that is not in train.arms, or an arm against itself.
    """
    arms = list(cfg.train.arms)
    if cfg.pairwise.pairs:
        pairs = [tuple(p) for p in cfg.pairwise.pairs]
    else:
        base = baseline_arm(arms)
        pairs = [(a, base) for a in arms if a != base]
    check_judge_pairs(arms, pairs)  # checked when the config loaded; again for a config changed since
    return pairs


def judge_jobs(cfg: Config, run: RunDir | None = None) -> list[JudgeJob]:
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
