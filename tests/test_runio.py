"""Run-dir I/O: atomic writes (no temp file, old file intact on failure), jsonl reading errors, the append log
(torn tail repaired and counted, done ids, resumed appends, rows that survive kill -9)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phased_ift.errors import PhasedIFTError
from phased_ift.runio import (AppendLog, JsonlDecodeError, append_jsonl, atomic_write_bytes, atomic_write_json,
                              atomic_write_text, drop_torn_tail, read_jsonl, write_jsonl)

SRC = Path(__file__).resolve().parents[1] / "src"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------------


def test_atomic_writes_create_parents_and_leave_no_temp_file(tmp_path):
    atomic_write_text(tmp_path / "a" / "b" / "t.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "a" / "b" / "o.json", {"k": [1, 2], "é": "ü"})
    n = write_jsonl(tmp_path / "a" / "b" / "r.jsonl", ({"id": i, "t": "ü"} for i in range(3)))
    folder = tmp_path / "a" / "b"
    assert _names(folder) == ["o.json", "r.jsonl", "t.txt", "x.bin"]
    assert (folder / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (folder / "x.bin").read_bytes() == b"\x00\x01"
    assert (folder / "o.json").read_text() == json.dumps({"k": [1, 2], "é": "ü"}, indent=1)  # as json.dumps does
    assert n == 3 and (folder / "r.jsonl").read_text(encoding="utf-8") == "".join(
        json.dumps({"id": i, "t": "ü"}, ensure_ascii=False) + "\n" for i in range(3))
    assert all((folder / f).stat().st_mode & 0o777 == 0o644 for f in _names(folder))  # not mkstemp's 0600
    atomic_write_json(folder / "o.json", [1], indent=None, fsync=True)
    assert (folder / "o.json").read_text() == "[1]"
    assert write_jsonl(folder / "empty.jsonl", []) == 0 and (folder / "empty.jsonl").read_bytes() == b""


def test_failed_writer_leaves_old_file_intact_and_no_temp_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": "old"}])
    before = path.read_bytes()

    def rows():
        yield {"id": "new-1"}
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        write_jsonl(path, rows())
    assert path.read_bytes() == before and _names(tmp_path) == ["rows.jsonl"]
    with pytest.raises(TypeError):
        write_jsonl(path, [{"id": "x", "bad": object()}])
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == before and _names(tmp_path) == ["rows.jsonl"]


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def test_bad_json_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2\n{"id": 3}\n', encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as err:  # still a JSONDecodeError for callers that catch that
        list(read_jsonl(path))
    assert isinstance(err.value, JsonlDecodeError) and err.value.lineno == 3
    assert str(err.value).startswith(f"{path}, line 3 column 9: not valid JSON (Expecting ',' delimiter)")
    assert pickle.loads(pickle.dumps(err.value)).args == err.value.args
    with pytest.raises(JsonlDecodeError, match=r"line 3"):
        list(read_jsonl(path, tolerate_torn_tail=True))  # only the very last line may be torn
    with pytest.raises(JsonlDecodeError, match=r"s\.jsonl, line 3"):
        AppendLog(path)


def test_read_jsonl_torn_tail_and_lazy_open(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "x": "unfinish', encoding="utf-8")
    assert [r["id"] for r in read_jsonl(path, tolerate_torn_tail=True)] == [1, 2]
    with pytest.raises(JsonlDecodeError, match=r"line 3 column"):
        list(read_jsonl(path))
    missing = read_jsonl(tmp_path / "nope.jsonl")  # a generator: nothing happens until iterated
    with pytest.raises(FileNotFoundError):
        next(missing)


# ---------------------------------------------------------------------------------------------------------------
# Append log
# ---------------------------------------------------------------------------------------------------------------

TORN_CASES = [
    # (file content, content after repair, lines cut)
    (b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "out', b'{"id": "a"}\n{"id": "b"}\n', 1),
    (b'{"id": "a"}\n{"id": "c", "ou\n\n', b'{"id": "a"}\n', 1),  # torn line followed by blank lines
    (b'{"id": "a"}\n{"id": "c", "t": "\xc3', b'{"id": "a"}\n', 1),  # cut inside a UTF-8 character
    (b'{"id": "tor', b"", 1),  # the only line torn: the file is emptied
    (b'{"id": "a"}\n{"id": "b"}', b'{"id": "a"}\n{"id": "b"}\n', 0),  # complete but unterminated: newline added
    (b'{"id": "a"}\n', b'{"id": "a"}\n', 0),
    (b"", b"", 0),
]


@pytest.mark.parametrize("content,repaired,cut", TORN_CASES)
def test_torn_tail_is_repaired_and_counted(tmp_path, content, repaired, cut):
    path = tmp_path / "log.jsonl"
    path.write_bytes(content)
    log = AppendLog(path)
    assert log.torn == cut and path.read_bytes() == repaired
    assert [r["id"] for r in log.rows()] == [r["id"] for r in read_jsonl(path)]
    log.append({"id": "z"})
    log.close()
    assert path.read_bytes() == repaired + b'{"id": "z"}\n'  # the new row is on a line of its own
    path.write_bytes(content)
    assert drop_torn_tail(path) == cut and path.read_bytes() == repaired


def test_done_ids_and_resumed_appends(tmp_path):
    path = tmp_path / "sub" / "gen.jsonl"
    with AppendLog(path) as log:
        assert log.rows() == [] and log.done == set() and log.torn == 0 and not path.exists()  # created lazily
        log.append({"id": "e1", "output": "ä"})
        log.append({"id": "e2", "output": "b"})
        assert log.done == {"e1", "e2"} and len(log) == 2
    with AppendLog(path) as log:  # resume: what is done is known, new rows follow
        assert log.done == {"e1", "e2"} and [r["output"] for r in log.rows()] == ["ä", "b"]
        todo = [i for i in ("e1", "e2", "e3", "e4") if i not in log.done]
        for i in todo:
            log.append({"id": i, "output": i})
        assert [r["id"] for r in log.rows()] == ["e1", "e2", "e3", "e4"]
    assert AppendLog(path, key="output").done == {"ä", "b", "e3", "e4"}
    log.append({"id": "e5"})  # after close: reopens
    log.close()
    assert [r["id"] for r in read_jsonl(path)] == ["e1", "e2", "e3", "e4", "e5"]


def test_rows_without_the_key_are_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    with AppendLog(path) as log, pytest.raises(ValueError, match="row without the 'id' field"):
        log.append({"name": "x"})
    path.write_text('{"id": 1}\n{"name": 2}\n', encoding="utf-8")
    with pytest.raises(PhasedIFTError, match=r"log\.jsonl, line 2: a row without the 'id' field"):
        AppendLog(path)
    path.write_text('{"id": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(PhasedIFTError, match=r"line 2"):
        AppendLog(path)


def test_appended_rows_survive_kill_9(tmp_path):
    """A writer killed with SIGKILL right after an append keeps every appended row (the line was flushed)."""
    path = tmp_path / "log.jsonl"
    code = (f"import os, signal\nfrom phased_ift.runio import AppendLog\nlog = AppendLog({str(path)!r})\n"
            "for i in range(5):\n    log.append({'id': i})\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == -signal.SIGKILL
    log = AppendLog(path)
    assert log.torn == 0 and log.done == {0, 1, 2, 3, 4}


def test_append_jsonl_appends_and_flushes(tmp_path):
    path = tmp_path / "d" / "a.jsonl"
    append_jsonl(path, {"id": 1, "t": "é"})
    append_jsonl(path, {"id": 2})
    assert path.read_text(encoding="utf-8") == '{"id": 1, "t": "é"}\n{"id": 2}\n'
