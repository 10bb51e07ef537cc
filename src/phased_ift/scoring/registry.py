"""The scorer contract, the registry of scorers, and the score step that writes scores/<scorer>.jsonl.

Every scorer is one function `fn(examples, ctx) -> Iterator[row]`, one row per example in the scores format of
docs/architecture.md: {"id", "score": float|null, "error": str|null, ...extras}; higher score = harder.
`register_scorer` adds it to `SCORERS` (refusing a duplicate name), with an optional dry run in `DRY_RUNS`; the
scorers themselves are registered in one visible block in `phased_ift/scoring/__init__.py`.

`score_examples` appends each row as it arrives (a kill -9 loses at most the batch in flight), skips ids already
scored on a re-run, retries failed rows, and finally rewrites the file atomically in the examples' order. Given a
`data.ExampleFile` (the score step's data/train.jsonl) it holds the ids, not the examples: the scorer gets a lazy
view of the rows to score, and the final rewrite reads the rows back from the file (`runio.JsonlIndex`). After
SIGTERM / SIGINT it stops after the row in flight (`shutdown.check`), before that final rewrite.

Under a launch of several processes (torchrun / `accelerate launch`, `sharding.current_launch`) every rank calls
`score_examples` at once. A scorer registered with `spread=True` (the model passes: ifd, loss) then scores rank r's
share of the examples on rank r (`sharding.shard`: i % W == r) into scores/<scorer>.shards/rank<r>-of-<W>.jsonl,
marks it done, and the main process merges every shard into scores/<scorer>.jsonl, the file one process writes;
any other scorer runs on the main process while the other ranks wait. Rows a killed launch left in the shard
files are reused by the next run, of any number of processes (docs/scoring.md, "Scoring on several processes").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from phased_ift.config import Config
from phased_ift.config_choices import SCORERS as SCORER_NAMES, require_declared
from phased_ift.data import Example, ExampleFile
from phased_ift import modeling, shutdown
from phased_ift.runio import (AppendLog, JsonlIndex, read_scores,  # noqa: F401 (read_scores: the API)
                              write_jsonl, write_lines)
from phased_ift.errors import PhasedIFTError
from phased_ift.progress import LoggedProgress
from phased_ift.sharding import Launch, ShardFiles, await_ranks, current_launch, shard


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
# Scorers whose examples are spread over the ranks of a launch (each row depends on its own example only).
SPREAD: set[str] = set()
BAR_SECONDS = 0.2  # the progress bar of `_append_rows` moves at most this often


def register_scorer(name: str, *, dry_run: DryRun | None = None, spread: bool = False) -> Callable[[Scorer], Scorer]:
    """Decorator adding a scorer to SCORERS (and its dry run to DRY_RUNS; with `spread`, its name to SPREAD: under
    a multi-process launch each rank scores its share of the examples); returns the scorer unchanged.

    Raises:
        ValueError: a name not declared in `config_choices.SCORERS`, or a duplicate (registries refuse them).
    """

    def add(fn: Scorer) -> Scorer:
        require_declared(name, SCORER_NAMES, "scorer", "SCORERS")
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} is already registered")
        SCORERS[name] = fn
        if dry_run is not None:
            DRY_RUNS[name] = dry_run
        if spread:
            SPREAD.add(name)
        return fn

    return add


def score_row(ex_id: str, score: float | None, error: str | None = None, **extras: Any) -> dict[str, Any]:
    """One row of a scores file: {"id", "score", "error", **extras}."""
    return {"id": ex_id, "score": score, "error": error, **extras}


@dataclass
class ScoreSummary:
    """Counts of one `score_examples` call (seconds: wall time of the scorer itself).

    Under a launch of several processes (`world` > 1) the main process's summary counts every rank's rows (seconds:
    its wall time up to the merge; stats: numbers summed over the ranks), another rank's its own share only.
    """

    scorer: str
    path: Path
    total: int
    reused: int
    scored: int
    failed: int
    seconds: float
    stats: dict[str, Any]
    rank: int = 0
    world: int = 1

    @property
    def examples_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else float("nan")


def score_examples(examples: Sequence[Example], cfg: Config, out_path: str | Path, *, scorer: str | None = None,
                   cache_dir: str | Path | None = None, console=None) -> ScoreSummary:
    """Score examples into a scores jsonl, resuming from what the file already holds.

    Rows already in `out_path` (or in the shard files a killed multi-process launch left beside it) with a score
    are kept; failed rows (score null) and missing ids are (re)scored. Each new row is appended as it arrives; at
    the end the file is rewritten atomically in the examples' order with exactly one row per example. Under a
    launch of several processes every rank must call this at once (see the module docstring).

    Args:
        examples: the examples (a list, or a `data.ExampleFile`: then only ids are held, see the module doc).
        scorer: registry name; default cfg.scoring.scorer.
        cache_dir: caches of the scorer (LLM requests, losses, embeddings); default <out_path>/../../cache.
    Raises:
        PhasedIFTError: unknown scorer, duplicate example ids, or a scorer's own user errors;
            `sharding.ShardStalled` when a rank of a launch stops making progress.
        RuntimeError: the scorer returned an unexpected, repeated or missing id (a bug in the scorer).
    """
    name = scorer or cfg.scoring.scorer
    if name not in SCORERS:
        raise PhasedIFTError(f"unknown scorer {name!r}; set scoring.scorer to one of {sorted(SCORERS)}.")
    ids = _ids(examples)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PhasedIFTError(f"example id {dup!r} occurs more than once; ids must be unique to be scored.")
    out_path = Path(out_path)
    ctx = ScoreContext(cfg=cfg, cache_dir=Path(cache_dir) if cache_dir is not None else
                       out_path.parent.parent / "cache", console=console)
    launch = current_launch()
    if launch.spread:
        return _score_launch(name, examples, ctx, out_path, launch)
    return _score_alone(name, examples, ctx, out_path)


def _score_alone(name: str, examples: Sequence[Example], ctx: ScoreContext, out_path: Path) -> ScoreSummary:
    """`score_examples` in one process (or on the main process of a launch, for a scorer not in SPREAD)."""
    ids = _ids(examples)
    wanted = set(ids)
    shards = ShardFiles(out_path, 1)
    done = _reusable(out_path, shards, wanted)
    # Rewrite what is kept first: drops a torn tail, so the appends below start on a fresh line.
    write_jsonl(out_path, (done[i] for i in ids if i in done))
    reused = len(done)
    todo = _remaining(examples, ids, done)
    t0 = time.perf_counter()
    new = _append_rows(name, todo, ctx, out_path, wanted, done) if todo else {}
    seconds = time.perf_counter() - t0
    _check_rows(name, _ids(todo), new)
    del done  # every row is in out_path now: the rewrite reads them back from there
    if reused or list(new) != ids:  # else the appends wrote exactly `ids`, in order: nothing to rewrite
        _rewrite_in_order(out_path, ids)
    shards.clear(merged=True)  # a killed launch's rows are all in out_path now
    return ScoreSummary(scorer=name, path=out_path, total=len(ids), reused=reused, scored=len(new),
                        failed=_failed(new), seconds=seconds, stats=_with_padding(ctx.stats))


def _ids(examples: Sequence[Example]) -> list[str]:
    """The examples' ids in order (an `ExampleFile`'s without reading its rows)."""
    return examples.ids if isinstance(examples, ExampleFile) else [e.id for e in examples]


def _remaining(examples: Sequence[Example], ids: list[str], done: dict[str, Any]) -> Sequence[Example]:
    """The examples whose id is not in `done`, in order (of an `ExampleFile`: a lazy subset of it)."""
    keep = [p for p, i in enumerate(ids) if i not in done]
    if isinstance(examples, ExampleFile):
        return examples if len(keep) == len(ids) else examples.subset(keep)
    return [examples[p] for p in keep]


def _rewrite_in_order(out_path: Path, ids: list[str]) -> None:
    """Rewrite out_path with one row per id in `ids` order (the last row of an id in the file wins), holding the
    rows' offsets, not the rows (`runio.JsonlIndex`). Every line of out_path was written by `runio.write_jsonl` or
    `AppendLog` (the kept rows rewritten at the start, the new ones appended), so lines are copied as they are
    (`runio.write_lines`), the bytes a decode and encode would give; a file that already holds exactly `ids`, in
    order (e.g. a resumed run whose kept rows all come before the new ones), is left as it is. (`_score_alone` does
    not call it when nothing was reused and the appends came in `ids` order: the file is in order then.)"""
    with JsonlIndex(out_path, keep=lambda r: str(r["id"])) as index:
        if index.values == ids:
            return
        at = {rid: p for p, rid in enumerate(index.values)}
        write_lines(out_path, (_ended(index.line(at[i])) for i in ids))


def _ended(line: bytes) -> bytes:
    """The line with its newline (the file's last line may lack one)."""
    return line if line.endswith(b"\n") else line + b"\n"


def _score_launch(name: str, examples: Sequence[Example], ctx: ScoreContext, out_path: Path,
                  launch: Launch) -> ScoreSummary:
    """`score_examples` on one rank of a launch of several processes: its shard of a SPREAD scorer, the merge on
    the main process; a scorer not in SPREAD on the main process alone while the others wait for its marker."""
    token = modeling.launch_token()  # a collective: every rank is here now
    shards = ShardFiles(out_path, launch.world)
    if name not in SPREAD:
        if launch.main:
            summary = _score_alone(name, examples, ctx, out_path)
            shards.mark(shards.merged, token)
            return summary
        _await_merge(shards, token, [out_path])
        return ScoreSummary(scorer=name, path=out_path, total=len(examples), reused=len(examples), scored=0,
                            failed=0, seconds=0.0, stats={}, rank=launch.rank, world=launch.world)
    t0 = time.perf_counter()
    mine = shard(examples, launch)
    done = _reusable(out_path, shards, set(_ids(examples)))
    todo = [e for e in mine if e.id not in done]
    log = shards.rows(launch.rank)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()  # the main process watches its mtime while it waits (`sharding.await_ranks`)
    new = _append_rows(name, todo, ctx, log, {e.id for e in mine}, done) if todo else {}
    _check_rows(name, _ids(todo), new)
    shards.mark(shards.done(launch.rank), token, scored=len(new), failed=_failed(new), stats=ctx.stats)
    if not launch.main:
        _await_merge(shards, token, [shards.rows(r) for r in range(launch.world)] + [out_path])
        return ScoreSummary(scorer=name, path=out_path, total=len(mine), reused=len(mine) - len(todo),
                            scored=len(new), failed=_failed(new), seconds=time.perf_counter() - t0,
                            stats=_with_padding(ctx.stats), rank=launch.rank, world=launch.world)
    markers = _await_shards(shards, token, str(out_path))
    _merge_shards(name, _ids(examples), out_path, shards)
    shards.mark(shards.merged, token)
    return ScoreSummary(scorer=name, path=out_path, total=len(examples), reused=len(done),
                        scored=sum(m["scored"] for m in markers), failed=sum(m["failed"] for m in markers),
                        seconds=time.perf_counter() - t0, stats=_with_padding(_sum_stats(m["stats"] for m in markers)),
                        world=launch.world)


def _await_shards(shards: ShardFiles, token: str | None, what: str) -> list[dict[str, Any]]:
    """The main process: wait until every rank's done marker holds this launch's token; returns the markers."""
    await_ranks(lambda: [r for r in range(shards.world) if shards.marker(shards.done(r), token) is None],
                lambda r: [shards.rows(r), shards.done(r)], what, shards.world)
    return [shards.marker(shards.done(r), token) or {} for r in range(shards.world)]


def _await_merge(shards: ShardFiles, token: str | None, watch: Sequence[Path]) -> None:
    """A rank > 0: wait until the main process's merged marker holds this launch's token (progress: `watch`)."""
    await_ranks(lambda: [] if shards.marker(shards.merged, token) else [0], lambda r: watch,
                f"{shards.out} (the main process merges)", shards.world)


def _merge_shards(name: str, ids: list[str], out_path: Path, shards: ShardFiles) -> None:
    """The main process, after every rank's marker: write out_path from out_path's and the shard files' rows (a
    scored row wins over a failed one; of failed rows the last, this launch's), in the examples' order, then
    remove the shard files.

    Raises:
        RuntimeError: an example has no row in any file (a rank skipped it: a bug).
    """
    wanted = set(ids)
    rows = {i: r for i, r in read_scores(out_path).items() if i in wanted}
    for r in shards.all_rows():
        rid = str(r.get("id"))
        if rid in wanted and (r.get("score") is not None or rows.get(rid, {}).get("score") is None):
            rows[rid] = r
    missing = [i for i in ids if i not in rows]
    if missing:
        raise RuntimeError(f"scorer {name}: {len(missing)} examples have no row in {shards.dir} after every rank "
                           f"finished (e.g. {missing[0]!r})")
    write_jsonl(out_path, (rows[i] for i in ids))
    shards.clear()


def _reusable(out_path: Path, shards: ShardFiles, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The scored rows of out_path and of the shard files beside it, by id, for the ids in `wanted`."""
    done = {i: r for i, r in read_scores(out_path).items() if i in wanted and r.get("score") is not None}
    for r in shards.all_rows():
        rid = str(r.get("id"))
        if rid in wanted and rid not in done and r.get("score") is not None:
            done[rid] = r
    return done


def _check_rows(name: str, todo_ids: Sequence[str], new: dict[str, bool]) -> None:
    missing = [i for i in todo_ids if i not in new]
    if missing:
        raise RuntimeError(f"scorer {name} returned no row for {len(missing)} examples (e.g. {missing[0]!r})")


def _failed(new: dict[str, bool]) -> int:
    """Rows of `_append_rows`' {id: scored} that failed (score null)."""
    return sum(1 for scored in new.values() if not scored)


def _with_padding(stats: dict[str, Any]) -> dict[str, Any]:
    stats = dict(stats)
    if stats.get("tokens"):
        stats["padding_fraction"] = stats["pad_tokens"] / stats["tokens"]
    return stats


def _sum_stats(parts) -> dict[str, Any]:
    """Stats of several ranks: numbers summed, anything else (model name, autocast) from the first rank."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in (part or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "padding_fraction":
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    return out


def _append_rows(name: str, todo: Sequence[Example], ctx: ScoreContext, out_path: Path, wanted: set[str],
                 done: dict[str, dict]) -> dict[str, bool]:
    """Run scorer `name` on `todo` under a progress bar, appending each row to out_path as it arrives; returns
    {id: whether it got a score} of the new rows (the rows themselves are only in the file)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    new: dict[str, bool] = {}
    t0 = time.perf_counter()
    with LoggedProgress(TextColumn(f"score {name}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=ctx.console,
                        disable=ctx.console is None, transient=True) as bar, \
            AppendLog(out_path, keep_rows=False) as log:
        task = bar.add_task("score", total=len(todo), rate="")
        shown, last = 0, t0  # the bar moves at most every BAR_SECONDS (an update per row cost ~7% of a fast scorer)
        for row in SCORERS[name](todo, ctx):
            rid = str(row["id"])
            if rid not in wanted or rid in done or rid in new:
                raise RuntimeError(f"scorer {name} returned an unexpected or repeated id {rid!r}")
            log.append(row)
            new[rid] = row.get("score") is not None
            now = time.perf_counter()
            if now - last >= BAR_SECONDS:
                bar.update(task, advance=len(new) - shown, rate=f"{len(new) / (now - t0):.1f} ex/s")
                shown, last = len(new), now
            shutdown.check(f"scoring with {name} after {len(done) + len(new)} of {len(wanted)} rows (in {out_path})")
        now = time.perf_counter()
        if len(new) > shown:
            bar.update(task, advance=len(new) - shown, rate=f"{len(new) / (now - t0):.1f} ex/s")
    return new


def dry_run_score(examples: Sequence[Example], cfg: Config, cache_dir: Path, console=None) -> None:
    """Print what `score_examples` would do; for scorer=judge the judge prints its request/token estimate."""
    name = cfg.scoring.scorer
    if name in DRY_RUNS:
        DRY_RUNS[name](examples, cfg, cache_dir, console)
    elif console is not None:
        console.print(f"dry run: scorer {name} would score {len(examples)} examples (nothing is computed).")
