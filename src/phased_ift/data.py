"""Instruction data: one internal record (`Example`), readers for the common formats, validation, jsonl I/O.

Every reader returns `Example(id, messages, meta)`:
  messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] (a training example ends with an
  assistant message; a test-set prompt has no assistant message)
  meta: source file/name, original fields (e.g. the paper's GPT-4 `score` as a float), anything a scorer needs.

Formats (`read_file(path, fmt)`; `fmt="auto"` detects from the file, an explicit format wins):
  alpaca     JSON array or JSONL of {instruction, input, output}
  phasedsft  the paper's scored jsonl {"id", "score": "4.5\n", "data": [prompt, response]}
  sharegpt   {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
  messages   this project's own rows {"id", "messages", "meta"} (data/train.jsonl)
  testset    prompt-only files: vicuna/koala/sinstruct/wizardlm test sets, AlpacaEval model_outputs.json
  hf         any Hugging Face `datasets` dataset, Parquet or CSV, with a `columns` mapping

A record that cannot be used becomes a reject {"source", "line", "record", "reason"} (counted, written out,
never dropped silently); a file that cannot be read at all raises `PhasedIFTError` naming the file, line and fix.

Named sources (`SOURCES`) and test sets (`TEST_SETS`) resolve under the data home (`data_home()`:
$PHASED_IFT_DATA_HOME, else ./data, else ../shared/data).

Run `phased-ift data check PATH [--format F]` to validate a file, `phased-ift data sources` to list named sources.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from phased_ift.errors import PhasedIFTError


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
    """Write Examples as data/train.jsonl-style rows, atomically."""
    return write_jsonl(path, (e.to_dict() for e in examples))


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read Examples written by `write_examples` (this project's own files; trusted, not validated)."""
    return [Example.from_dict(d) for d in read_jsonl(path)]


def normalize_text(s: str) -> str:
    """Whitespace-collapsed, lower-cased text: the key used to match one instruction across files.

    Example: normalize_text("  Hello\\n\\nWorld ") == "hello world". The PhasedSFT prompt ("instruction\\ninput")
    and the Alpaca convention ("instruction\\n\\ninput") normalise to the same key.
    """
    return " ".join(s.split()).lower()


def _register(registry: dict[str, Any], name: str, value: Any) -> None:
    """Add to a plain-dict registry, refusing a duplicate name (a silent overwrite would hide a bug)."""
    if name in registry:
        raise ValueError(f"duplicate registry entry {name!r}")
    registry[name] = value


# --------------------------------------------------------------------------------------------------------------
# Reading a file: bytes -> raw JSON records (with line numbers) -> Examples + rejects
# --------------------------------------------------------------------------------------------------------------


class _Reject(Exception):
    """A record that cannot be used. The message is the reason: "<category>: <detail>"."""


@dataclass
class ReadResult:
    """What `read_file` / `load_source` found in one file.

    Attributes:
        examples: usable records in file order (after a `limit` sample, for `load_source`).
        rejects: unusable records, each {"source", "line", "record", "reason"}; `reason` is
            "<category>: <detail>" (e.g. "empty response: 'output' is empty"); `line` is 1-based or None.
        format: the format used (detected when fmt="auto").
        source: the file path or source name, also written to each example's meta["source"].
        total: records in the file (usable + rejected), before any `limit` sample.
        duplicates: (id, id of the first copy) of duplicate examples that were kept, not rejected (test-set
            prompts, or dedupe=False), so that they are still reported.
    """

    examples: list[Example]
    rejects: list[dict[str, Any]]
    format: str
    source: str = ""
    total: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    def reason_counts(self) -> dict[str, int]:
        """Rejects per reason category, most common first, e.g. {"empty response": 4}."""
        return dict(collections.Counter(r["reason"].split(":", 1)[0] for r in self.rejects).most_common())


@dataclass
class _Ctx:
    stem: str  # file stem, used for generated ids ("<stem>-<index>")
    index: int  # 0-based record index in the file
    require_response: bool


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
# Record converters: one per format, record dict -> (original id or None, messages, meta). Raise _Reject.
# --------------------------------------------------------------------------------------------------------------


def _text(rec: dict[str, Any], key: str, *, required: bool = True, what: str = "") -> str:
    """A string field. Missing/None/"" -> "" when optional; else a _Reject naming the field and the problem."""
    if key not in rec:
        if required:
            raise _Reject(f"missing field: {key!r} is absent (fields: {sorted(rec)})")
        return ""
    value = rec[key]
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise _Reject(f"wrong type: {key!r} is {type(value).__name__}, expected a string")
    if required and not value.strip():
        raise _Reject(f"empty {what or key}: {key!r} is empty")
    return value


