"""Difficulty scorers in one explicit registry, and the resumable score step that writes scores/<scorer>.jsonl.

Scorers (higher score = harder):
    judge    an LLM judge over any OpenAI-compatible server, 1-5 (`difficulty_judge.score_with_judge`)
    ifd      Instruction-Following Difficulty (Cherry LLM, Li et al. 2024): loss(response | instruction) divided by
             loss(response alone), per-token mean losses from a local causal LM
    loss     loss(response | instruction), per-token mean (nats)
    length   token counts and simple structure features; score = log(1 + response tokens) + log(1 + instruction
             tokens)
    meta     a numeric field of each record's meta (e.g. the paper's released GPT-4 score)
    learned  a small seeded model (TF-IDF, length features, MiniLM sentence embeddings) fit on difficulty labels;
             labelled examples get cross-validated (out-of-fold) predictions, the rest the full fit's prediction

Every scorer has one contract: `fn(examples, ctx) -> Iterator[row]`, one row per example in the scores format of
docs/architecture.md: {"id", "score": float|null, "error": str|null, ...extras}. `score_examples` appends each row as
it arrives (a kill -9 loses at most the batch in flight), skips ids already scored on a re-run, retries failed rows,
and finally rewrites the file atomically in the examples' order.

    phased-ift score configs/quickstart.yaml scoring.scorer=ifd
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from phased_ift.config import Config
from phased_ift.data import Example, append_jsonl, read_jsonl, write_jsonl
from phased_ift.errors import PhasedIFTError


@dataclass
class ScoreContext:
    """What a scorer may use besides the examples.

    Attributes:
        cfg: the whole config (a scorer reads its settings from cfg.scoring / cfg.model).
        cache_dir: where scorers keep caches (LLM requests, sentence embeddings): <run_dir>/cache.
        console: rich console for messages, or None.
        stats: scorer-specific numbers reported at the end (e.g. "padding_fraction").
    """

    cfg: Config
    cache_dir: Path
    console: Any = None
    stats: dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg, highlight=False)


Scorer = Callable[[list[Example], ScoreContext], Iterator[dict[str, Any]]]
SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    """Decorator adding a scorer to SCORERS. Raises ValueError on a duplicate name (registries refuse them)."""

    def add(fn: Scorer) -> Scorer:
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} is already registered")
        SCORERS[name] = fn
        return fn

    return add


def _row(ex_id: str, score: float | None, error: str | None = None, **extras: Any) -> dict[str, Any]:
    return {"id": ex_id, "score": score, "error": error, **extras}


# ---------------------------------------------------------------------------------------------------------------
# Response losses with a local causal LM (ifd, loss)
# ---------------------------------------------------------------------------------------------------------------


def _response_header(prompt: str, user_content: str) -> str:
    """The text between the last user message and the response (e.g. "<|im_end|>\\n<|im_start|>assistant\\n").

    Cherry LLM scores the response "alone" after the bare "### Response:" marker; this is the same marker for any
    template: the assistant-turn header that the rendered prompt puts before the response.
    """
    i = prompt.rfind(user_content) if user_content else -1
    return prompt[i + len(user_content):] if i >= 0 else ""


def tokenize_for_ifd(tokenizer, example: Example, template: str, max_length: int) -> tuple[dict, dict] | str:
    """Token ids of one example conditioned on its instruction and alone (after the assistant header only).

    Both sequences label the same response tokens: when the conditioned one is truncated (max_length), the
    unconditioned one keeps the same number of response tokens, so the two mean losses are over identical tokens.

    Returns:
        (conditioned, unconditioned) features for `modeling.pad_batch`, or an error string (no response tokens).
    """
    from phased_ift.modeling import render, tokenize_example

    prompt, response = render(tokenizer, example.messages, template)
    if not example.response.strip():
        return "empty response: no tokens to score"
    cond = tokenize_example(tokenizer, prompt, response, max_length)
    n_resp = sum(1 for t in cond["labels"] if t != -100)
    uncond = tokenize_example(tokenizer, _response_header(prompt, example.instruction), response, max_length)
    n_head = len(uncond["input_ids"]) - sum(1 for t in uncond["labels"] if t != -100)
    uncond = {k: v[: n_head + n_resp] for k, v in uncond.items()}
    if n_resp == 0 or n_head == 0:
        # n_head == 0: the first response token would have no context at all, so it could not be scored.
        return "no response token left to score (prompt fills max_length or empty header)"
    return cond, uncond


def response_losses(model, tokenizer, examples: Sequence[Example], *, template: str = "chat", max_length: int = 512,
                    batch_size: int = 8, unconditioned: bool = True, stats: dict | None = None,
                    autocast: str = "none") -> list[dict[str, Any]]:
    """Per-token mean response losses of each example, batched by length.

    All sequences (conditioned and, when asked, unconditioned) are sorted by length and cut into batches of
    `batch_size`, so a batch holds sequences of similar length and little padding; pad tokens are right-padded
    and masked, so they do not change any value (a causal model never attends to later positions).

    Args:
        examples: Examples ending with an assistant response.
        batch_size: sequences per forward pass; 1 gives the reference one-at-a-time loop (Cherry LLM).
        unconditioned: also compute the loss of the response alone (for IFD).
        stats: if given, "tokens" and "pad_tokens" are added to it (padding fraction = pad_tokens / tokens).
        autocast: "bf16" runs the forward passes under bf16 autocast (the weights stay as loaded, the losses are
            computed from fp32 logits); "none" computes in the model's dtype.
    Returns:
        One dict per example, in order: {"loss_cond": float nats, "loss_uncond": float|None, "n_tokens": int} or
        {"error": str}.
    """
    import torch

    from phased_ift.modeling import pad_batch, token_losses

    feats: list[tuple[int, str, dict]] = []  # (example index, "cond"|"uncond", features)
    out: list[dict[str, Any]] = [{} for _ in examples]
    for i, ex in enumerate(examples):
        t = tokenize_for_ifd(tokenizer, ex, template, max_length)
        if isinstance(t, str):
            out[i] = {"error": t}
            continue
        feats.append((i, "cond", t[0]))
        if unconditioned:
            feats.append((i, "uncond", t[1]))
    feats.sort(key=lambda f: len(f[2]["input_ids"]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    for b in range(0, len(feats), batch_size):
        chunk = feats[b: b + batch_size]
        batch = pad_batch([f[2] for f in chunk], pad_id)
        with torch.inference_mode(), torch.autocast(model.device.type, torch.bfloat16, enabled=autocast == "bf16"):
            loss_sum, n_tok = token_losses(model, batch)
        if stats is not None:
            stats["tokens"] = stats.get("tokens", 0) + batch["input_ids"].numel()
            stats["pad_tokens"] = stats.get("pad_tokens", 0) + int((batch["attention_mask"] == 0).sum())
        for (i, kind, _), s, n in zip(chunk, loss_sum.tolist(), n_tok.tolist()):
            out[i]["loss_" + kind] = s / n
            if kind == "cond":
                out[i]["n_tokens"] = int(n)
    for o in out:
        if "error" not in o:
            o.setdefault("loss_uncond", None)
    return out


def _chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


class LossCache:
    """sqlite3 store of per-example response losses for the `ifd` and `loss` scorers: <cache_dir>/losses.sqlite.

    The key is sha256 of (scoring model name or path, template, max_length, autocast, for a local checkpoint dir
    `modeling.weights_fingerprint` (weight files' names, sizes and mtimes), the example's messages): `loss` after
    `ifd` on the same examples runs no forward pass (IFD's conditioned loss is the `loss` score), a re-scored example
    with the same settings is read back, and new weights saved in place are new keys. Rows are committed per chunk,
    so a killed run keeps them.
    """

    def __init__(self, path: Path, settings: Sequence[Any]):
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS losses (key TEXT PRIMARY KEY, loss_cond REAL, "
                        "loss_uncond REAL, n_tokens INTEGER)")
        self.settings = list(settings)

    def key(self, example: Example) -> str:
        import hashlib
        import json

        blob = json.dumps([self.settings, example.messages], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{key: {"loss_cond", "loss_uncond" (None when only the conditioned loss was computed), "n_tokens"}}."""
        keys = list(dict.fromkeys(keys))
        rows = self.db.execute(f"SELECT key, loss_cond, loss_uncond, n_tokens FROM losses WHERE key IN "
                               f"({','.join('?' * len(keys))})", keys) if keys else []
        return {k: {"loss_cond": c, "loss_uncond": u, "n_tokens": n} for k, c, u, n in rows}

    def put(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        # An unconditioned loss already stored is kept when a `loss` run stores the conditioned one only.
        self.db.executemany(
            "INSERT INTO losses VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET loss_cond = excluded.loss_cond, "
            "loss_uncond = COALESCE(excluded.loss_uncond, losses.loss_uncond), n_tokens = excluded.n_tokens",
            [(k, r["loss_cond"], r.get("loss_uncond"), r["n_tokens"]) for k, r in items])
        self.db.commit()

    def close(self) -> None:
        self.db.close()


# ifd/loss sort sequences by length inside chunks of this many batches: little padding, while rows still reach the
# scores file every few seconds.
SORT_CHUNK_BATCHES = 16


def load_scoring_model(name: str, autocast: str):
    """(model, tokenizer) for ifd/loss on `modeling.inference_device()` (the GPU when there is one): fp32 weights,
    with the Linear weights stored in bf16 when autocast="bf16" (`modeling.linear_weights_to_bf16`: the same values
    under autocast, without per-call casts)."""
    from phased_ift.modeling import inference_device, linear_weights_to_bf16, load_model, load_tokenizer

    model = load_model(name, dtype="float32")
    if autocast == "bf16":
        linear_weights_to_bf16(model)
    return model.to(inference_device()), load_tokenizer(name)


def _loss_rows(examples: list[Example], ctx: ScoreContext, ifd: bool) -> Iterator[dict[str, Any]]:
    from phased_ift.modeling import weights_fingerprint

    sc = ctx.cfg.scoring
    name = sc.model or ctx.cfg.model.name_or_path
    ctx.stats.setdefault("model", name)
    ctx.stats.setdefault("autocast", sc.autocast)
    settings = [name, ctx.cfg.model.template, sc.max_length, sc.autocast]
    fingerprint = weights_fingerprint(name)
    cache = LossCache(ctx.cache_dir / "losses.sqlite", settings + ([fingerprint] if fingerprint else []))
    model = tok = None  # loaded on the first example the cache does not hold
    try:
        for chunk in _chunks(examples, SORT_CHUNK_BATCHES * sc.batch_size):
            keys = [cache.key(ex) for ex in chunk]
            have = cache.get(keys)
            todo = [i for i, k in enumerate(keys) if k not in have or (ifd and have[k]["loss_uncond"] is None)]
            res = [have.get(k) for k in keys]
            if todo:
                if model is None:
                    model, tok = load_scoring_model(name, sc.autocast)
                new = response_losses(model, tok, [chunk[i] for i in todo], template=ctx.cfg.model.template,
                                      max_length=sc.max_length, batch_size=sc.batch_size, unconditioned=ifd,
                                      stats=ctx.stats, autocast=sc.autocast)
                for i, r in zip(todo, new):
                    res[i] = r
                cache.put([(keys[i], r) for i, r in zip(todo, new) if "error" not in r])
            ctx.stats["loss_cache_hits"] = ctx.stats.get("loss_cache_hits", 0) + len(chunk) - len(todo)
            yield from _loss_chunk_rows(chunk, res, ifd)
    finally:
        cache.close()


def _loss_chunk_rows(chunk: Sequence[Example], res: Sequence[dict[str, Any]], ifd: bool) -> Iterator[dict[str, Any]]:
    for ex, r in zip(chunk, res):
        if "error" in r:
            yield _row(ex.id, None, r["error"])
        elif not ifd:
            yield _row(ex.id, r["loss_cond"], loss_cond=r["loss_cond"], n_tokens=r["n_tokens"])
        elif r["loss_uncond"] <= 0:
            yield _row(ex.id, None, "response loss alone is 0: IFD undefined",
                       loss_cond=r["loss_cond"], loss_uncond=r["loss_uncond"])
        else:
            yield _row(ex.id, r["loss_cond"] / r["loss_uncond"], loss_cond=r["loss_cond"],
                       loss_uncond=r["loss_uncond"], n_tokens=r["n_tokens"])


@register_scorer("ifd")
def score_ifd(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """IFD = mean loss(response | prompt) / mean loss(response | assistant header only).

    Source: Li et al. 2024, "From Quantity to Quality" (Cherry LLM), IFD_theta(Q, A) = s(A|Q) / s(A) with s the
    mean token cross-entropy; upstream `cherry_seletion/data_analysis.py` scores the response alone after the bare
    "### Response:" marker, which is the assistant header here. A ratio near or above 1 means the instruction
    hardly helps the model produce the response (harder to follow). Extras: loss_cond, loss_uncond, n_tokens.
    """
    return _loss_rows(examples, ctx, ifd=True)


@register_scorer("loss")
def score_loss(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """Mean per-token loss (nats) of the response given the rendered prompt. Extras: loss_cond, n_tokens."""
    return _loss_rows(examples, ctx, ifd=False)


# ---------------------------------------------------------------------------------------------------------------
# Label-free text features (length) and the meta field (meta)
# ---------------------------------------------------------------------------------------------------------------

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


@register_scorer("length")
def score_length(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """`length_score` of `length_features` with the scoring model's tokenizer; the features are extras."""
    from phased_ift.modeling import load_tokenizer

    tok = load_tokenizer(ctx.cfg.scoring.model or ctx.cfg.model.name_or_path)
    for ex in examples:
        f = length_features(ex, tok)
        yield _row(ex.id, length_score(f), **f)


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


@register_scorer("meta")
def score_meta(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """meta[cfg.scoring.meta_key] as the score; a missing or non-numeric value is an error row (counted)."""
    key = ctx.cfg.scoring.meta_key
    for ex in examples:
        if key not in ex.meta:
            yield _row(ex.id, None, f"meta has no key {key!r}")
            continue
        try:
            yield _row(ex.id, parse_score(ex.meta[key]))
        except (TypeError, ValueError) as e:
            yield _row(ex.id, None, f"meta[{key!r}] is not a number: {e}")


# ---------------------------------------------------------------------------------------------------------------
# LLM judge
# ---------------------------------------------------------------------------------------------------------------


def _judge_module():
    try:
        from phased_ift import difficulty_judge
    except ImportError as e:
        raise PhasedIFTError(f"scorer=judge needs phased_ift.difficulty_judge, which failed to import ({e}); "
                             "use another scorer (ifd, loss, length, learned, meta) meanwhile.") from None
    return difficulty_judge


def _check_judge(cfg: Config) -> None:
    if not cfg.scoring.judge.enabled:
        raise PhasedIFTError("scorer=judge needs an endpoint: set scoring.judge.base_url and scoring.judge.model "
                             "(e.g. scoring.judge.base_url=http://127.0.0.1:8000/v1), or pick an offline scorer "
                             "(scoring.scorer=ifd).")


@register_scorer("judge")
def score_judge(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """The LLM judge (1-5), streamed so rows reach the scores file while it runs (the score step's bar shows the
    progress); every request is also in the sqlite cache (<run_dir>/cache/llm.sqlite), so a re-run sends none
    twice."""
    _check_judge(ctx.cfg)
    sc = ctx.cfg.scoring
    yield from _judge_module().iter_judge_rows(
        examples, sc.judge, ctx.cache_dir / "llm.sqlite", template=sc.template, samples=sc.samples,
        use_logprobs=sc.use_logprobs, progress=False, console=ctx.console)


# ---------------------------------------------------------------------------------------------------------------
# Learned (distilled) scorer
# ---------------------------------------------------------------------------------------------------------------


@register_scorer("learned")
def score_learned(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """Fit on cfg.scoring.labels and predict; see `phased_ift.agreement.fit_predict_learned`.

    Labels: "paper" (the paper's GPT-4 scores as the binary "score >= 3.5" over the reference set built by
    `agreement.build_reference_set`; examples are matched to it by normalised instruction + input) or a scores
    jsonl ({"id", "score"} for some of the run's ids). Labelled examples get out-of-fold predictions (grouped
    5-fold CV), so their scores are honest held-out ones. Extras: "fold" (held-out fold, or null when unlabelled).
    """
    from phased_ift import agreement

    res = agreement.learned_scores(examples, ctx.cfg.scoring.labels, ctx.cfg.seed, ctx.cache_dir, ctx.console,
                                   embeddings=ctx.cfg.scoring.learned_embeddings)
    ctx.stats.update(res.cv_metrics)
    for ex, s, fold in zip(examples, res.scores, res.folds):
        yield _row(ex.id, float(s), fold=fold)


# ---------------------------------------------------------------------------------------------------------------
# The score step: progressive, resumable, atomic at the end
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ScoreSummary:
    """Counts of one `score_examples` call."""

    scorer: str
    path: Path
    total: int
    reused: int
    scored: int
    failed: int
    seconds: float
    stats: dict[str, Any]

    @property
    def examples_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else float("nan")


def read_scores(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a scores file by id (a torn last line from kill -9 is skipped)."""
    path = Path(path)
    if not path.is_file():
        return {}
    return {str(r["id"]): r for r in read_jsonl(path, tolerate_torn_tail=True)}


def score_examples(examples: Sequence[Example], cfg: Config, out_path: str | Path, *, scorer: str | None = None,
                   cache_dir: str | Path | None = None, console=None) -> ScoreSummary:
    """Score examples into a scores jsonl, resuming from what the file already holds.

    Rows already in `out_path` with a score are kept; failed rows (score null) and missing ids are (re)scored.
    Each new row is appended as it arrives; at the end the file is rewritten atomically in the examples' order
    with exactly one row per example.

    Args:
        scorer: registry name; default cfg.scoring.scorer.
        cache_dir: caches of the scorer (LLM requests, embeddings); default <out_path>/../../cache.
    Raises:
        PhasedIFTError: unknown scorer, duplicate example ids, or a scorer's own user errors.
    """
    name = scorer or cfg.scoring.scorer
    if name not in SCORERS:
        raise PhasedIFTError(f"unknown scorer {name!r}; set scoring.scorer to one of {sorted(SCORERS)}.")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PhasedIFTError(f"example id {dup!r} occurs more than once; ids must be unique to be scored.")
    out_path = Path(out_path)
    cache = Path(cache_dir) if cache_dir is not None else out_path.parent.parent / "cache"
    wanted = set(ids)
    done = {i: r for i, r in read_scores(out_path).items() if i in wanted and r.get("score") is not None}
    # Rewrite what is kept first: drops a torn tail, so the appends below start on a fresh line.
    write_jsonl(out_path, (done[i] for i in ids if i in done))
    todo = [e for e in examples if e.id not in done]
    ctx = ScoreContext(cfg=cfg, cache_dir=cache, console=console)
    new: dict[str, dict] = {}
    t0 = time.perf_counter()
    if todo:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from phased_ift.progress import LoggedProgress

        with LoggedProgress(TextColumn(f"score {name}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console,
                            disable=console is None, transient=True) as bar:
            task = bar.add_task("score", total=len(todo), rate="")
            for row in SCORERS[name](todo, ctx):
                rid = str(row["id"])
                if rid not in wanted or rid in done or rid in new:
                    raise RuntimeError(f"scorer {name} returned an unexpected or repeated id {rid!r}")
                append_jsonl(out_path, row)
                new[rid] = row
                dt = time.perf_counter() - t0
                bar.update(task, advance=1, rate=f"{len(new) / dt:.1f} ex/s" if dt > 0 else "")
    seconds = time.perf_counter() - t0
    missing = [e.id for e in todo if e.id not in new]
    if missing:
        raise RuntimeError(f"scorer {name} returned no row for {len(missing)} examples (e.g. {missing[0]!r})")
    rows = {**done, **new}
    write_jsonl(out_path, (rows[i] for i in ids))
    stats = dict(ctx.stats)
    if stats.get("tokens"):
        stats["padding_fraction"] = stats["pad_tokens"] / stats["tokens"]
    return ScoreSummary(scorer=name, path=out_path, total=len(ids), reused=len(done), scored=len(new),
                        failed=sum(1 for r in new.values() if r.get("score") is None), seconds=seconds, stats=stats)


def _dry_run_judge(examples: Sequence[Example], cfg: Config, cache_dir: Path, console=None) -> None:
    _check_judge(cfg)
    _judge_module().score_with_judge(list(examples), cfg.scoring.judge, cache_dir / "llm.sqlite",
                                     template=cfg.scoring.template, samples=cfg.scoring.samples,
                                     use_logprobs=cfg.scoring.use_logprobs, dry_run=True, console=console)


# Scorers with something to estimate before they run (only the judge costs money: requests and tokens).
DRY_RUNS: dict[str, Callable[..., None]] = {"judge": _dry_run_judge}


def dry_run_score(examples: Sequence[Example], cfg: Config, cache_dir: Path, console=None) -> None:
    """Print what `score_examples` would do; for scorer=judge the judge prints its request/token estimate."""
    name = cfg.scoring.scorer
    if name in DRY_RUNS:
        DRY_RUNS[name](examples, cfg, cache_dir, console)
    elif console is not None:
        console.print(f"dry run: scorer {name} would score {len(examples)} examples (nothing is computed).")
