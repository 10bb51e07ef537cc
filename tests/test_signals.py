"""A graceful stop on SIGTERM / SIGINT (`phased_ift.shutdown`), with real `phased-ift` processes and real signals.

  * `train` sent SIGTERM mid-phase: exit 143, a Trainer checkpoint of the step it stopped at inside the phase and
    no DONE; the same command resumes from that step, and its losses and final weights equal an uninterrupted run's
    (the tolerances of test_train's kill -9 test).
  * `score` with the LLM judge (tests/fake_llm_server.py, slowed down) sent SIGTERM or SIGINT: exit 143 / 130, the
    scores file holds only whole rows, every request sent was answered and cached, and the re-run sends only what
    was never sent.
  * A second signal exits at once, while the first still waits for the request in flight (a SIGTERM repeated within
    `shutdown.REPEAT_S` is the same request delivered twice).
  * Two gloo processes of which one is signalled stop after the same step (`train.callbacks.StopOnSignal`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from phased_ift import shutdown  # noqa: E402
from phased_ift.data import Example, write_examples  # noqa: E402
from phased_ift.rundir import RunDir  # noqa: E402
from phased_ift.runio import read_jsonl, write_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "phased_ift.cli"]


def _env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1", **extra}


class Lines:
    """The output lines of a running process (its stderr, or stdout when stderr goes there), read by a thread so the
    pipe never fills up."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        stream = proc.stderr if proc.stderr is not None else proc.stdout
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace"))

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def _wait_for(proc: subprocess.Popen, condition, what: str, log: Lines, timeout: float = 300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}:\n{log.text()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}:\n{log.text()[-3000:]}")


# ---------------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------------

STEPS = 30  # optimizer steps per phase: long enough that a signal sent at step >= 3 of phase 2 lands mid-phase


