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
from phased_ift.data import Example
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
    examples read in one pass (a `data.ExampleFile` streams: two batches in memory).

    The tokenizer counts batch i+1 on a second thread while batch i's rows are built and written
    (`modeling.tokenized_ahead`): the same rows in the same order as counting in line.
    """
    tok = modeling.load_tokenizer(ctx.cfg.scoring.model or ctx.cfg.model.name_or_path)
    stream = iter(examples)
    batches = iter(lambda: list(itertools.islice(stream, _BATCH)), [])

    def counts(batch: list[Example]) -> list[tuple[int, int]]:  # one tokenizer call per field, not per text
        return list(zip(token_counts([ex.instruction for ex in batch], tok),
                        token_counts([ex.response for ex in batch], tok)))

    for batch, batch_counts in modeling.tokenized_ahead(batches, counts):
        for ex, c in zip(batch, batch_counts):
            f = length_features(ex, counts=c)
            yield score_row(ex.id, length_score(f), **f)
