"""Phased training on the tiny offline model: weight chaining between phases, LoRA continuation and merge, the
one-off union, carried optimiser state, the dry-run plan, kill -9 + resume, and a 2-process run."""

from __future__ import annotations

import contextlib

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from phased_ift.config import config_from_dict
from phased_ift.data import Example, write_examples
from phased_ift.runio import read_jsonl, write_jsonl
from phased_ift.pipeline import step_split
from phased_ift.rundir import RunDir
from phased_ift.phases.design import ARMS
from phased_ift.errors import PhasedIFTError
from phased_ift.train import plan_training, tokenize_examples, train_phases

REPO = Path(__file__).resolve().parents[1]


def _examples(n: int) -> list[Example]:
    return [Example(f"e{i}", [{"role": "user", "content": f"Question number {i}? " * (1 + i % 4)},
                              {"role": "assistant", "content": f"Answer {i}. " * (1 + i % 5)}])
            for i in range(n)]


def _setup(tmp_path: Path, model_dir: Path, n: int = 24, **train) -> dict:
    """A run dir with data/train.jsonl + scores/meta.jsonl; returns the raw config dict."""
    run = RunDir(tmp_path / "run")
    ex = _examples(n)
    write_examples(run.train_data, ex)
    write_jsonl(run.scores("meta"), [{"id": e.id, "score": float(i % 5) + 1, "error": None} for i, e in enumerate(ex)])
    return {"run_dir": str(run.root), "scoring": {"scorer": "meta"},
            "model": {"name_or_path": str(model_dir), "max_length": 64},
            "phases": {"k": 3, "method": "quantiles"},
            "train": {"arms": ["phased"], "batch_size": 4, "max_steps": 2, "save_steps": 1000, **train}}


class Snapshot(TrainerCallback):
    """Records, per phase, the trainable state at the start of training and the training dataset."""

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.trainable: list[bool] = []
        self.datasets: list = []

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):
        from peft import PeftModel, get_peft_model_state_dict

        if isinstance(model, PeftModel):
            sd = get_peft_model_state_dict(model)
            self.trainable.append(all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n))
        else:
            sd = model.state_dict()
        self.starts.append({k: v.detach().clone() for k, v in sd.items()})
        self.datasets.append(train_dataloader.dataset)


def _saved(phase_dir: Path) -> dict[str, torch.Tensor]:
    f = phase_dir / "adapter_model.safetensors"
    return load_file(f if f.is_file() else phase_dir / "model.safetensors")


def _close(a: dict, b: dict, keys=None) -> bool:
    keys = keys or b.keys()
    return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in keys)


@pytest.mark.slow
def test_lora_phases_chain_from_previous_adapter_and_stay_trainable(tmp_path, tiny_model_dir):
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    snap = Snapshot()
    dirs = train_phases(cfg, run, callbacks=[snap])["phased"][0]
    assert [d.name for d in dirs] == ["phase_1", "phase_2", "phase_3"]
    assert all((d / "DONE").is_file() and (d / "adapter_config.json").is_file() for d in dirs)
    assert all(not (d / "trainer").exists() for d in dirs)
    assert snap.trainable == [True, True, True]
    for i in range(3):
        saved = _saved(dirs[i])
        assert not _close(snap.starts[i], saved), f"phase {i + 1} did not change the adapter"
        if i < 2:
            assert _close(snap.starts[i + 1], saved), f"phase {i + 2} did not start from phase {i + 1}'s adapter"
        hp = json.loads((dirs[i] / "hparams.json").read_text())
        assert hp["phase"] == i + 1 and hp["checkpoint_kind"] == "adapter" and hp["examples"] == 8
        assert hp["init_from"] == (str(dirs[i - 1]) if i else hp["base_model"])
        losses = list(read_jsonl(dirs[i] / "losses.jsonl"))
        assert [r["step"] for r in losses] == [1, 2] and all(r["loss"] > 0 for r in losses)
    # each phase trained on its own file's examples
    tok_rows = tokenize_examples(__import__("phased_ift.modeling", fromlist=["load_tokenizer"]).load_tokenizer(
        str(tiny_model_dir)), ARMS["phased"].phase_data(run, 3)[1], "chat", 64)
    assert Counter(tuple(r["input_ids"]) for r in tok_rows) == Counter(tuple(x) for x in snap.datasets[1]["input_ids"])
    # a second call skips finished phases (no trainer starts)
    snap2 = Snapshot()
    train_phases(cfg, run, callbacks=[snap2])
    assert snap2.starts == []


