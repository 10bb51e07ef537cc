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

A dry-run plan over more examples than `train.plan_sample` with no valid cache counts a seeded random sample of
them instead (`sample_counts`; nothing is cached) and estimates each phase's tokens from it (`estimated_tokens`:
the sample's phase members counted, the others at their mean, with a 95% interval from the finite-population
standard error of a simple random sample, Cochran, *Sampling Techniques*, 3rd ed., 1977, sections 2.4-2.7);
tests/test_tokencounts.py measures the interval's coverage by simulation.

Imports no torch / transformers at module level (`phased_ift.modeling` loads them inside its functions).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Sequence

from phased_ift import modeling
from phased_ift.data import Example, ExampleFile, iter_examples
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


MIN_SAMPLED = 100  # sampled members a set needs for its estimate; a set with fewer is counted whole


@dataclass(frozen=True)
class Sample:
    """What a sample of the data says about the examples it did not count: `data` (data/train.jsonl, read by
    offset: a set with too few sampled members is counted whole), `position` ({id: row} of every id that occurs
    once) and `m`, the sample's size."""

    data: ExampleFile
    position: dict[str, int]
    m: int


@dataclass
class RunCounts:
    """The token counts of a run's data (`counts`: {id: T}) and the sentence the plan's note adds about them;
    `sample` is set when `counts` hold a random sample of the data only (`sample_counts`)."""

    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""
    sample: Sample | None = None


def run_counts(run: RunDir, tokenizer, template: str, max_length: int, sample: int = 0,
               seed: int = 0) -> RunCounts:
    """The token count of every example of run's data/train.jsonl: read from cache/token_counts.json when its key
    matches, else counted (batched, `count_tokens`) and written there atomically; with `sample` > 0 and more
    examples than that, a seeded random `sample` of them is counted instead (`sample_counts`, not cached).

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
    if sample > 0:
        sampled = sample_counts(run, tokenizer, template, max_length, sample, seed)
        if sampled is not None:
            return sampled
    t0 = time.perf_counter()
    ids, lengths = _count_file(tokenizer, run, template, max_length)
    seconds = time.perf_counter() - t0
    atomic_write_json(run.token_counts, {"key": key, "ids": ids, "counts": lengths, "seconds": round(seconds, 3)},
                      indent=None)
    again = f"; the cache {rel} was not used: {why}, counted again" if why else ""
    return RunCounts(_unique(ids, lengths), f"{again}; {len(ids)} examples counted once in {seconds:.1f} s, "
                                            f"cached in {rel}")


def sample_counts(run: RunDir, tokenizer, template: str, max_length: int, m: int, seed: int = 0
                  ) -> RunCounts | None:
    """The token counts of a seeded simple random sample of `m` examples of run's data/train.jsonl (positions
    `random.Random(seed).sample`, read by offset, counted `CHUNK` at a time; ids that occur twice are not sampled),
    or None when the file has at most `m` examples (count them all instead). Memory: the ids and line offsets of
    the file (`data.ExampleFile`) and one chunk of examples.

    Returns:
        RunCounts with `counts` = {sampled id: T} and `sample` (the open data file, {id: row} of every id that
        occurs once, the sample's size).
    Raises:
        PhasedIFTError: as `count_tokens`.
    """
    t0 = time.perf_counter()
    data = ExampleFile(run.train_data)
    ids = data.ids
    n = len(ids)
    if n <= m:
        data.close()
        return None
    position = _unique(ids, list(range(n)))  # {id: row} of the ids that occur once
    positions = sorted(p for p in random.Random(seed).sample(range(n), m) if position.get(ids[p]) == p)
    counts: dict[str, int] = {}
    for i in range(0, len(positions), CHUNK):
        chunk = data.subset(positions[i:i + CHUNK])
        counts.update(zip(chunk.ids, count_tokens(tokenizer, list(chunk), template, max_length)))
    return RunCounts(counts, f"; tokens estimated from a seeded random sample of {len(counts):,} of the {n:,} "
                             f"examples, counted in {time.perf_counter() - t0:.1f} s (train.plan_sample; each "
                             f"estimate shows its 95% interval; train.plan_sample=0 counts every example and caches "
                             f"the counts in {run.token_counts.relative_to(run.root)}, as a run that trains does)",
                     Sample(data, position, len(counts)))


def _count_file(tokenizer, run: RunDir, template: str, max_length: int) -> tuple[list[str], list[int]]:
    """(ids, T) of every example of run's data/train.jsonl in file order, read and counted `CHUNK` at a time (the
    next chunk rendered and tokenised on a second thread while this one is read: `modeling.tokenized_ahead`)."""
    ids: list[str] = []
    lengths: list[int] = []
    stream = iter_examples(run.train_data)
    chunks = iter(lambda: list(itertools.islice(stream, CHUNK)), [])
    for chunk, counts in modeling.tokenized_ahead(chunks, lambda c: count_tokens(tokenizer, c, template, max_length)):
        ids += [e.id for e in chunk]
        lengths += counts
    return ids, lengths


def total_tokens(cached: RunCounts, tokenizer, examples: Sequence[Example], template: str, max_length: int) -> int:
    """Sum of the examples' token counts: cached ones looked up by id, the others counted (`count_tokens`)."""
    known = cached.counts
    found, missing = 0, []
    for e in examples:  # one pass: a plan sums millions of cached counts
        c = known.get(e.id)
        if c is None:
            missing.append(e)
        else:
            found += c
    return found + (sum(count_tokens(tokenizer, missing, template, max_length)) if missing else 0)


def estimated_tokens(cached: RunCounts, tokenizer, examples: Sequence[Example], template: str,
                     max_length: int) -> tuple[int, float | None]:
    """(tokens, 95% half-width) of the examples: `total_tokens` and None (counted, not estimated) when `cached`
    holds every count or every example of the set was counted.

    From a sample (`cached.sample`): of the M examples that are rows of the data, the m' sampled ones are counted and
    the other M - m' are estimated at the sampled ones' mean y, with half-width 1.96 M sqrt((1 - m'/M) s^2 / m')
    (s^2 the sampled counts' variance): the standard error of the estimated total M y of a simple random sample of
    m' out of M without replacement (Cochran 1977, sections 2.4 and 2.7). The sampled members of any set are such a
    sample as long as the set was chosen without regard to which examples were sampled (a phase, even one chosen by
    length, is). A set with fewer than `MIN_SAMPLED` sampled rows is counted whole (read by offset), as are examples
    that are not rows of the data. An example listed twice (a replay arm) is counted twice; the interval treats the
    repeats as distinct examples.
    """
    est = cached.sample
    if est is None:
        return total_tokens(cached, tokenizer, examples, template, max_length), None
    known = cached.counts
    seen = [known[e.id] for e in examples if e.id in known]
    unseen = [est.position[e.id] for e in examples if e.id not in known and e.id in est.position]
    outside = [e for e in examples if e.id not in known and e.id not in est.position]
    if len(seen) < MIN_SAMPLED and unseen:
        outside += [est.data[p] for p in unseen]  # random reads by offset: fewer than ~MIN_SAMPLED x N / m
        unseen = []
    exact = sum(count_tokens(tokenizer, outside, template, max_length)) if outside else 0
    if not unseen:
        return sum(seen) + exact, None
    big_m, m = len(seen) + len(unseen), len(seen)
    mean, var = statistics.fmean(seen), statistics.variance(seen)
    half = 1.96 * big_m * math.sqrt((1 - m / big_m) * var / m)
    return round(sum(seen) + len(unseen) * mean + exact), half
