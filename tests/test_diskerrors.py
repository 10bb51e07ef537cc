"""Writes the disk refuses (`diskerrors`): a full disk (a real ENOSPC from /dev/full, sqlite's own "database or
disk is full", or an injected OSError / SafetensorError) while saving a phase, appending a jsonl row, putting into
the sqlite cache or writing the report is one line naming the file, the free space and what the write needed, exit
status 74, nothing marked done, and the files stay readable."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sqlite3
import sys
import tempfile
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from phased_ift import runio  # noqa: E402
from phased_ift.cli import main  # noqa: E402
from phased_ift.diskerrors import EXIT_WRITE, DiskWriteError, refused_write, write_error  # noqa: E402
from phased_ift.kvcache import KVCache  # noqa: E402
from phased_ift.rundir import RunDir  # noqa: E402
from phased_ift.runio import AppendLog, append_jsonl, read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "quickstart.yaml")
FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ---------------------------------------------------------------------------------------------------------------
# Which exceptions are refused writes, and the line
# ---------------------------------------------------------------------------------------------------------------


def test_refused_writes_are_recognised_by_errno_message_and_cause():
    from safetensors import SafetensorError

    assert refused_write(OSError(errno.ENOSPC, "No space left on device", "/x/y")) == (errno.ENOSPC, "/x/y")
    assert refused_write(OSError(errno.EDQUOT, "Disk quota exceeded")) == (errno.EDQUOT, None)
    assert refused_write(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))\
        == (errno.ENOSPC, None)
    assert refused_write(sqlite3.OperationalError("database or disk is full")) == (errno.ENOSPC, None)
    assert refused_write(sqlite3.OperationalError("attempt to write a readonly database")) == (errno.EACCES, None)
    assert refused_write(RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed "
                                      "writing file data/0: file write failed")) == (errno.ENOSPC, None)
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as e:
            raise ValueError("wrapped") from e
    except ValueError as e:
        assert refused_write(e) == (errno.EROFS, None)
    for other in (OSError(errno.ENOENT, "No such file"), ValueError("no"), sqlite3.OperationalError("locked"),
                  RuntimeError("CUDA out of memory")):
        assert refused_write(other) is None and write_error(other, "/x") is None


def test_the_line_names_the_file_free_space_need_and_fix(tmp_path):
    e = write_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "a" / "b.json", 2_500_000)
    assert isinstance(e, DiskWriteError) and e.exit_code == EXIT_WRITE == 74 and e.path == tmp_path / "a" / "b.json"
    msg = str(e)
    assert msg.startswith(f"cannot write {tmp_path / 'a' / 'b.json'}: no space left on device (ENOSPC); ")
    assert " free on its filesystem; the write needed 2.5 MB. Free space there" in msg
    # a file the exception names inside the folder being written is named instead of the folder
    e = write_error(OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "ck" / "optimizer.pt")), tmp_path)
    assert str(e).startswith(f"cannot write {tmp_path / 'ck' / 'optimizer.pt'}: disk quota exceeded (EDQUOT)")
    assert "size of the write is unknown" in str(e) and "quota -s" in str(e)
    e = write_error(OSError(errno.EACCES, "Permission denied"), tmp_path / "r.md")
    assert "permission denied (EACCES)" in str(e) and f"Make {tmp_path} writable for user" in str(e)
    assert "free on" not in str(e)
    e = write_error(OSError(errno.EROFS, "Read-only file system"), None, where=tmp_path)
    assert str(e).startswith(f"a write under {tmp_path} failed: read-only file system (EROFS)")
    # EACCES from code that did not say it was writing may be a read: not taken for a write
    assert write_error(PermissionError(errno.EACCES, "Permission denied", "/data/x.json"), where=tmp_path) is None


# ---------------------------------------------------------------------------------------------------------------
# Run-dir files: atomic writes, append logs, the sqlite cache
# ---------------------------------------------------------------------------------------------------------------


@needs_dev_full
def test_an_append_to_a_full_device_is_a_disk_write_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.symlink_to(FULL)
    with pytest.raises(DiskWriteError, match=rf"cannot write {path}: no space left on device \(ENOSPC\); .* free on "
                                             r"its filesystem; the write needed 12 bytes"):
        append_jsonl(path, {"id": "1"})
    log = AppendLog(path)
    with pytest.raises(DiskWriteError):
        log.append({"id": "1"})
    assert log.done == set() and len(log) == 0  # the row is not counted as done


def test_a_full_disk_mid_line_leaves_only_whole_rows(tmp_path, monkeypatch):
    """The disk fills while a row is half written: the row is not done, the torn half is cut off at once."""
    path = tmp_path / "rows.jsonl"
    log = AppendLog(path)
    log.append({"id": "a"})

    class HalfThenFull:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    log._file = HalfThenFull(log._file)
    with pytest.raises(DiskWriteError, match="the write needed 12 bytes"):
        log.append({"id": "b"})
    assert log.done == {"a"}
    assert list(read_jsonl(path)) == [{"id": "a"}]  # readable without tolerating a torn tail
    log.append({"id": "c"})  # space freed: the log goes on
    log.close()
    assert [r["id"] for r in read_jsonl(path)] == ["a", "c"]


def test_a_full_sqlite_database_keeps_what_was_committed(tmp_path):
    cache = KVCache(tmp_path / "c.sqlite", "t", codec="bytes")
    cache.put("a", b"x" * 100)
    pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
    cache._conn.execute(f"PRAGMA max_page_count={pages}")  # sqlite itself says "database or disk is full"
    with pytest.raises(DiskWriteError, match=rf"cannot write {tmp_path / 'c.sqlite'}: no space left on device "
                                             r"\(ENOSPC\); .* the write needed 20.0 kB"):
        cache.put("b", b"y" * 20_000)
    assert cache.get("a") == b"x" * 100 and cache.get("b") is None and len(cache) == 1
    cache.put("c", b"z")  # still usable
    cache.close()
    assert KVCache(tmp_path / "c.sqlite", "t", codec="bytes").get("c") == b"z"


@needs_dev_full
def test_an_atomic_write_to_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")
    monkeypatch.setattr(runio, "tempfile", types.SimpleNamespace(mkstemp=_full_mkstemp(tmp_path)))
    with pytest.raises(DiskWriteError, match=rf"cannot write {target}: .* the write needed 8 bytes\."):
        runio.atomic_write_json(target, {"a": 1}, indent=None)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def _full_mkstemp(folder: Path):
    """tempfile.mkstemp whose temp files in `folder` are /dev/full (every write there: ENOSPC from the kernel)."""
    real = tempfile.mkstemp

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        if dir is not None and Path(dir) == folder:
            return os.open(FULL, os.O_WRONLY), str(Path(dir) / f"{prefix}injected{suffix}")
        return real(suffix=suffix, prefix=prefix, dir=dir, text=text)

    return mkstemp


# ---------------------------------------------------------------------------------------------------------------
# Commands: one line, exit status 74, nothing marked done
# ---------------------------------------------------------------------------------------------------------------


def _alpaca(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Describe lake number {i}.", "input": "",
                                        "output": f"Lake {i}."}) + "\n" for i in range(n)))
    return path


def _judge_score(run: Path, data: Path, url: str) -> list[str]:
    return ["score", CONFIG, f"run_dir={run}", f"data.train=[{{path: {data}, format: alpaca}}]",
            "scoring.scorer=judge", f"scoring.judge.base_url={url}", "scoring.judge.model=fake",
            "scoring.judge.concurrency=1", "scoring.use_logprobs=false"]


def test_score_when_the_scores_log_hits_a_full_disk(tmp_path, monkeypatch, capsys):
    """The third row's append fails half-way: exit 74 naming scores/judge.jsonl; two whole rows stay; the rerun
    scores the rest and sends no request twice (the answer of the failed row was cached before the append)."""
    run, n = tmp_path / "run", 5
    scores = RunDir(run).scores("judge")
    real_open = open
    appended = []

    def filling_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if Path(file) != scores or "a" not in mode:
            return f

        class Fills:
            def write(self, text):
                if len(appended) == 2:
                    f.write(text[:7])
                    f.flush()
                    raise OSError(errno.ENOSPC, "No space left on device")
                appended.append(text)
                return f.write(text)

            def __getattr__(self, name):
                return getattr(f, name)

        return Fills()

    with FakeLLMServer(reply="2") as srv:
        monkeypatch.setattr(runio, "open", filling_open, raising=False)
        rc = main(_judge_score(run, _alpaca(tmp_path, n), srv.base_url))
        line = _last_line(capsys).strip()
        assert rc == 74
        assert line.startswith(f"error: cannot write {scores}: no space left on device (ENOSPC); ")
        assert "free on its filesystem; the write needed" in line
        assert [r["score"] for r in read_jsonl(scores)] == [2.0, 2.0]  # two whole rows, no torn third
        monkeypatch.undo()
        assert main(_judge_score(run, tmp_path / "data.jsonl", srv.base_url)) == 0
        assert srv.count == n  # nothing sent twice
    assert [r["score"] for r in read_jsonl(scores)] == [2.0] * n


def _last_line(capsys) -> str:
    """The error line (a progress line may precede it when the console is not a terminal)."""
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0] + "\n"


def test_score_when_the_llm_cache_is_full(tmp_path, monkeypatch, capsys):
    """sqlite says "database or disk is full" at the third answer: exit 74 naming cache/llm.sqlite; the scores
    log keeps the two answered rows; the rerun asks only what was not cached."""
    run, n = tmp_path / "run", 5
    real_init = KVCache.__init__

    class FullAfterTwo:
        def __init__(self, conn):
            self.conn, self.puts = conn, 0

        def executemany(self, sql, rows):
            self.puts += 1
            if self.puts > 2:
                raise sqlite3.OperationalError("database or disk is full")
            return self.conn.executemany(sql, rows)

        def __getattr__(self, name):
            return getattr(self.conn, name)

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        if self.path.name == "llm.sqlite":
            self._conn = FullAfterTwo(self._conn)

    with FakeLLMServer(reply="5") as srv:
        monkeypatch.setattr(KVCache, "__init__", init)
        rc = main(_judge_score(run, _alpaca(tmp_path, n), srv.base_url))
        line = _last_line(capsys).strip()
        assert rc == 74
        assert line.startswith(f"error: cannot write {RunDir(run).llm_cache}: no space left on device (ENOSPC); ")
        assert "the write needed" in line
        assert len(list(read_jsonl(RunDir(run).scores("judge")))) == 2
        first = srv.count  # 3, or 4 when the worker had sent the next request before the error stopped it
        monkeypatch.undo()
        assert main(_judge_score(run, tmp_path / "data.jsonl", srv.base_url)) == 0
        assert srv.count - first == n - 2  # the rerun asks all that was not cached, and only that
    assert [r["score"] for r in read_jsonl(RunDir(run).scores("judge"))] == [5.0] * n


def _scored_run(tmp_path: Path, n: int = 12) -> tuple[Path, list[str]]:
    data = tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "score": str(1 + i % 3), "data": [f"Task {i}?", f"Answer {i}."]})
                            + "\n" for i in range(n)), encoding="utf-8")
    run = tmp_path / "run"
    return run, [CONFIG, f"run_dir={run}", f"data.train=[{{path: {data}, format: phasedsft}}]", "scoring.scorer=meta",
                 "phases.k=2", "train.arms=[phased]", "model.name_or_path=fake-org/no-such-model",
                 "generate.test_sets=[vicuna]", "evaluation.reference_loss=false"]


@needs_dev_full
def test_report_on_a_full_disk(tmp_path, monkeypatch, capsys):
    """The report's first file hits a full disk: exit 74 naming it; no summary.json, no temp file."""
    from phased_ift import pipeline

    run, args = _scored_run(tmp_path)
    skip = {"train", "generate", "judge", "evaluate"}  # a report of the data, scores and phases alone
    monkeypatch.setattr(pipeline, "STEPS", [dataclasses.replace(s, run=lambda *a: None) if s.name in skip else s
                                            for s in pipeline.STEPS])
    report = RunDir(run).report_dir
    monkeypatch.setattr(runio, "tempfile", types.SimpleNamespace(mkstemp=_full_mkstemp(report)))
    rc = main(["report", *args])
    line = _last_line(capsys).strip()
    assert rc == 74
    assert line.startswith(f"error: cannot write {report}/") and "no space left on device (ENOSPC)" in line
    assert "free on its filesystem; the write needed" in line
    assert list(report.iterdir()) == []  # nothing written, no temp file left


