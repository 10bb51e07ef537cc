"""Record formats: one converter per format (record dict -> messages + meta), the registry `FORMATS`, format
detection, the checks every record passes, and `read_file` (load with `loading.py`, then convert).

Formats (`read_file(path, fmt)`, `read_records(records, fmt)` for records in memory; `fmt="auto"`
detects from the records, an explicit format wins):
  alpaca     JSON array or JSONL of {instruction, input, output}
  phasedsft  the paper's scored jsonl {"id", "score": "4.5\n", "data": [prompt, response]}
  sharegpt   {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
  messages   this project's own rows {"id", "messages", "meta"} (data/train.jsonl)
  testset    prompt-only files: vicuna/koala/sinstruct/wizardlm test sets, AlpacaEval model_outputs.json
  hf         any Hugging Face `datasets` dataset, Parquet or CSV, with a `columns` mapping (loaded by
             `loading.py`, then converted as alpaca when the mapping names instruction/output, else detected)

A record that cannot be used becomes a reject {"source", "line", "record", "reason"} (counted, written out,
never dropped silently): not an object, non-UTF-8 text, a missing/empty/wrongly typed field, unknown role, roles
that do not alternate, no response (training data), a duplicate id, a duplicate example (same messages; not for
test-set prompts, which are kept and listed). A file that cannot be read at all raises `PhasedIFTError` naming
the file, line and fix.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from phased_ift.data.example import Example
from phased_ift.data.loading import (_COLUMN_KEYS, _clean, _find_bad_text, _read_hf, _reject_row, _unreadable,
                                     load_text_records, wants_hf)
from phased_ift.errors import PhasedIFTError

def _register(registry: dict[str, Any], name: str, value: Any) -> None:
    """Add to a plain-dict registry, refusing a duplicate name (a silent overwrite would hide a bug)."""
    if name in registry:
        raise ValueError(f"duplicate registry entry {name!r}")
    registry[name] = value



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
# "Instruction", koala and IFEval "prompt", vicuna "text", FastChat/MT-Bench "turns", LIMA "conversations" (a string
# or list).
_PROMPT_KEYS = ("instruction", "Instruction", "prompt", "text", "turns", "conversations")


def _from_testset(rec: dict[str, Any], ctx: _Ctx) -> tuple[str | None, list[dict[str, str]], dict[str, Any]]:
    """Prompt-only test-set records. AlpacaEval model_outputs.json {dataset, instruction, output, generator}
    keeps `output` as meta["reference"]; Self-Instruct {instruction, instances: [{input, output}]} appends the
    instance input (Alpaca convention) and keeps its output as the reference."""
    key = next((k for k in _PROMPT_KEYS if k in rec), None)
    if key is None:
        raise _Reject(f"missing field: no prompt field (one of {list(_PROMPT_KEYS)}) among {sorted(rec)}")
    used = {key, "id", "question_id", "idx", "key"}
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
    rid = _record_id(rec, "id", "question_id", "idx", "key")  # IFEval's prompts are keyed by "key"
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


def _detect_head(head: list[tuple[int | None, Any]], rest: Iterable[tuple[int | None, Any]], path: Any) -> str:
    """`_detect` of a stream's first 20 records; reads the rest only for the error message (its first object)."""
    try:
        return _detect(head, path)
    except PhasedIFTError:
        return _detect(head + list(rest), path)


