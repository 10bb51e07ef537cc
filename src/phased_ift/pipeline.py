"""The pipeline: data -> score -> split -> train -> generate -> judge -> report, in one run dir.

Each `step_*` reads its inputs from the run dir, skips work whose outputs already exist, and writes its outputs
atomically, so `phased-ift run CONFIG` after kill -9 or Ctrl-C resumes where it stopped.
"""

from __future__ import annotations

from rich.console import Console

from phased_ift.config import Config, save_config
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir


def _not_yet(step: str) -> None:
    raise PhasedIFTError(f"`{step}` is not yet available in this version of phased-ift.")


def step_data(cfg: Config, console: Console | None = None) -> RunDir:
    """Read every configured source into data/train.jsonl (+ data/rejects.jsonl)."""
    _not_yet("data")


def step_score(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """Score difficulty with cfg.scoring.scorer -> scores/<scorer>.jsonl (resumes: scored ids are skipped).

    dry_run prints what would be scored (for the judge: requests and estimated tokens) and sends nothing.
    Failed examples get a row with score null and the reason; they are counted, never given a made-up score.
    """
    from phased_ift.data import read_examples
    from phased_ift.scoring import dry_run_score, score_examples

    step_data(cfg, console=console)
    run = RunDir(cfg.run_dir)
    if not run.train_data.is_file():
        raise PhasedIFTError(f"{run.train_data} is missing; run `phased-ift data` / the data step first.")
    examples = read_examples(run.train_data)
    cache_dir = run.llm_cache.parent
    if dry_run:
        dry_run_score(examples, cfg, cache_dir, console=console)
        return
    s = score_examples(examples, cfg, run.scores(cfg.scoring.scorer), cache_dir=cache_dir, console=console)
    if console is not None:
        extra = "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in s.stats.items()
                        if k in ("padding_fraction", "cv_auc", "cv_spearman", "n_labelled"))
        console.print(f"score {s.scorer}: {s.total} examples, {s.reused} already scored, {s.scored} scored "
                      f"({s.examples_per_s:.1f} ex/s), {s.failed} failed{extra} -> {s.path}", highlight=False)


def step_split(cfg: Config, console: Console | None = None) -> None:
    """Split scored data into phases (+ random/reverse controls) -> phases/ (manifest.json written last).

    Calls `step_score` first unless scores/<scorer>.jsonl exists. Under `accelerate launch` only the main process
    writes; the others wait (accelerate's `main_process_first`)."""
    from accelerate import PartialState

    from phased_ift.phases import CONTROLS, write_split

    run = RunDir(cfg.run_dir)
    with PartialState().main_process_first():
        if not run.scores(cfg.scoring.scorer).is_file():
            step_score(cfg, console=console)
        write_split(run, cfg.scoring.scorer, cfg.phases.k, cfg.phases.method, cfg.phases.thresholds,
                    cfg.phases.seed, [a for a in cfg.train.arms if a in CONTROLS], console=console)


def step_train(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """Train every configured arm and seed, phase by phase -> checkpoints/ (or print the plan with dry_run)."""
    from phased_ift.train import print_plan, train_phases

    run = RunDir(cfg.run_dir)
    if dry_run and not run.phases_manifest.is_file() and not run.scores(cfg.scoring.scorer).is_file():
        # A plan must not start scoring (API calls, model loads): it assumes K equal phases of the data instead.
        if not run.train_data.is_file():
            step_data(cfg, console=console)
    else:
        step_split(cfg, console=console)
    if dry_run:
        print_plan(cfg, run, console=console)
        return
    train_phases(cfg, run, console=console)


def step_generate(cfg: Config, console: Console | None = None) -> None:
    """Generate answers on the test sets for every arm (and phase, when asked) -> generations/."""
    _not_yet("generate")


def step_judge(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """Judge arm pairs in both orders -> judgements/."""
    _not_yet("judge")


def step_report(cfg: Config, console: Console | None = None) -> None:
    """Write report/report.md, report.html, PNGs and summary.json."""
    _not_yet("report")


def run_pipeline(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """All steps in order; each skips finished work."""
    run = RunDir(cfg.run_dir)
    save_config(cfg, run.config)
    _not_yet("run")
