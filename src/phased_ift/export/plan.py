"""What an export holds, whatever the target tool: each arm's phase data as data files and the chain of training
stages (arm x seed x phase) that other tools run the way `train.loop` does.

Owns:
  * `ExportPlan` / `build_plan(cfg, run)`: the split's manifest, the arms' data (`design.Arm.phase_data`, so every
    arm, control and the sequential mix is exactly what our own loop trains on) grouped into `DataFile`s (one per
    arm x phase; one per arm x seed x phase when an arm's data depends on the training seed, e.g. `replay`'s draw),
    and the `Stage`s with their resolved hyperparameters (`train.plan.phase_hparams`: the per-phase schedule, the
    learning rate, epochs, warmup and scheduler that restart every phase).
  * The stage chain: `ExportPlan.previous(stage)`, the stage's output folder (`Stage.out`, relative to the export
    folder) and `trainable_stages` (the arms another tool can train: not those whose in-phase sampler no other
    tool has, i.e. `competence`).
  * `render_yaml`: a tool config as comment lines and `### section` blocks (the style of LLaMA-Factory's examples).
  * Row builders shared by the targets: `alpaca_row` (LLaMA-Factory's alpaca columns with system and history) and
    `rendered` (prompt and response rendered by `modeling.render` with the paper's template, for tools that have
    no such template: trained as plain text).

The targets themselves (`export.llama_factory`, `export.axolotl`, `export.hf`) decide file formats; the registry
is `phased_ift.export.TARGETS`. Nothing here imports torch: `base_model_path` and the paper template's tokenizer
go through `phased_ift.modeling`.
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from phased_ift.config import Config
from phased_ift.data import Example
from phased_ift.phases.design import get_arm, phase_count
from phased_ift.errors import PhasedIFTError
from phased_ift.modeling import NAMED_MODELS, load_tokenizer, render, resolve_model_path
from phased_ift.phases.split import read_manifest
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_text
from phased_ift.train.plan import PhaseHparams, phase_hparams

# In-phase orders (`design.Arm.sampler`) that LLaMA-Factory and Axolotl can reproduce: "" (shuffled, the Trainer's
# random sampler) and "sequential" (file order: LLaMA-Factory `disable_shuffling`, Axolotl `curriculum_sampling`).
PORTABLE_SAMPLERS = ("", "sequential")


@dataclass(frozen=True)
class DataFile:
    """The examples of one arm's phase, as one exported data file.

    Attributes:
        name: a unique name, path- and YAML-safe: `<arm>_phase_<k>`, or `<arm>_seed<s>_phase_<k>` when the arm's
            data depends on the training seed (LLaMA-Factory's dataset name in dataset_info.json).
        arm, phase: the arm and its phase (1-based, in training order).
        seeds: the training seeds whose stage trains on this file.
        examples: in training order (the order matters only for stages with `Stage.sequential`).
        per_seed: the file belongs to one seed (`seeds` has one element).
    """

    name: str
    arm: str
    phase: int
    seeds: tuple[int, ...]
    examples: tuple[Example, ...]
    per_seed: bool = False

    def path(self, suffix: str) -> str:
        """The file's path inside the export folder: data/<arm>[/seed_<s>]/phase_<k><suffix>."""
        seed = f"/seed_{self.seeds[0]}" if self.per_seed else ""
        return f"data/{self.arm}{seed}/phase_{self.phase}{suffix}"


@dataclass(frozen=True)
class Stage:
    """One training run of another tool: phase `phase` of `arm` with training seed `seed`.

    Attributes:
        n_phases: the arm's phase count (1 for single-phase arms such as one-off).
        data: the `DataFile.name` it trains on.
        hparams: the phase's resolved hyperparameters (`train.plan.PhaseHparams`, as hparams.json).
        sequential: the phase is fed in file order, unshuffled (the arm's `sequential` sampler, or train.order =
            sequential for arms without their own sampler).
        sampler: the arm's in-phase sampler ("" = shuffled).
    """

    arm: str
    seed: int
    phase: int
    n_phases: int
    data: str
    hparams: PhaseHparams
    sequential: bool
    sampler: str

    @property
    def out(self) -> str:
        """The stage's output folder, relative to the export folder: saves/<arm>/seed_<s>/phase_<k> (the layout
        of our checkpoints/)."""
        return f"saves/{self.arm}/seed_{self.seed}/phase_{self.phase}"

    @property
    def name(self) -> str:
        """`<arm>/seed_<s>/phase_<k>`: the stage's name in scripts and logs."""
        return f"{self.arm}/seed_{self.seed}/phase_{self.phase}"


@dataclass
class ExportPlan:
    """Everything a target writes from: the config, the run dir, the split's manifest, K, the data files by name,
    the stages in training order (arm, then seed, then phase) and `base_model`, the base model as the other tool
    loads it (resolved on first use: only the training targets need it)."""

    cfg: Config
    run: RunDir
    manifest: dict[str, Any]
    k: int
    files: dict[str, DataFile] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)

    @functools.cached_property
    def base_model(self) -> str:
        """`base_model_path(model.name_or_path)`."""
        return base_model_path(self.cfg.model.name_or_path)

    def previous(self, stage: Stage) -> Stage | None:
        """The stage whose weights `stage` starts from: phase k-1 of the same arm and seed; None for phase 1."""
        if stage.phase == 1:
            return None
        return next(s for s in self.stages if (s.arm, s.seed, s.phase) == (stage.arm, stage.seed, stage.phase - 1))


