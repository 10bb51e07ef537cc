"""The `llama-factory` export target: a run's phases as LLaMA-Factory datasets, one training YAML per stage (arm x
seed x phase) chained the way `train.loop` chains phases, and a `run.sh` that trains them in order.

Layout of the export folder (LLaMA-Factory 0.9.5, `llamafactory-cli`; formats from hiyouga/LLaMA-Factory's
data/README.md, examples/train_lora/*.yaml, examples/train_full/*.yaml and examples/merge_lora/*.yaml):

    data/dataset_info.json                   one entry per data file: {"file_name", "columns"} (alpaca format)
    data/<arm>[/seed_<s>]/phase_<k>.jsonl    alpaca rows {"instruction", "input", "output", "system", "history"}
    configs/<arm>/seed_<s>/phase_<k>.yaml    `llamafactory-cli train` config of one stage
    configs/<arm>/seed_<s>/merge_<k>.yaml    `llamafactory-cli export` config (LoRA, train.lora.across_phases=merge)
    saves/<arm>/seed_<s>/phase_<k>/          the stage's output_dir (written by LLaMA-Factory)
    run.sh, README.md

How each stage starts (as our loop, docs/training.md):
  * train.method=full: phase 1 from the base model, phase k from `model_name_or_path: saves/.../phase_<k-1>`.
  * lora / qlora, across_phases=continue: `model_name_or_path: <base>` and `adapter_name_or_path:
    saves/.../phase_<k-1>` (LLaMA-Factory resumes the last adapter trainable when create_new_adapter is false).
  * lora, across_phases=merge: after each stage `llamafactory-cli export` merges its adapter into its starting
    model (`saves/.../phase_<k>-merged`, in model.dtype); phase k+1 puts a new adapter on that merged model.
Each stage is a new LLaMA-Factory run, so the optimizer and the LR schedule (learning rate, warmup ratio,
scheduler, epochs of `train.plan.phase_hparams`) restart every phase, as ours.

Templates: model.template=chat leaves `template` unset, so LLaMA-Factory parses the tokenizer's own chat template
(`parse_template`), which is what our `modeling.render` applies; model.template=paper has no LLaMA-Factory
template (its `default` is "Human: ...\\nAssistant:"), so the rows hold the text our loop trains on, rendered
by `modeling.render` (bos, "User: ", eos, "\\nAssistant: ", response, eos), with `template: empty`, which adds
nothing. `mask_history: true` puts the loss on the last answer only, as ours.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from phased_ift.export.plan import (ExportPlan, Stage, alpaca_row, paper_renderer, render_yaml, stage_start,
                                    write_stage_configs)
from phased_ift.export.script import DONE, Step, run_script
from phased_ift.runio import atomic_write_json, atomic_write_text, write_jsonl

TOOL = "LLaMA-Factory"
VERSION = "0.9.5"
# LLaMA-Factory writes train_results.json (trainer.save_metrics) after the stage's weights: the stage's marker.
TRAIN_MARKER = "train_results.json"
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
# Our speed settings with no LLaMA-Factory counterpart: they change how fast a phase trains, not what it learns.
SPEED_ONLY = ("batching", "lm_head", "max_batch_tokens", "math_attention_max_len")


def template_keys(plan: ExportPlan) -> tuple[dict[str, Any], str]:
    """({"template": ...} or {}, the comment that says how model.template maps to LLaMA-Factory)."""
    if plan.cfg.model.template == "paper":
        return {"template": "empty"}, ("model.template=paper: LLaMA-Factory has no such template; the rows are "
                                       "rendered by phased-ift (modeling.render) and `empty` adds nothing to them")
    return {}, ("model.template=chat: no `template` key, so LLaMA-Factory parses the tokenizer's own chat template "
                "(parse_template), the one phased-ift renders with; set a LLaMA-Factory template name only if it "
                "renders the same text")


def _rows(plan: ExportPlan):
    """row(example) -> the alpaca row written for the configured template (see the module docstring)."""
    if plan.cfg.model.template != "paper":
        return alpaca_row
    render = paper_renderer(plan)

    def rendered(example):
        prompt, response = render(example)
        return {"instruction": prompt, "input": "", "output": response, "system": "", "history": []}

    return rendered


def write_data(plan: ExportPlan, out: Path) -> list[Path]:
    """data/<arm>[/seed_<s>]/phase_<k>.jsonl for every data file and data/dataset_info.json (written last).

    Returns:
        The files written.
    """
    row = _rows(plan)
    written, info = [], {}
    for f in plan.files.values():
        path = out / f.path(".jsonl")
        write_jsonl(path, (row(e) for e in f.examples))
        info[f.name] = {"file_name": str(path.relative_to(out / "data")), "columns": dict(COLUMNS)}
        written.append(path)
    atomic_write_json(out / "data" / "dataset_info.json", info, indent=2)
    return written + [out / "data" / "dataset_info.json"]


def _start(plan: ExportPlan, stage: Stage) -> tuple[dict[str, Any], str]:
    """(model keys, comment): where the stage's weights come from (`plan.stage_start`)."""
    kind, path, note = stage_start(plan, stage, "-merged")
    keys = {"base": {"model_name_or_path": plan.base_model}, "full": {"model_name_or_path": path},
            "merged": {"model_name_or_path": path},
            "adapter": {"model_name_or_path": plan.base_model, "adapter_name_or_path": path}}
    return keys[kind], note


