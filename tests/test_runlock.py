"""The run-dir lock (`runlock`) with real processes: a second command on a locked run dir stops at once in one
line naming the holder (exit 75) or waits with --wait; a killed holder's lock is taken over with a note; the ranks
of one launch share rank 0's lock while a rank of another launch is refused; two `phased-ift score` at once on one
config send each LLM request once (fake OpenAI-compatible server)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from phased_ift.cli import main  # noqa: E402
from phased_ift.rundir import RunDir  # noqa: E402
from phased_ift.runio import read_jsonl  # noqa: E402
from phased_ift.runlock import EXIT_BUSY, launch_of, read_holder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "quickstart.yaml")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID")

# Takes the lock of argv[1] as `holder-cmd`, writes argv[2] once it holds it, sleeps argv[3] seconds. A refusal
# prints the one line and exits with its status, as the CLI does.
HOLD = """
import os, sys, time
from pathlib import Path
from phased_ift.errors import PhasedIFTError
from phased_ift.runlock import run_lock
try:
    with run_lock(sys.argv[1], command="holder-cmd", rank_timeout_s=float(sys.argv[4]) if len(sys.argv) > 4 else 120,
                  poll_s=0.1) as h:
        Path(sys.argv[2]).write_text(f"{h.pid}")
        sys.stdout.write(f"holder {h.pid} me {os.getpid()}\\n")  # one write: two ranks share the pipe
        sys.stdout.flush()
        time.sleep(float(sys.argv[3]))
except PhasedIFTError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
"""


def _env(**launch: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **launch}


def _hold(run: Path, ready: Path, seconds: float, *extra: str, **launch: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(ready), str(seconds), *extra],
                            env=_env(**launch), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ready(ready: Path, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """The holder's pid once it holds the lock."""
    t0 = time.time()
    while not ready.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "the holder did not take the lock"
        time.sleep(0.05)
    return int(ready.read_text())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _data(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Name {i + 1} rivers of country number {i}.",
                                        "input": "", "output": f"River {i}."}) + "\n" for i in range(n)))
    return path


def _score_args(run: Path, data: Path, url: str = "http://127.0.0.1:9/v1") -> list[str]:
    return ["score", CONFIG, f"run_dir={run}", f"data.train=[{{path: {data}, format: alpaca}}]",
            "scoring.scorer=judge", f"scoring.judge.base_url={url}", "scoring.judge.model=fake",
            "scoring.judge.concurrency=1", "scoring.use_logprobs=false"]


def test_a_second_command_stops_at_once_in_one_line_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold(run, tmp_path / "ready", 60)
    try:
        pid = _ready(tmp_path / "ready", holder)
        t0 = time.time()
        rc = main(_score_args(run, _data(tmp_path, 3)))
        err = capsys.readouterr().err
        assert time.time() - t0 < 10  # at once, not after a timeout
    finally:
        _stop(holder)
    assert rc == EXIT_BUSY == 75
    assert err.count("\n") == 1 and err.startswith("error: run dir ")
    assert f"run dir {run} is in use" in err
    assert f"pid {pid} on {socket.gethostname()}, started 20" in err and "command `holder-cmd`" in err
    assert "--wait" in err and "Traceback" not in err
    assert not (run / "data").exists()  # nothing was done


def test_wait_waits_for_the_holder_then_runs(tmp_path, capsys):
    run, n = tmp_path / "run", 4
    holder = _hold(run, tmp_path / "ready", 3)
    with FakeLLMServer(reply="3") as srv:
        try:
            _ready(tmp_path / "ready", holder)
            rc = main([*_score_args(run, _data(tmp_path, n), srv.base_url), "--wait"])
            err = capsys.readouterr().err
            assert holder.poll() == 0  # it had finished before this command ran
        finally:
            _stop(holder)
        assert rc == 0, err
        assert srv.count == n
    assert f"run dir {run} is in use (pid {holder.pid}" in err and "waiting for it to finish (--wait)" in err
    assert "took over" not in err  # the holder released it cleanly
    assert [r["score"] for r in read_jsonl(RunDir(run).scores("judge"))] == [3.0] * n
    assert not RunDir(run).lock_holder.exists()  # released


def test_a_killed_holder_leaves_a_lock_that_is_taken_over_with_a_note(tmp_path, capsys):
    run, n = tmp_path / "run", 3
    holder = _hold(run, tmp_path / "ready", 60)
    pid = _ready(tmp_path / "ready", holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    stale = read_holder(RunDir(run).lock_holder)
    assert stale is not None and stale.pid == pid  # what kill -9 leaves: the holder file, not a held lock
    with FakeLLMServer(reply="2") as srv:
        rc = main(_score_args(run, _data(tmp_path, n), srv.base_url))
        err = capsys.readouterr().err
        assert rc == 0, err
        assert srv.count == n
    assert (f"note: took over the lock of {run} from pid {pid} on {socket.gethostname()} (started {stale.started}, "
            f"command `holder-cmd`), which is no longer running") in err
    assert not RunDir(run).lock_holder.exists()


def _launch(rank: int, run_id: str, port: str = "29533") -> dict:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "TORCHELASTIC_RUN_ID": run_id}


