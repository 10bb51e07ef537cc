"""Loading a data file into raw records: bytes -> text -> JSON records with the line each starts on.

The first half of `read_file` (the second half, turning records into Examples, is `formats.py`):
  text files   a JSON array (a syntax error stops the file: the message gives line and column) or JSON lines
               (each malformed line becomes a reject of its own); UTF-8, a byte-order mark is skipped, invalid
               bytes survive as surrogate escapes so that only their records are rejected; an empty, binary or
               non-JSON file raises PhasedIFTError naming the file, line and fix.
  hf           a Hugging Face `datasets` dataset (hub id in the local cache, saved dir) or a local
               .parquet/.csv/.tsv/.json/.arrow file, with an optional `columns` mapping (records have no line),
               read by Arrow batches of `_HF_BATCH` rows.

Also the reject row {"source", "line", "record", "reason"} and `_clean`, which makes any record writable as UTF-8.
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from phased_ift.errors import PhasedIFTError

_WS = re.compile(r"[ \t\n\r]*")
# Text decoded with errors="surrogateescape" keeps invalid UTF-8 bytes as U+DC80..U+DCFF; JSON "\ud800" escapes
# give lone surrogates. Neither can be written back as UTF-8, so such records are rejected, never half-kept.
_SURROGATE = re.compile("[\ud800-\udfff]")
_TABULAR_SUFFIXES = {".parquet", ".csv", ".tsv", ".arrow"}
_DECODER = json.JSONDecoder()


def _unreadable(path: Any, where: str, problem: str, fix: str) -> PhasedIFTError:
    return PhasedIFTError(f"{path}{where}: {problem}. {fix}")


_CHUNK = 1 << 20  # characters read at a time by `_TextStream` (the buffer holds about one chunk + one record)


class _TextStream:
    """A text file read in chunks: a buffer that starts at character `base` of the file, with the line (1-based)
    and column (0-based) of that start, so that positions inside the buffer map to the whole file's line/column.

    Bytes are decoded incrementally as UTF-8 with errors="surrogateescape" (invalid bytes survive as U+DC80..U+DCFF,
    so that only their records are rejected); a leading byte-order mark is skipped. Memory: the unconsumed part of
    the buffer (one chunk plus the record being decoded), never the whole file.
    """

    def __init__(self, f: Any, head: bytes) -> None:
        self._f = f
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.buf = self._dec.decode(head[3:] if head.startswith(b"\xef\xbb\xbf") else head)
        self.eof = False
        self.line, self.col = 1, 0
        self._at, self._at_line = 0, 1  # a position in the buffer and its line (see `where`)

    def more(self) -> bool:
        """Append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        raw = self._f.read(_CHUNK)
        self.eof = not raw
        text = self._dec.decode(raw, final=self.eof)  # at the end: a cut-off UTF-8 sequence, as escapes
        self.buf += text
        return bool(raw or text)

    def need(self, pos: int) -> bool:
        """Read until the buffer holds position `pos` (True) or the file ends (False)."""
        while pos >= len(self.buf):
            if not self.more():
                return False
        return True

    def where(self, pos: int) -> tuple[int, int]:
        """(line, column), both 1-based, of buffer position `pos` in the whole file. Counts newlines on from the
        last position asked (callers ask in increasing order: linear in the file, not per record)."""
        if pos < self._at:
            self._at, self._at_line = 0, self.line
        nl = self.buf.count("\n", self._at, pos)
        self._at, self._at_line = pos, self._at_line + nl
        if self._at_line == self.line:
            return self.line, self.col + pos + 1
        return self._at_line, pos - self.buf.rfind("\n", 0, pos)

    def drop(self, pos: int) -> None:
        """Forget the buffer before `pos` (consumed records); positions after it shift down by `pos`."""
        line, col = self.where(pos)
        self.line, self.col = line, col - 1
        self._at, self._at_line = 0, line
        self.buf = self.buf[pos:]