class _FakeTrainer:
    """What `train.loop.train_phase` asks of a TRL trainer, without a model."""

    def __init__(self, fail_in_train: BaseException | None):
        import torch

        self.fail = fail_in_train
        self.model = torch.nn.Linear(10, 10)  # 110 fp32 parameters: 440 bytes
        self.accelerator = types.SimpleNamespace(distributed_type="NO", num_processes=1, state=None,
                                                 wait_for_everyone=lambda: None)
        self.state = types.SimpleNamespace(num_input_tokens_seen=10, global_step=1, log_history=[])
        self.args = types.SimpleNamespace(world_size=1)

    def train(self, resume_from_checkpoint=None):
        if self.fail is not None:
            raise self.fail
        return types.SimpleNamespace(metrics={"train_loss": 1.0})

    def is_world_process_zero(self):
        return True


@pytest.mark.parametrize("where", ["phase save", "trainer checkpoint"])
def test_train_on_a_full_disk_writes_no_done(tmp_path, monkeypatch, capsys, where):
    """safetensors' "No space left on device (os error 28)" while saving phase 1, or an ENOSPC in a Trainer
    checkpoint (train.save_steps): exit 74 naming the phase dir or the file, with the estimated size; no DONE."""
    from safetensors import SafetensorError

    import phased_ift.modeling as modeling
    import phased_ift.train as train_pkg
    import phased_ift.train.loop as loop

    run, args = _scored_run(tmp_path)
    phase_dir = RunDir(run).checkpoint("phased", 1)
    ckpt_file = phase_dir / "trainer" / "checkpoint-1" / "optimizer.pt"
    fail = OSError(errno.ENOSPC, "No space left on device", str(ckpt_file)) if where != "phase save" else None

    def save(*a, **kw):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    stub = types.SimpleNamespace(build_trainer=lambda *a, **kw: _FakeTrainer(fail), save_phase_weights=save)
    callbacks = types.SimpleNamespace(NoFinalSave=object, RichProgress=lambda label: None,
                                      StopOnSignal=lambda: types.SimpleNamespace(stopped_at=None, signum=0))
    monkeypatch.setitem(sys.modules, "phased_ift.train.trainer", stub)  # no trl / transformers import
    monkeypatch.setattr(train_pkg, "trainer", stub, raising=False)
    monkeypatch.setitem(sys.modules, "phased_ift.train.callbacks", callbacks)
    monkeypatch.setattr(train_pkg, "callbacks", callbacks, raising=False)
    monkeypatch.setattr(modeling, "load_tokenizer", lambda *a, **kw: None)
    monkeypatch.setattr(loop, "tokenize_examples", lambda tok, ex, *a: [{"input_ids": [1], "length": 1}] * len(ex))
    rc = main(["train", *args])
    line = _last_line(capsys).strip()
    assert rc == 74
    if where == "phase save":
        assert line.startswith(f"error: cannot write {phase_dir}: no space left on device (ENOSPC); ")
        assert "the write needed 440 bytes (estimate: the adapter)." in line
    else:
        assert line.startswith(f"error: cannot write {ckpt_file}: no space left on device (ENOSPC); ")
        assert "the write needed 1.3 kB (estimate: the adapter + optimizer state)." in line
    assert "free on its filesystem" in line and "run the same command again" in line
    assert not list((run / "checkpoints").rglob("DONE"))


def test_a_library_write_error_that_names_no_file_names_the_run_dir(tmp_path, monkeypatch, capsys):
    import phased_ift.cli as cli

    def boom(args):
        cli._load(args)
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(cli, "cmd_split", boom)
    run, args = _scored_run(tmp_path)
    rc = main(["split", *args])
    line = _one_line(capsys.readouterr().err)
    assert rc == 74
    assert line.startswith(f"error: a write under {run} failed: no space left on device (ENOSPC); ")
    assert "the size of the write is unknown" in line