def _method_keys(plan: ExportPlan) -> dict[str, Any]:
    """finetuning_type and the LoRA / QLoRA keys of train.method and train.lora."""
    t = plan.cfg.train
    if t.method == "full":
        return {"stage": "sft", "do_train": True, "finetuning_type": "full"}
    targets = t.lora.target_modules
    keys: dict[str, Any] = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": t.lora.r,
                            "lora_alpha": t.lora.alpha, "lora_dropout": t.lora.dropout,
                            "lora_target": "all" if targets == ["all-linear"] else ",".join(targets)}
    if t.method == "qlora":  # 4-bit NF4 with double quantization (bitsandbytes), as modeling.qlora_quantization
        keys.update(quantization_bit=4, quantization_method="bnb", quantization_type="nf4", double_quantization=True)
    return keys


def _precision(plan: ExportPlan) -> tuple[dict[str, Any], list[str]]:
    """bf16 / fp16 keys from model.autocast, and notes for what has no key."""
    m = plan.cfg.model
    notes = [] if m.dtype == "float32" else [f"model.dtype={m.dtype}: LLaMA-Factory loads the weights in its compute "
                                             f"dtype (bf16/fp16 below, else its own choice)"]
    if m.autocast in ("bf16", "fp16"):
        return {m.autocast: True}, notes
    if m.autocast == "auto":
        notes.append("model.autocast=auto: set `bf16: true` on a GPU with bf16 (what auto picks there); without it "
                     "LLaMA-Factory trains in fp32 on a CPU and picks bf16/fp16 itself on a GPU")
    return {}, notes


