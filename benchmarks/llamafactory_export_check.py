"""Check that an exported LLaMA-Factory stage chain (`phased-ift export --to llama-factory`) trained the way
phased-ift chains phases: phase 2 starts from phase 1's weights, the schedule restarts, and LLaMA-Factory trains on
the same tokens as phased-ift. The measurement of docs/export.md.

Two interpreters: LLaMA-Factory lives in its own virtualenv (it pins its own transformers / peft / trl).

    # 1. phased-ift's venv: our own tokenisation of the phase files (render + tokenize_example), for check "tokens"
    .venv/bin/python benchmarks/llamafactory_export_check.py dump-ours CONFIG EXPORT_DIR
    # 2. LLaMA-Factory's venv, after `bash run.sh` in EXPORT_DIR:
    /work/lf-venv/bin/python benchmarks/llamafactory_export_check.py check EXPORT_DIR [--arm phased --seed 0]

`check` prints one JSON report and writes it to EXPORT_DIR/check_report.json:
  start    phase 2's starting model, built by LLaMA-Factory's own loader from configs/<arm>/seed_<s>/phase_2.yaml
           (`llamafactory.model.load_model`, as `llamafactory-cli train` does), against phase 1's saved output:
           LoRA continue: every adapter tensor; full: every weight; merge: every base weight against
           phase_1-merged, and the new adapter's lora_B == 0 (a fresh adapter).
  lr0      phase 2 trained again with `learning_rate=0` (`llamafactory-cli train ... learning_rate=0
           output_dir=saves/check/...`): its saved weights against phase 1's (AdamW moves nothing at lr 0).
  trained  the real phase 2 output against phase 1's (it trained on: they differ).
  schedule the learning rates logged by each phase (trainer_log.jsonl): each phase warms up from 0 again.
  tokens   LLaMA-Factory's tokenised dataset of each phase (`llamafactory.data.get_dataset`, what it trains on)
           against phased-ift's (from `dump-ours`): input_ids and the labelled positions, per example.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def dump_ours(config: str, export: Path) -> None:
    """phased-ift's token ids and labels of every exported data file -> EXPORT_DIR/ours_tokens.json."""
    from phased_ift.config import load_config
    from phased_ift.export.plan import build_plan
    from phased_ift.modeling import load_tokenizer
    from phased_ift.train.plan import tokenize_examples

    cfg = load_config(config)
    plan = build_plan(cfg)
    tok = load_tokenizer(plan.base_model)
    out = {name: [{"input_ids": r["input_ids"], "labels": r["labels"]}
                  for r in tokenize_examples(tok, f.examples, cfg.model.template, cfg.model.max_length)]
           for name, f in plan.files.items()}
    (export / "ours_tokens.json").write_text(json.dumps(out))
    print(f"wrote {export / 'ours_tokens.json'}: {sum(len(v) for v in out.values())} examples")


