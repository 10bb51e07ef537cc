"""The label-free `length` scorer: token counts and simple structure features of an example.

    length   score = log(1 + response tokens) + log(1 + instruction tokens), tokens of the scoring model's tokenizer

`length_features` is also a feature block of the learned scorer (`scoring.learned`).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Iterable, Iterator

from phased_ift import modeling
from phased_ift.data import Example, ExampleFile, example_of_line
from phased_ift.scoring.registry import ScoreContext, score_row

_BATCH = 1024  # examples per batched tokenizer call of `score_length`
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.M)


def token_counts(texts: list[str], tokenizer=None) -> list[int]:
    """Tokens of each text (no special tokens) with one batched `tokenizer` call; whitespace words without one.
    Equal to counting each text alone (tests/test_scoring_length.py)."""
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    return modeling.text_lengths(tokenizer, texts)


def length_features(example: Example, tokenizer=None, counts: tuple[int, int] | None = None) -> dict[str, float]:
    """Length and structure features of one example.

    Token counts use `tokenizer` when given (else whitespace words), or `counts` = (instruction tokens, response
    tokens) when already counted (`token_counts`, batched). Returns instruction_tokens,
    response_tokens, response_lines, list_items (lines starting with "1." / "-" / "*"), code (1 if the response
    has a ``` fence or 4 consecutive indented lines... approximated by a fence or ";\\n"), question (1 if the
    instruction ends with "?").
    """
    ins, resp = example.instruction, example.response
    n_ins, n_resp = counts if counts is not None else token_counts([ins, resp], tokenizer)
    return {
        "instruction_tokens": n_ins,
        "response_tokens": n_resp,
        "response_lines": resp.count("\n") + 1 if resp else 0,
        "list_items": len(_LIST_ITEM.findall(resp)),
        "code": float("```" in resp or ";\n" in resp or "{\n" in resp),
        "question": float(ins.rstrip().endswith("?")),
    }


def length_score(f: dict[str, float]) -> float:
    """log(1 + response tokens) + log(1 + instruction tokens): longer asks and longer answers rank harder.

    A fixed, label-free combination (no fitted weights); logs so one very long answer does not dominate.
    """
    return math.log1p(f["response_tokens"]) + math.log1p(f["instruction_tokens"])


def score_length(examples: Iterable[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """`length_score` of `length_features` with the scoring model's tokenizer; the features are extras. Tokens are
    counted `_BATCH` examples at a time (one batched call per field; the same counts as one call per text), the
    examples read in one pass (a `data.ExampleFile` streams: a few batches in memory).

    Where it runs: from `POOL_MIN` examples on, in `scoring.workers` forked processes (0: one per CPU core,
    `modeling.available_workers`; `modeling.in_processes`), each decoding its batches' lines (an `ExampleFile`
    sends line bytes, not decoded rows), counting with a single-threaded tokenizer and building the rows; else in
    this process, the tokenizer counting batch i+1 on a second thread while batch i's rows are built
    (`modeling.tokenized_ahead`). The same rows in the same order either way (tests/test_workers.py).
    """
    tok = modeling.load_tokenizer(ctx.cfg.scoring.model or ctx.cfg.model.name_or_path)
    workers = (ctx.cfg.scoring.workers or modeling.available_workers()) if modeling.can_fork() else 1
    sized = hasattr(examples, "__len__")
    if workers > 1 and sized and len(examples) >= POOL_MIN:  # type: ignore[arg-type]
        # an ExampleFile's rows go as line bytes (the workers decode them), other examples as they are
        path, stream = ((str(examples.path), examples.lines()) if isinstance(examples, ExampleFile)
                        else (None, iter(examples)))
        batches = iter(lambda: (path, list(itertools.islice(stream, _BATCH))), (path, []))
        for _, rows in modeling.in_processes(batches, _batch_rows, workers, init=_use_tokenizer, initargs=(tok,)):
            yield from rows
        return
    stream = iter(examples)
    ex_batches = iter(lambda: list(itertools.islice(stream, _BATCH)), [])
    for batch, counts in modeling.tokenized_ahead(ex_batches, lambda b: _counts(b, tok)):
        yield from _rows(batch, counts)


POOL_MIN = 4 * _BATCH  # fewer examples are scored in this process (a pool would not have a batch per worker)
_worker_tokenizer: Any = None  # a worker process's tokenizer (`_use_tokenizer`)


def _counts(batch: list[Example], tok) -> list[tuple[int, int]]:
    """(instruction tokens, response tokens) per example: one tokenizer call per field, not per text."""
    return list(zip(token_counts([ex.instruction for ex in batch], tok),
                    token_counts([ex.response for ex in batch], tok)))


def _rows(batch: list[Example], counts: list[tuple[int, int]]) -> Iterator[dict[str, Any]]:
    for ex, c in zip(batch, counts):
        f = length_features(ex, counts=c)
        yield score_row(ex.id, length_score(f), **f)


def _use_tokenizer(tok) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tok


def _batch_rows(batch: tuple[str | None, list[Any]]) -> list[dict[str, Any]]:
    """In a worker process: the rows of one batch, (path, [(line number, line bytes)]) of an ExampleFile or
    (None, [Example])."""
    path, items = batch
    examples = items if path is None else [example_of_line(path, n, line) for n, line in items]
    return list(_rows(examples, _counts(examples, _worker_tokenizer)))