@pytest.mark.slow
def test_full_finetuning_chain_and_one_off_sees_the_union(tmp_path, tiny_model_dir):
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, method="full", arms=["phased", "one-off"],
                                  learning_rate=1e-3))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    snap = Snapshot()
    out = train_phases(cfg, run, callbacks=[snap])
    dirs = out["phased"][0]
    assert len(snap.starts) == 4  # 3 phased phases + 1 one-off phase
    saved = [_saved(d) for d in dirs]
    for i in range(2):
        assert not _close(snap.starts[i], saved[i], keys=saved[i].keys())
        assert _close(snap.starts[i + 1], saved[i], keys=saved[i].keys())
    one_off = out["one-off"][0]
    assert [d.name for d in one_off] == ["phase_1"]
    assert not _close(snap.starts[3], saved[2], keys=saved[2].keys())  # one-off starts from the base model
    from phased_ift.modeling import load_tokenizer

    union = [e for k in (1, 2, 3) for e in ARMS["phased"].phase_data(run, 3)[k - 1]]
    rows = tokenize_examples(load_tokenizer(str(tiny_model_dir)), union, "chat", 64)
    assert Counter(tuple(r["input_ids"]) for r in rows) == Counter(tuple(x) for x in snap.datasets[3]["input_ids"])
    assert json.loads((one_off[0] / "hparams.json").read_text())["examples"] == 24


@pytest.mark.slow
def test_carry_optimizer_continues_adam_state(tmp_path, tiny_model_dir):
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, carry_optimizer=True))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    dirs = train_phases(cfg, run)["phased"][0]
    steps = [next(iter(torch.load(d / "optimizer.pt", weights_only=True)["state"].values()))["step"].item()
             for d in dirs]
    assert steps == [2, 4, 6]  # AdamW's step count carries across phases; a restart would give [2, 2, 2]


@pytest.mark.slow
def test_lora_merge_saves_full_models_each_phase(tmp_path, tiny_model_dir):
    raw = _setup(tmp_path, tiny_model_dir, lora={"across_phases": "merge"})
    raw["phases"]["k"] = 2
    cfg = config_from_dict(raw)
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    snap = Snapshot()
    dirs = train_phases(cfg, run, callbacks=[snap])["phased"][0]
    assert all((d / "model.safetensors").is_file() and not (d / "adapter_config.json").exists() for d in dirs)
    assert json.loads((dirs[1] / "hparams.json").read_text())["checkpoint_kind"] == "full"
    assert snap.trainable == [True, True]
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = _saved(dirs[0])
    assert not _close(base, merged, keys=[k for k in base if "q_proj" in k])


def test_plan_counts_examples_tokens_steps_without_weights(tmp_path, tiny_model_dir):
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, arms=["phased", "one-off", "reverse"], max_steps=-1,
                                  epochs=2.0))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    plan = plan_training(cfg, run, world_size=1)
    assert [r["examples"] for r in plan["arms"]["phased"]] == [8, 8, 8]
    assert [r["steps"] for r in plan["arms"]["phased"]] == [4, 4, 4]  # ceil(8/4) batches x 2 epochs
    assert plan["arms"]["one-off"] == [{**plan["arms"]["one-off"][0], "examples": 24, "steps": 12}]
    assert plan["arms"]["one-off"][0]["tokens"] == sum(r["tokens"] for r in plan["arms"]["phased"])
    assert plan["arms"]["reverse"][0]["tokens"] == plan["arms"]["phased"][2]["tokens"]
    assert "tokenizer" in plan["note"]
    assert plan_training(cfg, run, world_size=2)["total_steps"]["phased"] == 6