def message_key(messages: list[dict[str, str]]) -> bytes:
    """The dedupe key of an example's messages: a BLAKE2b-128 digest (16 bytes per example kept in memory instead of
    the text; equal messages, equal keys). Turns of exactly {"role", "content"} (every converter's) are hashed as
    role, content length and content, each turn so delimited that no other messages give the same bytes; other turns
    by their JSON. The key is held in memory only (never written), so its bytes may change between versions."""
    h = hashlib.blake2b(digest_size=16)
    for turn in messages:
        content = turn.get("content")
        if len(turn) == 2 and isinstance(content, str) and isinstance(turn.get("role"), str) \
                and "\x00" not in turn["role"]:
            h.update(f"\x01{turn['role']}\x00{len(content)}\x00{content}".encode("utf-8", "surrogatepass"))
        else:
            h.update(("\x02" + json.dumps(turn, ensure_ascii=False, sort_keys=True)).encode("utf-8", "surrogatepass"))
    return h.digest()


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
# read_file: load (loading.py), then convert
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
    examples, result = iter_file(path, fmt, columns, split, source=source, dedupe=dedupe,
                                 require_response=require_response)
    result.examples = list(examples)
    return result


def iter_file(path: str | os.PathLike, fmt: str = "auto", columns: dict[str, str] | None = None,
              split: str = "train", *, source: str | None = None, dedupe: bool = True,
              require_response: bool = True) -> tuple[Iterator[Example], ReadResult]:
    """`read_file` as a stream: (the usable Examples one at a time, in file order; the ReadResult, whose `examples`
    stays empty and whose rejects, duplicates and total are complete once the iterator is exhausted).

    Memory: one record (a text file: about `loading._CHUNK` characters of it; a `datasets` source: one Arrow batch)
    plus the dedupe keys (the ids and a 16-byte digest per example), not the examples.

    Raises:
        PhasedIFTError: as `read_file`: here for the file itself (missing, empty, binary, unknown format or
            columns, a format that cannot be detected), while iterating for a JSON array with a syntax error.
    """
    if fmt not in FORMAT_NAMES:
        raise PhasedIFTError(f"{path}: unknown format {fmt!r}; use one of {', '.join(FORMAT_NAMES)}.")
    path_str = str(path)
    label = source or path_str
    if columns and fmt not in ("auto", "hf"):
        raise PhasedIFTError(f"{path_str}: a columns mapping applies to format hf (read through `datasets`), not to "
                             f"format {fmt}; set format to hf or auto, or remove the mapping.")
    rejects: list[dict[str, Any]] = []
    if wants_hf(path_str, fmt, columns):
        stream = _read_hf(path_str, columns, split)  # Arrow batches: one batch in memory at a time
        head = list(itertools.islice(stream, 20))
        used = "hf"
        rec_fmt = "alpaca" if columns and set(columns) & {"instruction", "output"} else \
            _detect_head(head, stream, path_str)
    else:
        stream, rejects = load_text_records(path_str, fmt, label)  # streamed: one record in memory at a time
        head = list(itertools.islice(stream, 20))
        rec_fmt = used = fmt if fmt != "auto" else _detect_head(head, stream, path_str)
    records = itertools.chain(head, stream)
    result = ReadResult([], rejects, used, label)
    stem = Path(path_str).stem or "record"

    def examples() -> Iterator[Example]:
        n = 0
        for e in _iter_converted(records, rec_fmt, stem, label, result, dedupe=dedupe,
                                 require_response=require_response):
            n += 1
            yield e
        result.rejects.sort(key=lambda r: (r["line"] is None, r["line"] or 0))
        result.total = n + len(result.rejects)

    return examples(), result


