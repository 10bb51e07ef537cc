"""The `ifd` and `loss` scorers and their loss cache (<cache_dir>/losses.sqlite).

    ifd   Instruction-Following Difficulty (Cherry LLM, Li et al. 2024): loss(response | instruction) divided by
          loss(response alone), per-token mean losses from a local causal LM
    loss  loss(response | instruction), per-token mean (nats)

The forward passes live in `modeling` (`response_losses`, `load_scoring_model`); this module owns the chunking,
the cache and the rows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from phased_ift import modeling
from phased_ift.data import Example
from phased_ift.kvcache import KVCache
from phased_ift.scoring.registry import ScoreContext, score_row

# ifd/loss sort sequences by length inside chunks of this many batches: little padding, while rows still reach the
# scores file every few seconds.
SORT_CHUNK_BATCHES = 16
LOSS_TABLE = "loss_v2"
_LEGACY_TABLE = "losses"  # before KVCache: (key, loss_cond REAL, loss_uncond REAL, n_tokens INTEGER)


class LossCache:
    """Per-example response losses for the `ifd` and `loss` scorers: <cache_dir>/losses.sqlite, table "loss_v2"
    of a `KVCache` (JSON values {"loss_cond", "loss_uncond", "n_tokens"}).

    The key is sha256 of (scoring model name or path, template, max_length, autocast, for a local checkpoint dir
    `modeling.weights_fingerprint` (weight files' names, sizes and mtimes), the example's messages): `loss` after
    `ifd` on the same examples runs no forward pass (IFD's conditioned loss is the `loss` score), a re-scored example
    with the same settings is read back, and new weights saved in place are new keys. Rows are committed per chunk,
    so a killed run keeps them. Rows of the older `losses` table in the same file are copied over once (same keys,
    exact floats) and that table is dropped.
    """

    def __init__(self, path: Path, settings: Sequence[Any]):
        self.kv = KVCache(path, LOSS_TABLE)
        self.settings = list(settings)
        _adopt_legacy_rows(self.kv)

    def key(self, example: Example) -> str:
        blob = json.dumps([self.settings, example.messages], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{key: {"loss_cond", "loss_uncond" (None when only the conditioned loss was computed), "n_tokens"}}."""
        return self.kv.get_many(keys)

    def put(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Store {"loss_cond", "loss_uncond"?, "n_tokens"} per key, committed at once. An unconditioned loss
        already stored is kept when a `loss` run stores the conditioned one only."""
        old = self.kv.get_many(k for k, r in items if r.get("loss_uncond") is None)
        self.kv.put_many((k, {"loss_cond": r["loss_cond"],
                              "loss_uncond": r["loss_uncond"] if r.get("loss_uncond") is not None
                              else old.get(k, {}).get("loss_uncond"),
                              "n_tokens": r["n_tokens"]}) for k, r in items)

    def close(self) -> None:
        self.kv.close()


def _adopt_legacy_rows(kv: KVCache) -> None:
    """Copy the rows of the pre-KVCache `losses` table into `kv` (keeping rows kv already has), then drop it."""
    import sqlite3

    con = sqlite3.connect(kv.path, timeout=60)
    try:
        try:
            rows = con.execute(f"SELECT key, loss_cond, loss_uncond, n_tokens FROM {_LEGACY_TABLE}").fetchall()
        except sqlite3.OperationalError:  # no such table: a new file, or already adopted
            return
        have = kv.get_many(r[0] for r in rows)
        kv.put_many((k, {"loss_cond": c, "loss_uncond": u, "n_tokens": n}) for k, c, u, n in rows if k not in have)
        con.execute(f"DROP TABLE IF EXISTS {_LEGACY_TABLE}")
        con.commit()
    finally:
        con.close()


def _chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


def _loss_rows(examples: list[Example], ctx: ScoreContext, ifd: bool) -> Iterator[dict[str, Any]]:
    sc = ctx.cfg.scoring
    name = sc.model or ctx.cfg.model.name_or_path
    ctx.stats.setdefault("model", name)
    autocast = modeling.resolve_autocast(sc.autocast)[0]  # the key holds what ran: "auto" differs by machine
    ctx.stats.setdefault("autocast", autocast)
    settings = [name, ctx.cfg.model.template, sc.max_length, autocast]
    fingerprint = modeling.weights_fingerprint(name)
    cache = LossCache(ctx.cache_dir / "losses.sqlite", settings + ([fingerprint] if fingerprint else []))
    model = tok = None  # loaded on the first example the cache does not hold

    def compute(todo: list[Example]) -> list[dict[str, Any]]:
        nonlocal model, tok
        if model is None:
            model, tok = modeling.load_scoring_model(name, autocast)
        return modeling.response_losses(model, tok, todo, template=ctx.cfg.model.template, max_length=sc.max_length,
                                        batch_size=sc.batch_size, unconditioned=ifd, stats=ctx.stats,
                                        autocast=autocast)

    try:
        yield from cached_loss_rows(examples, cache, SORT_CHUNK_BATCHES * sc.batch_size, ifd, compute, ctx.stats)
    finally:
        cache.close()


def cached_loss_rows(examples: Sequence[Example], cache: LossCache, chunk_size: int, ifd: bool,
                     compute: Callable[[list[Example]], list[dict[str, Any]]],
                     stats: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The score rows of the `ifd` (ifd=True) or `loss` scorer, `chunk_size` examples at a time: losses the cache
    holds are read back (for IFD only with the unconditioned loss), the others computed by `compute(examples) ->
    [{"loss_cond", "loss_uncond", "n_tokens"} or {"error"}]` (a local forward pass, or a server: `server_losses`)
    and stored (errors are not); `stats["loss_cache_hits"]` counts the examples read back."""
    for chunk in _chunks(examples, chunk_size):
        keys = [cache.key(ex) for ex in chunk]
        have = cache.get(keys)
        todo = [i for i, k in enumerate(keys) if k not in have or (ifd and have[k]["loss_uncond"] is None)]
        res = [have.get(k) for k in keys]
        if todo:
            new = compute([chunk[i] for i in todo])
            for i, r in zip(todo, new):
                res[i] = r
            cache.put([(keys[i], r) for i, r in zip(todo, new) if "error" not in r])
        stats["loss_cache_hits"] = stats.get("loss_cache_hits", 0) + len(chunk) - len(todo)
        yield from _loss_chunk_rows(chunk, res, ifd)


def _loss_chunk_rows(chunk: Sequence[Example], res: Sequence[dict[str, Any]], ifd: bool) -> Iterator[dict[str, Any]]:
    for ex, r in zip(chunk, res):
        if "error" in r:
            yield score_row(ex.id, None, r["error"])
        elif not ifd:
            yield score_row(ex.id, r["loss_cond"], loss_cond=r["loss_cond"], n_tokens=r["n_tokens"])
        elif r["loss_uncond"] <= 0:
            yield score_row(ex.id, None, "response loss alone is 0: IFD undefined",
                            loss_cond=r["loss_cond"], loss_uncond=r["loss_uncond"])
        else:
            yield score_row(ex.id, r["loss_cond"] / r["loss_uncond"], loss_cond=r["loss_cond"],
                            loss_uncond=r["loss_uncond"], n_tokens=r["n_tokens"])


def score_ifd(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """IFD = mean loss(response | prompt) / mean loss(response | assistant header only).

    Source: Li et al. 2024, "From Quantity to Quality" (Cherry LLM), IFD_theta(Q, A) = s(A|Q) / s(A) with s the
    mean token cross-entropy; upstream `cherry_seletion/data_analysis.py` scores the response alone after the bare
    "### Response:" marker, which is the assistant header here. A ratio near or above 1 means the instruction
    hardly helps the model produce the response (harder to follow). Extras: loss_cond, loss_uncond, n_tokens.
    """
    return _loss_rows(examples, ctx, ifd=True)


def score_loss(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """Mean per-token loss (nats) of the response given the rendered prompt. Extras: loss_cond, n_tokens."""
    return _loss_rows(examples, ctx, ifd=False)
