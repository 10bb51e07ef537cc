"""Instruction data: one internal record (`Example`), readers for the common formats, validation, jsonl I/O.

Every reader returns `Example(id, messages, meta)`:
  messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] (a training example ends with an
  assistant message; a test-set prompt has no assistant message)
  meta: source file/name, original fields (e.g. the paper's GPT-4 `score` as a float), anything a scorer needs.

Run `phased-ift data check PATH [--format F]` to validate a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator


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
        return {"id": self.id, "messages": self.messages, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        return cls(id=str(d["id"]), messages=list(d["messages"]), meta=dict(d.get("meta") or {}))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines atomically (temp file + rename): a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row and flush: used for streams that must survive kill -9 (e.g. per-item results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Yield JSON objects from a jsonl file written by this project.

    Args:
        tolerate_torn_tail: skip an unparseable *last* line (an append interrupted by kill -9).
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if tolerate_torn_tail and i == len(lines) - 1:
                return
            raise


def write_examples(path: str | os.PathLike, examples: Iterable[Example]) -> Path:
    return write_jsonl(path, (e.to_dict() for e in examples))


def read_examples(path: str | os.PathLike) -> list[Example]:
    return [Example.from_dict(d) for d in read_jsonl(path)]
