"""Agreement of difficulty scorers with the paper's GPT-4 scores: the metrics per scorer, the anchors, the table,
and `run_agreement` (`phased-ift score --against paper`).

The reference set (`build_reference_set`, defined in `scoring.reference` and used here): the 6,889 stage-3 examples
of the paper (GPT-4 score >= 3.5) and every other original-Alpaca example of the shared data (below 3.5), matched on
the normalised prompt and rendered alike. Metrics per scorer (`evaluate_scores`): ROC-AUC for "paper score >= 3.5",
Spearman correlation inside stage 3, the same AUC on the unbiased random_9k part alone, and examples/s.

    phased-ift score configs/quickstart.yaml --against paper --scorers length,ifd,loss,learned --limit 2000

This module imports `phased_ift.scoring` (the scorers, the score step, the reference set and the rank metrics);
nothing under scoring imports it. The learned scorer it evaluates is `scoring.learned`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from phased_ift.data import normalize_text
from phased_ift.runio import atomic_write_text, write_jsonl
from phased_ift.errors import PhasedIFTError
from phased_ift.scoring import SCORERS, read_scores, score_examples
from phased_ift.scoring.metrics import roc_auc, spearman
from phased_ift.scoring.reference import ReferenceSet, build_reference_set

# ReferenceSet, build_reference_set, roc_auc and spearman are defined under scoring (the learned scorer uses them
# too) and are part of this module's API as before.
__all__ = ["ReferenceSet", "anchor_rows", "build_reference_set", "evaluate_scores", "format_table", "roc_auc",
           "run_agreement", "spearman"]


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def evaluate_scores(ref: ReferenceSet, scores: Sequence[float | None], name: str, seconds: float = math.nan,
                    ) -> dict[str, Any]:
    """Agreement of one scorer's scores (aligned with ref.examples; None = failed) with the paper.

    Returns:
        {"scorer", "n", "failed", "auc", "spearman_stage3", "n_stage3", "auc_random9k", "n_random9k",
         "examples_per_s"}.
    """
    s = np.array([math.nan if v is None else float(v) for v in scores], dtype=float)
    st3 = ref.positive & ~np.isnan(s)
    return {
        "scorer": name,
        "n": int((~np.isnan(s)).sum()),
        "failed": int(np.isnan(s).sum()),
        "auc": roc_auc(ref.positive, s),
        "spearman_stage3": spearman(s[st3], ref.paper_score[st3]),
        "n_stage3": int(st3.sum()),
        "auc_random9k": roc_auc(ref.positive[ref.random9k], s[ref.random9k]),
        "n_random9k": int((ref.random9k & ~np.isnan(s)).sum()),
        "examples_per_s": len(s) / seconds if seconds and seconds > 0 else math.nan,
    }


# ---------------------------------------------------------------------------------------------------------------
# Anchors and the agreement table
# ---------------------------------------------------------------------------------------------------------------


def anchor_rows(ref: ReferenceSet, seed: int = 0) -> list[dict[str, Any]]:
    """The two simple anchors: response length in characters, and TF-IDF (instruction + response, word 1-2
    grams) + logistic regression in 5-fold CV grouped like the learned scorer's folds (by normalised first four
    words of the instruction here, so the anchor needs no embeddings)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    t0 = time.perf_counter()
    length = [float(len(e.response)) for e in ref.examples]
    rows = [evaluate_scores(ref, length, "anchor: response length (chars)", time.perf_counter() - t0)]
    t0 = time.perf_counter()
    texts = [e.instruction + " \n " + e.response for e in ref.examples]
    groups = [" ".join(normalize_text(e.instruction).split()[:4]) for e in ref.examples]
    y = ref.positive
    oof = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=5, shuffle=True, random_state=seed).split(texts, y, groups):
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        Xtr = vec.fit_transform([texts[i] for i in tr])
        m = LogisticRegression(C=4.0, max_iter=2000).fit(Xtr, y[tr])
        oof[te] = m.predict_proba(vec.transform([texts[i] for i in te]))[:, 1]
    rows.append(evaluate_scores(ref, oof.tolist(), "anchor: TF-IDF + logistic regression (5-fold CV)",
                                time.perf_counter() - t0))
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of `evaluate_scores` rows."""

    def f(x: Any, nd: int = 3) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"

    lines = ["| scorer | n (failed) | ROC-AUC (>= 3.5) | Spearman in stage 3 (n) | AUC random_9k (n) | examples/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scorer']} | {r['n']} ({r['failed']}) | {f(r['auc'])} | {f(r['spearman_stage3'])} "
                     f"({r['n_stage3']}) | {f(r['auc_random9k'])} ({r['n_random9k']}) | {f(r['examples_per_s'], 1)} |")
    return "\n".join(lines)


def run_agreement(cfg, scorers: Sequence[str], limit: int = 0, seed: int = 0, anchors: bool = True,
                  console=None, dry_run: bool = False) -> list[dict[str, Any]]:
    """Score the (sub-sampled) reference set with each scorer and compare with the paper's scores.

    Scores go to <run_dir>/agreement/<tag>/scores/<scorer>.jsonl (resumable like the score step; tag names the
    sample), the table to <run_dir>/agreement/<tag>/agreement.md and .json.

    Args:
        cfg: the config (scorer settings; cfg.scoring.labels is set to "paper" for the learned scorer).
        scorers: registry names, e.g. ["length", "ifd", "loss", "learned"].
        limit: stratified seeded sample size (0 = the full reference set, ~23k examples).
        dry_run: print, per scorer, how many examples are already scored in the output and how many remain, and
            stop (no model, no request).
    Returns:
        The table rows (anchors first); [] for a dry run.
    """
    import dataclasses

    for s in scorers:
        if s not in SCORERS:
            raise PhasedIFTError(f"unknown scorer {s!r} in --scorers; choose from {sorted(SCORERS)}.")
    full = build_reference_set()
    ref = full.stratified_sample(limit, seed)
    out = Path(cfg.run_dir) / "agreement" / (f"sample{limit}_seed{seed}" if 0 < limit < len(full.examples) else "full")
    if console is not None:
        console.print(f"reference set: {full.counts['stage3']} stage-3 + {full.counts['below_3.5']} below 3.5; "
                      f"evaluating {len(ref.examples)} -> {out}", highlight=False)
    if dry_run:
        for name in scorers:
            done = sum(r.get("score") is not None for r in read_scores(out / "scores" / f"{name}.jsonl").values())
            if console is not None:
                console.print(f"{name}: {done} of {len(ref.examples)} scored, {len(ref.examples) - done} to go "
                              "(dry run: nothing computed)", highlight=False)
        return []
    rows = anchor_rows(ref, seed) if anchors else []
    # The learned scorer is cross-validated on the evaluated set itself (binary "paper score >= 3.5"), so a
    # sample needs no features of the other ~23k examples and every prediction is held out.
    labels = out / "labels_paper.jsonl"
    write_jsonl(labels, [{"id": e.id, "score": float(p)} for e, p in zip(ref.examples, ref.positive)])
    run_cfg = dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, labels=str(labels)))
    for name in scorers:
        summary = score_examples(ref.examples, run_cfg, out / "scores" / f"{name}.jsonl", scorer=name,
                                 cache_dir=out.parent / "cache", console=console)
        got = read_scores(summary.path)
        # examples/s only for a run that computed every row itself (not resumed, nothing from the loss cache)
        measured = summary.scored == summary.total and not summary.stats.get("loss_cache_hits")
        row = evaluate_scores(ref, [got[e.id]["score"] for e in ref.examples], name,
                              summary.seconds if measured else math.nan)
        row["stats"] = summary.stats
        rows.append(row)
        if console is not None:
            console.print(format_table([row]).splitlines()[-1], highlight=False)
    atomic_write_text(out / "agreement.md", format_table(rows) + "\n")
    write_jsonl(out / "agreement.json", [{**r, "counts": full.counts if i == 0 else None} for i, r in enumerate(rows)])
    return rows
