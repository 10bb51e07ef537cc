"""The streaming reader of JSON arrays / JSON lines (data/loading.py, issue 29 item 2): records come one at a time
from a buffer of about one chunk, and everything read (records, lines, rejects, error line/column) equals the
whole-file reader it replaced, kept here as the reference (`_old_records`, the code of d45151d), on real data from
the data home and on files built to cut records, escapes and multi-byte characters at chunk boundaries."""

from __future__ import annotations

import bisect
import json
import re
import types
from pathlib import Path

import pytest

from phased_ift.data import formats, loading, read_file
from phased_ift.data.sources import data_home
from phased_ift.errors import PhasedIFTError

_WS = re.compile(r"[ \t\n\r]*")


def _old_records(path: Path) -> tuple[list, list[dict], str]:
    """(records with lines, rejects, error message or "") as the whole-file reader of d45151d read them."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    text = raw.decode("utf-8", errors="surrogateescape")
    start = _WS.match(text).end()
    if text[start] != "[":
        records, rejects = [], []
        for no, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    records.append((no, json.loads(line)))
                except json.JSONDecodeError as e:
                    rejects.append(loading._reject_row("x", no, loading._clean(line),
                                                       f"malformed JSON: {e.msg} (line {no} column {e.colno})"))
        return records, rejects, ""
    newlines = [m.start() for m in re.finditer("\n", text)]
    decoder, records = json.JSONDecoder(), []
    try:
        i = _WS.match(text, start + 1).end()
        if text[i:i + 1] == "]":
            return records, [], ""
        while True:
            obj, end = decoder.raw_decode(text, i)
            records.append((bisect.bisect_left(newlines, i) + 1, obj))
            i = _WS.match(text, end).end()
            if text[i:i + 1] == ",":
                i = _WS.match(text, i + 1).end()
            elif text[i:i + 1] == "]":
                break
            else:
                raise json.JSONDecodeError("Expecting ',' or ']' after a record", text, i)
        rest = _WS.match(text, i + 1).end()
        if rest < len(text):
            raise json.JSONDecodeError("Extra data after the closing ']'", text, rest)
    except json.JSONDecodeError as e:
        return records, [], f"line {e.lineno} column {e.colno}: malformed JSON ({e.msg})"
    return records, [], ""


def _new_records(path: Path) -> tuple[list, list[dict], str]:
    stream, rejects = loading.load_text_records(str(path), "auto", "x")
    records: list = []
    try:
        for rec in stream:
            records.append(rec)
    except PhasedIFTError as e:
        msg = str(e)[len(str(path)):].lstrip(", :").split(". A JSON array", 1)[0]
        return records, rejects, msg
    return records, rejects, ""


@pytest.fixture(params=[7, 64, 4096, 1 << 20], ids=lambda c: f"chunk{c}")
def chunk(request, monkeypatch) -> int:
    monkeypatch.setattr(loading, "_CHUNK", request.param)
    return request.param


def test_a_json_array_is_read_as_a_stream(tmp_path, monkeypatch):
    """The records are a generator, not a list, and the first one comes before most of the file is read."""
    monkeypatch.setattr(loading, "_CHUNK", 1024)
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"instruction": f"q{i} " * 20, "output": "a " * 50} for i in range(2000)]))
    opened = []
    real_open = loading.open if hasattr(loading, "open") else open

    def spy_open(*a, **k):
        f = real_open(*a, **k)
        opened.append(f)
        return f

    monkeypatch.setattr(loading, "open", spy_open, raising=False)
    stream, _ = loading.load_text_records(str(path), "auto", "x")
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)
    assert first[1]["instruction"].startswith("q0 ")
    assert opened[0].tell() < path.stat().st_size / 20  # read so far: the first 8 KiB and a chunk or two
    assert sum(1 for _ in stream) == 1999
    assert opened[0].closed


def test_real_data_equal_the_whole_file_reader(chunk):
    """Every JSON array and JSON-lines file of alpagasus/ in the data home: same records and lines."""
    files = sorted(p for p in (data_home() / "alpagasus").iterdir() if p.suffix in (".json", ".jsonl"))
    assert files, "no data files in the data home"
    for path in files[:2] if chunk == 7 else files:  # chunk 7: slow, two files suffice
        assert _new_records(path) == _old_records(path), path


def test_read_file_on_real_data_is_unchanged(monkeypatch):
    """read_file's examples and rejects with a small chunk (many boundaries) equal those read in one chunk."""
    path = data_home() / "alpagasus" / "random_9k.json"
    monkeypatch.setattr(loading, "_CHUNK", 1 << 30)
    whole = read_file(path)
    monkeypatch.setattr(loading, "_CHUNK", 997)
    streamed = read_file(path)
    assert [e.to_dict() for e in streamed.examples] == [e.to_dict() for e in whole.examples]
    assert streamed.rejects == whole.rejects and streamed.total == whole.total