def test_two_ranks_of_one_launch_both_proceed(tmp_path):
    """Rank 1 starts first and waits for rank 0 of its launch; both then run at once."""
    run = tmp_path / "run"
    rank1 = _hold(run, tmp_path / "ready1", 2, **_launch(1, "launch-a"))
    time.sleep(0.5)
    rank0 = _hold(run, tmp_path / "ready0", 2, **_launch(0, "launch-a"))
    try:
        pid0 = _ready(tmp_path / "ready0", rank0)
        assert _ready(tmp_path / "ready1", rank1) == pid0  # rank 1 runs under rank 0's lock
        assert rank0.poll() is None  # both ran at the same time
        assert rank0.wait(60) == 0 and rank1.wait(60) == 0
    finally:
        _stop(rank0)
        _stop(rank1)
    assert not RunDir(run).lock_holder.exists()


def test_the_ranks_of_a_real_accelerate_launch_share_rank_0s_lock(tmp_path):
    """`accelerate launch` with 2 CPU processes (torchrun underneath; TORCHELASTIC_RUN_ID is "none" there, so the
    launch is MASTER_ADDR:MASTER_PORT): both ranks run under rank 0's holder."""
    script = tmp_path / "ranks.py"
    script.write_text(HOLD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", port, str(script), str(tmp_path / "run"), str(tmp_path / "ready"),
                          "1"],
                         env={**_env(), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = sorted(line.split()[1:4:2] for line in res.stdout.splitlines() if line.startswith("holder "))
    assert len(ranks) == 2 and ranks[0][0] == ranks[1][0] and ranks[0][0] in (ranks[0][1], ranks[1][1]), res.stdout
    assert not RunDir(tmp_path / "run").lock_holder.exists()


def test_a_rank_of_another_launch_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = _hold(run, tmp_path / "ready", 60, **_launch(0, "launch-a"))
    try:
        pid = _ready(tmp_path / "ready", holder)
        for rank in (1, 0):
            other = _hold(run, tmp_path / f"other{rank}", 60, **_launch(rank, "launch-b", port="29534"))
            _, err = other.communicate(timeout=60)
            assert other.returncode == 75, err
            assert err.count("\n") == 1 and f"run dir {run} is in use" in err and f"pid {pid}" in err
            assert "launch launch-a@127.0.0.1:29533" in err
            assert not (tmp_path / f"other{rank}").exists()
    finally:
        _stop(holder)


def test_a_rank_whose_rank_0_never_takes_the_lock_stops_after_the_timeout(tmp_path):
    run = tmp_path / "run"
    rank1 = _hold(run, tmp_path / "ready", 1, "1.0", **_launch(1, "launch-c"))
    _, err = rank1.communicate(timeout=60)
    assert rank1.returncode == 75
    assert "rank 1 of launch launch-c@127.0.0.1:29533: rank 0 of this launch did not take the lock" in err
    assert "within 1 s" in err


def test_launch_identity_comes_from_the_launcher_environment():
    assert launch_of({}) == (0, None)
    assert launch_of({"WORLD_SIZE": "1", "RANK": "0"}) == (0, None)
    assert launch_of(_launch(1, "abc", "29500")) == (1, "abc@127.0.0.1:29500")
    assert launch_of(_launch(0, "none", "29500")) == (0, "127.0.0.1:29500")  # torchrun without --rdzv-id


def test_dry_run_and_read_only_commands_take_no_lock(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold(run, tmp_path / "ready", 60)
    try:
        _ready(tmp_path / "ready", holder)
        assert main(["config", CONFIG, f"run_dir={run}"]) == 0
        assert main([*_score_args(run, _data(tmp_path, 3)), "--dry-run"]) == 0
        assert "in use" not in capsys.readouterr().err
    finally:
        _stop(holder)


def test_run_takes_the_lock_after_its_checks_so_a_bad_config_leaves_no_run_dir(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["run", *_score_args(run, tmp_path / "missing.jsonl")[1:]])
    assert rc == 2 and "missing.jsonl does not exist" in capsys.readouterr().err
    assert not run.exists()


def _score_proc(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "phased_ift.cli", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


@pytest.mark.parametrize("wait", [False, True])
def test_two_scores_at_once_on_one_config_send_each_request_once(tmp_path, wait):
    """The issue's case: `phased-ift score` twice at once with the LLM judge. Without --wait one stops (75) and
    the other scores everything; with --wait the second then finds every example scored and sends nothing."""
    run, n = tmp_path / "run", 12
    with FakeLLMServer(reply="4", latency=0.1) as srv:
        args = _score_args(run, _data(tmp_path, n), srv.base_url) + (["--wait"] if wait else [])
        procs = [_score_proc(args, tmp_path / f"log{i}") for i in range(2)]
        rcs = [p.wait(300) for p in procs]
        logs = [(tmp_path / f"log{i}").read_text() for i in range(2)]
        assert srv.count == n, logs  # each request sent once
        assert sorted(json.dumps(b["messages"]) for b in srv.bodies) == sorted({json.dumps(b["messages"])
                                                                              for b in srv.bodies})
    assert sorted(rcs) == ([0, 0] if wait else [0, 75]), logs
    assert [r["score"] for r in read_jsonl(RunDir(run).scores("judge"))] == [4.0] * n
    if not wait:
        refused = logs[rcs.index(75)]
        assert refused.count("\n") == 1 and refused.startswith(f"error: run dir {run} is in use") and \
            "phased-ift score" in refused, refused


def test_a_run_dir_that_cannot_be_created_is_one_line(tmp_path, monkeypatch, capsys):
    """A run_dir on a read-only mount: the lock is the first write, and it fails in one line with status 74."""
    import errno

    run = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if self == run:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc = main(_score_args(run, _data(tmp_path, 2)))
    err = capsys.readouterr().err
    assert rc == 74 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: cannot write {run / 'phased-ift.lock'}: read-only file system (EROFS). ")
