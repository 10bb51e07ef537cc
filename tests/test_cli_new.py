"""`phased-ift new`: the starter config validates with the project's own loader, names the model and data, prints
the two commands to run next (under `accelerate launch` for several GPUs) and never overwrites a file."""

from __future__ import annotations

import pytest

from phased_ift.cli import main
from phased_ift.config import describe, load_config
from phased_ift.starter import next_commands, starter_config


def new(tmp_path, *args: str, name: str = "my-run.yaml") -> tuple[int, object]:
    path = tmp_path / name
    return main(["new", str(path), *args]), path


def test_starter_for_a_file_on_cpu_validates_and_prints_the_next_commands(tmp_path, capsys):
    rc, path = new(tmp_path, "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--data", "data/mine.jsonl")
    assert rc == 0
    cfg = load_config(path)
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert [(d.name, d.path, d.format) for d in cfg.data.train] == [("", "data/mine.jsonl", "auto")]
    assert cfg.run_dir == "runs/my-run" and cfg.train.arms == ["phased", "one-off", "random"]
    assert cfg.scoring.scorer == "ifd" and cfg.phases.k == 3 and cfg.train.method == "lora"
    out = capsys.readouterr().out
    assert f"phased-ift run {path} --dry-run" in out and out.rstrip().endswith(f"phased-ift run {path}")
    text = path.read_text()
    assert text.count("\n# ") > 10 and "accelerate" not in text  # commented; one process on CPU
    assert f"#   phased-ift run {path} --dry-run" in text  # the next commands are in the file too


def test_a_named_source_is_written_as_name_and_odd_values_are_quoted(tmp_path):
    rc, path = new(tmp_path, "--model", "odd: model #1", "--data", "alpagasus/random_9k", "--run-dir", "runs/x y")
    assert rc == 0
    cfg = load_config(path)
    assert cfg.model.name_or_path == "odd: model #1" and cfg.run_dir == "runs/x y"
    assert [(d.name, d.path) for d in cfg.data.train] == [("alpagasus/random_9k", "")]


@pytest.mark.parametrize("gpus", [1, 4])
def test_gpus_size_the_config_and_several_gpus_train_under_accelerate(tmp_path, capsys, gpus):
    rc, path = new(tmp_path, "--model", "smollm2-135m-instruct", "--data", "alpagasus/random_9k", "--gpus", str(gpus))
    assert rc == 0
    cfg = load_config(path)
    assert cfg.generate.batch_size == 32 and cfg.scoring.batch_size == 16
    out, text = capsys.readouterr().out, path.read_text()
    launch = f"accelerate launch --multi_gpu --num_processes {gpus} -m phased_ift.cli train {path}"
    if gpus == 1:
        assert "accelerate launch" not in out and "--num_processes" not in text
    else:  # docs/training.md "Scale out": one process per GPU, then the rest of the run in one process
        assert f"{launch} && phased-ift run {path}" in out and launch in text
        assert "per GPU: 4 GPUs x 8" in text and "configs/accelerate/zero3.yaml" in text


def test_new_refuses_to_overwrite_with_one_line_and_status_2(tmp_path, capsys):
    path = tmp_path / "exists.yaml"
    path.write_text("keep me\n")
    rc = main(["new", str(path), "--model", "m", "--data", "d.jsonl"])
    err = capsys.readouterr().err
    assert rc == 2 and path.read_text() == "keep me\n"
    assert "already exists" in err and "never overwrites" in err and len(err.strip().splitlines()) == 1
    assert main(["new", str(tmp_path / "g.yaml"), "--model", "m", "--data", "d.jsonl", "--gpus", "-1"]) == 2
    assert not (tmp_path / "g.yaml").exists()


def test_every_key_of_the_starter_is_a_documented_config_key():
    import yaml

    keys = {k for k, _, _ in describe()}

    def walk(node, prefix=""):
        for k, v in node.items():
            key = f"{prefix}{k}"
            assert key in keys, key
            if isinstance(v, dict):
                walk(v, key + ".")

    for gpus in (0, 1, 8):
        walk(yaml.safe_load(starter_config("m", "d.jsonl", gpus, "c.yaml")))
    assert next_commands("c.yaml", 2)[0] == "phased-ift run c.yaml --dry-run"