def stage_start(plan: ExportPlan, stage: Stage, merged_suffix: str) -> tuple[str, str | None, str]:
    """Where a stage's weights come from, as our loop chains phases (`train.method`, `train.lora.across_phases`):
    (kind, path, comment) with kind "base" (path None: the base model), "full" (the previous stage's full model),
    "merged" (a new adapter on the previous adapter merged into its base, at the previous output + `merged_suffix`)
    or "adapter" (the previous stage's adapter, continued and trainable). Each target maps the kind to its keys."""
    prev = plan.previous(stage)
    t = plan.cfg.train
    if prev is None:
        return "base", None, "starts from the base model (model.name_or_path)"
    if t.method == "full":
        return "full", prev.out, f"starts from phase {prev.phase}'s full model ({prev.out})"
    if t.lora.across_phases == "merge":
        merged = prev.out + merged_suffix
        return "merged", merged, f"a new adapter on phase {prev.phase}'s adapter merged into its base ({merged})"
    return "adapter", prev.out, f"continues phase {prev.phase}'s adapter ({prev.out}), trainable"


def write_stage_configs(plan: ExportPlan, out: Path, tool: str, stage_config) -> tuple[list[tuple[Stage, str]],
                                                                                      dict[str, str], bool]:
    """Write one YAML per trainable stage (`trainable_stages`) at configs/<arm>/seed_<s>/phase_<k>.yaml, rendered from
    `stage_config(plan, stage)`: ([(stage, config path relative to out)], skipped arms, whether each stage is merged
    after training (LoRA with train.lora.across_phases=merge))."""
    stages, skipped = trainable_stages(plan, tool)
    written = []
    for stage in stages:
        cfg_path = f"configs/{stage.arm}/seed_{stage.seed}/phase_{stage.phase}.yaml"
        atomic_write_text(out / cfg_path, render_yaml(*stage_config(plan, stage)))
        written.append((stage, cfg_path))
    return written, skipped, plan.cfg.train.method == "lora" and plan.cfg.train.lora.across_phases == "merge"


def base_model_path(name_or_path: str) -> str:
    """model.name_or_path as another tool loads it: a named offline model -> its converted plain checkpoint (made
    once, `modeling.resolve_model_path`), a local folder -> its absolute path (scripts run from the export
    folder), anything else (a hub id) unchanged.

    Raises:
        PhasedIFTError: a named model's package is missing, or a local path without config.json.
    """
    if name_or_path in NAMED_MODELS:
        return str(Path(resolve_model_path(name_or_path)).resolve())
    p = Path(name_or_path).expanduser()
    return str(Path(resolve_model_path(str(p))).resolve()) if p.exists() else name_or_path


def in_file_order(cfg: Config, arm: str) -> bool:
    """Whether the arm's phases are fed in file order, unshuffled: its own `sequential` sampler, or
    train.order=sequential for an arm without a sampler of its own."""
    a = get_arm(arm)
    return a.sampler == "sequential" or (not a.sampler and cfg.train.order == "sequential")


def _arm_files(cfg: Config, run: RunDir, arm: str, k: int) -> tuple[list[DataFile], dict[int, list[str]]]:
    """The data files of one arm and, per seed, the file name of each phase in training order.

    Seeds share a file when every phase holds the same examples for every seed (as a set, or as a sequence for
    an arm fed in file order); otherwise each seed gets its own files.
    """
    a = get_arm(arm)
    ordered = in_file_order(cfg, arm)
    seeds = list(cfg.train.seeds)
    data = {s: a.phase_data(run, k, s, cfg.train) for s in seeds}

    def key(phases: list[list[Example]]) -> tuple:
        return tuple(tuple(e.id for e in ph) if ordered else tuple(sorted(e.id for e in ph)) for ph in phases)

    shared = len({key(p) for p in data.values()}) == 1
    files: list[DataFile] = []
    names: dict[int, list[str]] = {}
    for s in seeds:
        names[s] = []
        for i, ph in enumerate(data[s], 1):
            name = f"{arm}_phase_{i}" if shared else f"{arm}_seed{s}_phase_{i}"
            names[s].append(name)
            if shared and s != seeds[0]:
                continue
            files.append(DataFile(name, arm, i, tuple(seeds) if shared else (s,), tuple(ph), not shared))
    return files, names