def test_plan_estimates_tokens_for_unavailable_models_and_unsplit_data(tmp_path, tiny_model_dir):
    raw = _setup(tmp_path, tiny_model_dir, arms=["phased", "one-off"], max_steps=-1)
    raw["model"]["name_or_path"] = "no-such-org/no-such-llama-8b"
    cfg = config_from_dict(raw)
    plan = plan_training(cfg, RunDir(cfg.run_dir))
    assert "characters/4" in plan["note"] and "equal-size phases" in plan["note"]
    assert [r["examples"] for r in plan["arms"]["phased"]] == [8, 8, 8]
    assert plan["arms"]["phased"][0]["tokens"] > 0


def _write_config(tmp_path: Path, raw: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_kill_9_mid_phase_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    kw = dict(max_steps=4, save_steps=1, batch_size=2, threads=1)
    ref_raw = _setup(tmp_path / "ref", tiny_model_dir, **kw)
    cut_raw = _setup(tmp_path / "cut", tiny_model_dir, **kw)
    ref_cfg = _write_config(tmp_path, ref_raw, "ref")
    cut_cfg = _write_config(tmp_path, cut_raw, "cut")
    cmd = [sys.executable, "-m", "phased_ift.cli", "train"]
    subprocess.run(cmd + [str(ref_cfg)], check=True, env=_env(), cwd=REPO, capture_output=True, timeout=600)

    cut = RunDir(cut_raw["run_dir"])
    proc = subprocess.Popen(cmd + [str(cut_cfg)], env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    trainer_dir = cut.checkpoint("phased", 2) / "trainer"
    deadline = time.time() + 300
    # kill -9 once phase 1 is DONE and phase 2 has a complete Trainer checkpoint (its trainer_state.json)
    while time.time() < deadline and not any(trainer_dir.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "training finished before it could be interrupted"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (cut.checkpoint("phased", 1) / "DONE").is_file() and not (cut.checkpoint("phased", 2) / "DONE").exists()
    res = subprocess.run(cmd + [str(cut_cfg)], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = RunDir(ref_raw["run_dir"])
    for k in (1, 2, 3):
        a, b = ref.checkpoint("phased", k), cut.checkpoint("phased", k)
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert _close(_saved(a), _saved(b))
        la, lb = list(read_jsonl(a / "losses.jsonl")), list(read_jsonl(b / "losses.jsonl"))
        assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3, 4]
        assert all(abs(x["loss"] - y["loss"]) < 1e-4 for x, y in zip(la, lb))
    done2 = json.loads((cut.checkpoint("phased", 2) / "DONE").read_text())
    assert done2["resumed_from"] and "checkpoint-" in done2["resumed_from"]
    # the whole phase's mean loss, not transformers' mean over the steps after the resume
    assert done2["train_loss"] == pytest.approx(json.loads((ref.checkpoint("phased", 2) / "DONE").read_text())
                                                ["train_loss"], abs=1e-4)


def test_logged_mean_loss_weights_each_entry_by_its_steps():
    from phased_ift.train import logged_mean_loss

    hist = [{"loss": 2.0, "step": 2}, {"learning_rate": 1e-3, "step": 2}, {"loss": 1.0, "step": 3},
            {"train_loss": 9.0, "step": 3}]
    assert logged_mean_loss(hist) == pytest.approx((2.0 * 2 + 1.0) / 3)
    assert logged_mean_loss([{"eval_loss": 1.0, "step": 1}]) is None


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_set_of_checkpoints(tmp_path, tiny_model_dir):
    raw = _setup(tmp_path, tiny_model_dir, n=48, max_steps=-1, batch_size=2, threads=1)
    cfg_path = _write_config(tmp_path, raw, "ddp")
    # `--cpu` makes accelerate use its single-process launcher; --multi_gpu on a machine without CUDA starts
    # torchrun with 2 processes and the Trainer picks gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "phased_ift.cli", "train", str(cfg_path)]
    res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = RunDir(raw["run_dir"])
    from phased_ift.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    for k in (1, 2, 3):
        d = run.checkpoint("phased", k)
        assert (d / "DONE").is_file() and not (d / "trainer").exists()
        done = json.loads((d / "DONE").read_text())
        hp = json.loads((d / "hparams.json").read_text())
        assert hp["world_size"] == 2
        # 16 examples, batch 2 per rank: 4 steps when both ranks take half the data (8 with one process)
        assert done["global_step"] == 4
        tokens = sum(r["length"] for r in tokenize_examples(tok, ARMS["phased"].phase_data(run, 3)[k - 1], "chat", 64))
        assert done["tokens"] == tokens  # tokens gathered from both ranks cover the phase exactly once
    assert sorted(p.name for p in (run.root / "checkpoints" / "phased" / "seed_0").iterdir()) == \
        ["phase_1", "phase_2", "phase_3"]
    assert res.stderr.count("split: ") == 1 and res.stderr.count("phase 3/3:") == 1  # logged by rank 0 only


class FirstBatch(TrainerCallback):
    def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
        self.batch = next(iter(train_dataloader))


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["bucket", "pad", "packing"])
def test_sequential_order_keeps_the_phase_file_order_and_every_batching_trains(tmp_path, tiny_model_dir, batching):
    raw = _setup(tmp_path, tiny_model_dir, order="sequential", batching=batching, max_steps=1)
    raw["phases"]["k"] = 1
    cfg = config_from_dict(raw)
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    first = FirstBatch()
    dirs = train_phases(cfg, run, callbacks=[first])["phased"][0]
    assert (dirs[0] / "DONE").is_file()
    from phased_ift.modeling import load_tokenizer

    rows = tokenize_examples(load_tokenizer(str(tiny_model_dir)), ARMS["phased"].phase_data(run, 1)[0][:4], "chat", 64)
    ids = first.batch["input_ids"]
    if batching == "packing":  # one row: the examples concatenated without padding (bfd may reorder them)
        assert ids.shape[0] == 1 and ids.shape[1] <= 4 * 64
        assert "position_ids" in first.batch
    else:
        assert [row[: len(r["input_ids"])].tolist() for row, r in zip(ids, rows)] == [r["input_ids"] for r in rows]
        labels = first.batch["labels"]
        assert (labels[first.batch["attention_mask"] == 0] == -100).all()  # padding carries no loss


def test_trainer_arguments_carry_the_phase_hyperparameters(tmp_path, tiny_model_dir):
    from phased_ift.modeling import resolve_autocast
    from phased_ift.train import phase_hparams
    from phased_ift.train.trainer import sft_config

    raw = _setup(tmp_path, tiny_model_dir, weight_decay=0.1, adam_beta2=0.95, warmup_ratio=0.1, max_grad_norm=0.5,
                 phase_epochs=[1, 2, 3], phase_learning_rates=[1e-4, 2e-4, 3e-4], order="shuffle", max_steps=-1)
    cfg = config_from_dict(raw)
    hp = phase_hparams(cfg, "phased", 2)
    args = sft_config(cfg, hp, tmp_path / "t", seed=7, save_steps=5)
    assert (args.num_train_epochs, args.learning_rate, args.weight_decay, args.adam_beta2, args.max_grad_norm,
            args.warmup_steps, args.seed) == (2.0, 2e-4, 0.1, 0.95, 0.5, 0.1, 7)
    assert args.train_sampling_strategy == "group_by_length"
    assert args.bf16 is (resolve_autocast("auto")[0] == "bf16")  # model.autocast=auto: bf16 where native only
    one_off = phase_hparams(cfg, "one-off", 1)
    assert (one_off.epochs, one_off.learning_rate) == (cfg.train.epochs, cfg.train.learning_rate)


def test_resume_skips_a_checkpoint_torn_by_kill9(tmp_path):
    """kill -9 while Trainer saves leaves checkpoint-N without trainer_state.json, or with an empty or cut-short
    one (Trainer writes it last, not atomically): resume from the newest complete one and remove the torn ones.
    (A checkpoint whose weights are torn: tests/test_corrupt_state.py.)"""
    from safetensors.torch import save_file

    from phased_ift.train import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    states = {1: '{"global_step": 1}', 2: '{"global_step": 2}', 3: '{"global_st', 4: "", 5: None}
    for n, state in states.items():
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        save_file({"w": torch.zeros(2)}, d / "adapter_model.safetensors")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(d.name for d in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2"]


def _padded_batch(tok, n_rows: int = 3):
    """Right-padded rows with prompts of different lengths; labels -100 on prompts and padding."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n_rows):
        prompt = torch.randint(5, len(tok), (3 + 4 * i,), generator=g).tolist()
        response = torch.randint(5, len(tok), (6 + 2 * i,), generator=g).tolist()
        rows.append((prompt + response, [-100] * len(prompt) + response))
    width = max(len(ids) for ids, _ in rows) + 2
    input_ids = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def _train_fp32_phases(tmp_path: Path, model_dir: Path, **train) -> list[Path]:
    """Split and train the phased arm without autocast (2 steps per phase, gradient accumulation 2); phase dirs."""
    raw = _setup(tmp_path, model_dir, grad_accum=2, max_steps=2, **train)
    raw["model"]["autocast"] = "none"
    cfg = config_from_dict(raw)
    step_split(cfg)
    return train_phases(cfg, RunDir(raw["run_dir"]))["phased"][0]


@pytest.mark.parametrize("num_items", [None, 40])
def test_response_head_loss_equals_the_full_logit_loss_and_its_gradients(tiny_model_dir, num_items):
    """The LM head on response positions only gives transformers' causal-LM loss and the same gradients."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phased_ift.train.trainer import response_head_loss

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = _padded_batch(tok)
    ref = model(**batch, num_items_in_batch=num_items).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss, out = response_head_loss(model, dict(batch), num_items)
    loss.backward()
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], rtol=1e-4, atol=1e-7), n
    # the head ran on fewer positions than the sequence: the shortest prompt and the shared padding are skipped
    assert out.logits.shape[1] < batch["input_ids"].shape[1] - 1
    if num_items is None:  # the mean over the batch's labelled next-token targets
        assert int((batch["labels"][:, 1:] != -100).sum()) < batch["labels"].numel()


def test_short_cpu_passes_use_the_math_attention_backend_with_the_same_loss_and_gradients(tiny_model_dir):
    """short_pass_attention: SDPA's math backend for a short CPU pass (no flash kernel in the profile), the flash
    kernel above the limit; loss and gradients equal either way."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phased_ift.train.trainer import response_head_loss, short_pass_attention

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    batch = _padded_batch(tok)
    T = batch["input_ids"].shape[1]
    results = {}
    for max_len in (T, T - 1):  # T: the pass is short enough for math; T - 1: it is not
        model.zero_grad()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with short_pass_attention(batch["input_ids"], max_len):
                loss, _ = response_head_loss(model, dict(batch))
            loss.backward()
        ops = {e.key for e in prof.key_averages()}
        results[max_len] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, ops)
    assert not any("flash" in op for op in results[T][2])
    assert any("flash_attention" in op for op in results[T - 1][2])
    assert torch.allclose(results[T][0], results[T - 1][0], rtol=1e-5)
    for n in results[T][1]:
        assert torch.allclose(results[T][1][n], results[T - 1][1][n], rtol=1e-4, atol=1e-6), n
    assert isinstance(short_pass_attention(batch["input_ids"], 0), contextlib.nullcontext)


@pytest.mark.slow
def test_response_head_and_trl_fused_head_train_the_same_weights(tmp_path, tiny_model_dir):
    """Two phases with gradient accumulation: train.lm_head=response and =fused end at the same LoRA weights."""
    saved = {}
    for head in ("response", "fused"):
        dirs = _train_fp32_phases(tmp_path / head, tiny_model_dir, lm_head=head)
        saved[head] = _saved(dirs[-1])
        assert json.loads((dirs[-1] / "hparams.json").read_text())["lm_head"] == head
    assert saved["response"].keys() == saved["fused"].keys()
    # Adam's first steps move each weight by about +-lr (2e-4) whatever the gradient's size, so float rounding that
    # flips the sign of a near-zero gradient moves that one weight by up to 2 lr per step (6 steps here), and which
    # weights that hits depends on the CPU's kernels. A wrong loss or mask would move most weights apart.
    lr, steps = 2e-4, 6
    for k in saved["response"]:
        diff = (saved["response"][k] - saved["fused"][k]).abs()
        assert float((diff <= 2e-5).float().mean()) >= 0.99, k
        assert float(diff.max()) <= 2 * lr * steps, k


def test_bf16_frozen_base_weights_give_the_same_loss_and_lora_gradients_under_autocast(tiny_model_dir):
    """Under bf16 autocast a LoRA model with its frozen linear weights stored in bf16 computes what fp32 weights do."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phased_ift.modeling import frozen_base_to_bf16
    from phased_ift.train.trainer import response_head_loss

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = _padded_batch(tok)
    results = []
    for cast in (False, True):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        if cast:
            assert frozen_base_to_bf16(model) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
            assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
            assert model.get_input_embeddings().weight.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = response_head_loss(model, dict(batch))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss32, grads32), (loss16, grads16) = results
    assert torch.allclose(loss32, loss16, rtol=1e-6, atol=1e-6)
    for n, g in grads32.items():
        assert torch.allclose(g, grads16[n], rtol=1e-4, atol=1e-6), n


