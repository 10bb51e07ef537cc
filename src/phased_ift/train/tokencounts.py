"""Token counts of the training data: each example counted once, batched, and cached in the run dir.

Owns `cache/token_counts.json` (`RunDir.token_counts`): the length T in tokens (after truncation to max_length,
the length of the row training feeds the model; `modeling.token_lengths`) of every example of data/train.jsonl,
keyed by what the counts depend on:

    {"key": {"format": 1, "tokenizer": <modeling.tokenizer_fingerprint>, "template": "chat" | "paper",
             "max_length": int, "data": <sha256 of data/train.jsonl>},
     "ids": [example id, ...], "counts": [T, ...], "seconds": float}      (ids and counts in file order)

The plan (`plan.plan_training`: `train --dry-run`, `run`'s plan after its data step and so every resume of `run`,
the split's and each arm's phase sizes in tokens) reads it instead of tokenising again. A file whose key differs
(another tokenizer, template, max_length, data file or package version) or that cannot be read is counted again
and rewritten, and the plan's note says why; it is never used as it is. Counting streams data/train.jsonl (one
chunk of `CHUNK` examples in memory, plus the ids and counts); a valid cache is read without reading any example
(the key's data hash streams the file). The file is written whole through
`runio.atomic_write_json`, so a kill leaves the old file or the new one. Phase examples are found by id; an
example that is not in data/train.jsonl (or whose id occurs twice there) is counted when it is needed.

Imports no torch / transformers at module level (`phased_ift.modeling` loads them inside its functions).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Sequence

from phased_ift import modeling
from phased_ift.data import Example, iter_examples
from phased_ift.integrity import sha256_of
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_json

FORMAT = 1
CHUNK = 1024  # examples per batched render + tokenizer call: big enough to amortise the calls, small in memory


def count_tokens(tokenizer, examples: Sequence[Example], template: str, max_length: int,
                 chunk: int = CHUNK) -> list[int]:
    """Each example's token count T (its training row's length, <= max_length), rendered and tokenised `chunk`
    examples at a time (`modeling.render_batch`, `modeling.token_lengths`).

    Raises:
        PhasedIFTError: as `modeling.render` (unknown template, no chat template).
    """
    out: list[int] = []
    for i in range(0, len(examples), chunk):
        part = examples[i:i + chunk]
        pairs = modeling.render_batch(tokenizer, [e.messages for e in part], template)
        out += modeling.token_lengths(tokenizer, pairs, max_length)
    return out


def cache_key(tokenizer, template: str, max_length: int, run: RunDir) -> dict:
    """The key of the counts of run's data/train.jsonl (see the module doc); hashes the data file (sha256)."""
    return {"format": FORMAT, "tokenizer": modeling.tokenizer_fingerprint(tokenizer), "template": template,
            "max_length": int(max_length), "data": sha256_of(run.train_data)}


def read_cache(run: RunDir, key: dict) -> tuple[dict[str, int] | None, str]:
    """({id: T}, "") from cache/token_counts.json when its key equals `key`; else (None, why not: "" when there is
    no file, "key mismatch (<fields>)" or "unreadable (<error>)")."""
    path = run.token_counts
    if not path.is_file():
        return None, ""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        stored, ids, counts = doc["key"], doc["ids"], doc["counts"]
        if not (isinstance(stored, dict) and isinstance(ids, list) and isinstance(counts, list)
                and len(ids) == len(counts) and all(isinstance(c, int) and c >= 0 for c in counts)):
            raise ValueError("ids and counts are not two lists of equal length with counts >= 0")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    if stored != key:
        changed = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        return None, f"key mismatch ({', '.join(changed)} changed)"
    return _unique(ids, counts), ""


def _unique(ids: list, counts: list[int]) -> dict[str, int]:
    """{id: count} of the ids that occur once (a repeated id could name two texts: those are counted on demand)."""
    seen: dict[str, int] = {}
    twice: set[str] = set()
    for i, c in zip(ids, counts):
        if i in seen:
            twice.add(i)
        seen[i] = c
    for i in twice:
        del seen[i]
    return seen


@dataclass
class RunCounts:
    """The token counts of a run's data (`counts`: {id: T}) and the sentence the plan's note adds about them."""

    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""


def run_counts(run: RunDir, tokenizer, template: str, max_length: int) -> RunCounts:
    """The token count of every example of run's data/train.jsonl: read from cache/token_counts.json when its key
    matches, else counted (batched, `count_tokens`) and written there atomically.

    Returns:
        RunCounts; empty (and no note) when data/train.jsonl does not exist.
    Raises:
        PhasedIFTError: as `count_tokens`; DiskWriteError: the disk refused the cache file (`runio`).
    """
    if not run.train_data.is_file():
        return RunCounts()
    key = cache_key(tokenizer, template, max_length, run)
    counts, why = read_cache(run, key)
    rel = run.token_counts.relative_to(run.root)
    if counts is not None:
        return RunCounts(counts, f"; token counts read from {rel}")
    t0 = time.perf_counter()
    ids, lengths = _count_file(tokenizer, run, template, max_length)
    seconds = time.perf_counter() - t0
    atomic_write_json(run.token_counts, {"key": key, "ids": ids, "counts": lengths, "seconds": round(seconds, 3)},
                      indent=None)
    again = f"; the cache {rel} was not used: {why}, counted again" if why else ""
    return RunCounts(_unique(ids, lengths), f"{again}; {len(ids)} examples counted once in {seconds:.1f} s, "
                                            f"cached in {rel}")


def _count_file(tokenizer, run: RunDir, template: str, max_length: int) -> tuple[list[str], list[int]]:
    """(ids, T) of every example of run's data/train.jsonl in file order, read and counted `CHUNK` at a time."""
    ids: list[str] = []
    lengths: list[int] = []
    stream = iter_examples(run.train_data)
    while chunk := list(itertools.islice(stream, CHUNK)):
        ids += [e.id for e in chunk]
        lengths += count_tokens(tokenizer, chunk, template, max_length)
    return ids, lengths


def total_tokens(cached: RunCounts, tokenizer, examples: Sequence[Example], template: str, max_length: int) -> int:
    """Sum of the examples' token counts: cached ones looked up by id, the others counted (`count_tokens`)."""
    known = cached.counts
    missing = [e for e in examples if e.id not in known]
    found = sum(known[e.id] for e in examples if e.id in known)
    return found + (sum(count_tokens(tokenizer, missing, template, max_length)) if missing else 0)
