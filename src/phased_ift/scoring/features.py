"""The label-free `length` scorer: token counts and simple structure features of an example.

    length   score = log(1 + response tokens) + log(1 + instruction tokens), tokens of the scoring model's tokenizer

`length_features` is also a feature block of the learned scorer (`scoring.learned`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterator

from phased_ift import modeling
from phased_ift.data import Example
from phased_ift.scoring.registry import ScoreContext, score_row

_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.M)


def length_features(example: Example, tokenizer=None) -> dict[str, float]:
    """Length and structure features of one example.

    Token counts use `tokenizer` when given (else whitespace words). Returns instruction_tokens,
    response_tokens, response_lines, list_items (lines starting with "1." / "-" / "*"), code (1 if the response
    has a ``` fence or 4 consecutive indented lines... approximated by a fence or ";\\n"), question (1 if the
    instruction ends with "?").
    """
    ins, resp = example.instruction, example.response

    def count(text: str) -> int:
        if tokenizer is None:
            return len(text.split())
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return {
        "instruction_tokens": count(ins),
        "response_tokens": count(resp),
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


def score_length(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """`length_score` of `length_features` with the scoring model's tokenizer; the features are extras."""
    tok = modeling.load_tokenizer(ctx.cfg.scoring.model or ctx.cfg.model.name_or_path)
    for ex in examples:
        f = length_features(ex, tok)
        yield score_row(ex.id, length_score(f), **f)
