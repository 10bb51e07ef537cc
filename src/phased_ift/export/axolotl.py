"""The `axolotl` export target: a run's phases as Axolotl datasets, one `axolotl train` config per stage (arm x
seed x phase) chained the way `train.loop` chains phases, and a `run.sh` that trains them in order.

Layout of the export folder (Axolotl 0.19.0, whose own schema `axolotl.utils.config.validate_config` accepts these
configs: docs/export.md; keys of its config reference, docs/config-reference.qmd, and of its dataset formats,
docs/dataset-formats/conversation.qmd and template_free.qmd):

    data/<arm>[/seed_<s>]/phase_<k>.jsonl    rows, see "Templates" below
    configs/<arm>/seed_<s>/phase_<k>.yaml    `axolotl train` config of one stage
    saves/<arm>/seed_<s>/phase_<k>/          its output_dir; `merged/` inside after `axolotl merge-lora` (merge)
    run.sh, README.md

How each stage starts (as our loop, docs/training.md):
  * train.method=full: `base_model: saves/.../phase_<k-1>` (the previous full model).
  * lora / qlora, across_phases=continue: `base_model: <base>` and `lora_model_dir: saves/.../phase_<k-1>`
    (Axolotl loads that adapter with `is_trainable=True` and trains it on).
  * lora, across_phases=merge: after each stage `axolotl merge-lora` writes saves/.../phase_<k>/merged; phase
    k+1 has `base_model: saves/.../phase_<k>/merged` and a new adapter.
Every stage is a new Axolotl run: optimizer and LR schedule (learning rate, warmup ratio, scheduler, epochs of
`train.plan.phase_hparams`) restart each phase, as ours. run.sh marks a finished step with a DONE file (Axolotl
writes no end-of-run file of its own); `auto_resume_from_checkpoints` resumes an interrupted stage.

Templates: model.template=chat -> `type: chat_template` with `chat_template: tokenizer_default` (the tokenizer's own
template, as our `modeling.render`) on rows {"messages": [{"role", "content", "training"}]}, where `training` is
true on the last answer only (`message_field_training`), so the loss is where ours is. model.template=paper ->
Axolotl's template-free `type: input_output` on rows {"segments": [{"label": false, "text": prompt}, {"label":
true, "text": response}]}, the text our loop trains on (`modeling.render`), tokenized without added specials.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from phased_ift.export.plan import ExportPlan, Stage, paper_renderer, stage_start, write_stage_configs
from phased_ift.export.script import DONE, Step, run_script
from phased_ift.runio import atomic_write_text, write_jsonl

TOOL = "Axolotl"
VERSION = "0.19.0"


def _rows(plan: ExportPlan):
    """row(example) for the configured template (module docstring, "Templates")."""
    if plan.cfg.model.template == "paper":
        render = paper_renderer(plan)

        def segments(example):
            prompt, response = render(example)
            return {"segments": [{"label": False, "text": prompt}, {"label": True, "text": response}]}

        return segments

    def messages(example):
        last = len(example.messages) - 1
        return {"messages": [{"role": m["role"], "content": m["content"], "training": i == last}
                             for i, m in enumerate(example.messages)]}

    return messages


def dataset_entry(plan: ExportPlan, path: str) -> dict[str, Any]:
    """The `datasets:` entry of a data file for the configured template."""
    if plan.cfg.model.template == "paper":
        return {"path": path, "ds_type": "json", "type": "input_output"}
    return {"path": path, "ds_type": "json", "type": "chat_template", "chat_template": "tokenizer_default",
            "field_messages": "messages", "message_field_training": "training", "train_on_eos": "turn"}


def _start(plan: ExportPlan, stage: Stage) -> tuple[dict[str, Any], str]:
    """(model keys, comment): where the stage's weights come from (`plan.stage_start`)."""
    kind, path, note = stage_start(plan, stage, "/merged")
    keys = {"base": {"base_model": plan.base_model}, "full": {"base_model": path},
            "merged": {"base_model": path}, "adapter": {"base_model": plan.base_model, "lora_model_dir": path}}
    return keys[kind], note


def _method_keys(plan: ExportPlan) -> dict[str, Any]:
    """adapter and LoRA keys of train.method / train.lora ({} for full fine-tuning)."""
    t = plan.cfg.train
    if t.method == "full":
        return {}
    targets = t.lora.target_modules
    keys: dict[str, Any] = {"adapter": t.method, "lora_r": t.lora.r, "lora_alpha": t.lora.alpha,
                            "lora_dropout": t.lora.dropout}
    keys.update({"lora_target_linear": True} if targets == ["all-linear"] else {"lora_target_modules": targets})
    if t.method == "qlora":
        keys["load_in_4bit"] = True  # bitsandbytes NF4 with double quantization (Axolotl's qlora defaults)
    return keys


