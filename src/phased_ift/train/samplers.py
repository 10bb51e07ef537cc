"""The samplers an arm can choose for the order of examples inside a phase (`design.Arm.sampler`).

Owns `SAMPLERS` ({name: factory}), the `sequential` order and the competence-based curriculum (`competence`,
`admitted`, `CompetenceSampler`). A factory is `(n, args, train) -> torch Sampler` over the phase's dataset of n rows
(args: the phase's `SFTConfig`; train: the config's train section); `PhaseSFTTrainer` uses it instead of its own
sampler (`build_trainer` passes `SAMPLERS[hp.sampler]`). Adding a sampler is one entry here; an arm names it.

Imports torch at module level: only `train.trainer` imports this module.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterator

import torch

from phased_ift.config import TrainConfig
from phased_ift.train.plan import steps_per_phase


def competence(t: float, total: int, c0: float) -> float:
    """The square-root competence c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2)), in (0, 1].

    Args:
        t: the training step (0 = the first); T = `total` (> 0) steps. c(0) = c0, c(T) = 1.
        c0: the initial competence, 0 < c0 <= 1.

    Source: Platanios et al. 2019, "Competence-based Curriculum Learning for Neural Machine Translation" (NAACL),
    eq. 7 (c_sqrt).
    """
    if total <= 0 or t >= total:  # exactly 1 from T on (the formula gives 1 - 1e-16 there)
        return 1.0
    return min(1.0, math.sqrt(t * (1.0 - c0 * c0) / total + c0 * c0))


def admitted(c: float, n: int) -> int:
    """How many of n examples (ranks 1..n, easiest first) competence c admits: those with rank <= c n, i.e.
    floor(c n), at least 1 (with c0 n < 1 the first steps draw the easiest example only) and at most n."""
    return max(1, min(n, math.floor(c * n + 1e-9)))


def step_competence(t: int, total: int, c0: float) -> float:
    """The competence of optimizer step t = 0 .. T-1 of a T-step run: c evaluated at t T / (T - 1), so the first
    step draws at c0 and the last at c(T) = 1 (all examples); a 1-step run draws at 1.

    Why rescaled: Platanios et al. run t = 1..T, which never draws at c0; a plain t = 0..T-1 never draws at 1, so
    the hardest ~1/(2T) of the data would never be seen in a short run (9% of it at T = 6).
    """
    if total <= 1:
        return 1.0
    return competence(min(t, total - 1) * total / (total - 1), total, c0)


class CompetenceSampler(torch.utils.data.Sampler):
    """Competence-based curriculum over a dataset sorted easy -> hard (row i has difficulty rank i + 1).

    Yields one epoch of n indices, batch by batch: the batch of optimizer step t holds indices drawn uniformly
    from the admitted ranks 1..admitted(step_competence(t, T, c0), n), without replacement inside the batch when
    there are enough admitted examples (else with replacement), seeded by (seed, epoch). The budget is one-off's: n
    draws per epoch, T optimizer steps.

    Args:
        n: dataset rows (N).
        batch_size: rows per batch (per process).
        batches_per_step: batches of one optimizer step over all processes (grad_accum x world size; under DDP the
            processes take consecutive batches of the same seeded stream).
        steps_per_epoch: optimizer steps of one epoch (S); the batch b of epoch e belongs to step e S + b //
            batches_per_step.
        total_steps: T, the optimizer steps of the run (`plan.steps_per_phase`).
        c0: the initial competence (train.competence_c0).
        seed: the training seed.
    """

    def __init__(self, n: int, batch_size: int, batches_per_step: int, steps_per_epoch: int, total_steps: int,
                 c0: float, seed: int) -> None:
        self.n, self.batch_size, self.batches_per_step = n, batch_size, max(batches_per_step, 1)
        self.steps_per_epoch, self.total_steps, self.c0, self.seed, self.epoch = \
            steps_per_epoch, total_steps, c0, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def batches(self) -> list[tuple[int, list[int]]]:
        """(optimizer step t, indices) of every batch of the current epoch, in order."""
        rng = random.Random(f"competence:{self.seed}:{self.epoch}")
        out = []
        for b in range(math.ceil(self.n / self.batch_size)):
            t = self.epoch * self.steps_per_epoch + b // self.batches_per_step
            m = admitted(step_competence(t, self.total_steps, self.c0), self.n)
            size = min(self.batch_size, self.n - b * self.batch_size)
            out.append((t, rng.sample(range(m), size) if m >= size else rng.choices(range(m), k=size)))
        return out

    def __iter__(self) -> Iterator[int]:
        return iter([i for _, batch in self.batches() for i in batch])


def competence_sampler(n: int, args: Any, train: TrainConfig) -> CompetenceSampler:
    """The `competence` factory: T and S from the phase's arguments as the Trainer counts them
    (`plan.steps_per_phase`), c0 = train.competence_c0, seeded with args.data_seed (else args.seed)."""
    world, accum, bs = args.world_size, args.gradient_accumulation_steps, args.per_device_train_batch_size
    per_epoch = steps_per_phase(n, 1.0, bs, accum, world)
    total = steps_per_phase(n, args.num_train_epochs, bs, accum, world, args.max_steps)
    seed = args.data_seed if args.data_seed is not None else args.seed
    return CompetenceSampler(n, bs, accum * world, per_epoch, total, train.competence_c0, seed)


SAMPLERS: dict[str, Callable[[int, Any, TrainConfig], torch.utils.data.Sampler]] = {
    # the phase data's order (e.g. `sorted`: easy -> hard), never shuffled or bucketed
    "sequential": lambda n, args, train: torch.utils.data.SequentialSampler(range(n)),
    "competence": competence_sampler,
}
