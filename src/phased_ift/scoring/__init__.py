"""Difficulty scoring: every scorer, registered in one explicit registry, and the resumable score step that writes
scores/<scorer>.jsonl.

Scorers (higher score = harder), one module per family:
    judge    an LLM judge over any OpenAI-compatible server, 1-5                                    `scoring.judge`
    ifd      Instruction-Following Difficulty (Cherry LLM, Li et al. 2024): loss(response | instruction) divided by
             loss(response alone), per-token mean losses from a local causal LM                     `scoring.losses`
    loss     loss(response | instruction), per-token mean (nats)                                    `scoring.losses`
    ifd-server  IFD as `ifd`, the losses from an OpenAI-compatible server's echoed prompt logprobs
             (vLLM; set in `scoring.server`)                                                        `scoring.server_losses`
    length   token counts and simple structure features; score = log(1 + response tokens) + log(1 + instruction
             tokens)                                                                                `scoring.features`
    meta     a numeric field of each record's meta (e.g. the paper's released GPT-4 score)          `scoring.meta`
    learned  a small seeded model (TF-IDF, length features, MiniLM sentence embeddings) fit on difficulty labels;
             labelled examples get cross-validated (out-of-fold) predictions, the rest the full fit's prediction
                                                                                                    `scoring.learned`
The contract, the registry and the score step are `scoring.registry`; the paper's labels (the reference set) are
`scoring.reference`, the rank metrics `scoring.metrics`. Model forward passes (losses, sentence embeddings) live in
`phased_ift.modeling`; caches are `phased_ift.kvcache.KVCache` tables under the run's cache dir.
`phased_ift.scoring.agreement` builds on this package (never the reverse).

    phased-ift score configs/quickstart.yaml scoring.scorer=ifd

A new scorer is one function `fn(examples, ctx) -> Iterator[row]` plus one line in the block below.
"""

from __future__ import annotations

# moved to modeling (the forward passes); still importable from here, where tests and benchmarks found them
from phased_ift.modeling import load_scoring_model, response_losses, tokenize_for_ifd
from phased_ift.scoring import features, judge, learned, losses, meta, server_losses
from phased_ift.scoring.features import length_features, length_score, score_length
from phased_ift.scoring.judge import score_judge
from phased_ift.scoring.learned import score_learned
from phased_ift.scoring.losses import SORT_CHUNK_BATCHES, LossCache, score_ifd, score_loss
from phased_ift.scoring.meta import parse_score, score_meta
from phased_ift.scoring.server_losses import score_ifd_server
from phased_ift.scoring.registry import (
    DRY_RUNS, SCORERS, SPREAD, Scorer, ScoreContext, ScoreSummary, dry_run_score, read_scores, register_scorer,
    score_examples, score_row,
)

# ---- the registry: one entry per scorer (a duplicate name raises ValueError)
register_scorer("ifd", spread=True)(score_ifd)  # spread: shared over the ranks of a launch
register_scorer("loss", spread=True)(score_loss)
register_scorer("ifd-server")(score_ifd_server)  # the server batches: one process sends every request
register_scorer("length")(score_length)
register_scorer("meta")(score_meta)
register_scorer("judge", dry_run=judge.dry_run_judge)(score_judge)
register_scorer("learned")(score_learned)

__all__ = [
    "DRY_RUNS", "SCORERS", "SORT_CHUNK_BATCHES", "SPREAD", "LossCache", "ScoreContext", "ScoreSummary", "Scorer",
    "dry_run_score", "features", "judge", "learned", "length_features", "length_score", "load_scoring_model",
    "losses", "meta", "parse_score", "read_scores", "register_scorer", "response_losses", "score_examples",
    "score_ifd", "score_ifd_server", "score_judge", "score_learned", "score_length", "score_loss", "score_meta",
    "score_row", "server_losses", "tokenize_for_ifd",
]
