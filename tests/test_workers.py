"""Tokenizer work in forked worker processes (`modeling.in_processes`) and the length scorer that uses it: results in
order, bounded read-ahead, errors at their batch, a dead worker named, workers that ignore Ctrl-C and die with the
caller; the length rows from worker processes are the bytes of the rows scored in process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from phased_ift import modeling, scoring
from phased_ift.config import load_config
from phased_ift.data import ExampleFile, read_file, write_examples
from phased_ift.data.sources import data_home
from phased_ift.errors import PhasedIFTError
from phased_ift.scoring import features

pytestmark = pytest.mark.skipif(not modeling.can_fork(), reason="worker processes need Linux's fork")


def _square_all(batch: list[int]) -> list[int]:
    return [x * x for x in batch]


def _fail_on_three(batch: list[int]) -> list[int]:
    if 3 in batch:
        raise KeyError(f"three in {batch}")
    return batch


def _worker_state(batch: list[int]) -> tuple[str | None, bool, int]:
    return os.environ.get("TOKENIZERS_PARALLELISM"), signal.getsignal(signal.SIGINT) == signal.SIG_IGN, os.getpid()


def _die(batch: list[int]) -> list[int]:
    os._exit(3)


def test_results_come_in_order_and_the_input_is_read_a_bounded_way_ahead():
    read: list[int] = []

    def batches():
        for i in range(40):
            read.append(i)
            yield [i, i + 1]

    out = modeling.in_processes(batches(), _square_all, 2, ahead=2)
    first = next(out)
    assert first == ([0, 1], [0, 1]) and len(read) <= 2 * 2 + 1  # not the whole input
    rest = list(out)
    assert [b for b, _ in [first] + rest] == [[i, i + 1] for i in range(40)]
    assert [r for _, r in rest] == [[i * i, (i + 1) ** 2] for i in range(1, 40)]


def test_a_work_error_is_raised_at_its_batch_and_a_dead_worker_is_named():
    got = []
    with pytest.raises(KeyError, match="three in"):
        for batch, _ in modeling.in_processes(([i] for i in range(6)), _fail_on_three, 2):
            got.append(batch[0])
    assert got == [0, 1, 2]
    with pytest.raises(PhasedIFTError, match="worker process died.*run the same command again"):
        list(modeling.in_processes(([i] for i in range(4)), _die, 2))
    with pytest.raises(ValueError, match="workers must be >= 1"):
        list(modeling.in_processes([[1]], _square_all, 0))


def test_workers_run_a_single_threaded_tokenizer_and_ignore_ctrl_c(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    states = [r for _, r in modeling.in_processes(([i] for i in range(8)), _worker_state, 2)]
    assert {(env, ignored) for env, ignored, _ in states} == {("false", True)}
    assert os.getpid() not in {pid for _, _, pid in states} and len({pid for _, _, pid in states}) <= 2
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # the caller's own handling is untouched


def test_workers_die_with_a_caller_killed_by_kill_9(tmp_path):
    pids = tmp_path / "pids"
    script = textwrap.dedent("""
        import os, time
        from phased_ift import modeling

        def slow_pid(batch):
            with open(os.environ["PIDS_FILE"], "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(0.2)
            return batch

        for _ in modeling.in_processes(([i] for i in range(10**6)), slow_pid, 2):
            pass
    """)
    env = {**os.environ, "PIDS_FILE": str(pids)}
    caller = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(set(_read_pids(pids))) < 2:
        time.sleep(0.1)
    workers = set(_read_pids(pids))
    assert len(workers) == 2, "the workers did not start"
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:  # leave no orphan behind when the test fails
        os.kill(p, signal.SIGKILL)
    assert not survivors


def _read_pids(path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie is dead, waiting for its reaping
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("kind", ["list", "file", "file-subset"])
def test_length_rows_from_worker_processes_are_the_bytes_of_the_in_process_rows(tmp_path, monkeypatch, kind):
    examples = read_file(data_home() / "alpagasus" / "random_9k.json").examples[:700]
    monkeypatch.setattr(features, "_BATCH", 64)  # 11 batches over 2 workers
    monkeypatch.setattr(features, "POOL_MIN", 1)
    data: object = examples
    if kind != "list":
        data = ExampleFile(write_examples(tmp_path / "train.jsonl", examples))
        if kind == "file-subset":  # a resumed run scores a lazy subset of the file
            data = data.subset(list(range(3, 700, 4)))
            examples = examples[3::4]
    out = {}
    for workers in (1, 2):
        cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "scoring.scorer=length",
                                 "model.name_or_path=smollm2-135m-instruct", f"scoring.workers={workers}"])
        out[workers] = tmp_path / f"w{workers}.jsonl"
        scoring.score_examples(data, cfg, out[workers])
    assert out[2].read_bytes() == out[1].read_bytes()
    rows = [json.loads(line) for line in out[1].read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in examples] and all(r["score"] > 0 for r in rows)


def test_a_bad_line_read_by_a_worker_names_its_file_and_line(tmp_path, monkeypatch):
    examples = read_file(data_home() / "alpagasus" / "random_9k.json").examples[:40]
    path = write_examples(tmp_path / "train.jsonl", examples)
    lines = path.read_bytes().splitlines(keepends=True)
    with ExampleFile(path) as data:
        path.write_bytes(b"".join(lines[:30] + [lines[30][:-20] + b"\n"] + lines[31:]))  # same offsets' count
        monkeypatch.setattr(features, "_BATCH", 8)
        monkeypatch.setattr(features, "POOL_MIN", 1)
        cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "scoring.scorer=length",
                                 "model.name_or_path=smollm2-135m-instruct", "scoring.workers=2"])
        with pytest.raises(json.JSONDecodeError, match=r"train.jsonl, line 31 column"):
            scoring.score_examples(data, cfg, tmp_path / "scores.jsonl")
