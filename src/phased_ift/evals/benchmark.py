"""The benchmark contract: what one benchmark of the evaluate step is, from running it to its report section.

Owns `Benchmark` (one object per benchmark, registered in `evals.BENCHMARKS`, as lm-eval registers a task: its
name, kind, test set and answer budget (`config_choices.BenchmarkChoice`), how the evaluate step runs it, how its
files become summary entries, its report section, its verdict lines and the per-prompt values the answer compares
(`EffectMetric`)), `EffectMetric`, and the pieces every benchmark module uses: `is_final` (a checkpoint is its arm's last phase),
`mark_final`, `read_result` (a benchmark's per-checkpoint JSON file) and `unless_dry_run`. What each benchmark asks
and computes is its own module's (`evals.reference_loss`, `evals.ifeval`, `evals.mtbench`, `evals.seqeval`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from phased_ift.config import Config
from phased_ift.config_choices import LIKELIHOOD, LLM_GRADED, BenchmarkChoice, testset_key
from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError
from phased_ift.phases.design import ARMS, final_phase
from phased_ift.rundir import RunDir

# {(arm, seed): {prompt key: value}} of the final checkpoints
PerPrompt = dict[tuple[str, int], dict[tuple, float]]
# (arm name) -> sort key: the order of train.arms in verdict lines
Rank = Callable[[str], Any]


@dataclass(frozen=True)
class EffectMetric:
    """One metric of the answer ("did this arm help?", `report.answer`), with per-prompt values.

    Attributes:
        name: the metric in sentences and tables.
        read: (run, cfg, judgements) -> per-prompt values of each final (arm, seed); for `paired=False` the values are
            already differences against the baseline, keyed by the other arm.
        lower_is_better: the metric improves downwards.
        paired: the values are per arm, paired here as arm - baseline; False: already a comparison.
        offset: added to the difference when shown (0.5 for a win rate).
    """

    name: str
    read: Callable[[RunDir, Config, list[dict]], PerPrompt]
    lower_is_better: bool = False
    paired: bool = True
    offset: float = 0.0


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of the evaluate step (registered in `evals.BENCHMARKS`).

    Attributes:
        choice: its name, kind, test set and answer budget, as the config knows them (`config_choices.BENCHMARKS`).
        label: its name in log lines and plans ("IFEval").
        run: the evaluate step's part, `(cfg, run, dry_run, console) -> None`: every checkpoint of
            `design.evaluation_cells`, finished files skipped, one log line per file; logs why it does nothing when
            it is off; a dry run sends and computes nothing (a graded benchmark prints its request estimate).
        summarize: `(run, cfg) -> {summary key: value}`, its entries of report/summary.json; the first key is its
            name, whose value is a list (empty: nothing on disk yet).
        missing: `cfg -> str`, the summary note when that list is empty: what to set and run to get it.
        blocks: `(summary, plots, ci label) -> blocks`, the body of its section of the report (`blocks` vocabulary),
            called when its summary list is not empty; `plots` maps a plot key to its file name beside the report.
        heading: its section's heading; the report writes it, then `blocks` or, with nothing on disk, the
            `missing` note (`report.render`).
        verdicts: `(summary, rank) -> lines`, its descriptive lines under the report's verdicts.
        effects: its metrics of the answer, compared arm against baseline (`report.answer`).
        enabled: `cfg -> bool`; None: by kind (a test set's benchmark when the test set is generated; a graded one
            also needs the judge endpoint judge).
        plan: `(cfg, prompts per test set) -> str`, its part of the plan's evaluate row; None: its label.
        requests: graded: `prompts -> judge requests per checkpoint`, for the plan.
        prepare: `cfg -> Any`, the cheap check before any training (`preflight`): templates, data files (what it
            loads is dropped); raises PhasedIFTError.
        trend: `summary -> points`, {"arm", "seed", "phase", "mean", "ci"} per checkpoint for a per-phase plot
            (`<name>_trend.png`), drawn when some point is not a final checkpoint's; None: no plot.
        trend_label: the y axis of that plot.
    """

    choice: BenchmarkChoice
    label: str
    run: Callable[[Config, RunDir, bool, Any], None]
    summarize: Callable[[RunDir, Config], dict[str, Any]]
    missing: Callable[[Config], str]
    blocks: Callable[[dict, dict[str, str], str], list[tuple]]
    heading: str
    verdicts: Callable[[dict, Rank], list[str]] = lambda summary, rank: []
    effects: tuple[EffectMetric, ...] = ()
    enabled: Callable[[Config], bool] | None = None
    plan: Callable[[Config, dict[str, int]], str] | None = None
    requests: Callable[[Sequence[Example]], int] | None = None
    prepare: Callable[[Config], Any] | None = None
    trend: Callable[[dict], list[dict]] | None = None
    trend_label: str = ""

    @property
    def name(self) -> str:
        return self.choice.name

    @property
    def kind(self) -> str:
        return self.choice.kind

    @property
    def test_set(self) -> str | None:
        return self.choice.test_set

    def applies(self, cfg: Config) -> bool:
        """Whether the evaluate step computes anything for it in this config (`enabled`, else by kind)."""
        if self.enabled is not None:
            return self.enabled(cfg)
        generated = self.test_set in {testset_key(n) for n in cfg.generate.test_sets}
        return generated and (self.kind != LLM_GRADED or cfg.judge.enabled)

    def needs(self, cfg: Config, dry_run: bool) -> list[str]:
        """The earlier steps whose outputs it reads: the checkpoints ("train") for a likelihood benchmark, the answers
        ("generate") for the others; none when it is off, or for answers in a dry run (a plan trains nothing)."""
        if not self.applies(cfg):
            return []
        return ["train"] if self.kind == LIKELIHOOD else ([] if dry_run else ["generate"])


def is_final(cfg: Config, run: RunDir, arm: str, phase: int) -> bool:
    """The checkpoint is its arm's last phase (`design.final_phase`), the one the answer compares."""
    return arm in ARMS and phase == final_phase(cfg, arm, run)


def mark_final(rows: list[dict], cfg: Config, run: RunDir) -> list[dict]:
    """`rows` (summary entries with "arm" and "phase"), each given "final" (`is_final`), in place; returns them."""
    for r in rows:
        r["final"] = is_final(cfg, run, r["arm"], r["phase"])
    return rows


def read_result(path: Path) -> dict:
    """A benchmark's per-checkpoint JSON file (`RunDir.benchmark`).

    Raises:
        PhasedIFTError: the file is not valid JSON (names it and the fix).
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PhasedIFTError(f"{path}: not valid JSON ({e}); delete it and re-run the evaluate step.") from None


def unless_dry_run(body: Callable[[Config, RunDir, Any], None]) -> Callable[[Config, RunDir, bool, Any], None]:
    """A `Benchmark.run` from a step body `(cfg, run, console)` that computes nothing in a dry run (the plan's
    evaluate row says what will run)."""
    def run_it(cfg: Config, run: RunDir, dry_run: bool, console: Any) -> None:
        if not dry_run:
            body(cfg, run, console)
    return run_it

