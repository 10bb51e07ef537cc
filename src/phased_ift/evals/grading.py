"""Single-answer grading: an LLM judge rates each answer of a checkpoint on its own (no second arm), one request
per (answer, part), e.g. an MT-Bench turn or a SeqEval metric.

    phased-ift evaluate CONFIG   # the evaluate step runs every graded benchmark whose test set is generated

The graders (`mtbench.GRADER`: FastChat's 1-10 rating per turn; `seqeval.GRADER`: following and quality of a
sequential instruction) differ in their prompts, parsers and numbers; everything else is shared here:

  * the grade file `grades/<arm>/seed_<s>/phase_<k>/<testset>.jsonl` (`RunDir.grades`), one row per (id, part):
    the grader's own fields first (`id`, the part field, e.g. `turn` or `metric`, ...), then `grade_row`'s
    {"rating": float|null, "reply": str|null, "judge": model name, "unparsed": bool, "failed": bool,
    "error": str|null};
  * `grade_file`: appends one row per reply as it arrives (kill -9 keeps every finished row), skips (id, part)
    pairs already graded, asks failed ones again (the last row of an (id, part) counts: `latest_rows`), refuses a
    file graded by another judge model; every request goes through the LLM client's cache, so re-grading from
    scratch sends nothing;
  * `grade_all`: the step of one grader over every `design.evaluation_cells` checkpoint: "not configured" when no
    judge endpoint is set, the dry-run estimate (sends nothing), one log line per checkpoint and the client's
    sent / cache hits / tokens line.

A reply without a parseable rating is *unparsed* (counted apart, never scored); a request that failed after the
client's retries is *failed* (no rating, asked again by the next run).

Owns: the `Grader` contract, FastChat's rating parser (`parse_rating`, also SeqEval's quality parser's first step),
grade rows, the resumable grade file, the grading step of one grader (`grade_all`) and the `evals.Benchmark` of a
grader (`graded_benchmark`). Which benchmarks exist is `evals.BENCHMARKS`'s; what a grader asks and how its numbers
are summarised is its own module's; prompt templates are `prompts`'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from phased_ift.config import Config
from phased_ift.config_choices import BenchmarkChoice
from phased_ift.phases.design import evaluation_cells
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.benchmark import Benchmark
from phased_ift.config_choices import testset_key
from phased_ift.llm_client import LLMClient
from phased_ift.rundir import RunDir
from phased_ift.runio import AppendLog, read_jsonl

# FastChat common.one_score_pattern and one_score_pattern_backup
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(reply: str | None) -> float | None:
    """The rating in a judge reply, as FastChat's `run_judge_single`: the first `[[x]]` (x an unsigned number,
    e.g. 8 or 7.5), else the first `[x]`; None (unparsed) when neither matches. No range check, as in FastChat."""
    if not reply:
        return None
    m = _RATING.search(reply) or _RATING_BACKUP.search(reply)
    return float(m.group(1)) if m else None


def grade_row(head: dict[str, Any], result: Any, judge: str, parse: Callable[[str | None], float | None]
              ) -> dict[str, Any]:
    """One grade row: the grader's fields `head` (first "id", then its part field and extras), then the rating
    parsed from the `LLMResult` (`ok`, `text`, `error`) by `parse`, the reply, the judge model and the flags."""
    ok = bool(result.ok)
    rating = parse(result.text) if ok else None
    return {**head, "rating": rating, "reply": result.text if ok else None, "judge": judge,
            "unparsed": ok and rating is None, "failed": not ok, "error": None if ok else result.error}


def latest_rows(rows: Iterable[dict], part: str) -> dict[tuple[str, Any], dict]:
    """The last row of each (id, row[part]), in order of first appearance (a retry supersedes a failed row)."""
    out: dict[tuple[str, Any], dict] = {}
    for r in rows:
        out[(str(r["id"]), r[part])] = r
    return out


def requests_of(items: Sequence[Any], max_tokens: int = 2048) -> list[dict]:
    """The chat requests of grade items (anything with `messages`): temperature 0 and `max_tokens`, as FastChat's
    judge asks."""
    return [{"messages": it.messages, "temperature": 0.0, "max_tokens": max_tokens} for it in items]


def grade_file(client: Any, items: Sequence[Any], out_path: str | Path, judge: str,
               make_row: Callable[[Any, Any, str], dict], part: str, max_tokens: int = 2048,
               desc: str = "grade") -> dict[str, Any]:
    """Grade `items`, appending one row per (id, part) to `out_path` as each reply arrives (resumable).

    Items whose `key` ((id, part value)) has a row that is not `failed` are skipped; failed ones are asked again.
    All requests go through one stream (`client.iter_chat`) and the client's cache.

    Args:
        client: an `llm_client.LLMClient` (anything with `iter_chat(requests, desc)` yielding results in order).
        items: grade items with `key` and `messages`.
        judge: the judge model's name, stored in each row.
        make_row: (item, result, judge) -> the row (`grade_row`).
        part: the row field that is the second half of the key ("turn", "metric").
    Returns:
        {"path", "graded" (new rows with a rating), "unparsed", "failed" (new rows of each), "skipped_done"}.
    Raises:
        PhasedIFTError: the file holds grades of another judge model (they would be mixed).
    """
    out_path = Path(out_path)
    with AppendLog(out_path) as log:
        latest = latest_rows(log.rows(), part)
        others = sorted({str(r.get("judge")) for r in latest.values()} - {judge})
        if others:
            raise PhasedIFTError(f"{out_path} holds grades of judge {others[0]!r}, not {judge!r}; delete the file "
                                 "to grade again with this judge, or set judge.model back.")
        done = {k for k, r in latest.items() if not r.get("failed")}
        todo = [it for it in items if it.key not in done]
        counts = {"graded": 0, "unparsed": 0, "failed": 0}
        for it, res in zip(todo, client.iter_chat(requests_of(todo, max_tokens), desc=desc)):
            row = make_row(it, res, judge)
            log.append(row)
            counts["failed" if row["failed"] else "unparsed" if row["unparsed"] else "graded"] += 1
    return {"path": str(out_path), **counts, "skipped_done": len(items) - len(todo)}


# ---------------------------------------------------------------------------------------------------------------
# The contract of a grader, and the grading step of one grader
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grader:
    """A single-answer grader (its benchmark registered in `evals.BENCHMARKS`).

    Attributes:
        testset: the generate.test_sets key that switches it on; also the grade file's stem.
        label: its name in log lines ("MT-Bench").
        part: the row field that, with "id", keys a grade ("turn", "metric").
        prepare: cfg -> what every checkpoint needs (prompts, test-set metadata), loaded once before anything is
            sent, so a missing file fails early (raises PhasedIFTError).
        cell_items: (cfg, run, cell, prepared, dry_run) -> (grade items of the checkpoint `cell`, answer files not
            generated yet). Outside a dry run a missing answer file raises (`generate.read_generations`).
        make_row: (item, result, judge) -> the grade row (`grade_row`).
        describe: (rows of the grade file, the items) -> the numbers of one checkpoint's log line.
        requests: the test set's prompts (Examples) -> requests per checkpoint, for the plan of `phased-ift run`.
        max_tokens: cfg -> max completion tokens of one reply.
    """

    testset: str
    label: str
    part: str
    prepare: Callable[[Config], Any]
    cell_items: Callable[[Config, RunDir, Any, Any, bool], tuple[list, int]]
    make_row: Callable[[Any, Any, str], dict]
    describe: Callable[[list[dict], list], str]
    requests: Callable[[Sequence[Any]], int]
    max_tokens: Callable[[Config], int] = lambda cfg: cfg.judge.grade_max_tokens


def grade_all(grader: Grader, cfg: Config, run: RunDir, dry_run: bool = False, console: Any = None) -> None:
    """Grade every `design.evaluation_cells` checkpoint's answers with `grader`
    -> grades/<arm>/seed_<s>/phase_<k>/<testset>.jsonl, one log line per file, then sent / cache hits / tokens.

    Nothing to do unless grader.testset is in generate.test_sets. No judge endpoint (judge.base_url/model):
    logs how to set one and returns. dry_run prints the distinct request count, cache hits and estimated tokens
    and sends nothing (answer files not generated yet are counted apart).

    Args:
        cfg: the resolved `Config`; run: its `RunDir`; console: a rich Console (default: stderr).
    Raises:
        PhasedIFTError: from `grader.prepare` (missing prompts or data); missing generations (not in dry_run);
            a grade file of another judge model.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    if grader.testset not in {testset_key(n) for n in cfg.generate.test_sets}:
        return
    if not cfg.judge.enabled:
        console.print(f"grade ({grader.label}): not configured (set judge.base_url and judge.model, e.g. "
                      "judge.base_url=https://api.openai.com/v1 judge.model=gpt-4-0613)", highlight=False)
        return
    prepared = grader.prepare(cfg)
    client = LLMClient(cfg.judge, run.llm_cache, console=console)
    try:
        if dry_run:
            _plan(grader, cfg, run, client, prepared, console)
            return
        for cell in evaluation_cells(cfg, run):
            _grade_cell(grader, cfg, run, client, cell, prepared, console)
        s = client.stats
        console.print(f"grade ({grader.label}): sent {s['sent']}, cache hits {s['cache_hits']}, failures "
                      f"{s['failures']}, tokens {s['prompt_tokens']} prompt + {s['completion_tokens']} completion",
                      highlight=False)
    finally:
        client.close()


