"""Shared pieces of the single-answer grader tests (MT-Bench, SeqEval): generation files as the generate step writes
them, a config with the fake judge endpoint, and a log console. Imported by path like `fake_llm_server`."""

from __future__ import annotations

from rich.console import Console

from phased_ift.config import load_config
from phased_ift.generation import settings_path
from phased_ift.runio import atomic_write_json, write_jsonl


def write_generation(run, arm: str, phase: int, seed: int, testset: str, rows: list[dict], max_new_tokens: int):
    """One generations file of a checkpoint and its settings file."""
    out = run.generations(arm, phase, testset, seed)
    write_jsonl(out, rows)
    atomic_write_json(settings_path(out), {"model": "m", "template": "chat", "max_new_tokens": max_new_tokens,
                                           "backend": "hf", "greedy": True, "n": len(rows), "batch_size": 8})


def grading_cfg(tmp_path, testset: str, srv=None, extra=()):
    """One one-off arm, `testset` generated, the fake judge (when `srv`) asked one request at a time, no retries; no
    reference loss (the run dir has answers, no checkpoints)."""
    endpoint = [f"judge.base_url={srv.base_url}", "judge.model=fake"] if srv else []
    return load_config(None, [f"run_dir={tmp_path / 'run'}", "train.arms=[one-off]", f"generate.test_sets=[{testset}]",
                              "judge.concurrency=1", "judge.max_retries=0", "report.bootstrap=200",
                              "evaluation.reference_loss=false",
                              *endpoint, *extra])


def log_console(tmp_path) -> Console:
    return Console(file=open(tmp_path / "log.txt", "a"), width=250)