def _open_text(path: Path) -> tuple[Any, _TextStream]:
    """The open binary file and its `_TextStream`, after the checks on its first bytes.

    Raises:
        PhasedIFTError: the file cannot be read, is empty / only whitespace, or holds a NUL byte in its first 8 KiB
            (binary: Parquet, Arrow, UTF-16).
    """
    try:
        f = open(path, "rb")
        head = f.read(8192)
    except OSError as e:
        raise _unreadable(path, "", f"cannot read the file ({e.strerror})", "Check the path and its permissions.")
    nul = head.find(b"\x00")
    if nul >= 0:
        f.close()
        line = head.count(b"\n", 0, nul) + 1
        raise _unreadable(path, f", line {line}", f"binary data (a NUL byte at offset {nul}), not JSON text", "If "
                          "it is Parquet or Arrow give it a .parquet/.arrow name or use format hf; if it is UTF-16 "
                          "text re-save it as UTF-8; otherwise export the records as JSON lines.")
    while not head.strip():  # bytes.strip: ASCII whitespace, as the whole-file check before streaming
        chunk = f.read(_CHUNK)
        if not chunk:
            f.close()
            raise _unreadable(path, ", line 1", "the file is empty", "Point to a file that holds records (a JSON "
                              "array or one JSON object per line).")
        head += chunk
    return f, _TextStream(f, head)