def stage_config(plan: ExportPlan, stage: Stage) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The sections ("model", "method", "dataset", "output", "train") of one stage's `llamafactory-cli train`
    YAML, and the comment lines that explain it (what it starts from, what is not mapped)."""
    t, hp = plan.cfg.train, stage.hparams
    model, start = _start(plan, stage)
    template, template_note = template_keys(plan)
    precision, notes = _precision(plan)
    dataset = {"dataset": stage.data, "dataset_dir": "data", **template, "cutoff_len": hp.max_length,
               "mask_history": True}
    if stage.sequential:
        dataset["disable_shuffling"] = True  # the arm's phase order is part of the arm (sorted, order=sequential)
    if t.batching == "packing":
        dataset.update(packing=True, neat_packing=True)
    train = {"per_device_train_batch_size": hp.batch_size, "gradient_accumulation_steps": hp.grad_accum,
             "learning_rate": hp.learning_rate, "num_train_epochs": hp.epochs, "lr_scheduler_type": hp.lr_scheduler,
             "warmup_ratio": hp.warmup_ratio, "weight_decay": hp.weight_decay, "adam_beta2": hp.adam_beta2,
             "max_grad_norm": hp.max_grad_norm, "seed": stage.seed, **precision,
             "disable_gradient_checkpointing": not t.gradient_checkpointing}
    if hp.max_steps > 0:
        train["max_steps"] = hp.max_steps
    if t.deepspeed:
        train["deepspeed"] = str(Path(t.deepspeed).resolve())
    output = {"output_dir": stage.out, "logging_steps": t.logging_steps, "save_steps": t.save_steps,
              "save_total_limit": 1, "report_to": t.report_to}
    notes = [f"phase {stage.phase} of {stage.n_phases} of arm {stage.arm}, seed {stage.seed}: {start}",
             f"the schedule restarts here (learning rate, warmup, scheduler: phased-ift's phase {stage.phase})",
             template_note, *notes]
    if t.carry_optimizer:
        notes.append("train.carry_optimizer=true is not exported: each LLaMA-Factory stage starts a fresh AdamW")
    notes.append(f"not mapped (speed only): train.{', train.'.join(SPEED_ONLY)}")
    return {"model": {**model, "trust_remote_code": plan.cfg.model.trust_remote_code}, "method": _method_keys(plan),
            "dataset": dataset, "output": output, "train": train}, notes


def merge_config(plan: ExportPlan, stage: Stage) -> dict[str, Any]:
    """The `llamafactory-cli export` YAML that merges a LoRA stage's adapter into the model it started from
    (examples/merge_lora/*.yaml), in model.dtype (`infer_dtype`; LLaMA-Factory's `auto` would halve float32)."""
    model, _ = _start(plan, stage)
    return {"model_name_or_path": model["model_name_or_path"], "adapter_name_or_path": stage.out,
            **template_keys(plan)[0], "finetuning_type": "lora", "trust_remote_code": plan.cfg.model.trust_remote_code,
            "infer_dtype": plan.cfg.model.dtype, "export_dir": stage.out + "-merged", "export_size": 5,
            "export_device": "cpu", "export_legacy_format": False}


def write(plan: ExportPlan, out: Path) -> list[Path]:
    """Write the whole LLaMA-Factory export into `out` (module docstring); returns the files written.

    Raises:
        PhasedIFTError: see `export.plan.build_plan` and `paper_renderer`.
    """
    written = write_data(plan, out)
    configs, skipped, merge = write_stage_configs(plan, out, TOOL, stage_config)
    stages = [stage for stage, _ in configs]
    steps = []
    for stage, cfg_path in configs:
        written.append(out / cfg_path)
        steps.append(Step(stage.name, stage.out, TRAIN_MARKER, ("$LLAMAFACTORY_CLI", "train", cfg_path)))
        if merge:
            merge_path = f"configs/{stage.arm}/seed_{stage.seed}/merge_{stage.phase}.yaml"
            atomic_write_text(out / merge_path, render_yaml({"merge": merge_config(plan, stage)}, [
                f"merges the adapter of {stage.name} into the model it started from (train.lora.across_phases="
                f"merge); the next phase trains a new adapter on {stage.out}-merged"]))
            written.append(out / merge_path)
            steps.append(Step(f"{stage.name}/merge", stage.out + "-merged", DONE,
                              ("$LLAMAFACTORY_CLI", "export", merge_path), write_marker=True))
    script = out / "run.sh"
    atomic_write_text(script, run_script(steps, _script_header(plan, skipped),
                                         {"LLAMAFACTORY_CLI": "llamafactory-cli"}))
    os.chmod(script, 0o755)
    atomic_write_text(out / "README.md", _readme(plan, stages, skipped))
    return written + [script, out / "README.md"]


def _script_header(plan: ExportPlan, skipped: dict[str, str]) -> list[str]:
    return [f"Trains the phases of {plan.run.root} with LLaMA-Factory {VERSION} (written by `phased-ift export "
            f"--to llama-factory`).", "Each stage starts from the previous stage's output; a stage whose output "
            f"folder has {TRAIN_MARKER} (merges: {DONE}) is skipped,", "so running it again resumes after the last "
            "finished stage (LLaMA-Factory itself resumes a stage from its last checkpoint-*).",
            "Usage: bash run.sh [STAGE_PREFIX ...]   e.g. bash run.sh phased/seed_0",
            "       LLAMAFACTORY_CLI=/path/to/venv/bin/llamafactory-cli bash run.sh",
            *(f"Not exported: arm {a}: {why}." for a, why in skipped.items())]


def _readme(plan: ExportPlan, stages: list[Stage], skipped: dict[str, str]) -> str:
    """README.md of the export folder: what is where, how to run it, what is not mapped."""
    lines = [f"# LLaMA-Factory export of `{plan.run.root}`", "",
             f"Written by `phased-ift export --to llama-factory` for LLaMA-Factory {VERSION}. {len(stages)} stages "
             f"(arm x seed x phase), {len(plan.files)} data files, K = {plan.k} phases, base model "
             f"`{plan.base_model}`, train.method={plan.cfg.train.method}"
             + (f" (lora.across_phases={plan.cfg.train.lora.across_phases})" if plan.cfg.train.method != "full"
                else "") + ".", "",
             "    bash run.sh            # every stage in order; again after an interruption: finished stages "
             "are skipped", "",
             "- `data/dataset_info.json` and `data/<arm>/.../phase_<k>.jsonl`: alpaca rows of each arm's phases.",
             "- `configs/<arm>/seed_<s>/phase_<k>.yaml`: one `llamafactory-cli train` config per stage; the comments "
             "at its top say what it starts from.", "- `saves/<arm>/seed_<s>/phase_<k>/`: the stages' outputs.",
             f"- Template: {template_keys(plan)[1]}.", ""]
    lines += [f"- Not exported: arm `{a}`: {why}." for a, why in skipped.items()]
    return "\n".join(lines) + "\n"