def build_plan(cfg: Config, run: RunDir | None = None) -> ExportPlan:
    """The export plan of a split run dir: its data files and its training stages (every arm of train.arms, every
    seed of train.seeds, every phase of the arm).

    Raises:
        PhasedIFTError: the split has not run (no phases/manifest.json: run `phased-ift split CONFIG`), or a control
            arm's files are missing (re-run the split with that arm).
    """
    run = run or RunDir(cfg.run_dir)
    if not run.phases_manifest.is_file():
        raise PhasedIFTError(f"export: {run.phases_manifest} does not exist; run `phased-ift split CONFIG` first "
                             f"(the export reads the split's phase files).")
    manifest = read_manifest(run)
    k = phase_count(cfg, run)
    plan = ExportPlan(cfg, run, manifest, k)
    for arm in cfg.train.arms:
        files, names = _arm_files(cfg, run, arm, k)
        plan.files.update((f.name, f) for f in files)
        for seed in cfg.train.seeds:
            n = len(names[seed])
            plan.stages += [Stage(arm, seed, i, n, names[seed][i - 1], phase_hparams(cfg, arm, i),
                                  in_file_order(cfg, arm), get_arm(arm).sampler) for i in range(1, n + 1)]
    return plan


def trainable_stages(plan: ExportPlan, tool: str) -> tuple[list[Stage], dict[str, str]]:
    """(the stages another tool can train as our loop does, {arm: why it is left out}).

    An arm is left out when its in-phase sampler is not in `PORTABLE_SAMPLERS` (the `competence` curriculum draws
    each batch from a growing easiest fraction: no option of LLaMA-Factory or Axolotl does that); its data files
    are still written.
    """
    skipped = {s.arm: f"its in-phase sampler `{s.sampler}` has no {tool} equivalent, so no stage is written (its "
                      f"data is in data/{s.arm}/); train it with `phased-ift train`" for s in plan.stages
               if s.sampler not in PORTABLE_SAMPLERS}
    return [s for s in plan.stages if s.arm not in skipped], skipped


def alpaca_row(example: Example) -> dict[str, Any]:
    """LLaMA-Factory's alpaca row of an example (data/README.md of hiyouga/LLaMA-Factory, "Alpaca Format").

    Returns:
        {"instruction": the last user turn, "input": "", "output": the last assistant turn, "system": the system
        message or "", "history": [[user, assistant], ...] of the earlier turns}. "input" stays empty: our user
        turn already holds Alpaca's input after a blank line (`data.formats`), and LLaMA-Factory would join a
        separate input with a single "\\n".

    Raises:
        PhasedIFTError: the example does not end with an assistant turn after a user turn (not training data).
    """
    msgs = [m for m in example.messages if m["role"] != "system"]
    system = "\n".join(m["content"] for m in example.messages if m["role"] == "system")
    if len(msgs) < 2 or msgs[-1]["role"] != "assistant" or msgs[-2]["role"] != "user":
        raise PhasedIFTError(f"export: example {example.id!r} does not end with a user turn and its answer; "
                             f"re-run `phased-ift split` on data from `phased-ift data check`.")
    history = [[msgs[i]["content"], msgs[i + 1]["content"]] for i in range(0, len(msgs) - 2, 2)]
    return {"instruction": msgs[-2]["content"], "input": "", "output": msgs[-1]["content"], "system": system,
            "history": history}


def paper_renderer(plan: ExportPlan):
    """`render(example) -> (prompt, response)`: the text our loop trains on with model.template=paper
    (`modeling.render`: "<bos>User: {instruction}<eos>\\nAssistant: " and "{response}<eos>", the tokenizer's own
    bos/eos strings), for tools that have no such template and train on it as plain text.

    Raises:
        PhasedIFTError: the model's tokenizer cannot be loaded (offline hub id: use a local path).
    """
    tokenizer = load_tokenizer(plan.base_model)
    return lambda example: render(tokenizer, example.messages, "paper")


def render_yaml(sections: dict[str, dict[str, Any]], notes: list[str]) -> str:
    """A YAML config as `notes` (comment lines, wrapped at 118 characters), then one `### <section>` block per
    non-empty section (PyYAML `safe_dump`, keys in the given order). Loads back as the union of the sections."""
    text = "".join("\n".join(textwrap.wrap(n, 116, initial_indent="# ", subsequent_indent="#   ")) + "\n"
                   for n in notes)
    for name, keys in sections.items():
        if keys:  # an empty section would dump as "{}", which is no mapping entry
            text += f"\n### {name}\n" + yaml.safe_dump(keys, sort_keys=False, allow_unicode=True)
    return text
