"""The disk space a run's training still needs, estimated before any weights load (no torch).

Owns `estimate_disk_need` (a `DiskNeed`: bytes, with the breakdown), `describe_need` (its one line in the plan),
`lora_params` (the parameters of a LoRA adapter from the base's tensor shapes) and `CHECKPOINTS_KEPT` (the
Trainer's save_total_limit, which `trainer.sft_config` sets). The model's tensor shapes come from file headers
(`modeling.weight_shapes`); the phases from `design.training_cells`.

What is counted, in bytes (1 GB = 10^9 bytes in messages), for every phase of arm x seed x phase without DONE (a
finished phase writes nothing more):
  * the phase dir, kept for the whole run (the next phase and the evaluation load it;
    `trainer.save_phase_weights`): with train.method lora / qlora and lora.across_phases=continue the adapter,
    r x (in + out) parameters per targeted layer (lora_A is r x in, lora_B out x r; PEFT's LoRA `update_layer`),
    4 bytes each (PEFT keeps adapter weights in float32: `autocast_adapter_dtype=True`); with train.method=full or
    across_phases=merge every parameter in model.dtype; the base's tokenizer and config files
    (`WeightShapes.side_bytes`), which `tokenizer.save_pretrained` writes again; with train.carry_optimizer
    optimizer.pt (the AdamW moments below); `SMALL_FILES` for hparams.json, losses.jsonl, DONE, configs.
  * while one phase trains (phases train one after another), the Trainer checkpoints in its trainer/ dir (every
    train.save_steps steps; deleted when the phase is DONE). One holds what transformers' `Trainer._save_checkpoint`
    writes: the trained model as `save_model` writes it (the adapter for lora / qlora, both across_phases modes;
    every parameter for full) with the tokenizer, optimizer.pt (torch AdamW: exp_avg and exp_avg_sq per trainable
    parameter, each `zeros_like(param)`, so 2 x the trainable parameters in their dtype), scheduler.pt,
    rng_state.pth, trainer_state.json and training_args.bin (`SMALL_FILES`). With save_total_limit=1 up to two exist
    at once: `trainer_utils.rotate_checkpoints` deletes the older one only after the new one is written (one with
    save_steps <= 0: the checkpoint a SIGTERM writes). Sources: transformers 5.25 `Trainer._save_checkpoint` and
    `Trainer._save`, PEFT 0.21 `LoraLayer.update_layer`, torch `optim.AdamW`.
Not counted: data/, scores/, phases/, generations, judgements, grades, evaluation, report (MBs for the configs in
configs/), cache/ (grows with the LLM answers of a judge), tracking logs, and the converted named model under
$PHASED_IFT_CACHE (outside the run dir). An estimate: `SMALL_FILES` stands for the safetensors headers, PEFT's
README.md and the state files; a phase shorter than save_steps writes no periodic checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phased_ift.config import Config
from phased_ift.phases.design import training_cells
from phased_ift.diskerrors import human_bytes as h
from phased_ift.modeling import WeightShapes, weight_shapes
from phased_ift.phasedir import PhaseDir
from phased_ift.rundir import RunDir

CHECKPOINTS_KEPT = 1  # the Trainer's save_total_limit (trainer.sft_config)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAPTER_DTYPE_BYTES = 4  # PEFT's adapter weights are float32 (autocast_adapter_dtype=True)
SMALL_FILES = 64_000  # json / pickled state files of a phase dir or a Trainer checkpoint, a generous bound
_NOT_LINEAR = ("embed", "wte", "wpe", "lm_head")  # 2-D tensors that PEFT's all-linear leaves out


@dataclass(frozen=True)
class DiskNeed:
    """What the training of a run still writes to its run dir, in bytes (see the module docstring).

    Attributes:
        total: the peak still to come: `phases_left` x `phase_bytes` + `checkpoints_at_once` x `checkpoint_bytes`
            (the latter only while a phase is left).
        phase_bytes: one finished phase dir; `phase_parts` its parts ({"adapter" | "full model": ...,
            "tokenizer and configs": ..., "optimizer.pt": ..., "small files": ...}).
        checkpoint_bytes: one Trainer checkpoint; `checkpoints_at_once` how many exist at once.
        phases_left / phases_done: phases (arm x seed x phase) without / with DONE.
        params / trainable: parameters of the model and of what trains (the adapter or every parameter).
        notes: what the estimate could not see (e.g. tokenizer files of a model not converted yet).
    """

    total: int
    phase_bytes: int
    phase_parts: dict[str, int]
    checkpoint_bytes: int
    checkpoints_at_once: int
    phases_left: int
    phases_done: int
    params: int
    trainable: int
    notes: list[str] = field(default_factory=list)


def lora_params(shapes: dict[str, tuple[int, ...]], r: int, target_modules: list[str]) -> int:
    """The parameters of a LoRA adapter of rank `r`: r x (in + out) per adapted 2-D weight (lora_A: r x in,
    lora_B: out x r; an adapted embedding likewise, r x (rows + columns)).

    `target_modules` as `config.LoraConfig`: ["all-linear"] (PEFT's shorthand: every linear weight but the output
    head; here every 2-D `*.weight` whose name has none of `_NOT_LINEAR`) or module names, matched as PEFT matches
    a list: the module's full name equals one or ends with "." + one.
    """
    total = 0
    for name, shape in shapes.items():
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        if target_modules == ["all-linear"]:
            hit = not any(part in module for part in _NOT_LINEAR)
        else:
            hit = any(module == t or module.endswith("." + t) for t in target_modules)
        total += r * (shape[0] + shape[1]) if hit else 0
    return total


def estimate_disk_need(cfg: Config, run: RunDir | None = None,
                       shapes: WeightShapes | None = None) -> DiskNeed | None:
    """The bytes the training of `cfg` still writes to its run dir (`run`, default cfg.run_dir), with the breakdown
    of `DiskNeed`; phases with DONE are left out. `shapes` defaults to `modeling.weight_shapes(model.name_or_path)`.

    Returns:
        None when the model's tensor shapes cannot be read from a file header (a hub id not in the local cache, a
        checkpoint without safetensors files): the need is then unknown.
    """
    run = run or RunDir(cfg.run_dir)
    shapes = shapes or weight_shapes(cfg.model.name_or_path)
    if shapes is None:
        return None
    t = cfg.train
    lora = t.method in ("lora", "qlora")
    merge = lora and t.lora.across_phases == "merge"
    dtype = DTYPE_BYTES[cfg.model.dtype]
    params = shapes.params
    trainable = lora_params(shapes.shapes, t.lora.r, list(t.lora.target_modules)) if lora else params
    trained_bytes = trainable * (ADAPTER_DTYPE_BYTES if lora else dtype)  # what save_model writes
    moments = 2 * trained_bytes  # AdamW's exp_avg + exp_avg_sq, each zeros_like(param)
    side = shapes.side_bytes or 0
    kept = ("adapter", trained_bytes) if lora and not merge else ("full model", params * dtype)
    parts = {kept[0]: kept[1], "tokenizer and configs": side}
    if t.carry_optimizer:
        parts["optimizer.pt"] = moments
    parts["small files"] = SMALL_FILES
    checkpoint = trained_bytes + side + moments + SMALL_FILES
    cells = training_cells(cfg, run)
    done = sum(PhaseDir(run.checkpoint(c.arm, c.phase, c.seed)).done for c in cells)
    left = len(cells) - done
    at_once = CHECKPOINTS_KEPT + 1 if t.save_steps > 0 else 1  # the new one is written before the old is deleted
    total = left * sum(parts.values()) + (at_once * checkpoint if left else 0)
    notes = [] if shapes.side_bytes is not None else [
        f"tokenizer files not counted: {cfg.model.name_or_path} is not converted yet"]
    return DiskNeed(total, sum(parts.values()), parts, checkpoint, at_once, left, done, params, trainable, notes)


def describe_need(need: DiskNeed) -> str:
    """The plan's one line: the total and its breakdown in decimal units (`diskerrors.human_bytes`)."""
    if need.phases_left == 0:
        return f"disk: training writes nothing more (all {need.phases_done} phases are DONE)"
    parts = " + ".join(f"{k} {h(v)}" for k, v in need.phase_parts.items() if v)
    done = f", {need.phases_done} DONE phases left out" if need.phases_done else ""
    notes = "".join(f"; {n}" for n in need.notes)
    return (f"disk: training needs about {h(need.total)}: {need.phases_left} phases x {h(need.phase_bytes)} "
            f"({parts}) + {need.checkpoints_at_once} Trainer checkpoint{'s' if need.checkpoints_at_once > 1 else ''}"
            f" x {h(need.checkpoint_bytes)} while a phase trains (weights + AdamW state){done}{notes}")