def _record_id(rec: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        if key in rec and rec[key] is not None:
            value = rec[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise _Reject(f"wrong type: id field {key!r} is {type(value).__name__}, expected a string or integer")
            return str(value)
    return None


def _extras(rec: dict[str, Any], used: set[str]) -> dict[str, Any]:
    """Original fields not turned into messages, kept in meta. A numeric-string "score" becomes a float."""
    meta = {k: v for k, v in rec.items() if k not in used}
    if isinstance(meta.get("score"), str):
        try:
            meta["score"] = float(meta["score"].strip())
        except ValueError:
            pass  # not numeric: keep the original string
    return meta


def _from_alpaca(rec: dict[str, Any], ctx: _Ctx) -> tuple[str | None, list[dict[str, str]], dict[str, Any]]:
    """Alpaca {instruction, input, output[, system]}. User content = instruction, plus "\\n\\n" + input when the
    input is non-empty: the Alpaca convention (tatsu-lab/stanford_alpaca's prompt puts the input in its own
    paragraph) and AlpacaEval's, so instructions match across files."""
    instruction = _text(rec, "instruction", what="instruction")
    inp = _text(rec, "input", required=False)
    output = _text(rec, "output", what="response", required=ctx.require_response)
    system = _text(rec, "system", required=False)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages.append({"role": "user", "content": instruction + "\n\n" + inp if inp.strip() else instruction})
    if output.strip():
        messages.append({"role": "assistant", "content": output})
    meta = _extras(rec, {"instruction", "input", "output", "system", "id"})
    rid = _record_id(rec, "id")
    if rid is not None:
        meta["original_id"] = rec["id"]
    if inp.strip():
        meta["input"] = inp  # kept separately for templates that join instruction and input differently
    return rid, messages, meta


def _from_phasedsft(rec: dict[str, Any], ctx: _Ctx) -> tuple[str | None, list[dict[str, str]], dict[str, Any]]:
    """The paper's released scored files (xubuvd/PhasedSFT Alpaca-scored/*.jsonl): {"id", "score": str,
    "data": [prompt, response]}; the prompt already holds "\\n" + input. meta["score"] = float(score.strip())
    (released scores carry trailing newlines, some are averages such as "4.166666666666667")."""
    if "data" not in rec:
        raise _Reject(f"missing field: 'data' is absent (fields: {sorted(rec)})")
    data = rec["data"]
    if not isinstance(data, list) or len(data) != 2 or not all(isinstance(x, str) for x in data):
        raise _Reject(f"wrong type: 'data' must be a list [prompt, response] of two strings, got {_describe(data)}")
    prompt, response = data
    if not prompt.strip():
        raise _Reject("empty instruction: data[0] (the prompt) is empty")
    if ctx.require_response and not response.strip():
        raise _Reject("empty response: data[1] (the response) is empty")
    if "score" not in rec:
        raise _Reject("missing field: 'score' is absent (the paper's GPT-4 difficulty score)")
    score = rec["score"]
    if isinstance(score, bool) or not isinstance(score, (str, int, float)):
        raise _Reject(f"wrong type: 'score' is {type(score).__name__}, expected a number or a numeric string")
    try:
        value = float(score.strip()) if isinstance(score, str) else float(score)
    except ValueError:
        raise _Reject(f"bad score: 'score' = {score!r} is not a number")
    messages = [{"role": "user", "content": prompt}]
    if response.strip():
        messages.append({"role": "assistant", "content": response})
    meta = _extras(rec, {"data", "score", "id"})
    meta["score"] = value
    rid = _record_id(rec, "id")
    if rid is not None:
        meta["original_id"] = rec["id"]
    return rid, messages, meta


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "model": "assistant", "system": "system"}
# FastChat's Alpaca conversion (e.g. long-is-more-for-alignment) keeps Alpaca's prompt template inside the human
# turn; unwrapping it gives the same user content as the Alpaca reader, so duplicates across sources match.
_ALPACA_WRAPPED = re.compile(r"Below is an instruction that describes a task.*?### Instruction:\s*(?P<instruction>.*?)"
                             r"(?:\s*### Input:\s*(?P<input>.*?))?(?:\s*### Response:\s*)?", re.DOTALL)


def _from_sharegpt(rec: dict[str, Any], ctx: _Ctx) -> tuple[str | None, list[dict[str, str]], dict[str, Any]]:
    """ShareGPT/FastChat {"conversations": [{"from", "value"}]}: human/user -> user, gpt/assistant -> assistant,
    system -> system (role/content turn keys are accepted too). A human turn holding Alpaca's prompt template
    ("Below is an instruction ... ### Instruction: ...") is unwrapped to instruction [+ "\\n\\n" + input]."""
    if "conversations" not in rec:
        raise _Reject(f"missing field: 'conversations' is absent (fields: {sorted(rec)})")
    turns = rec["conversations"]
    if not isinstance(turns, list):
        raise _Reject(f"wrong type: 'conversations' is {type(turns).__name__}, expected a list of turns")
    messages, unwrapped = [], False
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise _Reject(f"wrong type: turn {i} is {type(turn).__name__}, expected an object {{from, value}}")
        role_key, value_key = ("from", "value") if "from" in turn or "value" in turn else ("role", "content")
        role = turn.get(role_key)
        if not isinstance(role, str):
            raise _Reject(f"missing field: turn {i} has no string {role_key!r}")
        if role.lower() not in _SHAREGPT_ROLES:
            raise _Reject(f"unknown role: turn {i} is from {role!r}; expected human, gpt or system")
        mapped = _SHAREGPT_ROLES[role.lower()]
        value = turn.get(value_key)
        if not isinstance(value, str):
            raise _Reject(f"wrong type: turn {i} {value_key!r} is {type(value).__name__}, expected a string")
        if not value.strip():
            what = {"user": "instruction", "assistant": "response"}.get(mapped, "system prompt")
            raise _Reject(f"empty {what}: turn {i} ({role!r}) is empty")
        if mapped == "user":
            m = _ALPACA_WRAPPED.fullmatch(value.strip())
            if m:
                inp = (m.group("input") or "").strip()
                value = m.group("instruction").strip() + ("\n\n" + inp if inp else "")
                unwrapped = True
        messages.append({"role": mapped, "content": value})
    meta = _extras(rec, {"conversations", "id"})
    rid = _record_id(rec, "id")
    if rid is not None:
        meta["original_id"] = rec["id"]
    if unwrapped:
        meta["alpaca_template_unwrapped"] = True
    return rid, messages, meta


def _from_messages(rec: dict[str, Any], ctx: _Ctx) -> tuple[str | None, list[dict[str, str]], dict[str, Any]]:
    """This project's rows {"id", "messages": [{"role", "content"}], "meta"} (data/train.jsonl, phase files)."""
    if "messages" not in rec:
        raise _Reject(f"missing field: 'messages' is absent (fields: {sorted(rec)})")
    turns = rec["messages"]
    if not isinstance(turns, list):
        raise _Reject(f"wrong type: 'messages' is {type(turns).__name__}, expected a list of {{role, content}}")
    messages = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise _Reject(f"wrong type: message {i} is {type(turn).__name__}, expected an object {{role, content}}")
        role, content = turn.get("role"), turn.get("content")
        if role not in ("system", "user", "assistant"):
            raise _Reject(f"unknown role: message {i} has role {role!r}; expected system, user or assistant")
        if not isinstance(content, str):
            raise _Reject(f"wrong type: message {i} content is {type(content).__name__}, expected a string")
        if not content.strip():
            what = {"user": "instruction", "assistant": "response"}.get(role, "system prompt")
            raise _Reject(f"empty {what}: message {i} ({role}) is empty")
        messages.append({"role": role, "content": content})
    meta = rec.get("meta") or {}
    if not isinstance(meta, dict):
        raise _Reject(f"wrong type: 'meta' is {type(meta).__name__}, expected an object")
    return _record_id(rec, "id"), messages, dict(meta)


# Prompt fields of the standard test sets, first match wins: sinstruct/AlpacaEval "instruction", WizardLM
# "Instruction", koala "prompt", vicuna "text", FastChat "turns", LIMA "conversations" (a string or list).
_PROMPT_KEYS = ("instruction", "Instruction", "prompt", "text", "turns", "conversations")


def _from_testset(rec: dict[str, Any], ctx: _Ctx) -> tuple[str | None, list[dict[str, str]], dict[str, Any]]:
    """Prompt-only test-set records. AlpacaEval model_outputs.json {dataset, instruction, output, generator}
    keeps `output` as meta["reference"]; Self-Instruct {instruction, instances: [{input, output}]} appends the
    instance input (Alpaca convention) and keeps its output as the reference."""
    key = next((k for k in _PROMPT_KEYS if k in rec), None)
    if key is None:
        raise _Reject(f"missing field: no prompt field (one of {list(_PROMPT_KEYS)}) among {sorted(rec)}")
    used = {key, "id", "question_id", "idx"}
    meta: dict[str, Any] = {}
    value = rec[key]
    if key in ("turns", "conversations") and isinstance(value, list):
        if not value or not isinstance(value[0], str):
            raise _Reject(f"wrong type: {key!r} must be a string or a list of strings")
        if len(value) > 1:
            meta["later_turns"] = value[1:]  # multi-turn prompts: only the first turn is asked
        value = value[0]
    prompt = _text({key: value}, key, what="instruction")
    inp = _text(rec, "input", required=False)
    used.add("input")
    reference = None
    if "instances" in rec:
        inst = rec["instances"]
        if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
            raise _Reject("wrong type: 'instances' must be a non-empty list of {input, output} objects")
        inp = _text(inst[0], "input", required=False)
        reference = _text(inst[0], "output", required=False)
        used.add("instances")
        if len(inst) > 1:
            meta["instances"] = inst
    if "output" in rec:
        reference = _text(rec, "output", required=False)
        used.add("output")
    meta.update(_extras(rec, used))
    if reference is not None:
        meta["reference"] = reference
    rid = _record_id(rec, "id", "question_id", "idx")
    if rid is None and isinstance(rec.get("dataset"), str):
        rid = f"{rec['dataset']}_{ctx.index}"  # AlpacaEval has no ids: subset + position in the 805
    content = prompt + "\n\n" + inp if inp.strip() else prompt
    return rid, [{"role": "user", "content": content}], meta


FORMATS: dict[str, Callable[[dict[str, Any], _Ctx], tuple[str | None, list[dict[str, str]], dict[str, Any]]]] = {}
for _name, _fn in [("alpaca", _from_alpaca), ("phasedsft", _from_phasedsft), ("sharegpt", _from_sharegpt),
                   ("messages", _from_messages), ("testset", _from_testset)]:
    _register(FORMATS, _name, _fn)
FORMAT_NAMES = [*FORMATS, "hf", "auto"]


def _describe(value: Any) -> str:
    text = json.dumps(_clean(value), ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _detect_one(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    keys = set(rec)
    if "conversations" in keys:
        conv = rec["conversations"]
        return "sharegpt" if isinstance(conv, list) and conv and isinstance(conv[0], dict) else "testset"
    if "messages" in keys:
        return "messages"
    if "data" in keys and "score" in keys:
        return "phasedsft"
    if {"dataset", "generator"} <= keys:  # AlpacaEval model outputs: prompts for evaluation, not training data
        return "testset"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if keys & set(_PROMPT_KEYS):
        return "testset"
    return None


def _detect(records: list[tuple[int | None, Any]], path: Any) -> str:
    """The most common format among the first 20 object records."""
    votes = collections.Counter(f for _, rec in records[:20] if (f := _detect_one(rec)))
    if votes:
        return votes.most_common(1)[0][0]
    line, first = next(((ln, r) for ln, r in records if isinstance(r, dict)), (records[0] if records else (None, None)))
    fields = sorted(first) if isinstance(first, dict) else type(first).__name__
    raise _unreadable(path, f", line {line}" if line else "", f"cannot tell the format from the first record "
                      f"(fields: {fields})", f"Pass the format explicitly (--format / format: one of "
                      f"{', '.join(FORMATS)}), or for other column names use format hf with a columns mapping "
                      f"such as {{instruction: question, output: answer}}.")


def _check_turns(messages: list[dict[str, str]], require_response: bool) -> None:
    """Roles: an optional leading system turn, then user/assistant alternating from user."""
    if not messages:
        raise _Reject("empty conversation: no turns")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body:
        raise _Reject("empty conversation: only a system turn")
    offset = len(messages) - len(body)
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise _Reject(f"roles do not alternate: turn {i + offset + 1} is {m['role']}, expected {want} "
                          f"(roles: {[t['role'] for t in messages]})")
    if require_response and body[-1]["role"] != "assistant":
        raise _Reject("no response: the conversation ends with a user turn (nothing to train on)")


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


# --------------------------------------------------------------------------------------------------------------
# read_file
# --------------------------------------------------------------------------------------------------------------


def read_file(path: str | os.PathLike, fmt: str = "auto", columns: dict[str, str] | None = None,
              split: str = "train", *, source: str | None = None, dedupe: bool = True,
              require_response: bool = True) -> ReadResult:
    """Read one data file (or HF dataset) into Examples, rejecting unusable records with reasons.

    Args:
        path: a .json (array) / .jsonl file, a .parquet/.csv/.tsv/.arrow file, a saved `datasets` dir or a hub id.
        fmt: alpaca | phasedsft | sharegpt | messages | testset | hf | auto (detect from the first records;
            an explicit format wins). See the module docstring for each format.
        columns: format hf: mapping of our fields (instruction, input, output, id, system, conversations,
            messages) to the dataset's column names; unmapped columns keep their names (and land in meta).
        split: split of a hub dataset or saved DatasetDict.
        source: label for meta["source"] and the rejects (default: the path as given).
        dedupe: reject a record whose messages equal an earlier record's ("duplicate example"). Test-set prompts
            are never rejected as duplicates (the WizardLM test set repeats one prompt, idx 20 and 27, with
            different Difficulty labels): they are kept and listed in `ReadResult.duplicates`.
        require_response: reject records without a non-empty response (training data). Test sets pass False.

    Returns:
        ReadResult(examples, rejects, format, source, total) with examples + rejects = every record in the file.
        Records without an id get "<file stem>-<index>" (index 0-based in the file).

    Raises:
        PhasedIFTError: the file is missing, empty, binary, not JSON at all, a JSON array with a syntax error
            (the message gives line and column), or the format cannot be detected / the columns do not exist.
    """
    if fmt not in FORMAT_NAMES:
        raise PhasedIFTError(f"{path}: unknown format {fmt!r}; use one of {', '.join(FORMAT_NAMES)}.")
    path_str = str(path)
    p = Path(path_str)
    label = source or path_str
    rejects: list[dict[str, Any]] = []
    if columns and fmt not in ("auto", "hf"):
        raise PhasedIFTError(f"{path_str}: a columns mapping applies to format hf (read through `datasets`), not to "
                             f"format {fmt}; set format to hf or auto, or remove the mapping.")
    tabular = p.suffix.lower() in _TABULAR_SUFFIXES or p.is_dir() or (not p.exists() and _looks_like_hub_id(path_str))
    if fmt == "hf" or (fmt == "auto" and (tabular or columns)):
        records: list[tuple[int | None, Any]] = list(_read_hf(path_str, columns, split))
        used = "hf"
        rec_fmt = "alpaca" if columns and set(columns) & {"instruction", "output"} else _detect(records, path_str)
    else:
        if not p.exists():
            raise _unreadable(path_str, "", "no such file", "Check the path (relative paths start at the current "
                              "directory), or use a named source (list them with `phased-ift data sources`).")
        if p.is_dir():
            raise _unreadable(path_str, "", f"is a directory, not a {fmt} file", "Point to the file inside it, or "
                              "use format hf for a saved Hugging Face dataset.")
        text = _read_text(p)
        start = _WS.match(text).end()
        if text[start] == "[":
            records = _parse_array(text, p, start)
        else:
            records, rejects = _parse_lines(text, p, label)
        if not records and not rejects:
            raise _unreadable(path_str, "", "holds no records (an empty JSON array)", "Point to a file with at "
                              "least one record.")
        rec_fmt = used = fmt if fmt != "auto" else _detect(records, path_str)
    convert = FORMATS[rec_fmt]
    examples: list[Example] = []
    duplicates: list[tuple[str, str]] = []
    dedupe = dedupe and rec_fmt != "testset"
    seen_ids: dict[str, Any] = {}
    seen_messages: dict[str, tuple[str, Any]] = {}
    for index, (line, rec) in enumerate(records):
        where = "" if line is not None else f" (row {index})"
        try:
            if not isinstance(rec, dict):
                raise _Reject(f"not an object: the record is a JSON {type(rec).__name__}, expected an object")
            bad = _find_bad_text(rec)
            if bad:
                raise _Reject(f"non-UTF-8 text: {bad} holds bytes that are not valid UTF-8 (or a lone surrogate "
                              f"escape); re-encode the file as UTF-8")
            rid, messages, meta = convert(rec, _Ctx(stem=p.stem or "record", index=index,
                                                    require_response=require_response))
            _check_turns(messages, require_response and rec_fmt != "testset")
            rid = rid if rid is not None else f"{p.stem or 'record'}-{index}"
            if rid in seen_ids:
                raise _Reject(f"duplicate id: {rid!r} was already used by the record at line {seen_ids[rid]}")
            key = json.dumps(messages, ensure_ascii=False)
            if key in seen_messages:
                first_id, first_line = seen_messages[key]
                if dedupe:
                    raise _Reject(f"duplicate example: same messages as id {first_id!r} (line {first_line})")
                duplicates.append((rid, first_id))
        except _Reject as r:
            rejects.append(_reject_row(label, line, rec, f"{r}{where}"))
            continue
        seen_ids[rid] = line if line is not None else f"row {index}"
        seen_messages.setdefault(key, (rid, seen_ids[rid]))
        examples.append(Example(rid, messages, {"source": label, **meta}))
    rejects.sort(key=lambda r: (r["line"] is None, r["line"] or 0))
    return ReadResult(examples, rejects, used, label, total=len(examples) + len(rejects), duplicates=duplicates)


# --------------------------------------------------------------------------------------------------------------
# Named sources and test sets (resolved under the data home)
# --------------------------------------------------------------------------------------------------------------

DATA_HOME_ENV = "PHASED_IFT_DATA_HOME"


class SourceInfo(NamedTuple):
    """A named data file: `path` relative to the data home, its format, a one-line description, and for files that
    are not in the offline snapshot the upstream record count (dry-run plans use it when the file is missing)."""

    path: str
    format: str
    description: str
    records: int = 0


class TestSetInfo(NamedTuple):
    """A named test set: a file under the data home, its format, and the value of the record's `dataset`
    field to keep (None = all records)."""

    path: str
    format: str
    subset: str | None
    description: str


SOURCES: dict[str, SourceInfo] = {}
for _name, _info in [
    ("alpagasus/random_9k", SourceInfo("alpagasus/random_9k.json", "alpaca",
                                       "random 9,229 of Alpaca 52K, original outputs (AlpaGasus)")),
    ("alpagasus/claude_t45", SourceInfo("alpagasus/claude_t45.json", "alpaca",
                                        "Alpaca examples rated >= 4.5 by Claude (AlpaGasus), 5,305")),
    ("alpagasus/helpfulness_t45", SourceInfo("alpagasus/helpfulness_t45.json", "alpaca",
                                             "Alpaca examples rated >= 4.5 on helpfulness (AlpaGasus), 2,022")),
    ("cherry_llm/alpaca_5_percent", SourceInfo("cherry_llm/cherry_alpaca_5_percent.json", "alpaca",
                                               "top-IFD 5% of Alpaca (Cherry LLM), 3,111")),
    ("llama_factory/alpaca_en_demo", SourceInfo("llama_factory/alpaca_en_demo.json", "alpaca",
                                                "999 Alpaca instructions with GPT-4-style responses (LLaMA-Factory)")),
    ("phasedsft/stage3", SourceInfo("phasedsft/en-alpaca52k-stage3.jsonl", "phasedsft",
                                    "the paper's hardest phase: 6,889 Alpaca examples, GPT-4 score 3.5-5")),
    ("phasedsft/stages_all", SourceInfo("phasedsft/en-alpaca52k-stages-all.jsonl", "phasedsft",
                                        "Alpaca 52K with the paper's GPT-4 scores (PhasedSFT Alpaca-scored/; "
                                        "not in the offline snapshot: download it)", records=52002)),
    ("car/selected", SourceInfo("car/CaR_selected_result.json", "alpaca", "CaR-selected Alpaca subset, 1,013")),
    ("long_is_more/filtered_1k_longest", SourceInfo("long_is_more/filtered_alpaca_1k_longest.json", "sharegpt",
                                                    "1k Alpaca examples with the longest responses")),
    ("long_is_more/refined_1k_longest", SourceInfo("long_is_more/refined_alpaca_1k_longest.json", "sharegpt",
                                                   "the same 1k with GPT-refined responses")),
    ("long_is_more/filtered_1k_score", SourceInfo("long_is_more/filtered_alpaca_1k_score.json", "sharegpt",
                                                  "1k Alpaca examples with AlpaGasus score >= 4.5 (score in meta)")),
    ("alpaca_eval/gpt4", SourceInfo("alpaca_eval/gpt4/model_outputs.json", "testset",
                                    "AlpacaEval 805 prompts with GPT-4 answers (meta.reference)")),
    ("alpaca_eval/text_davinci_003", SourceInfo("alpaca_eval/text_davinci_003/model_outputs.json", "testset",
                                                "AlpacaEval 805 prompts with text-davinci-003 answers")),
    ("alpaca_eval/alpaca-7b", SourceInfo("alpaca_eval/alpaca-7b/model_outputs.json", "testset",
                                         "AlpacaEval 805 prompts with Alpaca-7B (one-off IFT) answers")),
]:
    _register(SOURCES, _name, _info)

TEST_SETS: dict[str, TestSetInfo] = {}
for _name, _ts in [
    ("vicuna", TestSetInfo("alpagasus/vicuna_test_set.jsonl", "testset", None, "Vicuna 80 questions")),
    ("koala", TestSetInfo("alpagasus/koala_test_set.jsonl", "testset", None, "Koala 180 prompts")),
    ("sinstruct", TestSetInfo("alpagasus/sinstruct_test_set.jsonl", "testset", None,
                              "Self-Instruct 252 user-oriented instructions")),
    ("wizardlm", TestSetInfo("alpagasus/wizardlm_test_set.jsonl", "testset", None,
                             "WizardLM 218 (meta: Skill, Difficulty 1-10)")),
    ("oasst", TestSetInfo("alpaca_eval/gpt4/model_outputs.json", "testset", "oasst", "OASST 188 (AlpacaEval subset)")),
    ("helpful_base", TestSetInfo("alpaca_eval/gpt4/model_outputs.json", "testset", "helpful_base",
                                 "Anthropic helpful-base 129 (AlpacaEval subset)")),
    ("alpaca_eval", TestSetInfo("alpaca_eval/gpt4/model_outputs.json", "testset", None, "all 805 AlpacaEval prompts")),
    ("lima", TestSetInfo("cherry_llm/lima_test_set.jsonl", "testset", None, "LIMA 300 test prompts")),
]:
    _register(TEST_SETS, _name, _ts)


def data_home() -> Path:
    """The folder that named sources and test sets resolve under.

    Order: $PHASED_IFT_DATA_HOME, else ./data if it exists, else ../shared/data (relative to the current directory)
    if it exists.

    Raises:
        PhasedIFTError: the variable points to a missing folder, or no candidate exists.
    """
    env = os.environ.get(DATA_HOME_ENV)
    if env:
        home = Path(env).expanduser()
        if not home.is_dir():
            raise PhasedIFTError(f"{DATA_HOME_ENV}={env} is not a directory. Point it at the folder that holds the "
                                 f"data sets (e.g. alpagasus/random_9k.json), or unset it to use ./data.")
        return home
    for candidate in (Path("data"), Path("..") / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    raise PhasedIFTError(f"no data home: set {DATA_HOME_ENV} to the folder that holds the data sets, or put them "
                         f"under ./data (e.g. ./data/alpagasus/random_9k.json); `phased-ift data sources` lists the "
                         f"expected files.")


def _unknown_name(name: str, kind: str, names: Iterable[str]) -> PhasedIFTError:
    import difflib

    names = list(names)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return PhasedIFTError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(names)}; or give a file path.")


def _named_path(rel: str, name: str) -> Path:
    path = data_home() / rel
    if not path.exists():
        raise PhasedIFTError(f"{name!r} resolves to {path}, which does not exist. Put the file there (same relative "
                             f"path '{rel}' under the data home), or set {DATA_HOME_ENV} to the folder that holds "
                             f"'{rel}'.")
    return path


def source_path(name: str) -> Path:
    """The file of a named source under the data home.

    Raises:
        PhasedIFTError: unknown name (with close matches), or the file is missing (says where to put it).
    """
    if name not in SOURCES:
        raise _unknown_name(name, "data source", SOURCES)
    return _named_path(SOURCES[name].path, name)


def _sample(examples: list[Example], limit: int, seed: int) -> list[Example]:
    """A seeded sample of `limit` examples kept in file order (all of them when limit is 0 or >= len)."""
    if not limit or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def load_source(ds: Any, *, dedupe: bool = True) -> ReadResult:
    """Read one configured source (`config.DataSource`): a named source or a path, then the seeded `limit` sample.

    Args:
        ds: DataSource with name or path, format, columns, split, limit, seed. A named source's registered format
            is used unless ds.format is set explicitly.
        dedupe: reject duplicate examples inside the file (cfg.data.dedupe).

    Returns:
        ReadResult; `examples` is the sample (file order kept), `rejects` and `total` cover the whole file.

    Raises:
        PhasedIFTError: see `read_file` and `source_path`.
    """
    if ds.name:
        path: Any = source_path(ds.name)
        fmt = ds.format if ds.format != "auto" else SOURCES[ds.name].format
    else:
        path, fmt = ds.path, ds.format
    result = read_file(path, fmt, columns=ds.columns or None, split=ds.split, source=ds.name or ds.path,
                       dedupe=dedupe)
    result.examples = _sample(result.examples, ds.limit, ds.seed)
    return result


def _as_prompt(example: Example, testset: str) -> Example:
    meta = {**example.meta, "testset": testset}
    if example.response:
        meta.setdefault("reference", example.response)
    return Example(example.id, example.prompt_messages, meta)


def load_test_set(name_or_path: str, limit: int = 0, seed: int = 0) -> list[Example]:
    """Prompt-only Examples of a named test set (see `TEST_SETS`) or of any data file.

    Each Example holds the prompt turns only; meta["testset"] is the name (the file stem for a path) and
    meta["reference"] a reference answer when the file has one (AlpacaEval outputs, Self-Instruct instances,
    the response of a training-format file).

    Args:
        name_or_path: vicuna (80), koala (180), sinstruct (252), wizardlm (218), oasst (188), helpful_base (129),
            alpaca_eval (805), lima (300), or a file path in any readable format.
        limit: keep a seeded random sample of this many prompts (0 = all), in file order.
        seed: seed of that sample.

    Raises:
        PhasedIFTError: unknown name (lists the names), missing file, or records that cannot be used (a test set
            is never silently shortened: run `phased-ift data check` on the file to see the rejects).
    """
    if name_or_path in TEST_SETS:
        info = TEST_SETS[name_or_path]
        path, fmt, label = _named_path(info.path, name_or_path), info.format, name_or_path
    elif Path(name_or_path).exists():
        info, path, fmt, label = None, Path(name_or_path), "auto", Path(name_or_path).stem
    else:
        raise _unknown_name(name_or_path, "test set", TEST_SETS)
    result = read_file(path, fmt, source=label, require_response=False)
    if result.rejects:
        first = result.rejects[0]
        raise PhasedIFTError(f"test set {label} ({path}): {len(result.rejects)} of {result.total} records cannot be "
                             f"used (first: line {first['line']}: {first['reason']}). Run `phased-ift data check "
                             f"{path}` to see them all, then fix or remove them.")
    examples = result.examples
    if info is not None and info.subset:
        examples = [e for e in examples if e.meta.get("dataset") == info.subset]
    return _sample([_as_prompt(e, label) for e in examples], limit, seed)


def load_reference_answers(name: str = "alpaca_eval/gpt4") -> dict[str, str]:
    """Reference answers keyed by `normalize_text(instruction)`.

    Args:
        name: a named source (default: AlpacaEval's GPT-4 answers, 805) or a file path; the answer is the
            record's meta["reference"] or its response. Empty answers are left out (text_davinci_003 has 2).

    Raises:
        PhasedIFTError: see `read_file` / `source_path`.
    """
    if name in SOURCES:
        result = read_file(source_path(name), SOURCES[name].format, source=name, require_response=False)
    else:
        result = read_file(name, "auto", source=name, require_response=False)
    refs: dict[str, str] = {}
    for e in result.examples:
        answer = e.meta.get("reference") or e.response
        if isinstance(answer, str) and answer.strip():
            refs.setdefault(normalize_text(e.instruction), answer)
    return refs


def find_reference(example: Example, references: dict[str, str]) -> str | None:
    """The reference answer for a (test-set) Example, matched by normalised instruction text; None if absent."""
    return references.get(normalize_text(example.instruction))


def combine_results(results: list[ReadResult], dedupe: bool = True) -> tuple[list[Example], list[dict[str, Any]]]:
    """Concatenate sources in order: rejects of every source, plus cross-source duplicates (when `dedupe`).

    Ids stay unique: an id already used by an earlier source is prefixed with this source's name
    ("<source>:<id>"; "#2", "#3"... if even that is taken).

    Returns:
        (examples, rejects) with rejects as in `read_file` (cross-source duplicates have line None).
    """
    examples: list[Example] = []
    rejects: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    seen_messages: dict[str, tuple[str, str]] = {}
    for result in results:
        rejects.extend(result.rejects)
        for e in result.examples:
            key = json.dumps(e.messages, ensure_ascii=False)
            if dedupe and key in seen_messages:
                first_id, first_source = seen_messages[key]
                rejects.append(_reject_row(result.source, None, e.to_dict(), f"duplicate example: same messages as "
                                           f"id {first_id!r} from source {first_source!r}"))
                continue
            rid = e.id if e.id not in seen_ids else f"{result.source}:{e.id}"
            n = 2
            while rid in seen_ids:
                rid, n = f"{result.source}:{e.id}#{n}", n + 1
            seen_ids.add(rid)
            seen_messages.setdefault(key, (rid, result.source))
            examples.append(Example(rid, e.messages, e.meta) if rid != e.id else e)
    return examples, rejects


# --------------------------------------------------------------------------------------------------------------
# `phased-ift data check` / `phased-ift data sources`
# --------------------------------------------------------------------------------------------------------------


def _resolve_check_target(path: str, fmt: str) -> tuple[Any, str, bool]:
    """(file, format, is a test set) for a file path, a named source or a test-set name."""
    if Path(path).exists() or Path(path).suffix:  # a missing *file* gets read_file's "no such file"
        return path, fmt, fmt == "testset"
    if path in SOURCES:
        info = SOURCES[path]
        return source_path(path), fmt if fmt != "auto" else info.format, info.format == "testset"
    if path in TEST_SETS:
        info_t = TEST_SETS[path]
        return _named_path(info_t.path, path), fmt if fmt != "auto" else info_t.format, True
    if _looks_like_hub_id(path) and path.split("/")[0] not in {n.split("/")[0] for n in SOURCES}:
        return path, fmt, False  # a Hugging Face hub id: read_file tries `datasets`
    raise _unknown_name(path, "file or named source", [*SOURCES, *TEST_SETS])


def check_file(path: str, fmt: str = "auto", rejects: str | None = None, console: Any = None) -> int:
    """Validate a data file and print what was read: format, records, read, rejected (+ reason histogram).

    Args:
        path: a file, a named source (alpagasus/random_9k) or a test-set name (vicuna).
        fmt: format, as for `read_file`.
        rejects: where to write the rejected records (default ./<file stem>.rejects.jsonl); written only when
            something was rejected, as {"source", "line", "record", "reason"} rows.
        console: a rich Console (default: stderr).

    Returns:
        0 (rejected records are reported, not fatal).

    Raises:
        PhasedIFTError: unreadable file (the CLI prints it and exits with status 2).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    target, fmt, testset = _resolve_check_target(path, fmt)
    result = read_file(target, fmt, source=path, require_response=not testset)
    console.print(f"file      {target}", highlight=False)
    console.print(f"format    {result.format}", highlight=False)
    console.print(f"records   {result.total}", highlight=False)
    console.print(f"read      {len(result.examples)}", highlight=False)
    console.print(f"rejected  {len(result.rejects)}", highlight=False)
    for reason, n in result.reason_counts().items():
        console.print(f"  {n:>6}  {reason}", highlight=False)
    if result.duplicates:
        pairs = ", ".join(f"{a} = {b}" for a, b in result.duplicates[:10])
        console.print(f"kept {len(result.duplicates)} duplicate example(s) (not rejected: "
                      f"{'test-set prompts' if result.format == 'testset' else 'dedupe off'}): {pairs}",
                      highlight=False)
    if result.rejects:
        out = Path(rejects) if rejects else Path.cwd() / f"{Path(str(target)).stem or 'data'}.rejects.jsonl"
        write_jsonl(out, result.rejects)
        console.print(f"rejects written to {out}", highlight=False)
    if not result.examples:
        console.print("[bold red]warning:[/] no usable record in this file.")
    return 0


def print_sources(console: Any = None) -> int:
    """Print the named sources and test sets: format, path under the data home, present?, records read/rejected.

    Returns:
        0. Raises PhasedIFTError only when there is no data home at all.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    home = data_home()
    table = Table("name", "kind", "format", "present", "read", "rejected", "file (under the data home)",
                  title=f"data home: {home}  (set {DATA_HOME_ENV} to change)")
    for name, info in SOURCES.items():
        present = (home / info.path).exists()
        read = rejected = "-"
        if present:
            r = read_file(home / info.path, info.format, source=name)
            read, rejected = str(len(r.examples)), str(len(r.rejects))
        table.add_row(name, "source", info.format, "yes" if present else "NO", read, rejected, info.path)
    for name, ts in TEST_SETS.items():
        present = (home / ts.path).exists()
        read = rejected = "-"
        if present:
            r = read_file(home / ts.path, ts.format, source=name, require_response=False)
            kept = [e for e in r.examples if ts.subset is None or e.meta.get("dataset") == ts.subset]
            read, rejected = str(len(kept)), str(len(r.rejects))
        table.add_row(name, "test set", ts.format, "yes" if present else "NO", read, rejected,
                      ts.path + (f" (dataset={ts.subset})" if ts.subset else ""))
    console.print(table)
    return 0