_CASES = {
    "pretty": json.dumps([{"instruction": "é ü 🙂 " * 5, "output": "x\ny\\n\"q\""} for _ in range(30)], indent=2),
    "one_line": json.dumps([{"a": i, "b": [1.5, None, True], "c": "ß" * i} for i in range(40)]),
    "numbers": "[1, 22, 333, 4444, 55555, 666666, -7.5e3]",
    "trailing_comma": '[{"a": 1},\n {"a": 2},\n]',
    "missing_comma": '[{"a": 1}\n {"a": 2}]',
    "extra_data": '[{"a": 1}]\n  {"b": 2}',
    "unterminated": '[{"a": 1}, {"a": "open',
    "no_close": '[{"a": 1}, {"a": 2}',
    "empty_array": "  [ ]  ",
    "bom": "\ufeff" + json.dumps([{"instruction": "q", "output": "a"}]),
    "jsonl": '{"a": 1}\n\nnot json\n{"a": "é🙂"}\r\n{"a": 3',
    "jsonl_last_line": '{"a": 1}\n{"a": 2}',
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_boundaries_and_errors_equal_the_whole_file_reader(tmp_path, chunk, name):
    path = tmp_path / f"{name}.json"
    path.write_text(_CASES[name], encoding="utf-8")
    old, new = _old_records(path), _new_records(path)
    if name == "empty_array":  # the new reader raises "holds no records" while iterating, as read_file did
        assert old == ([], [], "") and new[0] == [] and "holds no records" in new[2]
        return
    assert new == old


def test_invalid_utf8_bytes_are_kept_as_escapes_across_chunks(tmp_path, chunk):
    """A multi-byte character and an invalid byte, cut at every position: the same records as the old reader."""
    body = '[{"instruction": "caf\u00e9 \U0001f642", "output": "ok"}, {"instruction": "x", "output": "'
    raw = body.encode() + b"\xff\xfe bad" + b'"}, {"instruction": "y", "output": "z"}]'
    path = tmp_path / "bad.json"
    path.write_bytes(raw)
    assert _new_records(path) == _old_records(path)
    result = read_file(path)
    assert [r["line"] for r in result.rejects] == [1] and len(result.examples) == 2


def test_detect_reads_past_the_head_only_for_its_error(tmp_path):
    """Format detection looks at the first 20 records of the stream; the error names the first object record."""
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([1] * 25 + [{"question": 1}]))
    with pytest.raises(PhasedIFTError, match=r"line 1: cannot tell the format .*\['question'\]"):
        read_file(path)
    assert formats._detect_head([(1, {"instruction": "q", "output": "a"})], iter(()), path) == "alpaca"


def test_jsonl_of_the_run_dir_is_read_line_by_line(tmp_path, monkeypatch):
    """runio.read_jsonl (data/train.jsonl, scores) holds one line at a time; a torn last line is still skipped
    and a bad line before the last still raises."""
    from phased_ift import runio

    path = tmp_path / "rows.jsonl"
    runio.write_jsonl(path, ({"id": str(i), "text": "w " * 200} for i in range(5000)))
    opened = []
    real_open = open

    def spy_open(*a, **k):
        f = real_open(*a, **k)
        opened.append(f)
        return f

    monkeypatch.setattr(runio, "open", spy_open, raising=False)
    rows = runio.read_jsonl(path)
    assert next(rows)["id"] == "0"
    assert opened[0].buffer.tell() < path.stat().st_size / 10
    assert sum(1 for _ in rows) == 4999
    monkeypatch.undo()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "torn", "te')
    assert len(list(runio.read_jsonl(path, tolerate_torn_tail=True))) == 5000
    with open(path, "a", encoding="utf-8") as f:
        f.write('\n{"id": "last"}\n')
    with pytest.raises(runio.JsonlDecodeError, match="line 5001"):
        list(runio.read_jsonl(path, tolerate_torn_tail=True))
