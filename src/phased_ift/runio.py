"""Run-dir file I/O: JSON lines, the one atomic write, the one append log.

Every file a step writes goes through here, so that a reader (or a resumed run) never sees half a file:

  atomic_write_text / atomic_write_json / atomic_write_bytes / write_jsonl / write_lines
      a whole file at once: written to a temp file in the same folder, then `os.replace`d over the target.
      A writer that raises (or is killed) leaves the old file intact and no temp file behind (on kill -9 a
      hidden ".<name>.*.tmp" may remain; it is never read).
  AppendLog
      a jsonl stream written one row at a time (per-item results: generations, judgements, scores). Each row is
      flushed as it is written, so a run killed with kill -9 keeps every finished row; on reopening, a torn
      (unterminated and unparseable) last line is cut off and the ids already done are known, so the run resumes.
  read_jsonl
      rows of a jsonl file this project wrote; a bad line is an error naming the file and line.
  JsonlIndex
      random access to the rows of a jsonl file by position (the byte offset of each line, found in one pass), so a
      caller can hold small per-row values instead of every row (the split, the score step's final rewrite).
  read_scores
      the one reader of a scores file (scores/<scorer>.jsonl: rows by id, the last row of an id wins); the scoring
      step resumes from it and the split reads it.

A write the filesystem refuses (full disk, quota, read-only, permission) raises `diskerrors.DiskWriteError` naming
the file, the free space and the bytes the write needed; the old file (atomic writes) or the whole rows before it
(append logs) stay as they were.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from array import array
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from phased_ift.diskerrors import DiskWriteError, write_error, writing
from phased_ift.errors import PhasedIFTError

__all__ = ["AppendLog", "JsonlDecodeError", "JsonlIndex", "append_jsonl", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "atomic_write_chunks", "drop_torn_tail", "no_cycle_collection", "read_jsonl",
           "read_lines", "row_json", "write_jsonl", "write_lines"]


# --------------------------------------------------------------------------------------------------------------
# Whole-file writes: temp file in the same folder + os.replace
# --------------------------------------------------------------------------------------------------------------


def _atomic_write(path: str | os.PathLike, chunks: Iterable[bytes], *, fsync: bool = False,
                  mode: int = 0o644, before_replace: Callable[[], None] | None = None) -> Path:
    """The only temp-file + rename in the package: every `atomic_write_*` and `write_jsonl` end here.

    The temp file is ".<name>.<random>.tmp" in the target's folder (same filesystem, so `os.replace` is atomic).
    `mode` is set on it before the rename (mkstemp creates 0600; run-dir files and reports are meant to be
    shared). `fsync=True` also forces the bytes to disk before the rename (survives power loss, not only kill -9).
    `before_replace` runs after the last chunk is written and before the rename (a file that must exist before
    this one, e.g. data/rejects.jsonl, whose rows are known once the chunks are consumed); if it raises, the
    target stays as it was.
    """
    path = Path(path)
    size = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    f.write(chunk)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, mode)
            if before_replace is not None:
                before_replace()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except DiskWriteError:  # already one line naming its own file (a write of `before_replace`, of a row source)
        raise
    except Exception as e:  # a full disk, a quota, a read-only mount: one line naming the file (`diskerrors`)
        exact = isinstance(chunks, (list, tuple))
        err = write_error(e, path, size or None, "" if exact else " (at least: the part written before it failed)")
        if err is None:
            raise
        raise err from e
    return path


def atomic_write_chunks(path: str | os.PathLike, chunks: Iterable[bytes], *, fsync: bool = False) -> None:
    """Write a stream of byte chunks atomically (large files assembled piece by piece, e.g. a split GGUF).
    An exception raised by the iterator (e.g. a checksum that does not match) leaves no file behind."""
    _atomic_write(path, chunks, fsync=fsync)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` atomically (parent folders are created; the old file stays intact on failure)."""
    _atomic_write(path, [data], fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write `text` as UTF-8 to `path` atomically (see `atomic_write_bytes`)."""
    _atomic_write(path, [text.encode("utf-8")], fsync=fsync)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, *, fsync: bool = False) -> None:
    """Write `obj` as `json.dumps(obj, indent=indent)` (ASCII-escaped, as the run dir's JSON files have always
    been) to `path` atomically. The object is serialised before the temp file is created, so an unserialisable
    object leaves nothing behind."""
    text = json.dumps(obj, indent=indent)
    _atomic_write(path, [text.encode("utf-8")], fsync=fsync)


_ROW_ENCODER = json.JSONEncoder(ensure_ascii=False)  # what json.dumps(value, ensure_ascii=False) builds per call


def row_json(value: Any) -> str:
    """`value` encoded as every jsonl row of the run dir is (`json.dumps(value, ensure_ascii=False)`, default
    separators), no newline: the one owner of those settings. Encoding a dict gives its values' encodings joined as
    `{"key": <value>, ...}`, so a part of a row (e.g. its meta) can be encoded on its own (`data.with_meta`).

    Raises:
        TypeError: a value json cannot encode; ValueError: a circular reference.
    """
    return _ROW_ENCODER.encode(value)


def _dump_row(row: dict[str, Any]) -> str:
    return row_json(row) + "\n"


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]], *, fsync: bool = False,
                before_replace: Callable[[], None] | None = None) -> int:
    """Write rows as JSON lines atomically: a reader never sees a half-written file.

    `rows` may be a generator; it is consumed while the temp file is written (one row in memory at a time), and if
    it raises the target is left as it was. `before_replace`: see `_atomic_write` (runs once every row is written).

    Returns:
        The number of rows written.
    """
    return write_lines(path, (_dump_row(row).encode("utf-8") for row in rows), fsync=fsync,
                       before_replace=before_replace)


def write_lines(path: str | os.PathLike, lines: Iterable[bytes], *, fsync: bool = False,
                before_replace: Callable[[], None] | None = None) -> int:
    """`write_jsonl` of rows already encoded: each item is one line's bytes, ending in b"\\n" (as `_dump_row`
    writes it, e.g. `data.with_meta`'s), written as given, atomically, one line in memory at a time.

    Returns:
        The number of lines written.
    """
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        for line in lines:
            yield line
            count += 1

    _atomic_write(path, chunks(), fsync=fsync, before_replace=before_replace)
    return count


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


class JsonlDecodeError(json.JSONDecodeError):
    """A line of a jsonl file that is not JSON. A `json.JSONDecodeError` (callers that catch that keep working)
    whose `lineno`/`colno` are the line and column in the file and whose message names the file."""

    def __init__(self, path: Path, lineno: int, msg: str, line: str, pos: int) -> None:
        super().__init__(msg, line, pos)
        # the column on the line itself (an error "after" the line's own newline points at its end)
        self.path, self.lineno, self.colno = path, lineno, min(pos, len(line.rstrip("\r\n"))) + 1
        self.args = (f"{path}, line {lineno} column {self.colno}: not valid JSON ({msg})",)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):  # picklable although __init__ takes other arguments than args
        return (JsonlDecodeError, (self.path, self.lineno, self.msg, self.doc, self.pos))


def numbered_rows(path: str | os.PathLike, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed JSON value) per non-blank line of a JSON-lines file, in file order; the value
    may be any JSON (callers that take files from users check it is an object and say which line is not).

    Raises:
        JsonlDecodeError: a line is not JSON (see `read_jsonl`; `tolerate_torn_tail` as there).
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:  # read line by line: one line in memory at a time, not the file
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if tolerate_torn_tail and next(f, None) is None:  # the very last line of the file
                    return
                raise JsonlDecodeError(path, i + 1, e.msg, line, e.pos) from None
            yield i + 1, row


def read_jsonl(path: str | os.PathLike, tolerate_torn_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a jsonl file written by this project, in file order; blank lines are skipped.

    A generator: the file is opened at the first `next()` (a missing file raises FileNotFoundError there) and
    read line by line (one line in memory at a time); invalid UTF-8 raises UnicodeDecodeError when the reading
    reaches it (rows before it have been yielded).

    Args:
        tolerate_torn_tail: skip an unparseable *last* line (an append interrupted by kill -9). Only the very
            last line of the file qualifies; a bad line anywhere else is always an error.

    Raises:
        JsonlDecodeError (a json.JSONDecodeError): a line is not JSON; the message is
            "<path>, line <n> column <c>: not valid JSON (<reason>)" and `lineno` is the line in the file.
    """
    for _, row in numbered_rows(Path(path), tolerate_torn_tail):
        yield row


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Cyclic garbage collection paused, then restored as it was (reference counting still frees every object):
    for a reader that builds millions of small acyclic objects from a file (the split's and the plan's stand-ins,
    their meta and ids), which each automatic collection would walk again (at 1M rows: about 5 s less CPU in the
    split, about 2.5 s of the plan's 25 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class JsonlIndex:
    """Random access to the rows of a JSON-lines file: the byte offset of each non-blank line (8 bytes per row,
    found in one streaming pass), and optionally one small value per row (`keep(row)`, e.g. its id), so that a
    caller holds those instead of the rows. `row(i)` parses line i; `line(i)` gives its bytes (one `os.pread`
    each, up to the next line's offset).

        with JsonlIndex(path, keep=lambda r: r["id"]) as index:
            ids = index.values            # one per row, file order
            first = index.row(0)          # the parsed row

    Args:
        path: the file (this project's jsonl, e.g. data/train.jsonl or a scores file).
        keep: called with each parsed row while indexing; its results are `values` (None: rows are not parsed
            while indexing, only their offsets found).
        raw: `keep` gets each line's bytes instead of the parsed row (it decodes what it needs, e.g.
            `data.example_head`).

    Raises:
        FileNotFoundError: no such file. JsonlDecodeError: with `keep`, a line that is not JSON (file and line);
        `keep`'s own exceptions.
    """

    def __init__(self, path: str | os.PathLike, keep: Callable[[Any], Any] | None = None, *, raw: bool = False
                 ) -> None:
        self.path = Path(path)
        self.offsets = array("q")
        self.values: list[Any] = []
        self._file: Any = None
        pos = 0
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.isspace():  # a non-blank line (strip() would copy it)
                    self.offsets.append(pos)
                    if keep is not None:
                        self.values.append(_kept(self.path, lineno, line, keep, raw))
                pos += len(line)
        self._size = pos

    def __len__(self) -> int:
        return len(self.offsets)

    def row(self, i: int) -> Any:
        """The parsed row at position i (0-based among the non-blank lines).

        Raises:
            IndexError: i out of range. JsonlDecodeError: the line is not JSON (named as line 0: the line number
                is not counted here).
        """
        return parse_line(self.path, 0, self.line(i))

    def line(self, i: int, decode: Callable[[bytes], Any] | None = None) -> Any:
        """The bytes of line i (0-based among the non-blank lines, with its newline), or `decode(those bytes)`
        (it decodes what it needs, e.g. `data.with_meta`).

        Raises:
            IndexError: i out of range. JsonlDecodeError: `decode` raised json.JSONDecodeError (named as line 0,
                as in `row`); `decode`'s other exceptions.
        """
        start, n = self.offsets[i], len(self.offsets)
        i %= n  # a negative i counts from the end, as in a list
        stop = self.offsets[i + 1] if i + 1 < n else self._size
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)
        line = os.pread(self._file.fileno(), stop - start, start)  # one read: the line and any blank lines after it
        end = line.find(b"\n")
        line = line[:end + 1] if end >= 0 else line  # the whole line: the same bytes object, not a copy
        return line if decode is None else _kept(self.path, 0, line, decode, True)

    def close(self) -> None:
        """Close the file `row` and `line` read through (idempotent; a later `row` reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "JsonlIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _kept(path: Path, lineno: int, line: bytes, keep: Callable[[Any], Any], raw: bool) -> Any:
    """keep(line or its row); a line that is not JSON is a JsonlDecodeError naming the file and line."""
    if not raw:
        return keep(parse_line(path, lineno, line))
    try:
        return keep(line)
    except json.JSONDecodeError as e:
        raise JsonlDecodeError(path, lineno, e.msg, line.decode("utf-8", "replace"), e.pos) from None


def read_lines(path: str | os.PathLike, decode: Callable[[bytes], Any]) -> Iterator[Any]:
    """decode(line) per non-blank line of a JSON-lines file, read line by line as bytes (the caller decodes only
    what it needs, e.g. `data.example_head`).

    Raises:
        JsonlDecodeError: `decode` raised json.JSONDecodeError (names the file and line); FileNotFoundError.
    """
    path = Path(path)
    for lineno, line in numbered_lines(path):
        yield _kept(path, lineno, line, decode, True)


def numbered_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, the line's bytes with its newline) per non-blank line of a JSON-lines file, in file
    order, read line by line; nothing is decoded (`parse_line` decodes one, naming its file and line).

    Raises:
        FileNotFoundError: at the first `next()`.
    """
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line


def parse_line(path: str | os.PathLike, lineno: int, line: bytes) -> Any:
    """The JSON value of one line's bytes (line `lineno` of `path`).

    Raises:
        JsonlDecodeError: not JSON (names the file, line and column); UnicodeDecodeError: not UTF-8.
    """
    text = line.decode("utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JsonlDecodeError(Path(path), lineno, e.msg, text, e.pos) from None


# --------------------------------------------------------------------------------------------------------------
# Appending, resumable
# --------------------------------------------------------------------------------------------------------------


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row and flush (opens and closes the file per call). Prefer `AppendLog` for a stream of rows."""
    path = Path(path)
    line = _dump_row(row)
    f = None
    with writing(path, len(line.encode("utf-8"))):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a", encoding="utf-8")
            f.write(line)
            f.flush()
            f.close()
        except Exception:
            _abandon(f, path)
            raise


def _abandon(f: Any, path: Path) -> None:
    """After a failed append: close `f` dropping its unwritten bytes, and cut a line the failure left torn, so
    the file stays readable (best effort: the disk may still refuse)."""
    if f is not None:
        try:
            f.close()  # flushes again, fails again, and closes the file all the same
        except OSError:
            pass
    try:
        drop_torn_tail(path)
    except OSError:
        pass


def drop_torn_tail(path: str | os.PathLike) -> int:
    """Repair the end of an append-only jsonl file so that rows appended next stay on their own lines.

    The last non-blank line is checked: if it does not parse as JSON (an append cut by kill -9, or invalid
    UTF-8) it is truncated away, together with any blank lines after it; if it parses but has no final newline,
    the newline is added. Only the last line is ever removed; a bad line elsewhere is left for `read_jsonl` to
    report. A missing file is left missing.

    Returns:
        The number of lines removed (0 or 1).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    body, _, last = data.rstrip(b"\n").rpartition(b"\n")
    try:
        json.loads(last) if last.strip() else None
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        with open(path, "r+b") as f:
            f.truncate(len(body) + 1 if body else 0)
        return 1
    if data and not data.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
    return 0


class AppendLog:
    """An append-only jsonl file of per-item rows that survives kill -9 and resumes.

        with AppendLog(run.generations(arm, k, "vicuna")) as log:
            for e in examples:
                if e.id not in log.done:
                    log.append({"id": e.id, "output": ...})

    Opening repairs a torn last line (`drop_torn_tail`; `torn` says how many lines were cut: 0 or 1) and reads
    the rows already there. Each `append` writes one line and flushes it to the OS, so every finished row
    survives the process being killed. The file is created (with its folders) on the first append.

    Attributes:
        path: the file.
        key: the row field that identifies an item ("id").
        done: the `key` values of all rows, those found on opening and those appended since.
        torn: lines cut off on opening (1 when the previous writer was killed mid-line).
        keep_rows: keep the rows in memory for `rows()` (default); False keeps only `done` (a log of a million
            rows that the caller reads back from the file, e.g. the score step's).

    Raises:
        JsonlDecodeError: on opening, a line other than the last is not JSON (named by file and line).
        PhasedIFTError: on opening, a row is not an object or lacks `key` (named by file and line).
    """

    def __init__(self, path: str | os.PathLike, key: str = "id", *, keep_rows: bool = True) -> None:
        self.path = Path(path)
        self.key = key
        self.keep_rows = keep_rows
        self._count = 0
        self.torn = drop_torn_tail(self.path)
        self._rows: list[dict[str, Any]] = []
        self.done: set[Any] = set()
        self._file = None
        if not self.path.is_file():
            return
        for lineno, row in numbered_rows(self.path, tolerate_torn_tail=False):
            if not isinstance(row, dict) or key not in row:
                raise PhasedIFTError(f"{self.path}, line {lineno}: a row without the {key!r} field; this file is "
                                     f"not an append log of this step. Delete it (or move it away) and re-run.")
            self._keep(row)

    def _keep(self, row: dict[str, Any]) -> None:
        if self.keep_rows:
            self._rows.append(row)
        self._count += 1
        self.done.add(row[self.key])

    def rows(self) -> list[dict[str, Any]]:
        """All rows in file order: those found on opening, then those appended since (a new list).

        Raises:
            ValueError: the log was opened with keep_rows=False.
        """
        if not self.keep_rows:
            raise ValueError(f"AppendLog({self.path}) keeps no rows (keep_rows=False): read the file instead")
        return list(self._rows)

    def __len__(self) -> int:
        return self._count

    def append(self, row: dict[str, Any]) -> None:
        """Write one row as a line and flush it.

        Raises:
            ValueError: the row has no `key` field (it could never be recognised as done).
            DiskWriteError: the filesystem refused the write (full, quota, read-only, permission); the row is not
                counted as done and a torn line it left is cut off.
        """
        if self.key not in row:
            raise ValueError(f"AppendLog({self.path}): row without the {self.key!r} field: {sorted(row)}")
        line = _dump_row(row)
        with writing(self.path, len(line.encode("utf-8"))):
            try:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.path, "a", encoding="utf-8")
                self._file.write(line)
                self._file.flush()
            except Exception:  # a full disk: the row is not done; the file keeps only whole rows (`diskerrors`)
                _abandon(self._file, self.path)
                self._file = None
                raise
        self._keep(row)

    def close(self) -> None:
        """Close the file (idempotent; a later `append` reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_scores(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a scores file (`{"id", "score", ...}` per line, scores/<scorer>.jsonl) by id, the one reader of that
    format: a later row of an id wins (a resumed scorer appends), a torn last line from kill -9 is skipped; {} when
    the file is missing.

    Raises:
        PhasedIFTError: a row without an `id` (names the file and line).
    """
    return dict(_score_rows(Path(path)))


def read_score_values(path: str | Path) -> dict[str, float | None]:
    """`read_scores` reduced to {id: score (float) or None (a failed row)}: what the split needs, without holding
    every row's extras (the length scorer's features, the judge's replies) in memory.

    Raises:
        PhasedIFTError: as `read_scores`; a score that is not a number (names the file and id).
    """
    out: dict[str, float | None] = {}
    for rid, row in _score_rows(Path(path)):
        score = row.get("score")
        try:
            out[rid] = None if score is None else float(score)
        except (TypeError, ValueError):
            raise PhasedIFTError(f"{path}: the score of id {rid!r} is {score!r}, not a number; re-run the "
                                 f"scorer.") from None
    return out


def _score_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        return
    for i, row in enumerate(read_jsonl(path, tolerate_torn_tail=True), 1):
        if "id" not in row:
            raise PhasedIFTError(f"{path} line {i} has no `id`; re-run the scorer.")
        yield str(row["id"]), row