def _grade_cell(grader: Grader, cfg: Config, run: RunDir, client: Any, cell: Any, prepared: Any,
                console: Any) -> None:
    """Grade one checkpoint's answers and log its numbers and counts."""
    items, _ = grader.cell_items(cfg, run, cell, prepared, False)
    out = run.grades(cell.arm, cell.phase, grader.testset, cell.seed)
    where = f"{cell.arm} seed {cell.seed} phase {cell.phase}"
    grade_file(client, items, out, cfg.judge.model, grader.make_row, grader.part, grader.max_tokens(cfg),
               desc=f"grade {where} / {grader.testset}")
    rows = list(read_jsonl(out, tolerate_torn_tail=True)) if out.is_file() else []
    failed = sum(bool(r.get("failed")) for r in latest_rows(rows, grader.part).values())
    tail = f", {failed} FAILED (re-run to retry)" if failed else ""
    console.print(f"grade: {where} {grader.testset}: {grader.describe(rows, items)}{tail} -> {out}",
                  highlight=False)


def _plan(grader: Grader, cfg: Config, run: RunDir, client: Any, prepared: Any, console: Any) -> None:
    """The dry run: the requests of every generated answer file, and the estimate."""
    planned: list[dict] = []
    missing = 0
    for cell in evaluation_cells(cfg, run):
        items, n_missing = grader.cell_items(cfg, run, cell, prepared, True)
        planned += requests_of(items, grader.max_tokens(cfg))
        missing += n_missing
    est = client.estimate(planned)
    console.print(
        f"grade ({grader.label}, dry run): {est['requests']} distinct requests, {est['cached']} cached, "
        f"{est['to_send']} to send, ~{est['prompt_tokens']} prompt + <= {est['completion_tokens']} completion tokens"
        f"{f'; {missing} answer files not generated yet (not counted)' if missing else ''}", highlight=False)


def graded_benchmark(grader: Grader, choice: BenchmarkChoice, **parts: Any) -> Benchmark:
    """The `evals.Benchmark` of a single-answer grader: the evaluate step runs `grade_all(grader, ...)` (a dry run:
    its request estimate), the plan counts `grader.requests`, preflight runs `grader.prepare`; `parts` are the
    benchmark's own (summarize, missing, blocks, verdicts, effects, ...)."""
    return Benchmark(choice, grader.label, run=lambda cfg, run, dry_run, console: grade_all(
        grader, cfg, run, dry_run=dry_run, console=console), requests=grader.requests,
        prepare=grader.prepare,
        plan=lambda cfg, prompts: f"{grader.label} ({prompts[grader.testset]} prompts)", **parts)