def test_split_batch_respects_the_token_budget_and_trims_padding(tiny_model_dir):
    from transformers import AutoTokenizer

    from phased_ift.train.trainer import split_batch

    batch = _padded_batch(AutoTokenizer.from_pretrained(tiny_model_dir), n_rows=3)  # rows of 9, 15, 21 tokens; T=23
    assert split_batch(batch, 0) == [batch] and split_batch(batch, 69) == [batch]
    parts = split_batch(batch, 40)
    assert [tuple(p["input_ids"].shape) for p in parts] == [(2, 15), (1, 21)]
    for key in ("input_ids", "labels", "attention_mask"):
        rebuilt = [row[: p["attention_mask"][j].sum()] for p in parts for j, row in enumerate(p[key])]
        assert [r.tolist() for r in rebuilt] == [row[: n].tolist() for row, n in
                                                 zip(batch[key], batch["attention_mask"].sum(1))]
    one_row = {k: v[:1] for k, v in batch.items()}
    assert split_batch(one_row, 4) == [one_row]  # a single row is never cut


@pytest.mark.slow
def test_capped_micro_batches_train_the_same_weights_as_whole_batches(tmp_path, tiny_model_dir):
    """train.max_batch_tokens splits a step into several passes: same examples, same loss scale, same weights."""
    saved = {}
    for cap in (0, 48):
        dirs = _train_fp32_phases(tmp_path / str(cap), tiny_model_dir, max_batch_tokens=cap)
        saved[cap] = (_saved(dirs[-1]), [r["loss"] for r in read_jsonl(dirs[-1] / "losses.jsonl")])
    assert saved[0][1] == pytest.approx(saved[48][1], rel=1e-5)
    # Below half an Adam step (lr 2e-4): float rounding of near-zero gradients differs between matmul shapes.
    for k in saved[0][0]:
        assert torch.allclose(saved[0][0][k], saved[48][0][k], rtol=0, atol=1e-4), k


