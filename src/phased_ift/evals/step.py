"""The evaluate step: every benchmark of `evals.BENCHMARKS`, in order, over every checkpoint of
`design.evaluation_cells`.

    phased-ift evaluate CONFIG [--dry-run]

Owns the step's body (`evaluate_all`), what it needs first (`evaluate_needs`: the checkpoints for the reference
loss, the answers for the others), its row of the plan (`plan_row`, `grade_requests`) and the preflight check of
every benchmark that will run (`check_benchmarks`). Each benchmark skips finished files and logs what it does or
why it is off (`Benchmark.run`).
"""

from __future__ import annotations

from typing import Any, Sequence

from phased_ift.config import Config
from phased_ift.data import Example
from phased_ift.evals import BENCHMARKS
from phased_ift.rundir import RunDir


def evaluate_all(cfg: Config, run: RunDir, dry_run: bool = False, console: Any = None) -> None:
    """Run every benchmark of `BENCHMARKS` in registration order: the reference-answer loss, IFEval, MT-Bench and
    SeqEval grading (each does nothing, with a log line where useful, when it is off in this config). dry_run:
    graded benchmarks print their request estimate; nothing is computed or sent.

    Args:
        cfg: the resolved config; run: its `RunDir`; console: a rich Console (default: stderr).
    Raises:
        PhasedIFTError: from a benchmark (missing generations or checkpoints, bad templates, no reference answer).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    for benchmark in BENCHMARKS.values():
        benchmark.run(cfg, run, dry_run, console)


def evaluate_needs(cfg: Config, run: RunDir, dry_run: bool) -> list[str]:
    """The earlier steps the evaluate step reads from: "train" (the checkpoints, for a likelihood benchmark),
    "generate" (the answers, not in a dry run), in that order, as `Benchmark.needs` asks."""
    wanted = {step for b in BENCHMARKS.values() for step in b.needs(cfg, dry_run)}
    return [step for step in ("train", "generate") if step in wanted]


def grade_requests(cfg: Config, sets: dict[str, Sequence[Example]], n_checkpoints: int) -> dict[str, int]:
    """{benchmark label: judge requests} of the graded benchmarks that run in this config, over `n_checkpoints`
    checkpoints; `sets` maps a test-set key to its prompts."""
    return {b.label: n_checkpoints * b.requests(sets[b.test_set]) for b in BENCHMARKS.values()
            if b.requests is not None and b.test_set in sets and b.applies(cfg)}


def plan_row(cfg: Config, prompts: dict[str, int], n_checkpoints: int, grades: dict[str, int]
             ) -> tuple[str, str, str]:
    """The evaluate step's row of the plan: (what runs, its size, "evaluation/" [+ "grades/"])."""
    on = [b for b in BENCHMARKS.values() if b.applies(cfg)]
    what = ", ".join(b.plan(cfg, prompts) if b.plan else b.label for b in on) or "off"
    size = [f"{n_checkpoints} checkpoints"] if on else []
    size += [f"{n:,} {label} grading requests" for label, n in grades.items() if n]
    graded = any(b.requests is not None for b in on)
    return what, ", ".join(size), "evaluation/" + (", grades/" if graded else "")


def check_benchmarks(cfg: Config) -> None:
    """Load what each benchmark that runs in this config needs (`Benchmark.prepare`: judge prompts, templates,
    data), so that `preflight` stops on a bad template before any training.

    Raises:
        PhasedIFTError: a missing prompts file or a bad template (names the file and the config key).
    """
    for b in BENCHMARKS.values():
        if b.prepare is not None and b.applies(cfg):
            b.prepare(cfg)
