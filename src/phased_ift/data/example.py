"""The internal record `Example`, the text key that matches one instruction across files, and the
data/train.jsonl-style files of Examples (written and read through `phased_ift.runio`).

Every reader of the `data` package returns `Example(id, messages, meta)`:
  messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] (a training example ends with an
  assistant message; a test-set prompt has no assistant message)
  meta: source file/name, original fields (e.g. the paper's GPT-4 `score` as a float), anything a scorer needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from phased_ift.runio import read_jsonl, write_jsonl


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
    return [Example.from_dict(d) for d in read_jsonl(path)]


def normalize_text(s: str) -> str:
    """Whitespace-collapsed, lower-cased text: the key used to match one instruction across files.

    Example: normalize_text("  Hello\\n\\nWorld ") == "hello world". The PhasedSFT prompt ("instruction\\ninput")
    and the Alpaca convention ("instruction\\n\\ninput") normalise to the same key.
    """
    return " ".join(s.split()).lower()