def test_bucket_order_groups_similar_lengths_in_a_random_batch_order():
    import random as _random

    from phased_ift.train.trainer import bucket_order

    lengths = [_random.Random(i).randint(10, 400) for i in range(200)]
    order = bucket_order(lengths, 8, seed=3)
    assert sorted(order) == list(range(200))
    batches = [order[b: b + 8] for b in range(0, 200, 8)]
    assert max(lengths) in [lengths[i] for i in batches[0]]  # the longest batch first
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spreads) < 60  # one mega-batch of 200 sorted: neighbours in length share a batch
    tops = [max(lengths[i] for i in b) for b in batches[1:]]
    assert tops != sorted(tops, reverse=True) and tops != sorted(tops)  # no length curriculum
    assert bucket_order(lengths, 8, seed=3) == order and bucket_order(lengths, 8, seed=4) != order


HPARAMS_KEYS = ["arm", "phase", "epochs", "learning_rate", "method", "lora", "batch_size", "grad_accum", "lr_scheduler",
                "warmup_ratio", "weight_decay", "adam_beta2", "max_grad_norm", "carry_optimizer", "order", "batching",
                "max_steps", "model", "template", "max_length", "dtype", "autocast", "lm_head", "max_batch_tokens",
                "math_attention_max_len", "sampler", "arm_params"]