def _tensors(folder: Path) -> dict:
    """The weights saved in a stage folder (adapter or full model), name -> tensor."""
    from safetensors.torch import load_file

    for name in ("adapter_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return load_file(str(folder / name))
    raise FileNotFoundError(f"no weights in {folder}")


def _max_diff(a: dict, b: dict) -> float:
    """Max |a - b| over the tensors both hold; inf when their names differ."""
    if set(a) != set(b):
        return float("inf")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _lf_args(yaml_path: Path, **override):
    """LLaMA-Factory's parsed arguments of a stage config, as `llamafactory-cli train` parses them."""
    import yaml
    from llamafactory.hparams import get_train_args

    args = {**yaml.safe_load(yaml_path.read_text()), **override}
    return get_train_args(args)


def check_start(export: Path, stage2: Path, prev: Path) -> dict:
    """Phase 2's starting tensors (LLaMA-Factory's loader) against phase 1's saved output."""
    import torch
    from llamafactory.model import load_model, load_tokenizer
    from peft import get_peft_model_state_dict

    model_args, _, training_args, finetuning_args, _ = _lf_args(stage2, output_dir=str(export / "saves/check/load"))
    tok = load_tokenizer(model_args)["tokenizer"]
    model = load_model(tok, model_args, finetuning_args, is_trainable=True)
    if finetuning_args.finetuning_type == "full":
        start = {k: v.detach() for k, v in model.state_dict().items()}
        saved = _tensors(prev)
        start = {k: start[k] for k in saved}  # tied weights are saved once
        return {"kind": "full", "tensors": len(saved), "max_abs_diff_vs_phase_1": _max_diff(start, saved)}
    state = {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}
    if model_args.adapter_name_or_path:  # continue: the adapter of phase 1, trainable
        saved = _tensors(prev)
        trainable = sum(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
        return {"kind": "lora-continue", "tensors": len(saved), "max_abs_diff_vs_phase_1": _max_diff(state, saved),
                "trainable_lora_tensors": trainable}
    base = {k: v.detach() for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}
    merged = _tensors(Path(str(prev) + "-merged"))
    base = {k.replace(".base_layer", ""): v for k, v in base.items()}
    base = {k: base[k] for k in merged}
    return {"kind": "lora-merge", "tensors": len(merged), "max_abs_diff_vs_phase_1_merged": _max_diff(base, merged),
            "new_adapter_lora_B_abs_max": max(float(v.abs().max()) for k, v in state.items() if "lora_B" in k),
            "dtype": str(next(iter(merged.values())).dtype),
            "merged_vs_W_plus_scaled_BA": _merge_error(prev, merged)}


def _merge_error(adapter_dir: Path, merged: dict) -> dict:
    """Max |merged - (W + alpha/r B A)| over the adapted weights: W from the adapter's base model, B A from the
    phase's adapter (LoRA's merge, Hu et al. 2021)."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = _tensors(Path(cfg["base_model_name_or_path"]))
    lora, scale, err, n = _tensors(adapter_dir), cfg["lora_alpha"] / cfg["r"], 0.0, 0
    for k, a in lora.items():
        if ".lora_A." in k:
            n += 1
            name = k.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
            want = base[name].float() + scale * (lora[k.replace("lora_A", "lora_B")].float() @ a.float())
            err = max(err, float((merged[name].float() - want).abs().max()))
    return {"max_abs_diff": err, "adapted_weights": n}


def check_lr0(export: Path, stage2: Path, prev: Path, cli: str, kind: str) -> dict:
    """Train phase 2 again at learning rate 0; its saved weights against phase 1's (merge: its new adapter is
    still zero, lora_B == 0, so the model is phase_1-merged exactly)."""
    out = export / "saves" / "check" / "phase_2_lr0"
    if not (out / "train_results.json").is_file():
        subprocess.run([cli, "train", str(stage2), "learning_rate=0", f"output_dir={out}"], cwd=export, check=True,
                       stdout=open(export / "check_lr0.log", "w"), stderr=subprocess.STDOUT)
    a, b = _tensors(out), _tensors(prev)
    if kind == "lora-merge":
        return {"lora_B_abs_max": max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k), "tensors": len(a)}
    return {"max_abs_diff_vs_phase_1": _max_diff(a, b), "tensors": len(a)}


def check_tokens(export: Path, stage_yaml: Path, dataset: str, ours: list) -> dict:
    """LLaMA-Factory's tokenised `dataset` (what it trains on) against phased-ift's rows of the same file."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = _lf_args(stage_yaml, dataset=dataset,
                                                          output_dir=str(export / "saves/check/tok"))
    tok_mod = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tok_mod["tokenizer"], data_args)
    ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **tok_mod)["train_dataset"]
    same_ids = sum(r["input_ids"] == o["input_ids"] for r, o in zip(ds, ours))
    cut = data_args.cutoff_len  # over-long examples: LLaMA-Factory (infer_seqlen) and we cut them differently
    differ_cut = sum(r["input_ids"] != o["input_ids"] and cut in (len(r["input_ids"]), len(o["input_ids"]))
                     for r, o in zip(ds, ours))
    same_labels = sum([x != -100 for x in r["labels"]] == [x != -100 for x in o["labels"]] and
                      [x for x in r["labels"] if x != -100] == [x for x in o["labels"] if x != -100]
                      for r, o in zip(ds, ours))
    return {"examples": len(ours), "lf_examples": len(ds), "same_input_ids": same_ids, "same_labels": same_labels,
            "differ_at_cutoff_len": differ_cut}


def _lrs(folder: Path) -> list:
    log = folder / "trainer_log.jsonl"
    return [json.loads(line).get("lr") for line in log.read_text().splitlines()] if log.is_file() else []


def check(export: Path, arm: str, seed: int) -> dict:
    cli = os.environ.get("LLAMAFACTORY_CLI", str(Path(sys.executable).parent / "llamafactory-cli"))
    os.chdir(export)  # the stage configs hold paths relative to the export folder, as run.sh runs them
    cfg_dir, saves = export / "configs" / arm / f"seed_{seed}", export / "saves" / arm / f"seed_{seed}"
    stage2, prev = cfg_dir / "phase_2.yaml", saves / "phase_1"
    start = check_start(export, stage2, prev)
    report = {"start": start, "lr0": check_lr0(export, stage2, prev, cli, start["kind"]),
              "trained": {"max_abs_diff_phase_2_vs_phase_1": _max_diff(_tensors(saves / "phase_2"), _tensors(prev))},
              "schedule": {p.name: _lrs(p) for p in sorted(saves.glob("phase_[0-9]"))}}
    ours_file = export / "ours_tokens.json"
    if ours_file.is_file():
        ours = json.loads(ours_file.read_text())
        report["tokens"] = {name: check_tokens(export, stage2, name, rows) for name, rows in ours.items()}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump-ours")
    d.add_argument("config")
    d.add_argument("export", type=Path)
    c = sub.add_parser("check")
    c.add_argument("export", type=Path)
    c.add_argument("--arm", default="phased")
    c.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "dump-ours":
        dump_ours(a.config, a.export.resolve())
    else:
        report = json.dumps(check(a.export.resolve(), a.arm, a.seed), indent=1)
        (a.export / "check_report.json").write_text(report + "\n")  # LLaMA-Factory prints to stdout as well
        print(report)


if __name__ == "__main__":
    main()
