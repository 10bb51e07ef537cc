"""Integration: the real SmolLM2-135M-Instruct trained for a few steps per phase on real Alpaca examples."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from phased_ift.config import config_from_dict
from phased_ift.data import Example, write_examples
from phased_ift.runio import read_jsonl, write_jsonl
from phased_ift.pipeline import step_train
from phased_ift.rundir import RunDir


@pytest.mark.slow
def test_smollm2_phased_lora_on_random_9k(tmp_path, data_home, smollm2_path):
    records = json.loads((data_home / "alpagasus" / "random_9k.json").read_text(encoding="utf-8"))
    idx = random.Random(0).sample(range(len(records)), 12)
    examples = [Example(f"r9k-{i}", [
        {"role": "user", "content": records[i]["instruction"] + (f"\n\n{records[i]['input']}" if records[i]["input"]
                                                                 else "")},
        {"role": "assistant", "content": records[i]["output"]}]) for i in idx]
    run = RunDir(tmp_path / "run")
    write_examples(run.train_data, examples)
    # difficulty stand-in: response length (the judge scorer is another module's job)
    write_jsonl(run.scores("length"), [{"id": e.id, "score": float(len(e.response)), "error": None}
                                       for e in examples])
    cfg = config_from_dict({
        "run_dir": str(run.root), "scoring": {"scorer": "length"},
        "model": {"name_or_path": "smollm2-135m-instruct", "max_length": 192},
        "phases": {"k": 3, "method": "quantiles"},
        "train": {"arms": ["phased"], "batch_size": 2, "max_steps": 2, "save_steps": 0, "learning_rate": 1e-3},
    })
    step_train(cfg)
    prev = None
    for k in (1, 2, 3):
        d = run.checkpoint("phased", k)
        assert (d / "DONE").is_file()
        hp = json.loads((d / "hparams.json").read_text())
        assert hp["base_model"] == smollm2_path and hp["examples"] == 4
        losses = [r["loss"] for r in read_jsonl(d / "losses.jsonl")]
        assert len(losses) == 2 and all(math.isfinite(x) and 0 < x < 10 for x in losses)
        adapter = load_file(d / "adapter_model.safetensors")
        b = [v for n, v in adapter.items() if "lora_B" in n]
        assert b and any(v.abs().max() > 0 for v in b)  # lora_B starts at zero: it trained
        if prev is not None:
            assert any(not torch.equal(adapter[n], prev[n]) for n in adapter)
        prev = adapter
