"""The score step's body: score data/train.jsonl with scoring.scorer -> scores/<scorer>.jsonl (`pipeline.STEPS`
orders it; the scoring itself is `scoring.registry.score_examples`).

Owns `score_step`: the dry run's estimate, the run, and its one log line (under a launch, the main process reports
every rank's rows).
"""

from __future__ import annotations

from typing import Any

from phased_ift.config import Config
from phased_ift.data import ExampleFile
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir
from phased_ift.scoring.registry import dry_run_score, score_examples


def score_step(cfg: Config, run: RunDir, dry_run: bool = False, console: Any = None) -> None:
    """Score difficulty with cfg.scoring.scorer -> scores/<scorer>.jsonl (resumes: scored ids are skipped).

    dry_run prints what would be scored (for the judge: requests and estimated tokens) and sends nothing.
    Failed examples get a row with score null and the reason; they are counted, never given a made-up score.

    Raises:
        PhasedIFTError: data/train.jsonl is missing; see `scoring.score_examples`.
    """
    if not run.train_data.is_file():
        raise PhasedIFTError(f"{run.train_data} is missing; run `phased-ift data` / the data step first.")
    with ExampleFile(run.train_data) as examples:  # ids in memory; rows read as the scorer asks for them
        cache_dir = run.llm_cache.parent
        if dry_run:
            dry_run_score(examples, cfg, cache_dir, console=console)
            return
        s = score_examples(examples, cfg, run.scores(cfg.scoring.scorer), cache_dir=cache_dir, console=console)
    if console is not None and s.rank == 0:  # under a launch the main process reports every rank's rows
        extra = "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in s.stats.items()
                        if k in ("padding_fraction", "cv_auc", "cv_spearman", "n_labelled"))
        procs = f" on {s.world} processes" if s.world > 1 else ""
        console.print(f"score {s.scorer}: {s.total} examples, {s.reused} already scored, {s.scored} scored{procs} "
                      f"({s.examples_per_s:.1f} ex/s), {s.failed} failed{extra} -> {s.path}", highlight=False)