def test_phase_hparams_keep_the_hparams_json_keys_in_order(tmp_path, tiny_model_dir):
    """`PhaseHparams` as a dict is the start of hparams.json: the 25 keys of before it was a dataclass, in the same
    order, then the arm's sampler and parameters; the schedule comes from the arm."""
    from dataclasses import asdict

    from phased_ift.train import phase_hparams

    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, phase_epochs=[1, 2, 3],
                                  phase_learning_rates=[3e-4, 2e-4, 1e-4]))
    hp = asdict(phase_hparams(cfg, "reverse", 3))
    assert list(hp) == HPARAMS_KEYS
    assert (hp["arm"], hp["phase"], hp["epochs"], hp["learning_rate"]) == ("reverse", 3, 3.0, 1e-4)
    assert hp["lora"] == asdict(cfg.train.lora) and hp["model"] == str(tiny_model_dir)
    full = config_from_dict(_setup(tmp_path, tiny_model_dir, method="full"))
    assert asdict(phase_hparams(full, "one-off", 1))["lora"] is None


def test_plan_says_when_the_one_phase_budget_differs(tmp_path, tiny_model_dir):
    """The budget note names every arm without a phase schedule when train.phase_epochs differ from train.epochs."""
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, arms=["phased", "one-off"], phase_epochs=[1, 1, 2],
                                  max_steps=-1))
    step_split(cfg)
    plan = plan_training(cfg, RunDir(cfg.run_dir), world_size=1)
    assert "differ from train.epochs=1, which one-off uses: compare tokens_trained" in plan["note"]
    assert [r["epochs"] for r in plan["arms"]["phased"]] == [1.0, 1.0, 2.0] and plan["arms"]["one-off"][0]["epochs"] == 1
    same = config_from_dict(_setup(tmp_path, tiny_model_dir, arms=["phased", "one-off"], phase_epochs=[1, 1, 1]))
    assert "differ" not in plan_training(same, RunDir(same.run_dir))["note"]


