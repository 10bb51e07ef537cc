"""The scorer contract, the registry of scorers, and the score step that writes scores/<scorer>.jsonl.

Every scorer is one function `fn(examples, ctx) -> Iterator[row]`, one row per example in the scores format of
docs/architecture.md: {"id", "score": float|null, "error": str|null, ...extras}; higher score = harder.
`register_scorer` adds it to `SCORERS` (refusing a duplicate name), with an optional dry run in `DRY_RUNS`; the
scorers themselves are registered in one visible block in `phased_ift/scoring/__init__.py`.

`score_examples` appends each row as it arrives (a kill -9 loses at most the batch in flight), skips ids already
scored on a re-run, retries failed rows, and finally rewrites the file atomically in the examples' order. After
SIGTERM / SIGINT it stops after the row in flight (`shutdown.check`), before that final rewrite.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from phased_ift.config import Config
from phased_ift.data import Example
from phased_ift import shutdown
from phased_ift.runio import AppendLog, read_scores, write_jsonl  # noqa: F401 (read_scores: the API)
from phased_ift.errors import PhasedIFTError
from phased_ift.progress import LoggedProgress


@dataclass
class ScoreContext:
    """What a scorer may use besides the examples.

    Attributes:
        cfg: the whole config (a scorer reads its settings from cfg.scoring / cfg.model).
        cache_dir: where scorers keep caches (LLM requests, losses, sentence embeddings): <run_dir>/cache.
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
# dry_run(examples, cfg, cache_dir, console): print what scoring would cost, compute nothing
DryRun = Callable[[Sequence[Example], Config, Path, Any], None]
SCORERS: dict[str, Scorer] = {}
# Scorers with something to estimate before they run (only the judge costs money: requests and tokens).
DRY_RUNS: dict[str, DryRun] = {}


def register_scorer(name: str, *, dry_run: DryRun | None = None) -> Callable[[Scorer], Scorer]:
    """Decorator adding a scorer to SCORERS (and its dry run to DRY_RUNS); returns the scorer unchanged.

    Raises:
        ValueError: a duplicate name (registries refuse them).
    """

    def add(fn: Scorer) -> Scorer:
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} is already registered")
        SCORERS[name] = fn
        if dry_run is not None:
            DRY_RUNS[name] = dry_run
        return fn

    return add


def score_row(ex_id: str, score: float | None, error: str | None = None, **extras: Any) -> dict[str, Any]:
    """One row of a scores file: {"id", "score", "error", **extras}."""
    return {"id": ex_id, "score": score, "error": error, **extras}


@dataclass
class ScoreSummary:
    """Counts of one `score_examples` call (seconds: wall time of the scorer itself)."""

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


def score_examples(examples: Sequence[Example], cfg: Config, out_path: str | Path, *, scorer: str | None = None,
                   cache_dir: str | Path | None = None, console=None) -> ScoreSummary:
    """Score examples into a scores jsonl, resuming from what the file already holds.

    Rows already in `out_path` with a score are kept; failed rows (score null) and missing ids are (re)scored.
    Each new row is appended as it arrives; at the end the file is rewritten atomically in the examples' order
    with exactly one row per example.

    Args:
        scorer: registry name; default cfg.scoring.scorer.
        cache_dir: caches of the scorer (LLM requests, losses, embeddings); default <out_path>/../../cache.
    Raises:
        PhasedIFTError: unknown scorer, duplicate example ids, or a scorer's own user errors.
        RuntimeError: the scorer returned an unexpected, repeated or missing id (a bug in the scorer).
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
    t0 = time.perf_counter()
    new = _append_rows(name, todo, ctx, out_path, wanted, done) if todo else {}
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


def _append_rows(name: str, todo: list[Example], ctx: ScoreContext, out_path: Path, wanted: set[str],
                 done: dict[str, dict]) -> dict[str, dict]:
    """Run scorer `name` on `todo` under a progress bar, appending each row to out_path as it arrives."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    new: dict[str, dict] = {}
    t0 = time.perf_counter()
    with LoggedProgress(TextColumn(f"score {name}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=ctx.console,
                        disable=ctx.console is None, transient=True) as bar, AppendLog(out_path) as log:
        task = bar.add_task("score", total=len(todo), rate="")
        for row in SCORERS[name](todo, ctx):
            rid = str(row["id"])
            if rid not in wanted or rid in done or rid in new:
                raise RuntimeError(f"scorer {name} returned an unexpected or repeated id {rid!r}")
            log.append(row)
            new[rid] = row
            dt = time.perf_counter() - t0
            bar.update(task, advance=1, rate=f"{len(new) / dt:.1f} ex/s" if dt > 0 else "")
            shutdown.check(f"scoring with {name} after {len(done) + len(new)} of {len(wanted)} rows (in {out_path})")
    return new


def dry_run_score(examples: Sequence[Example], cfg: Config, cache_dir: Path, console=None) -> None:
    """Print what `score_examples` would do; for scorer=judge the judge prints its request/token estimate."""
    name = cfg.scoring.scorer
    if name in DRY_RUNS:
        DRY_RUNS[name](examples, cfg, cache_dir, console)
    elif console is not None:
        console.print(f"dry run: scorer {name} would score {len(examples)} examples (nothing is computed).")
