"""The `meta` scorer: a numeric field of each record's meta as the score (e.g. the paper's released GPT-4 score),
and `parse_score`, the one parser of released score values (also used by the reference set and by labels files).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from phased_ift.data import Example
from phased_ift.scoring.registry import ScoreContext, score_row


def parse_score(value: Any) -> float:
    """A score as a float: numbers, or strings such as "4\\n\\n" / "4.1667" (the paper's released scores).

    Raises:
        ValueError: not a finite number.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a number: {value!r}")
    x = float(value.strip()) if isinstance(value, str) else float(value)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {value!r}")
    return x


def score_meta(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """meta[cfg.scoring.meta_key] as the score; a missing or non-numeric value is an error row (counted)."""
    key = ctx.cfg.scoring.meta_key
    for ex in examples:
        if key not in ex.meta:
            yield score_row(ex.id, None, f"meta has no key {key!r}")
            continue
        try:
            yield score_row(ex.id, parse_score(ex.meta[key]))
        except (TypeError, ValueError) as e:
            yield score_row(ex.id, None, f"meta[{key!r}] is not a number: {e}")