def _clean(value: Any) -> Any:
    """A copy that can be written as UTF-8 JSON: bad bytes / lone surrogates become U+FFFD (for the rejects file)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def _find_bad_text(value: Any, where: str = "") -> str | None:
    """The location ("field 'output'") of the first string holding non-UTF-8 bytes, or None. A flat record (str
    keys and values: Alpaca's) is searched in one pass; the walk below only runs when that finds something."""
    if isinstance(value, dict):
        try:
            flat = "\x00".join(itertools.chain(value, value.values()))
        except TypeError:  # a key or value that is no str: walk
            flat = None
        if flat is not None and (flat.isascii() or _SURROGATE.search(flat) is None):
            return None  # (isascii: one C pass, no surrogate can be there)
    if isinstance(value, str):
        return where or "the record" if _SURROGATE.search(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _find_bad_text(k, where) if isinstance(k, str) else None
        found = found or _find_bad_text(v, f"{where}[{k!r}]" if where else f"field {k!r}")
        if found:
            return found
    return None


def _array_error(path: Path, stream: _TextStream, pos: int, msg: str) -> PhasedIFTError:
    line, col = stream.where(pos)
    return _unreadable(path, f", line {line} column {col}", f"malformed JSON ({msg})", "A JSON array cannot be "
                       "read past a syntax error: fix that spot (often a missing comma or quote, or a trailing "
                       "comma), or convert the file to JSON lines so that a bad record only rejects itself.")


def _skip_ws(stream: _TextStream, i: int) -> int:
    """The first non-whitespace position at or after `i` (reading on as needed; len(buf) at the end of file)."""
    while True:
        i = _WS.match(stream.buf, i).end()
        if i < len(stream.buf) or not stream.more():
            return i


def _decode_one(stream: _TextStream, path: Path, i: int) -> tuple[Any, int]:
    """The JSON value starting at buffer position `i` and the position after it; reads on while the value may be
    cut off by the buffer's end (a decode error, or a value that ends exactly there, e.g. a number).

    Raises:
        PhasedIFTError: malformed JSON (line and column in the whole file), once the file has no more to read.
    """
    decoder = _DECODER
    while True:
        try:
            obj, end = decoder.raw_decode(stream.buf, i)
        except json.JSONDecodeError as e:
            if stream.more():
                continue
            raise _array_error(path, stream, e.pos, e.msg) from None
        if end < len(stream.buf) or not stream.more():
            return obj, end


def _iter_array(stream: _TextStream, path: Path, start: int) -> Iterator[tuple[int, Any]]:
    """Records of a JSON array with the line each starts on, one at a time (the buffer keeps about one chunk).
    A syntax error stops the file (no way to resync): PhasedIFTError with the line and column."""
    i = _skip_ws(stream, start + 1)
    if stream.buf[i:i + 1] == "]":
        return
    while True:
        obj, end = _decode_one(stream, path, i)
        yield stream.where(i)[0], obj
        i = _skip_ws(stream, end)
        if stream.buf[i:i + 1] == ",":
            i = _skip_ws(stream, i + 1)
        elif stream.buf[i:i + 1] == "]":
            break
        else:
            raise _array_error(path, stream, i, "Expecting ',' or ']' after a record")
        if i > _CHUNK // 2:  # forget consumed records now and then (dropping per record would copy per record)
            stream.drop(i)
            i = 0
    rest = _skip_ws(stream, i + 1)
    if rest < len(stream.buf):
        raise _array_error(path, stream, rest, "Extra data after the closing ']'")


def _iter_lines(stream: _TextStream) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its "\\n") of the stream, as `text.split("\\n")` would give them."""
    no, i = 1, 0
    while True:
        j = stream.buf.find("\n", i)
        if j < 0:
            if stream.more():
                continue
            yield no, stream.buf[i:]
            return
        yield no, stream.buf[i:j]
        no, i = no + 1, j + 1
        if i > _CHUNK // 2:
            stream.buf, i = stream.buf[i:], 0


def _iter_jsonl(stream: _TextStream, path: Path, label: str,
                rejects: list[dict[str, Any]]) -> Iterator[tuple[int, Any]]:
    """JSON lines, one record at a time: each malformed line becomes a reject (appended to `rejects` as it is
    met); a file where no line parses is not JSONL at all (PhasedIFTError, raised when the file ends)."""
    first_error: tuple[int, json.JSONDecodeError] | None = None
    parsed = False
    for no, line in _iter_lines(stream):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            first_error = first_error or (no, e)
            reason = f"malformed JSON: {e.msg} (line {no} column {e.colno})"
            rejects.append(_reject_row(label, no, _clean(line), reason))
            continue
        parsed = True
        yield no, rec
    if not parsed and first_error:
        no, e = first_error
        raise _unreadable(path, f", line {no} column {e.colno}", f"not JSON ({e.msg})", "Expected a JSON array of "
                          "records or one JSON object per line (JSONL); a pretty-printed single object must be "
                          "wrapped in [...]; for CSV/Parquet use a .csv/.parquet file name or format hf.")


def _reject_row(source: str, line: int | None, record: Any, reason: str) -> dict[str, Any]:
    return {"source": source, "line": line, "record": _clean(record), "reason": reason}



# --------------------------------------------------------------------------------------------------------------
# Hugging Face datasets, Parquet, CSV
# --------------------------------------------------------------------------------------------------------------

_COLUMN_KEYS = ("instruction", "input", "output", "id", "system", "conversations", "messages")


def _looks_like_hub_id(path: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not Path(path).suffix


def _read_hf(path: str, columns: dict[str, str] | None, split: str) -> Iterator[tuple[None, dict[str, Any]]]:
    """Rows of a `datasets` dataset (hub id, saved dir, or a local parquet/csv/tsv/json/arrow file), renamed by
    `columns` (our field -> their column). The dataset is loaded (memory-mapped Arrow) and checked here; the rows
    come one at a time from Arrow batches as the iterator is read (`_hf_rows`), not as a list of every row."""
    import datasets

    p = Path(path)
    builders = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json",
                ".arrow": "arrow"}
    bad = sorted(set(columns or {}) - set(_COLUMN_KEYS))
    if bad:
        raise PhasedIFTError(f"{path}: unknown key(s) {bad} in the columns mapping; the keys are our fields "
                             f"{list(_COLUMN_KEYS)} and the values the dataset's column names.")
    try:
        if p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        elif p.is_file():
            if p.suffix.lower() not in builders:
                raise PhasedIFTError(f"{path}: format hf reads {sorted(builders)} files, saved datasets and hub ids; "
                                     f"rename the file or pass the right format.")
            kwargs: dict[str, Any] = {}
            if p.suffix.lower() in (".csv", ".tsv"):
                # every column as text: pandas type inference would turn an answer "4" into 4 or 4.0
                import csv

                delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
                with open(p, encoding="utf-8", newline="") as f:
                    header = next(csv.reader(f, delimiter=delimiter), [])
                kwargs = {"delimiter": delimiter, "keep_default_na": False,
                          "features": datasets.Features({c: datasets.Value("string") for c in header})}
            ds = datasets.load_dataset(builders[p.suffix.lower()], data_files=str(p), split="train", **kwargs)
        else:
            ds = datasets.load_dataset(path, split=split)
    except PhasedIFTError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ArrowInvalid...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PhasedIFTError(f"{path}: cannot load it with the `datasets` library ({type(e).__name__}: {first}). "
                             f"Check the path or dataset id and split {split!r}; hub datasets must already be in "
                             f"the local Hugging Face cache (HF_HUB_OFFLINE=1).") from None
    names = list(ds.column_names)
    missing = {k: c for k, c in (columns or {}).items() if c not in names}
    if missing:
        raise PhasedIFTError(f"{path}: the columns mapping names column(s) {missing} that the dataset does not have; "
                             f"its columns are {names}. Fix the mapping (our field: their column).")
    return _hf_rows(ds, {c: k for k, c in (columns or {}).items()})


_HF_BATCH = 1000  # rows per Arrow batch read by `_hf_rows`


def _hf_rows(ds: Any, rename: dict[str, str]) -> Iterator[tuple[None, dict[str, Any]]]:
    """(None, row) per row of a `datasets.Dataset`, read `_HF_BATCH` rows at a time, columns renamed."""
    for batch in ds.iter(batch_size=_HF_BATCH):
        names = list(batch)
        for values in zip(*(batch[n] for n in names)):
            out = {rename.get(k, k): v for k, v in zip(names, values)}
            # parquet cells may hold dates or bytes: keep meta JSON-serialisable
            yield None, json.loads(json.dumps(out, default=str))



def wants_hf(path: str, fmt: str, columns: dict[str, str] | None) -> bool:
    """Whether `read_file` loads through `datasets`: format hf, or auto with a tabular file, a directory, a hub
    id that is not a local path, or a columns mapping."""
    p = Path(path)
    tabular = p.suffix.lower() in _TABULAR_SUFFIXES or p.is_dir() or (not p.exists() and _looks_like_hub_id(path))
    return fmt == "hf" or (fmt == "auto" and bool(tabular or columns))


def load_text_records(path: str, fmt: str, label: str) -> tuple[Iterator[tuple[int, Any]], list[dict[str, Any]]]:
    """Records of a JSON array or JSON-lines file with their 1-based line, read as a stream, and the list that
    collects the rejects of malformed lines as the stream reaches them (complete once the stream is exhausted).

    Memory: about one chunk (`_CHUNK` characters) and one record at a time, whatever the file's size; the file
    stays open until the iterator is exhausted or closed.

    Raises:
        PhasedIFTError: here, no such file, a directory, an empty or binary file; while iterating, a JSON array with
            a syntax error (line and column), a file where no line is JSON, or an empty JSON array.
    """
    p = Path(path)
    if not p.exists():
        raise _unreadable(path, "", "no such file", "Check the path (relative paths start at the current "
                          "directory), or use a named source (list them with `phased-ift data sources`).")
    if p.is_dir():
        raise _unreadable(path, "", f"is a directory, not a {fmt} file", "Point to the file inside it, or "
                          "use format hf for a saved Hugging Face dataset.")
    f, stream = _open_text(p)
    rejects: list[dict[str, Any]] = []

    def records() -> Iterator[tuple[int, Any]]:
        with f:
            start = _skip_ws(stream, 0)
            if stream.buf[start:start + 1] == "[":
                items = _iter_array(stream, p, start)
            else:
                items = _iter_jsonl(stream, p, label, rejects)
            any_record = False
            for item in items:
                any_record = True
                yield item
            if not any_record and not rejects:
                raise _unreadable(path, "", "holds no records (an empty JSON array)", "Point to a file with at "
                                  "least one record.")

    return records(), rejects