def test_importing_the_train_package_loads_no_torch_until_a_trainer_name_is_used():
    code = ("import sys; import phased_ift.train; heavy = ('torch', 'transformers', 'trl', 'peft'); "
            "assert not [m for m in heavy if m in sys.modules], sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=REPO, timeout=300)
    import phased_ift.train as t
    from phased_ift.train import trainer

    assert t.split_batch is trainer.split_batch and t.PhaseSFTTrainer is trainer.PhaseSFTTrainer
    with pytest.raises(AttributeError):
        t.no_such_name


def test_train_without_a_split_says_to_run_split(tmp_path, tiny_model_dir):
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir))
    with pytest.raises(PhasedIFTError, match=r"train: .*manifest.json does not exist; run `phased-ift split CONFIG`"):
        train_phases(cfg, RunDir(cfg.run_dir))


class SaveSpy(TrainerCallback):
    """The global steps at which Trainer wrote a checkpoint (on_save runs after each)."""

    def __init__(self) -> None:
        self.saved: list[int] = []

    def on_save(self, args, state, control, **kw):
        self.saved.append(state.global_step)


@pytest.mark.slow
def test_no_trainer_checkpoint_at_a_phases_last_step(tmp_path, tiny_model_dir):
    """Periodic checkpoints (train.save_steps) are written; the one transformers adds at the last step (weights +
    optimizer, deleted with trainer/ right after the phase saves its own weights) is not (`NoFinalSave`)."""
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, max_steps=3, save_steps=2))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    spy = SaveSpy()
    dirs = train_phases(cfg, run, callbacks=[spy])["phased"][0]
    assert spy.saved == [2, 2, 2]  # one periodic checkpoint per phase, none at step 3
    assert all((d / "DONE").is_file() and not (d / "trainer").exists() for d in dirs)