def _train_config(tmp_path: Path, model_dir: Path, name: str) -> tuple[Path, RunDir]:
    """A run dir with data/train.jsonl and scores/meta.jsonl (two phases); no periodic Trainer checkpoints, so the
    only checkpoint a stopped phase can resume from is the one the signal wrote."""
    run = RunDir(tmp_path / name)
    ex = [Example(f"e{i}", [{"role": "user", "content": f"Question number {i}? " * (1 + i % 4)},
                            {"role": "assistant", "content": f"Answer {i}. " * (1 + i % 5)}]) for i in range(24)]
    write_examples(run.train_data, ex)
    write_jsonl(run.scores("meta"), [{"id": e.id, "score": float(i % 5) + 1, "error": None} for i, e in enumerate(ex)])
    raw = {"run_dir": str(run.root), "scoring": {"scorer": "meta"},
           "model": {"name_or_path": str(model_dir), "max_length": 64},
           "phases": {"k": 2, "method": "quantiles"},
           "train": {"arms": ["phased"], "batch_size": 2, "max_steps": STEPS, "save_steps": 1000, "threads": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, run


def _weights(phase_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(phase_dir / "adapter_model.safetensors")


@pytest.mark.slow
def test_sigterm_mid_phase_saves_a_checkpoint_and_the_rerun_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    import torch

    ref_cfg, ref = _train_config(tmp_path, tiny_model_dir, "ref")
    cut_cfg, cut = _train_config(tmp_path, tiny_model_dir, "cut")
    res = subprocess.run(CLI + ["train", str(ref_cfg)], env=_env(), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    # progress lines on every step (the output is a pipe, not a terminal): "phased seed 0 phase 2/2 ... 5/30 ..."
    proc = subprocess.Popen(CLI + ["train", str(cut_cfg)], env=_env(PHASED_IFT_PROGRESS_INTERVAL="0"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = Lines(proc)
    seen_line = re.compile(rf"phase 2/2\b.*?\b(\d+)/{STEPS}\b")

    def step_seen() -> int:
        steps = [int(m.group(1)) for line in list(log.lines) if (m := seen_line.search(line))]
        return max(steps) if steps and max(steps) >= 3 else 0

    seen = _wait_for(proc, step_seen, "step 3 of phase 2", log)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    err = log.text()
    assert rc == shutdown.EXIT_TERM == 143, err[-3000:]
    stop = re.search(rf"SIGTERM received: stopped phased seed 0 phase 2/2 at step (\d+) of {STEPS}", err)
    assert stop, err[-3000:]
    at = int(stop.group(1))
    assert seen <= at < STEPS
    assert "Traceback" not in err
    phase1, phase2 = cut.checkpoint("phased", 1), cut.checkpoint("phased", 2)
    assert (phase1 / "DONE").is_file() and not (phase2 / "DONE").exists()
    assert not (phase2 / "adapter_model.safetensors").exists()  # no weights of an unfinished phase
    [ckpt] = (phase2 / "trainer").glob("checkpoint-*")  # the only one: no save_steps checkpoint was due
    assert ckpt.name == f"checkpoint-{at}"
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == at
    print(f"SIGTERM sent after step {seen} was seen; stopped at step {at} of {STEPS}")

    res = subprocess.run(CLI + ["train", str(cut_cfg)], env=_env(), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    done = json.loads((phase2 / "DONE").read_text())
    assert done["resumed_from"].endswith(f"checkpoint-{at}") and done["global_step"] == STEPS
    diffs = []
    for k in (1, 2):
        a, b = ref.checkpoint("phased", k), cut.checkpoint("phased", k)
        la, lb = list(read_jsonl(a / "losses.jsonl")), list(read_jsonl(b / "losses.jsonl"))
        assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, STEPS + 1))
        assert all(abs(x["loss"] - y["loss"]) < 1e-4 for x, y in zip(la, lb))
        wa, wb = _weights(a), _weights(b)
        diffs.append(max((wa[n].float() - wb[n].float()).abs().max().item() for n in wa))
        assert all(torch.allclose(wa[n].float(), wb[n].float(), atol=1e-6) for n in wa)
    print(f"max |weight difference| after the resume: {max(diffs):.3g}")


# ---------------------------------------------------------------------------------------------------------------
# score with the LLM judge
# ---------------------------------------------------------------------------------------------------------------


def _alpaca(path: Path, n: int) -> Path:
    rows = [{"instruction": f"Write {1 + i % 3} sentences about topic number {i}.", "input": "",
             "output": " ".join(f"Sentence {j} about topic {i}." for j in range(1 + i % 4))} for i in range(n)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _score_cmd(tmp_path: Path, url: str, n: int, *extra: str) -> list[str]:
    return CLI + ["score", "configs/quickstart.yaml", f"run_dir={tmp_path / 'run'}",
                  f"data.train=[{{path: {_alpaca(tmp_path / 'alpaca.json', n)}, format: alpaca}}]",
                  "scoring.scorer=judge", f"scoring.judge.base_url={url}", "scoring.judge.model=fake",
                  "scoring.judge.concurrency=2", "scoring.use_logprobs=false", *extra]


def _instruction(body: dict) -> str:
    return body["messages"][-1]["content"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_llm_judge_scoring_keeps_whole_rows_and_the_rerun_resends_nothing(tmp_path, sig):
    n = 16
    scores = tmp_path / "run" / "scores" / "judge.jsonl"
    with FakeLLMServer(reply="3", latency=0.25) as srv:
        cmd = _score_cmd(tmp_path, srv.base_url, n)
        proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log = Lines(proc)
        _wait_for(proc, lambda: scores.is_file() and len(scores.read_text().splitlines()) >= 3, "3 scored rows", log)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        err = log.text()
        assert rc == 128 + sig, err[-3000:]
        assert f"{signal.Signals(sig).name} received: stopped" in err and "Traceback" not in err
        sent_first = srv.count
        rows = [json.loads(line) for line in scores.read_text().splitlines()]  # whole rows only: every line parses
        assert 3 <= len(rows) < n and all(r["score"] == 3.0 for r in rows)
        with sqlite3.connect(tmp_path / "run" / "cache" / "llm.sqlite") as con:
            cached = con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert cached == sent_first  # the requests in flight at the signal were answered and cached
        assert not (tmp_path / "run" / "phases").exists()

        res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        sent = [_instruction(b) for b in srv.bodies]
    assert len(sent) == len(set(sent)) == n  # every request sent once over both runs
    final = list(read_jsonl(scores))
    assert len(final) == len({r["id"] for r in final}) == n and all(r["score"] == 3.0 for r in final)
    print(f"{signal.Signals(sig).name}: {len(rows)} rows written and {sent_first} requests answered before the stop; "
          f"the re-run sent {len(sent) - sent_first}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_exits_at_once_while_the_first_waits_for_the_request_in_flight(tmp_path, sig):
    """A second Ctrl-C exits at once. A second SIGTERM within REPEAT_S of the first is the same request delivered
    twice (SLURM signals the step's processes and srun forwards it too): still stopping; one after it exits at once."""
    name = signal.Signals(sig).name
    with FakeLLMServer(reply="3", latency=lambda body: 30.0) as srv:
        proc = subprocess.Popen(_score_cmd(tmp_path, srv.base_url, 4), env=_env(), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log = Lines(proc)
        _wait_for(proc, lambda: srv.count >= 1, "a request in flight", log)
        proc.send_signal(sig)
        first = time.monotonic()
        _wait_for(proc, lambda: any(f"{name} received: stopping after" in line for line in list(log.lines)),
                  "the first signal's note", log, timeout=30)
        if sig == signal.SIGTERM:
            proc.send_signal(sig)  # the same request again, as srun forwards it
            _wait_for(proc, lambda: any("taken for the same request" in line for line in list(log.lines)),
                      "the repeat's note", log, timeout=30)
            time.sleep(max(0.0, shutdown.REPEAT_S + 0.3 - (time.monotonic() - first)))
        time.sleep(0.3)
        assert proc.poll() is None  # the first signal waits for the answer in flight (30 s)
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=10)
        waited = time.monotonic() - t0
    err = log.text()
    assert rc == 128 + sig and waited < 5, err[-3000:]
    assert f"{name} received again: exiting at once (status {128 + sig})" in err
    print(f"second {name}: exited after {waited:.2f} s")


# ---------------------------------------------------------------------------------------------------------------
# Several ranks stop after the same step
# ---------------------------------------------------------------------------------------------------------------

_RANK = """
import os, signal, sys, time
from types import SimpleNamespace
import torch.distributed as dist
from transformers import TrainerControl, TrainerState
from phased_ift import shutdown
from phased_ift.train.callbacks import StopOnSignal

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
stop, state, control = StopOnSignal(), TrainerState(max_steps=20), TrainerControl()
args = SimpleNamespace(world_size=2, device="cpu")
with shutdown.handling():
    for step in range(1, 21):
        state.global_step = step
        if rank == 0 and step == 3:  # only rank 0 gets the signal, in its step 3
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        stop.on_step_end(args, state, control)
        if control.should_training_stop:
            break
print("RESULT", rank, stop.stopped_at, stop.signum, control.should_save, flush=True)
"""


def test_every_rank_stops_after_the_step_in_which_any_rank_got_the_signal(tmp_path):
    """Two gloo processes; only rank 0 is signalled. The all-reduced decision stops both after step 3 (a rank that
    stopped alone would leave the other waiting in the next step's gradient all-reduce)."""
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(r), str(tmp_path / "store")], env=_env(LOCAL_RANK=str(r)),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=60) for p in procs]
    results = sorted(line.split()[1:] for out, _ in outs for line in out.splitlines() if line.startswith("RESULT"))
    assert results == [["0", "3", "15", "True"], ["1", "3", "15", "True"]], [err[-2000:] for _, err in outs]
