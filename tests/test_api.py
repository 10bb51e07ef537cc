"""The Python API (`phased_ift.api`, docs/api.md): the docs' first script runs exactly as written (a tiny offline
model in PHASED_IFT_API_MODEL) and writes real LLaMA-Factory files; `import phased_ift` stays light; each verb on
data in memory and on a run dir, and its one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import phased_ift as pift
from phased_ift import PhasedIFTError
from phased_ift.data import Example

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "api.md"


def doc_script() -> str:
    """The first ```python block of docs/api.md, as written."""
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.S | re.M)
    assert blocks, "docs/api.md has no ```python block"
    return blocks[0]


def records(n: int = 9) -> list[dict]:
    return [{"instruction": f"Write {1 + i % 4} words about topic {i}.", "input": "",
             "output": " ".join(f"word{j}" for j in range(1 + i))} for i in range(n)]


def test_the_docs_script_runs_as_written_and_writes_llama_factory_files(tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys):
    code = doc_script()
    assert "import phased_ift as pift" in code and 'to="llama-factory"' in code
    monkeypatch.setenv("PHASED_IFT_API_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PHASED_IFT_API_OUT", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__main__"}
    exec(compile(code, str(DOC), "exec"), ns)

    out = tmp_path / "out"
    n = len(ns["records"])
    info = json.loads((out / "data" / "dataset_info.json").read_text())
    assert sorted(info) == ["phased_phase_1", "phased_phase_2", "phased_phase_3"]
    by_instruction = {e.instruction: ns["scores"][e.id] for e in ns["examples"]}
    phase_scores = []
    for k in (1, 2, 3):
        assert info[f"phased_phase_{k}"]["file_name"] == f"phased/phase_{k}.jsonl"
        rows = [json.loads(x) for x in (out / "data" / "phased" / f"phase_{k}.jsonl").read_text().splitlines()]
        assert rows and all(set(r) == {"instruction", "input", "output", "system", "history"} for r in rows)
        phase_scores.append([by_instruction[r["instruction"]] for r in rows])
    assert sum(len(s) for s in phase_scores) == n  # every record in exactly one phase
    assert max(phase_scores[0]) <= min(phase_scores[1]) and max(phase_scores[1]) <= min(phase_scores[2])
    manifest = json.loads((out / "phased-ift-run" / "phases" / "manifest.json").read_text())
    assert (manifest["scorer"], manifest["k"], manifest["n_examples"]) == ("ifd", 3, n)
    stage2 = yaml.safe_load((out / "configs" / "phased" / "seed_0" / "phase_2.yaml").read_text())
    assert stage2["model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    assert stage2["adapter_name_or_path"] == "saves/phased/seed_0/phase_1"  # phase 2 starts from phase 1
    assert "llamafactory-cli" in (out / "run.sh").read_text()
    printed = capsys.readouterr().out
    assert printed.count("phase ") >= 3 and "run.sh" in printed


def test_import_phased_ift_loads_no_api_and_the_names_survive_submodule_imports():
    code = ("import sys, phased_ift; heavy = [m for m in ('phased_ift.api', 'torch', 'datasets', 'transformers') "
            "if m in sys.modules]; print(heavy)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "[]"
    import phased_ift.export  # noqa: F401 (the submodules whose names the verbs avoid)
    import phased_ift.generation  # noqa: F401
    import phased_ift.report  # noqa: F401
    import phased_ift.train  # noqa: F401

    assert callable(pift.train_phases) and callable(pift.generate_answers) and callable(pift.export_phases)
    assert callable(pift.write_report) and pift.Example is Example and {"score", "split", "load_data"} <= set(dir(pift))
    with pytest.raises(AttributeError):
        pift.no_such_name  # noqa: B018


def test_load_data_from_records_datasets_files_and_examples(tmp_path):
    import datasets

    rows = records(4)
    assert [e.instruction for e in pift.load_data(rows)] == [r["instruction"] for r in rows]
    renamed = datasets.Dataset.from_list([{"q": r["instruction"], "a": r["output"]} for r in rows])
    got = pift.load_data(renamed, columns={"instruction": "q", "output": "a"})
    assert [e.response for e in got] == [r["output"] for r in rows] and got[0].id == "dataset-0"
    split_dict = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    assert len(pift.load_data(split_dict)) == 4
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_file = pift.load_data(path)
    assert len(from_file) == 4 and pift.load_data(from_file) == from_file


def test_load_data_rejects_raise_unless_not_strict():
    rows = records(3) + [{"instruction": "No answer here.", "input": "", "output": ""}]
    with pytest.raises(PhasedIFTError, match=r"1 of 4 records .* rejected .*empty response.*strict=False"):
        pift.load_data(rows)
    with pytest.warns(UserWarning, match="left out"):
        assert len(pift.load_data(rows, strict=False)) == 3
    with pytest.raises(PhasedIFTError, match="without split 'test'"):
        pift.load_data({"train": rows}, split="test")


def test_split_with_your_own_numbers_leaves_out_failed_scores():
    examples = pift.load_data(records(7))
    scores = {e.id: float(i % 3) + i / 10 for i, e in enumerate(examples)}
    scores[examples[2].id] = None
    with pytest.warns(UserWarning, match="1 examples without a score"):
        phases = pift.split(examples, scores, k=3)
    assert isinstance(phases, pift.Phases) and (phases.scorer, phases.method, phases.left_out) == (
        "meta", "quantiles", [examples[2].id])
    assert [len(p) for p in phases] == [2, 2, 2]
    flat = [e.meta["score"] for p in phases for e in p]
    assert flat == sorted(flat)
    with pytest.raises(PhasedIFTError, match="have no score"):
        pift.split(examples, {examples[0].id: 1.0}, k=2)


def test_write_run_leaves_a_split_run_dir_the_cli_steps_accept(tmp_path, tiny_model_dir):
    from phased_ift.config import load_config
    from phased_ift.phases.design import controls
    from phased_ift.phases.split import write_split
    from phased_ift.pipeline import steps_for
    from phased_ift.rundir import RunDir

    examples = pift.load_data(records(9))
    phases = pift.split(examples, {e.id: float(i) for i, e in enumerate(examples)}, k=3)
    cfg = pift.write_run(phases, tmp_path / "run", model=str(tiny_model_dir), arms=["phased", "one-off", "random"])
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again.run_dir == str(tmp_path / "run") and again.scoring.scorer == "meta" and again.phases.k == 3
    run = RunDir(cfg.run_dir)
    before = run.phase_file(2).stat().st_mtime_ns
    manifest = write_split(run, cfg.scoring.scorer, 3, "quantiles", [], 0, controls(cfg.train.arms))
    assert run.phase_file(2).stat().st_mtime_ns == before  # the manifest matches: the split step skips
    assert [p["count"] for p in manifest["phases"]] == [3, 3, 3] and "random" in manifest["controls"]
    assert [s.name for s in steps_for("train", again)] == ["split", "train"]  # no data or score step to run
    files = pift.export_phases(tmp_path / "run", tmp_path / "lf", to="llama-factory")
    info = json.loads((tmp_path / "lf" / "data" / "dataset_info.json").read_text())
    assert {"phased_phase_3", "one-off_phase_1", "random_phase_1"} <= set(info) and files


def test_train_generate_and_evaluate_on_phases_in_memory(tmp_path, tiny_model_dir):
    examples = pift.load_data(records(6))
    phases = pift.split(examples, {e.id: float(i) for i, e in enumerate(examples)}, k=2)
    with pytest.raises(PhasedIFTError, match="pass run_dir="):
        pift.train_phases(phases, model=str(tiny_model_dir))
    ckpts = pift.train_phases(phases, run_dir=tmp_path / "run", model=str(tiny_model_dir), arms=["phased"],
                              overrides={"train.max_steps": 1, "train.batch_size": 2, "model.max_length": 64})
    assert sorted(ckpts) == ["phased/seed_0/phase_1", "phased/seed_0/phase_2"]
    assert all((d / "DONE").is_file() for d in ckpts.values())
    final = ckpts["phased/seed_0/phase_2"]
    answers = pift.generate_answers(final, ["Say hi.", examples[0]], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    loss = pift.evaluate(final, examples[:3], max_length=64)
    assert loss["n"] == 3 and loss["mean_loss"] > 0 and loss["ids"] == [e.id for e in examples[:3]]


def test_configure_reads_run_dirs_and_names_bad_keys(tmp_path):
    cfg = pift.configure(None, {"train.epochs": 2, "model.name_or_path": None})
    assert cfg.train.epochs == 2 and cfg.model.name_or_path == "smollm2-135m-instruct"
    with pytest.raises(PhasedIFTError, match="train.epoch"):
        pift.configure(None, {"train.epoch": 2})
    with pytest.raises(PhasedIFTError, match="without config.yaml"):
        pift.configure(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        examples = pift.load_data(records(3))
    phases = pift.split(examples, {e.id: float(i) for i, e in enumerate(examples)}, k=3)
    pift.write_run(phases, tmp_path / "r")
    assert pift.configure(tmp_path / "r").run_dir == str(tmp_path / "r")


def test_configure_overrides_go_through_the_config_loaders_dotted_setter():
    """configure's {dotted key: value} uses the same setter as the CLI's key=value overrides: list indices work and
    a key through a value is an error naming the override."""
    import phased_ift as pift
    from phased_ift.errors import PhasedIFTError

    cfg = pift.configure("configs/quickstart.yaml", {"data.train.0.limit": 7, "train.epochs": 2})
    assert cfg.data.train[0].limit == 7 and cfg.train.epochs == 2
    with pytest.raises(PhasedIFTError, match=r"override 'train\.epochs\.x': `train\.epochs` is not a section"):
        pift.configure("configs/quickstart.yaml", {"train.epochs.x": 1})
