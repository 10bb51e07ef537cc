"""The internal record `Example`, the text key that matches one instruction across files, and the
data/train.jsonl-style files of Examples (written and read through `phased_ift.runio`).

Every reader of the `data` package returns `Example(id, messages, meta)`:
  messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] (a training example ends with an
  assistant message; a test-set prompt has no assistant message)
  meta: source file/name, original fields (e.g. the paper's GPT-4 `score` as a float), anything a scorer needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, overload

from phased_ift.runio import JsonlIndex, numbered_lines, parse_line, read_jsonl, row_json, write_jsonl


def unique_id(example_id: str, taken: set[str], prefix: str) -> str:
    """`example_id`, or "<prefix>:<id>" when it is taken (then "<prefix>:<id>#2", "#3", ...); added to `taken`."""
    rid, n = example_id if example_id not in taken else f"{prefix}:{example_id}", 2
    while rid in taken:
        rid, n = f"{prefix}:{example_id}#{n}", n + 1
    taken.add(rid)
    return rid


@dataclass
class Example:
    """One instruction example.

    Attributes:
        id: unique id within a dataset (string).
        messages: chat turns, each {"role", "content"}; roles alternate user/assistant after an optional system.
        meta: source and original fields (e.g. {"source": "alpagasus/random_9k.json", "score": 4.5}).
    """

    id: str
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def instruction(self) -> str:
        """The first user turn (Alpaca: instruction + "\\n\\n" + input when input is non-empty)."""
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    @property
    def response(self) -> str:
        """The last assistant turn, or "" for a prompt-only example."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """All turns before the last assistant turn (what a model is conditioned on)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[:-1]
        return list(self.messages)

    def to_dict(self) -> dict[str, Any]:
        """The data/train.jsonl row: {"id", "messages", "meta"}."""
        return {"id": self.id, "messages": self.messages, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        """Inverse of `to_dict` (no validation: use `read_file(path, "messages")` for files from elsewhere)."""
        return cls(id=str(d["id"]), messages=list(d["messages"]), meta=dict(d.get("meta") or {}))


def write_examples(path: str | os.PathLike, examples: Iterable[Example]) -> Path:
    """Write Examples as data/train.jsonl-style rows, atomically (`runio.write_jsonl`).

    Returns:
        The path written (as a Path).
    """
    write_jsonl(path, (e.to_dict() for e in examples))
    return Path(path)


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read Examples written by `write_examples` (this project's own files; trusted, not validated).

    Raises:
        FileNotFoundError, or runio.JsonlDecodeError naming the file and line of a line that is not JSON.
    """
    return list(iter_examples(path))


def iter_examples(path: str | os.PathLike) -> Iterator[Example]:
    """`read_examples` as a stream: one row in memory at a time (the file opens at the first `next()`).

    Raises:
        as `read_examples`.
    """
    return (Example.from_dict(d) for d in read_jsonl(path))


class ExampleFile(Sequence):
    """The Examples of a data/train.jsonl-style file as a lazy sequence: ids and line offsets in memory (about
    100 bytes per example), each Example read from the file when it is asked for. Iterating streams the file (one
    row at a time); `ex[i]` seeks to row i; a slice is a list of Examples.

        data = ExampleFile(run.train_data)
        data.ids                        # every id, file order
        todo = data.subset([0, 5, 9])   # a view of rows 0, 5, 9 (same file, same laziness)

    The file must not change while the sequence is in use. Close it (`close`, or `with`) to release the file
    handle of random reads.

    Raises:
        FileNotFoundError: no such file; runio.JsonlDecodeError: a line that is not JSON (file and line).
    """

    def __init__(self, path: str | os.PathLike, *, _index: JsonlIndex | None = None,
                 _positions: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self._index = _index if _index is not None else JsonlIndex(self.path, keep=example_id,
                                                                   raw=True)
        self._positions = _positions

    @property
    def ids(self) -> list[str]:
        """The ids of this sequence's examples, in order."""
        if self._positions is None:
            return self._index.values
        return [self._index.values[p] for p in self._positions]

    def subset(self, positions: Sequence[int]) -> "ExampleFile":
        """The examples at these positions of this sequence (increasing), as a lazy sequence of the same file."""
        base = self._positions
        return ExampleFile(self.path, _index=self._index,
                           _positions=list(positions) if base is None else [base[p] for p in positions])

    def __len__(self) -> int:
        return len(self._index) if self._positions is None else len(self._positions)

    @overload
    def __getitem__(self, i: int) -> Example: ...

    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        p = range(len(self))[i] if self._positions is None else self._positions[i]
        return Example.from_dict(self._index.row(p))

    def __iter__(self) -> Iterator[Example]:
        path = self.path
        for lineno, line in self.lines():
            yield example_of_line(path, lineno, line)

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number in the file, the line's bytes) of each example of this sequence, in order, streamed; nothing
        is decoded (`example_of_line` decodes one: e.g. in a worker process, which gets the bytes)."""
        if self._positions is None:
            yield from numbered_lines(self.path)
            return
        wanted = iter(self._positions)
        nxt = next(wanted, None)
        for p, numbered in enumerate(numbered_lines(self.path)):
            if nxt is None:
                return
            if p == nxt:
                yield numbered
                nxt = next(wanted, None)

    def close(self) -> None:
        """Release the file handle of random reads (iteration opens its own)."""
        self._index.close()

    def __enter__(self) -> "ExampleFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def example_of_line(path: str | os.PathLike, lineno: int, line: bytes) -> Example:
    """The Example of one data/train.jsonl-style line (line `lineno` of `path`, for the error).

    Raises:
        runio.JsonlDecodeError: not JSON (file and line); UnicodeDecodeError: not UTF-8; KeyError, TypeError: a
            row that is no Example (`Example.from_dict`).
    """
    return Example.from_dict(parse_line(path, lineno, line))


def _head_slices(line: bytes) -> tuple[int, int, int] | None:
    """(i, j, end) of a row in `write_examples`' layout: line[7:i] is the id's JSON, line[i + 14:j] the messages',
    line[j + 10:end - 1] the meta's (`, "messages": ` at i, `, "meta": ` at j, the closing brace at end - 1); None
    for a line not in that layout. Inside a JSON string every quote is escaped, so the first `, "messages": ` and
    the first `, "meta": ` after it are the row's own keys, unless a messages turn has a "meta" key of its own (then
    the meta slice fails to decode: it starts inside the messages and ends inside the row)."""
    if line.startswith(b'{"id": '):
        end = len(line) - 1 if line.endswith(b"}\n") else len(line.rstrip())  # no copy of the common line
        i = line.find(b', "messages": ')
        j = line.find(b', "meta": ', i)
        if 0 < i < j and line[end - 1:end] == b"}":
            return i, j, end
    return None


_DECODER = json.JSONDecoder()


def _one_value(part: bytes) -> Any:
    """The JSON value that is all of `part` (json.loads without its surrounding whitespace and per-call steps).

    Raises:
        ValueError: not UTF-8, not JSON, or more than one value.
    """
    text = part.decode("utf-8")
    value, end = _DECODER.raw_decode(text)
    if end != len(text):
        raise ValueError("extra data")
    return value


def _head(line: bytes, at: tuple[int, int, int]) -> tuple[str, dict[str, Any]] | None:
    """(id, meta) decoded from the slices `at` (`_head_slices`), or None when they do not decode to a str and a
    dict."""
    i, j, end = at
    try:
        rid, meta = _one_value(line[7:i]), _one_value(line[j + 10:end - 1])
    except ValueError:
        return None
    return (rid, meta) if isinstance(rid, str) and isinstance(meta, dict) else None


def example_head(line: bytes) -> tuple[str, dict[str, Any]]:
    """(id, meta) of one data/train.jsonl-style row (a line's bytes), without decoding its messages when the row has
    `write_examples`' shape: `{"id": <str>, "messages": [...], "meta": {...}}` with json.dumps' separators (see
    `_head_slices`); any other line is decoded whole. A few times faster than decoding the row when the messages are
    most of it.

    Raises:
        json.JSONDecodeError: the line is not JSON; KeyError: a row without an id.
    """
    rid, meta, _ = example_head_key(line)
    return rid, meta


def example_id(line: bytes) -> str:
    """The id of one data/train.jsonl-style row (a line's bytes): `example_head`'s id, decoding only the id's slice
    when the row has `write_examples`' shape (its JSON string holds no unescaped quote, so the slice before the first
    `, "messages": ` is the whole id); any other line is decoded whole.

    Raises:
        as `example_head`.
    """
    at = _head_slices(line)
    if at is not None:
        try:
            rid = _one_value(line[7:at[0]])
        except ValueError:
            rid = None
        if isinstance(rid, str):
            return rid
    return str(json.loads(line)["id"])


def example_head_key(line: bytes) -> tuple[str, dict[str, Any], bytes | None]:
    """`example_head` and the row's `row_head` when the id and meta were decoded from their slices (None when the
    whole row was decoded): any row with the same head bytes has the same slices, so the same (id, meta).

    Raises:
        as `example_head`.
    """
    at = _head_slices(line)
    head = _head(line, at) if at is not None else None
    if head is not None:
        return head[0], head[1], line[:at[0]] + line[at[1]:at[2]]
    row = json.loads(line)
    return str(row["id"]), dict(row.get("meta") or {}), None


def row_head(line: bytes) -> bytes | None:
    """The bytes of a data/train.jsonl-style row without its messages (`{"id": ..., "meta": {...}}` as written),
    or None when the row is not in `write_examples`' shape (`_head_slices`); nothing is decoded. A reader that
    meets an example again (a control arm's file holds the phase files' rows in another order) looks this up among
    the heads `example_head_key` returned for rows it decoded, instead of decoding the row again."""
    at = _head_slices(line)
    return None if at is None else line[:at[0]] + line[at[1]:at[2]]


def _verbatim_messages(messages: bytes) -> bool:
    """Whether a row's messages slice (`_head_slices`) can be copied as it is: one JSON array as `row_json` writes
    it. A `], "` would end the array before another key of the row (or a list inside a turn before another of its
    keys: such rows fall back); a `\\u` or `\\/` escape is one `row_json` may not write (a file written with
    ensure_ascii=True; `row_json` writes \\u only for control characters: such rows fall back too)."""
    return (messages[:1] == b"[" and messages[-1:] == b"]"
            and (messages.find(b"]") == len(messages) - 1 or b'], "' not in messages)  # one-byte finds: memchr
            and (messages.find(b"\\") < 0 or (b"\\u" not in messages and b"\\/" not in messages)))


def with_meta(line: bytes, **updates: Any) -> bytes:
    """One data/train.jsonl-style row (a line's bytes) with `updates` set in its meta, as `write_examples` writes it:
    the bytes of `write_examples([Example(id, messages, {**meta, **updates})])` for the row's Example
    (`Example.from_dict`), an existing key keeping its place, a new one coming last. The split writes its phase
    files with it (meta["score"]).

    Layout assumption: a row in `write_examples`' layout (`_head_slices`: `{"id": ..., "messages": [...], "meta":
    {...}}`) whose id and meta decode (a str, a dict) and whose messages slice has none of `_verbatim_messages`'
    signs of another writer is rewritten without decoding its messages: the id and meta are decoded and encoded
    again (`runio.row_json`), the messages bytes copied. So they are assumed to be as `row_json` writes them (a file
    of `write_examples`, as data/train.jsonl is) and are not validated (invalid JSON or UTF-8 inside them is copied).
    Any other row falls back to decoding the whole line and encoding the Example, as `write_examples` does. About 2x
    faster than that on 1 KB rows (9 vs 18 us).

    Raises:
        json.JSONDecodeError: (fallback) the line is not JSON; UnicodeDecodeError: not UTF-8; KeyError, TypeError:
            a row that is no Example (`Example.from_dict`); TypeError: an update json cannot encode.
    """
    at = _head_slices(line)
    if at is not None and _verbatim_messages(line[at[0] + 14:at[1]]):
        head = _head(line, at)
        if head is not None:
            rid, meta = head
            meta.update(updates)
            return b"".join((b'{"id": ', row_json(rid).encode("utf-8"), line[at[0]:at[1] + 10],
                             row_json(meta).encode("utf-8"), b"}\n"))
    e = Example.from_dict(json.loads(line.decode("utf-8")))
    return (row_json({"id": e.id, "messages": e.messages, "meta": {**e.meta, **updates}}) + "\n").encode("utf-8")


def normalize_text(s: str) -> str:
    """Whitespace-collapsed, lower-cased text: the key used to match one instruction across files.

    Example: normalize_text("  Hello\\n\\nWorld ") == "hello world". The PhasedSFT prompt ("instruction\\ninput")
    and the Alpaca convention ("instruction\\n\\ninput") normalise to the same key.
    """
    return " ".join(s.split()).lower()
