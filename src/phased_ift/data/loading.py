"""Loading a data file into raw records: bytes -> text -> JSON records with the line each starts on.

The first half of `read_file` (the second half, turning records into Examples, is `formats.py`):
  text files   a JSON array (a syntax error stops the file: the message gives line and column) or JSON lines
               (each malformed line becomes a reject of its own); UTF-8, a byte-order mark is skipped, invalid
               bytes survive as surrogate escapes so that only their records are rejected; an empty, binary or
               non-JSON file raises PhasedIFTError naming the file, line and fix.
  hf           a Hugging Face `datasets` dataset (hub id in the local cache, saved dir) or a local
               .parquet/.csv/.tsv/.json/.arrow file, with an optional `columns` mapping (records have no line).

Also the reject row {"source", "line", "record", "reason"} and `_clean`, which makes any record writable as UTF-8.
"""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path
from typing import Any

from phased_ift.errors import PhasedIFTError

_WS = re.compile(r"[ \t\n\r]*")
# Text decoded with errors="surrogateescape" keeps invalid UTF-8 bytes as U+DC80..U+DCFF; JSON "\ud800" escapes
# give lone surrogates. Neither can be written back as UTF-8, so such records are rejected, never half-kept.
_SURROGATE = re.compile("[\ud800-\udfff]")
_TABULAR_SUFFIXES = {".parquet", ".csv", ".tsv", ".arrow"}


def _unreadable(path: Any, where: str, problem: str, fix: str) -> PhasedIFTError:
    return PhasedIFTError(f"{path}{where}: {problem}. {fix}")


def _read_text(path: Path) -> str:
    """The file as text; invalid UTF-8 bytes survive as surrogate escapes so that only their records are rejected."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _unreadable(path, "", f"cannot read the file ({e.strerror})", "Check the path and its permissions.")
    if not raw.strip():
        raise _unreadable(path, ", line 1", "the file is empty", "Point to a file that holds records (a JSON array "
                          "or one JSON object per line).")
    nul = raw.find(b"\x00", 0, 8192)
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise _unreadable(path, f", line {line}", f"binary data (a NUL byte at offset {nul}), not JSON text", "If "
                          "it is Parquet or Arrow give it a .parquet/.arrow name or use format hf; if it is UTF-16 "
                          "text re-save it as UTF-8; otherwise export the records as JSON lines.")
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors) is not part of the JSON
        raw = raw[3:]
    return raw.decode("utf-8", errors="surrogateescape")


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
    """The location ("field 'output'") of the first string holding non-UTF-8 bytes, or None."""
    if isinstance(value, str):
        return where or "the record" if _SURROGATE.search(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _find_bad_text(k, where) if isinstance(k, str) else None
        found = found or _find_bad_text(v, f"{where}[{k!r}]" if where else f"field {k!r}")
        if found:
            return found
    return None


def _parse_array(text: str, path: Path, start: int) -> list[tuple[int, Any]]:
    """Records of a JSON array with the line each starts on. A syntax error stops the file (no way to resync)."""
    newlines = [m.start() for m in re.finditer("\n", text)]
    decoder = json.JSONDecoder()
    records: list[tuple[int, Any]] = []
    try:
        i = _WS.match(text, start + 1).end()
        if text[i:i + 1] == "]":
            return records
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
        raise _unreadable(path, f", line {e.lineno} column {e.colno}", f"malformed JSON ({e.msg})",
                          "A JSON array cannot be read past a syntax error: fix that spot (often a missing comma or "
                          "quote, or a trailing comma), or convert the file to JSON lines so that a bad record only "
                          "rejects itself.")
    return records


def _parse_lines(text: str, path: Path, label: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """JSON lines: each malformed line becomes a reject; a file where no line parses is not JSONL at all."""
    records: list[tuple[int, Any]] = []
    rejects: list[dict[str, Any]] = []
    first_error: tuple[int, json.JSONDecodeError] | None = None
    for no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((no, json.loads(line)))
        except json.JSONDecodeError as e:
            first_error = first_error or (no, e)
            reason = f"malformed JSON: {e.msg} (line {no} column {e.colno})"
            rejects.append(_reject_row(label, no, _clean(line), reason))
    if not records and first_error:
        no, e = first_error
        raise _unreadable(path, f", line {no} column {e.colno}", f"not JSON ({e.msg})", "Expected a JSON array of "
                          "records or one JSON object per line (JSONL); a pretty-printed single object must be "
                          "wrapped in [...]; for CSV/Parquet use a .csv/.parquet file name or format hf.")
    return records, rejects


def _reject_row(source: str, line: int | None, record: Any, reason: str) -> dict[str, Any]:
    return {"source": source, "line": line, "record": _clean(record), "reason": reason}



# --------------------------------------------------------------------------------------------------------------
# Hugging Face datasets, Parquet, CSV
# --------------------------------------------------------------------------------------------------------------

_COLUMN_KEYS = ("instruction", "input", "output", "id", "system", "conversations", "messages")


def _looks_like_hub_id(path: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not Path(path).suffix


def _read_hf(path: str, columns: dict[str, str] | None, split: str) -> list[tuple[None, dict[str, Any]]]:
    """Rows of a `datasets` dataset (hub id, saved dir, or a local parquet/csv/tsv/json/arrow file), renamed by
    `columns` (our field -> their column)."""
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
    rename = {c: k for k, c in (columns or {}).items()}
    rows = []
    for row in ds:
        out = {rename.get(k, k): v for k, v in row.items()}
        # parquet cells may hold dates or bytes: keep meta JSON-serialisable
        rows.append((None, json.loads(json.dumps(out, default=str))))
    return rows



def wants_hf(path: str, fmt: str, columns: dict[str, str] | None) -> bool:
    """Whether `read_file` loads through `datasets`: format hf, or auto with a tabular file, a directory, a hub
    id that is not a local path, or a columns mapping."""
    p = Path(path)
    tabular = p.suffix.lower() in _TABULAR_SUFFIXES or p.is_dir() or (not p.exists() and _looks_like_hub_id(path))
    return fmt == "hf" or (fmt == "auto" and bool(tabular or columns))


def load_text_records(path: str, fmt: str, label: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """Records of a JSON array or JSON-lines file with their 1-based line, and the rejects of malformed lines.

    Raises:
        PhasedIFTError: no such file, a directory, an empty/binary/non-JSON file, a JSON array with a syntax
            error, or an empty JSON array.
    """
    p = Path(path)
    if not p.exists():
        raise _unreadable(path, "", "no such file", "Check the path (relative paths start at the current "
                          "directory), or use a named source (list them with `phased-ift data sources`).")
    if p.is_dir():
        raise _unreadable(path, "", f"is a directory, not a {fmt} file", "Point to the file inside it, or "
                          "use format hf for a saved Hugging Face dataset.")
    text = _read_text(p)
    start = _WS.match(text).end()
    rejects: list[dict[str, Any]] = []
    if text[start] == "[":
        records = _parse_array(text, p, start)
    else:
        records, rejects = _parse_lines(text, p, label)
    if not records and not rejects:
        raise _unreadable(path, "", "holds no records (an empty JSON array)", "Point to a file with at "
                          "least one record.")
    return records, rejects