def read_records(records: Iterable[Any], fmt: str = "auto", columns: dict[str, str] | None = None, *,
                 source: str = "records", dedupe: bool = True, require_response: bool = True) -> ReadResult:
    """`read_file` for records already in memory: a list of dicts or the rows of a `datasets.Dataset`.

    Args:
        records: the records, each a dict in one of the formats of `read_file` (e.g. Alpaca {instruction, input,
            output}); a `datasets.Dataset` iterates as such dicts.
        fmt: alpaca | phasedsft | sharegpt | messages | testset | auto (detect from the first 20 records); hf
            counts as auto (the rows are already loaded).
        columns: our field -> the records' key (as format hf's mapping), e.g. {"instruction": "question",
            "output": "answer"}; the mapped records are read as alpaca.
        source: label for meta["source"] and the rejects; records without an id get "<source>-<index>".
        dedupe, require_response: as `read_file`.

    Returns:
        ReadResult(examples, rejects, format, source, total); a reject's `line` is None and its reason ends with
        "(row <index>)" (0-based).

    Raises:
        PhasedIFTError: an unknown format or columns key, no records, or a format that cannot be detected.
    """
    if fmt not in FORMAT_NAMES:
        raise PhasedIFTError(f"{source}: unknown format {fmt!r}; use one of {', '.join(FORMAT_NAMES)}.")
    bad = sorted(set(columns or {}) - set(_COLUMN_KEYS))
    if bad:
        raise PhasedIFTError(f"{source}: unknown key(s) {bad} in the columns mapping; the keys are our fields "
                             f"{list(_COLUMN_KEYS)} and the values the records' keys.")
    rename = {c: k for k, c in (columns or {}).items()}
    rows: list[tuple[int | None, Any]] = []
    for rec in records:
        if isinstance(rec, dict):  # meta must stay JSON-serialisable (dates, bytes of parquet-backed rows)
            rec = json.loads(json.dumps({rename.get(k, k): v for k, v in rec.items()}, default=str))
        rows.append((None, rec))
    if not rows:
        raise PhasedIFTError(f"{source}: no records to read; pass at least one record.")
    if fmt not in ("auto", "hf"):
        rec_fmt = fmt
    else:
        rec_fmt = "alpaca" if columns and set(columns) & {"instruction", "output"} else _detect(rows, source)
    result = ReadResult([], [], rec_fmt, source, total=len(rows))
    result.examples = list(_iter_converted(rows, rec_fmt, source, source, result, dedupe=dedupe,
                                           require_response=require_response))
    return result


def _convert_one(rec: Any, rec_fmt: str, ctx: _Ctx) -> tuple[str, list[dict[str, str]], dict[str, Any]]:
    """(id, messages, meta) of one record in format `rec_fmt`; raises _Reject (duplicates are checked by the
    caller). A record without an id gets "<stem>-<index>"."""
    if not isinstance(rec, dict):
        raise _Reject(f"not an object: the record is a JSON {type(rec).__name__}, expected an object")
    bad = _find_bad_text(rec)
    if bad:
        raise _Reject(f"non-UTF-8 text: {bad} holds bytes that are not valid UTF-8 (or a lone surrogate "
                      f"escape); re-encode the file as UTF-8")
    rid, messages, meta = FORMATS[rec_fmt](rec, ctx)
    _check_turns(messages, ctx.require_response and rec_fmt != "testset")
    return (rid if rid is not None else f"{ctx.stem}-{ctx.index}"), messages, meta


def _iter_converted(records: Iterable[tuple[int | None, Any]], rec_fmt: str, stem: str, label: str,
                    result: ReadResult, *, dedupe: bool, require_response: bool) -> Iterator[Example]:
    """The Examples of the loaded records, in file order, one at a time; rejects and kept duplicates (id, id of
    the first copy) are appended to `result` as they are met. Test-set prompts are never rejected as duplicates."""
    rejects, duplicates = result.rejects, result.duplicates
    dedupe = dedupe and rec_fmt != "testset"
    seen_ids: dict[str, Any] = {}
    seen_messages: dict[bytes, tuple[str, Any]] = {}
    for index, (line, rec) in enumerate(records):
        where = "" if line is not None else f" (row {index})"
        try:
            rid, messages, meta = _convert_one(rec, rec_fmt, _Ctx(stem=stem, index=index,
                                                                  require_response=require_response))
            if rid in seen_ids:
                raise _Reject(f"duplicate id: {rid!r} was already used by the record at line {seen_ids[rid]}")
            key = message_key(messages)
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
        yield Example(rid, messages, {"source": label, **meta})