def stage_config(plan: ExportPlan, stage: Stage) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The sections of one stage's `axolotl train` config and the comment lines that explain it."""
    t, hp, m = plan.cfg.train, stage.hparams, plan.cfg.model
    model, start = _start(plan, stage)
    data = {"datasets": [dataset_entry(plan, plan.files[stage.data].path(".jsonl"))],
            "dataset_prepared_path": "prepared", "val_set_size": 0, "sequence_len": hp.max_length,
            "train_on_inputs": False, "sample_packing": t.batching == "packing"}
    if stage.sequential:  # the arm's order is part of the arm: no shuffle when preparing, sequential sampler
        data.update(shuffle_merged_datasets=False, curriculum_sampling=True)
    train = {"micro_batch_size": hp.batch_size, "gradient_accumulation_steps": hp.grad_accum,
             "num_epochs": hp.epochs, "learning_rate": hp.learning_rate, "lr_scheduler": hp.lr_scheduler,
             "warmup_ratio": hp.warmup_ratio, "optimizer": "adamw_torch", "weight_decay": hp.weight_decay,
             "adam_beta2": hp.adam_beta2, "max_grad_norm": hp.max_grad_norm, "seed": stage.seed,
             "gradient_checkpointing": t.gradient_checkpointing}
    train.update({k: True for k in ("bf16", "fp16") if m.autocast == k})
    if hp.max_steps > 0:
        train["max_steps"] = hp.max_steps
    if t.deepspeed:
        train["deepspeed"] = str(Path(t.deepspeed).resolve())
    output = {"output_dir": stage.out, "logging_steps": t.logging_steps, "save_steps": t.save_steps,
              "save_total_limit": 1, "auto_resume_from_checkpoints": True}
    if t.report_to == "tensorboard":
        output["use_tensorboard"] = True
    elif t.report_to == "wandb":
        output["wandb_project"] = "phased-ift"  # Axolotl logs to wandb when a project is set
    notes = [f"phase {stage.phase} of {stage.n_phases} of arm {stage.arm}, seed {stage.seed}: {start}",
             f"the schedule restarts here (learning rate, warmup, scheduler: phased-ift's phase {stage.phase})",
             f"model.template={m.template}: " + ("Axolotl's template-free input_output rows, rendered by phased-ift"
                                                 if m.template == "paper" else "the tokenizer's own chat template")]
    if m.autocast == "auto":
        notes.append("model.autocast=auto: set `bf16: true` on a GPU with bf16 (what auto picks there)")
    if t.carry_optimizer:
        notes.append("train.carry_optimizer=true is not exported: each Axolotl stage starts a fresh AdamW")
    return {"model": {**model, "trust_remote_code": m.trust_remote_code}, "method": _method_keys(plan),
            "dataset": data, "output": output, "train": train}, notes


def write(plan: ExportPlan, out: Path) -> list[Path]:
    """Write the whole Axolotl export into `out` (module docstring); returns the files written.

    Raises:
        PhasedIFTError: see `export.plan.build_plan` and `paper_renderer`.
    """
    row, written = _rows(plan), []
    for f in plan.files.values():
        write_jsonl(out / f.path(".jsonl"), (row(e) for e in f.examples))
        written.append(out / f.path(".jsonl"))
    configs, skipped, merge = write_stage_configs(plan, out, TOOL, stage_config)
    stages = [stage for stage, _ in configs]
    steps = []
    for stage, cfg_path in configs:
        written.append(out / cfg_path)
        steps.append(Step(stage.name, stage.out, DONE, ("$AXOLOTL", "train", cfg_path), write_marker=True))
        if merge:
            steps.append(Step(f"{stage.name}/merge", stage.out + "/merged", DONE,
                              ("$AXOLOTL", "merge-lora", cfg_path), write_marker=True))
    header = [f"Trains the phases of {plan.run.root} with Axolotl {VERSION} (written by `phased-ift export --to "
              "axolotl`).", f"Each stage starts from the previous stage's output; a step whose folder has {DONE} is "
              "skipped, so running it again resumes.", "Usage: bash run.sh [STAGE_PREFIX ...]   e.g. bash run.sh "
              "phased/seed_0", "       AXOLOTL=/path/to/venv/bin/axolotl bash run.sh",
              *(f"Not exported: arm {a}: {why}." for a, why in skipped.items())]
    script = out / "run.sh"
    atomic_write_text(script, run_script(steps, header, {"AXOLOTL": "axolotl"}))
    os.chmod(script, 0o755)
    readme = [f"# Axolotl export of `{plan.run.root}`", "", f"Written by `phased-ift export --to axolotl`: "
              f"{len(stages)} stages (arm x seed x phase), base model `{plan.base_model}`. Run `bash run.sh`; the "
              "comments at the top of each configs/<arm>/seed_<s>/phase_<k>.yaml say what the stage starts from.",
              "", *(f"- Not exported: arm `{a}`: {why}." for a, why in skipped.items())]
    atomic_write_text(out / "README.md", "\n".join(readme) + "\n")
    return written + [script, out / "README.md"]
