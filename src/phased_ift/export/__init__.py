"""Export a split run for other tools: `phased-ift export CONFIG --to TARGET OUT_DIR`.

Owns the registry of export targets (`TARGETS`, one `Target` per format, registered in the block below) and
`export_run`, which builds the shared plan (`export.plan.build_plan`: the arms' phase data and the training
stages) once and hands it to the target. Targets:

    llama-factory   alpaca datasets + dataset_info.json, one `llamafactory-cli train` YAML per arm x seed x
                    phase chained as our loop chains phases, run.sh (`export.llama_factory`)
    axolotl         one `axolotl train` YAML per arm x seed x phase chained the same way, run.sh
                    (`export.axolotl`)
    hf              a `datasets.DatasetDict` (one split per phase and control) via `save_to_disk`, plus a dataset
                    card README.md ready for `push_to_hub` (`export.hf`)

Adding a target is one module with `write(plan, out_dir) -> [paths]` plus one `register_target(Target(...))` line
below, and its tests (tests/test_export.py). docs/export.md describes the formats and the measured LLaMA-Factory run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phased_ift.config import Config
from phased_ift.config_choices import EXPORT_TARGETS, require_declared
from phased_ift.errors import PhasedIFTError
from phased_ift.export import axolotl, hf, llama_factory
from phased_ift.export.plan import ExportPlan, build_plan


@dataclass(frozen=True)
class Target:
    """One export format: `name` (the `--to` value), a one-line `description`, and `write(plan, out_dir)`, which
    writes the export into out_dir and returns the files written."""

    name: str
    description: str
    write: Callable[[ExportPlan, Path], list[Path]]


TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    """Add a target to `TARGETS`.

    Raises:
        ValueError: a name not declared in `config_choices.EXPORT_TARGETS`, or a duplicate (a programming error).
    """
    require_declared(target.name, EXPORT_TARGETS, "export target", "EXPORT_TARGETS")
    if target.name in TARGETS:
        raise ValueError(f"export target {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


register_target(Target("llama-factory", EXPORT_TARGETS["llama-factory"], llama_factory.write))
register_target(Target("axolotl", EXPORT_TARGETS["axolotl"], axolotl.write))
register_target(Target("hf", EXPORT_TARGETS["hf"], hf.write))


def export_run(cfg: Config, target: str, out_dir: str | Path) -> list[Path]:
    """Write the export `target` of the config's run dir into out_dir (created; files there are replaced, other
    files, e.g. a tool's training outputs under saves/, are kept).

    Returns:
        The files written.

    Raises:
        PhasedIFTError: an unknown target (names the known ones); out_dir is a file or lies inside the run dir's
            phases/; the split has not run (see `export.plan.build_plan`).
    """
    if target not in TARGETS:
        raise PhasedIFTError(f"export: unknown target {target!r}; use --to with one of {', '.join(TARGETS)}.")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise PhasedIFTError(f"export: {out} is a file; give a folder (created when missing) as OUT_DIR.")
    plan = build_plan(cfg)
    if out == plan.run.root.resolve() or plan.run.phases_dir.resolve() in (out, *out.parents):
        raise PhasedIFTError(f"export: OUT_DIR {out} is the run dir or inside its phases/; give a folder of its "
                             f"own, e.g. {plan.run.root}-{target}.")
    out.mkdir(parents=True, exist_ok=True)
    return TARGETS[target].write(plan, out)
