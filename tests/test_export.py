"""`phased-ift export`: a split run dir (length scorer, 12 Alpaca examples, K = 3) exported for LLaMA-Factory,
Axolotl and as a Hugging Face DatasetDict; the files' contents, the chaining of the stages, run.sh's order and skip
logic, the dataset's splits and card. (The LLaMA-Factory training run itself is measured in docs/export.md.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from phased_ift.cli import main
from phased_ift.config import load_config
from phased_ift.data import read_examples
from phased_ift.export.plan import alpaca_row
from phased_ift.rundir import RunDir

ARMS = ["phased", "one-off", "random", "reverse", "sorted", "replay", "competence"]


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A config whose run dir has been split (data, length scores, phases and the controls' files)."""
    root = tmp_path_factory.mktemp("export")
    data = root / "alpaca.json"
    rows = [{"instruction": f"Write {1 + i % 4} lines about topic {i}.", "input": f"Context {i}." if i % 3 == 0 else "",
             "output": " ".join(f"Line {j} on {i}." for j in range(1 + i % 5))} for i in range(12)]
    rows[1]["system"] = "You answer briefly."
    data.write_text(json.dumps(rows), encoding="utf-8")
    cfg = {"run_dir": str(root / "run"), "data": {"train": [{"path": str(data), "format": "alpaca"}]},
           "model": {"name_or_path": str(tiny_model_dir), "template": "chat", "max_length": 64},
           "scoring": {"scorer": "length"}, "phases": {"k": 3, "method": "quantiles"},
           "train": {"arms": ARMS, "seeds": [0, 1], "phase_epochs": [1, 2, 3],
                     "phase_learning_rates": [3e-4, 2e-4, 1e-4], "learning_rate": 5e-4, "epochs": 2,
                     "replay_ratio": 0.5, "batch_size": 2, "grad_accum": 4, "warmup_ratio": 0.05,
                     "lr_scheduler": "linear"}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["split", str(path)]) == 0
    return path


def export(cfg: Path, target: str, out: Path, *overrides: str) -> Path:
    assert main(["export", str(cfg), "--to", target, str(out), *overrides]) == 0
    return out


def stage(out: Path, arm: str, seed: int, k: int, name: str = "phase") -> dict:
    return yaml.safe_load((out / f"configs/{arm}/seed_{seed}/{name}_{k}.yaml").read_text())


def step_lines(out: Path) -> list[list[str]]:
    return [line.split() for line in (out / "run.sh").read_text().splitlines() if line.startswith("step ")]


def manifest(cfg: Path) -> dict:
    return json.loads(RunDir(load_config(cfg).run_dir).phases_manifest.read_text())


def test_llama_factory_datasets_match_the_phase_files(split_run, tmp_path):
    out = export(split_run, "llama-factory", tmp_path / "lf")
    info = json.loads((out / "data/dataset_info.json").read_text())
    # replay draws its extra examples with the training seed: one file per seed; the others are shared
    assert set(info) == {"phased_phase_1", "phased_phase_2", "phased_phase_3", "one-off_phase_1", "random_phase_1",
                         "random_phase_2", "random_phase_3", "reverse_phase_1", "reverse_phase_2", "reverse_phase_3",
                         "sorted_phase_1", "competence_phase_1",
                         *(f"replay_seed{s}_phase_{k}" for s in (0, 1) for k in (1, 2, 3))}
    assert info["phased_phase_2"] == {"file_name": "phased/phase_2.jsonl", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}}
    assert info["replay_seed1_phase_3"]["file_name"] == "replay/seed_1/phase_3.jsonl"
    run = RunDir(load_config(split_run).run_dir)
    for k in (1, 2, 3):
        rows = [json.loads(x) for x in (out / f"data/phased/phase_{k}.jsonl").read_text().splitlines()]
        assert rows == [alpaca_row(e) for e in read_examples(run.phase_file(k))]
        assert len(rows) == manifest(split_run)["phases"][k - 1]["count"] == 4
    one_off = [json.loads(x) for x in (out / "data/one-off/phase_1.jsonl").read_text().splitlines()]
    assert len(one_off) == 12 and all(r["input"] == "" for r in one_off)
    by_text = {r["instruction"]: r for r in one_off}
    assert by_text["Write 1 lines about topic 0.\n\nContext 0."]["output"] == "Line 0 on 0."  # input kept in the turn
    assert by_text["Write 2 lines about topic 1."]["system"] == "You answer briefly."


