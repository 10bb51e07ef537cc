"""The verdict and win-rate math of pairwise judging, on plain values (as alpaca_eval keeps `metrics/winrate.py`
apart from its annotators): the verdict names and their values, one order's outcome from arm A's side, the paper's
reconciliation of the two orders, and the counts and win rates of a list of verdicts.

    from phased_ift.winrate import aggregate, reconcile
    reconcile("win", "tie")                      # "win"
    aggregate([{"verdict": "win"}, {"verdict": "unparseable"}])

Conventions (Pang et al. 2024, §4 and the PhasedSFT judge code, xubuvd/PhasedSFT evaluation/win_tie_loss_stat.py):
  * a verdict is "win" | "tie" | "loss" from arm A's side, or "unparseable" when either judge order could not
    be parsed; unparseable verdicts are counted apart and never turned into a result;
  * win rate = (wins + ties/2) / N_parsed;
  * the paper's centred number = (wins + ties/2) / N_all - 0.5, with unparseable verdicts counted in N_all.

Owns: `VERDICTS`, their values (`verdict_values`), `verdict_outcome` / `order_outcome`, `reconcile` and `aggregate`.
The pairwise step (`phased_ift.pairwise.judge`) makes the verdicts; `stats.py` and the report compute intervals and tests from
them. Imports nothing of the package.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

VERDICTS = ("win", "tie", "loss", "unparseable")
# Each verdict's value for arm A (a win rate is their mean over the parsed ones).
VALUES = {"win": 1.0, "tie": 0.5, "loss": 0.0, "unparseable": np.nan}


def verdict_values(verdicts: Sequence[str]) -> np.ndarray:
    """Per-prompt outcome for arm A: win 1.0, tie 0.5, loss 0.0, unparseable NaN.

    Args:
        verdicts: N verdict strings from arm A's side.

    Returns:
        float array of shape (N,).

    Raises:
        ValueError: a verdict that is not one of `VERDICTS` (names the value and its index).
    """
    out = np.empty(len(verdicts), dtype=float)
    for i, v in enumerate(verdicts):
        if v not in VALUES:
            raise ValueError(f"verdict #{i} is {v!r}; expected one of {list(VALUES)}")
        out[i] = VALUES[v]
    return out


def verdict_outcome(winner: str | None, letter_a: str) -> str:
    """Outcome of one order from arm A's side, from a parsed verdict ("A" / "B" / "tie" / None) and the letter arm
    A was shown as in that order ("A" in order ab, "B" in order ba); the same values as `order_outcome`."""
    if winner is None:
        return "unparseable"
    return "tie" if winner == "tie" else "win" if winner == letter_a else "loss"


def order_outcome(score_a: float | None, score_b: float | None) -> str:
    """Outcome of one order from arm A's side: "win" / "tie" / "loss", or "unparseable" if a score is missing."""
    if score_a is None or score_b is None:
        return "unparseable"
    return "win" if score_a > score_b else "loss" if score_a < score_b else "tie"


def reconcile(order1_outcome: str, order2_outcome: str) -> str:
    """Combine the outcomes of the two answer orders (both from arm A's side) with the paper's rule.

    win = wins both, or wins one and ties one; tie = ties both, or wins one and loses one; loss = the mirror of
    win; "unparseable" when either order is unparseable (source: xubuvd/PhasedSFT win_tie_loss_stat.py, which
    skips such pairs; here they are kept and counted).

    Raises:
        ValueError: an outcome outside win/tie/loss/unparseable.
    """
    for o in (order1_outcome, order2_outcome):
        if o not in VERDICTS:
            raise ValueError(f"unknown order outcome {o!r}; expected one of {VERDICTS}")
    if "unparseable" in (order1_outcome, order2_outcome):
        return "unparseable"
    points = {"win": 1, "tie": 0, "loss": -1}
    total = points[order1_outcome] + points[order2_outcome]
    return "win" if total > 0 else "loss" if total < 0 else "tie"


def aggregate(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts and win rates of judgement rows (each with a "verdict" from arm A's side).

    Returns:
        {"n": all rows, "n_parsed": rows with win/tie/loss, "wins", "ties", "losses", "unparseable",
         "win_rate": (wins + ties/2) / n_parsed (None when n_parsed = 0), in [0, 1],
         "centred": (wins + ties/2) / n - 0.5 (None when n = 0): the paper's reported number, where unparseable
         pairs stay in the denominator (source: PhasedSFT win_tie_loss_stat.py divides by all records)}.

    Raises:
        ValueError: a row with an unknown verdict.
    """
    counts = {v: 0 for v in VERDICTS}
    for r in rows:
        v = r["verdict"]
        if v not in counts:
            raise ValueError(f"judgement row {r.get('id')!r} has unknown verdict {v!r}")
        counts[v] += 1
    n = sum(counts.values())
    n_parsed = n - counts["unparseable"]
    points = counts["win"] + counts["tie"] / 2
    return {
        "n": n,
        "n_parsed": n_parsed,
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "unparseable": counts["unparseable"],
        "win_rate": points / n_parsed if n_parsed else None,
        "centred": points / n - 0.5 if n else None,
    }
