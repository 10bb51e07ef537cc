"""The split step's body: scored data into phases of increasing difficulty, plus the control arms' phase files
(`pipeline.STEPS` orders it).

Owns `split_step`; the split is `phases.split.write_split`'s, the controls `phases.design.controls`'.
"""

from __future__ import annotations

from typing import Any

from phased_ift.config import Config
from phased_ift.rundir import RunDir
from phased_ift.phases.design import controls
from phased_ift.phases.split import write_split


def split_step(cfg: Config, run: RunDir, dry_run: bool = False, console: Any = None) -> None:
    """Split scored data into phases (+ the control arms' phase files of `design.controls`) -> phases/
    (manifest.json written last; skipped when the manifest matches). See `phases.write_split`."""
    write_split(run, cfg.scoring.scorer, cfg.phases.k, cfg.phases.method, cfg.phases.thresholds,
                cfg.phases.seed, controls(cfg.train.arms), console=console)