def test_llama_factory_stages_chain_lora_adapters_with_the_per_phase_schedule(split_run, tmp_path):
    out = export(split_run, "llama-factory", tmp_path / "lf")
    base = str(Path(load_config(split_run).model.name_or_path).resolve())
    for seed in (0, 1):
        first, second, third = (stage(out, "phased", seed, k) for k in (1, 2, 3))
        assert first["model_name_or_path"] == base and "adapter_name_or_path" not in first
        assert second["model_name_or_path"] == base
        assert second["adapter_name_or_path"] == f"saves/phased/seed_{seed}/phase_1"
        assert third["adapter_name_or_path"] == f"saves/phased/seed_{seed}/phase_2"
        assert [s["output_dir"] for s in (first, second, third)] == [f"saves/phased/seed_{seed}/phase_{k}"
                                                                     for k in (1, 2, 3)]
        assert [(s["learning_rate"], s["num_train_epochs"]) for s in (first, second, third)] == [
            (3e-4, 1.0), (2e-4, 2.0), (1e-4, 3.0)]
        assert all(s["seed"] == seed for s in (first, second, third))
    s = stage(out, "phased", 0, 2)
    assert {k: s[k] for k in ("stage", "do_train", "finetuning_type", "lora_rank", "lora_alpha", "lora_target",
                              "dataset", "dataset_dir", "cutoff_len", "mask_history", "lr_scheduler_type",
                              "warmup_ratio", "per_device_train_batch_size", "gradient_accumulation_steps")} == {
        "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 16, "lora_alpha": 32,
        "lora_target": "all", "dataset": "phased_phase_2", "dataset_dir": "data", "cutoff_len": 64,
        "mask_history": True, "lr_scheduler_type": "linear", "warmup_ratio": 0.05, "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4}
    assert "template" not in s  # chat: LLaMA-Factory parses the tokenizer's own chat template
    assert "parses the tokenizer's own chat template" in (out / "configs/phased/seed_0/phase_2.yaml").read_text()
    one_off = stage(out, "one-off", 1, 1)  # no phase schedule: train.epochs and train.learning_rate
    assert (one_off["learning_rate"], one_off["num_train_epochs"], one_off["dataset"]) == (5e-4, 2.0,
                                                                                          "one-off_phase_1")
    assert stage(out, "replay", 1, 3)["dataset"] == "replay_seed1_phase_3"
    assert stage(out, "sorted", 0, 1)["disable_shuffling"] is True  # fed easy -> hard in file order
    assert "disable_shuffling" not in stage(out, "random", 0, 1)
    assert not (out / "configs/competence").exists()  # its sampler has no LLaMA-Factory equivalent: said so
    assert "arm competence" in (out / "run.sh").read_text() and "`competence`" in (out / "README.md").read_text()


def test_llama_factory_run_sh_trains_stages_in_order(split_run, tmp_path):
    out = export(split_run, "llama-factory", tmp_path / "lf")
    steps = step_lines(out)
    names = [s[1] for s in steps]
    assert names[:6] == [f"phased/seed_{s}/phase_{k}" for s in (0, 1) for k in (1, 2, 3)]
    assert len(names) == 2 * (3 + 1 + 3 + 3 + 1 + 3)  # every arm but competence, both seeds
    assert steps[1] == ["step", "phased/seed_0/phase_2", "saves/phased/seed_0/phase_2", "train_results.json", "0",
                        '"$LLAMAFACTORY_CLI"', "train", "configs/phased/seed_0/phase_2.yaml"]
    assert os.access(out / "run.sh", os.X_OK)


def test_llama_factory_full_and_merge_chains(split_run, tmp_path):
    full = export(split_run, "llama-factory", tmp_path / "full", "train.method=full", "train.arms=[phased]")
    s2 = stage(full, "phased", 0, 2)
    assert s2["model_name_or_path"] == "saves/phased/seed_0/phase_1" and s2["finetuning_type"] == "full"
    assert "adapter_name_or_path" not in s2 and "lora_rank" not in s2
    merge = export(split_run, "llama-factory", tmp_path / "merge", "train.lora.across_phases=merge",
                   "train.arms=[phased]", "train.seeds=[0]")
    s2 = stage(merge, "phased", 0, 2)
    assert s2["model_name_or_path"] == "saves/phased/seed_0/phase_1-merged" and "adapter_name_or_path" not in s2
    m1 = stage(merge, "phased", 0, 1, "merge")
    assert {k: m1[k] for k in ("model_name_or_path", "adapter_name_or_path", "export_dir", "infer_dtype",
                               "finetuning_type")} == {
        "model_name_or_path": str(Path(load_config(split_run).model.name_or_path).resolve()),
        "adapter_name_or_path": "saves/phased/seed_0/phase_1", "export_dir": "saves/phased/seed_0/phase_1-merged",
        "infer_dtype": "float32", "finetuning_type": "lora"}
    assert stage(merge, "phased", 0, 2, "merge")["model_name_or_path"] == "saves/phased/seed_0/phase_1-merged"
    assert [(s[1], s[3], s[4], s[6]) for s in step_lines(merge)] == [
        ("phased/seed_0/phase_1", "train_results.json", "0", "train"),
        ("phased/seed_0/phase_1/merge", "DONE", "1", "export"),
        ("phased/seed_0/phase_2", "train_results.json", "0", "train"),
        ("phased/seed_0/phase_2/merge", "DONE", "1", "export"),
        ("phased/seed_0/phase_3", "train_results.json", "0", "train"),
        ("phased/seed_0/phase_3/merge", "DONE", "1", "export")]


def test_paper_template_rows_are_the_text_phased_ift_trains_on(split_run, tmp_path, tiny_model_dir):
    from phased_ift.modeling import load_tokenizer, render

    out = export(split_run, "llama-factory", tmp_path / "lf", "model.template=paper", "train.arms=[phased]")
    assert stage(out, "phased", 0, 1)["template"] == "empty"
    tok = load_tokenizer(str(tiny_model_dir))
    ex = read_examples(RunDir(load_config(split_run).run_dir).phase_file(1))
    rows = [json.loads(x) for x in (out / "data/phased/phase_1.jsonl").read_text().splitlines()]
    assert [(r["instruction"], r["output"]) for r in rows] == [render(tok, e.messages, "paper") for e in ex]
    assert rows[0]["instruction"].startswith(f"{tok.bos_token}User: ")
    axo = export(split_run, "axolotl", tmp_path / "axo", "model.template=paper", "train.arms=[phased]")
    first = json.loads((axo / "data/phased/phase_1.jsonl").read_text().splitlines()[0])
    assert first == {"segments": [{"label": False, "text": rows[0]["instruction"]},
                                  {"label": True, "text": rows[0]["output"]}]}
    assert stage(axo, "phased", 0, 1)["datasets"] == [{"path": "data/phased/phase_1.jsonl", "ds_type": "json",
                                                       "type": "input_output"}]


FAKE_CLI = """#!{python}
import json, sys, pathlib, yaml
command, config = sys.argv[1], sys.argv[2]
cfg = yaml.safe_load(open(config))
with open("calls.log", "a") as log:
    log.write(command + " " + config + "\\n")
if config in {fail!r}:
    sys.exit(1)
out = pathlib.Path(cfg["output_dir"] if command == "train" else cfg["export_dir"])
out.mkdir(parents=True, exist_ok=True)
if command == "train":
    (out / "train_results.json").write_text(json.dumps({{"epoch": 1.0}}))
"""


def fake_cli(tmp_path: Path, fail: tuple[str, ...] = ()) -> Path:
    path = tmp_path / f"fake-cli-{len(fail)}"
    path.write_text(FAKE_CLI.format(python=sys.executable, fail=set(fail)))
    path.chmod(0o755)
    return path


def run_sh(out: Path, cli: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLAMAFACTORY_CLI": str(cli)}
    return subprocess.run(["bash", str(out / "run.sh"), *args], env=env, capture_output=True, text=True)


def calls(out: Path) -> list[str]:
    log = out / "calls.log"
    return log.read_text().splitlines() if log.is_file() else []


def test_run_sh_runs_in_order_skips_finished_steps_and_stops_at_a_failure(split_run, tmp_path):
    out = export(split_run, "llama-factory", tmp_path / "lf", "train.lora.across_phases=merge", "train.arms=[phased]",
                 "train.seeds=[0]")
    cfgs = [f"configs/phased/seed_0/{n}_{k}.yaml" for k in (1, 2, 3) for n in ("phase", "merge")]
    failing = run_sh(out, fake_cli(tmp_path, fail=(cfgs[2],)))  # phase 2's training fails
    assert failing.returncode == 1
    assert calls(out) == ["train " + cfgs[0], "export " + cfgs[1], "train " + cfgs[2]]  # phase 3 never starts
    assert (out / "saves/phased/seed_0/phase_1-merged/DONE").is_file()  # written by run.sh after the merge
    done = run_sh(out, fake_cli(tmp_path))
    assert done.returncode == 0, done.stderr
    assert calls(out)[3:] == [("train " if "phase_" in c else "export ") + c for c in cfgs[2:]]
    assert "skip phased/seed_0/phase_1 (saves/phased/seed_0/phase_1/train_results.json exists)" in done.stdout
    again = run_sh(out, fake_cli(tmp_path))
    assert again.returncode == 0 and len(calls(out)) == 7 and again.stdout.count("skip ") == 6
    (out / "saves/phased/seed_0/phase_3/train_results.json").unlink()
    only = run_sh(out, fake_cli(tmp_path), "phased/seed_0/phase_3")  # a prefix selects steps
    assert only.returncode == 0 and calls(out)[7:] == ["train " + cfgs[4]]


def test_axolotl_configs_chain_the_same_way(split_run, tmp_path):
    out = export(split_run, "axolotl", tmp_path / "axo")
    base = str(Path(load_config(split_run).model.name_or_path).resolve())
    s1, s2 = stage(out, "phased", 1, 1), stage(out, "phased", 1, 2)
    assert s1["base_model"] == base and "lora_model_dir" not in s1
    assert (s2["base_model"], s2["lora_model_dir"], s2["adapter"]) == (base, "saves/phased/seed_1/phase_1", "lora")
    assert (s2["learning_rate"], s2["num_epochs"], s2["lr_scheduler"], s2["warmup_ratio"], s2["micro_batch_size"],
            s2["gradient_accumulation_steps"], s2["sequence_len"], s2["seed"]) == (2e-4, 2.0, "linear", 0.05, 2, 4,
                                                                                64, 1)
    assert s2["datasets"] == [{"path": "data/phased/phase_2.jsonl", "ds_type": "json", "type": "chat_template",
                               "chat_template": "tokenizer_default", "field_messages": "messages",
                               "message_field_training": "training", "train_on_eos": "turn"}]
    assert s2["lora_target_linear"] is True and s2["train_on_inputs"] is False and s2["val_set_size"] == 0
    sorted_arm = stage(out, "sorted", 0, 1)
    assert sorted_arm["curriculum_sampling"] is True and sorted_arm["shuffle_merged_datasets"] is False
    row = json.loads((out / "data/one-off/phase_1.jsonl").read_text().splitlines()[0])
    assert [m["training"] for m in row["messages"]] == [False] * (len(row["messages"]) - 1) + [True]
    assert [s[1] for s in step_lines(out)][:3] == ["phased/seed_0/phase_1", "phased/seed_0/phase_2",
                                                   "phased/seed_0/phase_3"]
    assert all(s[3:5] == ["DONE", "1"] for s in step_lines(out))  # Axolotl writes no end-of-run file: run.sh does
    full = export(split_run, "axolotl", tmp_path / "full", "train.method=full", "train.arms=[phased]")
    assert stage(full, "phased", 0, 3)["base_model"] == "saves/phased/seed_0/phase_2"
    assert "adapter" not in stage(full, "phased", 0, 3)
    merge = export(split_run, "axolotl", tmp_path / "merge", "train.lora.across_phases=merge", "train.arms=[phased]")
    assert stage(merge, "phased", 0, 2)["base_model"] == "saves/phased/seed_0/phase_1/merged"
    assert [s[1] for s in step_lines(merge)][:2] == ["phased/seed_0/phase_1", "phased/seed_0/phase_1/merge"]
    assert step_lines(merge)[1][5:] == ['"$AXOLOTL"', "merge-lora", "configs/phased/seed_0/phase_1.yaml"]


def test_hf_dataset_dict_splits_and_card(split_run, tmp_path):
    from datasets import load_from_disk

    run = RunDir(load_config(split_run).run_dir)
    tag = run.agreement_dir / "sample12_seed0"
    tag.mkdir(parents=True, exist_ok=True)
    (tag / "agreement.json").write_text(json.dumps({"scorer": "length", "n": 12, "failed": 0, "auc": 0.6123,
                                                    "spearman_stage3": 0.25, "n_stage3": 5}) + "\n")
    try:
        out = export(split_run, "hf", tmp_path / "hf")
    finally:
        (tag / "agreement.json").unlink()
    ds = load_from_disk(str(out))
    m = manifest(split_run)
    assert list(ds) == ["phase_1", "phase_2", "phase_3", "one_off", "random_phase_1", "random_phase_2",
                        "random_phase_3", "reverse_phase_1", "reverse_phase_2", "reverse_phase_3"]
    assert [ds[f"phase_{k}"].num_rows for k in (1, 2, 3)] == [p["count"] for p in m["phases"]] == [4, 4, 4]
    assert ds["one_off"].num_rows == m["n_examples"] == 12
    assert ds["phase_2"]["id"] == [e.id for e in read_examples(run.phase_file(2))]
    assert ds["phase_2"]["score"] == sorted(ds["phase_2"]["score"])  # easy -> hard within the phase
    assert max(ds["phase_1"]["score"]) <= min(ds["phase_2"]["score"])
    assert sorted(ds["reverse_phase_1"]["id"]) == sorted(ds["phase_3"]["id"])
    assert set(ds["reverse_phase_1"]["phase"]) == {3}  # the difficulty phase travels with the example
    assert ds["phase_1"].column_names == ["id", "instruction", "output", "system", "messages", "score", "phase",
                                          "source", "sequential", "meta"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "license: other" in card
    assert "Scorer: `length`" in card and "ROC-AUC 0.612 for score >= 3.5 over 12 examples" in card
    assert "Method `quantiles`, K = 3" in card
    p1 = m["phases"][0]
    assert f"| phase_1 | 4 | {p1['score_min']:.3f} | {p1['score_max']:.3f} | {p1['score_mean']:.3f} |" in card
    assert "| one_off | 12 |" in card and "push_to_hub" in card
    assert "not recorded" in card  # a file source without a PROVENANCE.md beside it


def test_hf_card_names_licenses_from_provenance(tmp_path, tiny_model_dir):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "data": {"train": [{"name": "alpagasus/random_9k", "limit": 6}]},
        "model": {"name_or_path": str(tiny_model_dir)}, "scoring": {"scorer": "length"},
        "phases": {"k": 2, "method": "quantiles"}, "train": {"arms": ["phased"]}}))
    assert main(["split", str(cfg)]) == 0
    card = (export(cfg, "hf", tmp_path / "hf") / "README.md").read_text()
    assert "| alpagasus/random_9k | 6 | GitHub gpt4life/alpagasus |" in card and "CC BY-NC 4.0" in card
    assert "not measured in this run" in card


def test_errors_name_the_file_and_the_fix(split_run, tmp_path, capsys):
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(split_run.read_text().replace(str(split_run.parent / "run"), str(tmp_path / "none")))
    assert main(["export", str(fresh), "--to", "hf", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "manifest.json does not exist" in err and "phased-ift split" in err
    with pytest.raises(SystemExit) as exc:  # --to offers the declared targets (config_choices.EXPORT_TARGETS)
        main(["export", str(split_run), "--to", "trl", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "invalid choice: 'trl' (choose from 'llama-factory', 'axolotl', 'hf')" in capsys.readouterr().err
    phases = RunDir(load_config(split_run).run_dir).phases_dir
    assert main(["export", str(split_run), "--to", "hf", str(phases / "x")]) == 2
    assert "inside its phases/" in capsys.readouterr().err.replace("\n", "")
