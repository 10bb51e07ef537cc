"""The pipeline: [sit ->] data -> score -> split -> train -> generate -> pairwise -> evaluate -> report, in one run dir.

Owns the order of the steps, the cheap checks before them (`preflight`) and the plan (`plan_run`): `STEPS` is the
ordered list of `Step`s, each with its body in its stage package (`scoring.step.score_step`,
`phases.step.split_step`, `train.train_step`, `generation.generate_all`, `pairwise.judge.judge_all`,
`evals.step.evaluate_all`, `report.build_report`; the data step's body `_data` stays here, because it combines
the data with the sequential mix of `sit`, a layer above `data`) and its row of the plan. `phased-ift run` runs every step once, in that order (`run_pipeline`). A subcommand (`phased-ift
generate CONFIG`, or `step_generate(cfg)` from Python) runs its own step and the earlier steps it needs
(`steps_for`: e.g. generate needs train, train needs split, split needs score only while
scores/<scorer>.jsonl is missing), each once, in STEPS order (`run_command`).

Each step reads its inputs from the run dir, skips work whose outputs already exist, and writes its outputs
atomically, so `phased-ift run CONFIG` after kill -9 or Ctrl-C resumes where it stopped. The steps up to and
including split run inside `modeling.main_process_first()`: under `accelerate launch` the main process prepares
data and phases and the other processes then find them done. The score step is the exception (`Step.spread`):
every rank runs it at once, and the model scorers share the examples out (`scoring.score_examples`).
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from rich.console import Console

from phased_ift import modeling, shutdown  # modeling.release_memory / main_process_first: tests patch them
from phased_ift.config import Config, DataSource, config_to_dict, save_config
from phased_ift.config_choices import testset_key
from phased_ift.data import (SOURCES, Example, combine_streams, data_home, load_source, load_test_set, stream_source,
                             write_examples)
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.step import evaluate_all, evaluate_needs, grade_requests
from phased_ift.evals.step import plan_row as evaluate_row
from phased_ift.generation import generate_all
from phased_ift.modeling import describe_precision, resolve_config_precision
from phased_ift.pairwise.judge import judge_all, pairwise_test_sets
from phased_ift.preflight import check_disk_space, preflight  # run_pipeline / plan_run call them; tests patch them
from phased_ift.report import build_report, verdict_lines
from phased_ift.rundir import RunDir
from phased_ift.runio import write_jsonl
from phased_ift.scoring.step import score_step
from phased_ift.sit.generation import generate_step, plan_row
from phased_ift.sit.mix import mix_stream
from phased_ift.phases.design import evaluation_cells, judge_jobs
from phased_ift.phases.step import split_step
from phased_ift.train import plan_training, train_step

# (cfg, run, dry_run, console) -> the step's result (the data step: the RunDir; report: the summary dict)
StepBody = Callable[[Config, RunDir, bool, "Console | None"], Any]
# (cfg, run, dry_run) -> names of the earlier steps this step needs run first when it is the command's step
StepNeeds = Callable[[Config, RunDir, bool], Sequence[str]]
# (cfg, plan inputs of `_plan_inputs`) -> the step's plan row: (what, size, output)
StepPlan = Callable[[Config, dict], tuple[str, str, str]]


@dataclass(frozen=True)
class Step:
    """One step of the pipeline.

    Attributes:
        name: the step's name (and its subcommand's, where it has one).
        run: the body, `(cfg, run, dry_run, console) -> result`; it runs this step only, never another step.
            dry_run is True only for the command's own step of a `--dry-run` command (score, train, judge, evaluate).
        plan: the step's row of the plan table, `(cfg, plan inputs) -> (what, size, output)`.
        needs: the earlier steps a command of this step runs first, `(cfg, run, dry_run) -> names`, as the
            step's inputs require (they are asked in turn: `steps_for`).
        main_process_first: this step and the steps before it in one invocation run inside
            `modeling.main_process_first()` (the split: the run dir is prepared by the main process first).
        spread: the step spreads its own work over the ranks of a launch, every rank running it at once (the
            score step: `scoring.score_examples`), so it never runs inside `modeling.main_process_first()`.
    """

    name: str
    run: StepBody
    plan: StepPlan
    needs: StepNeeds = lambda cfg, run, dry_run: ()
    main_process_first: bool = False
    spread: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Step bodies that have no module of their own (each runs its step only)
# ---------------------------------------------------------------------------------------------------------------


def _data(cfg: Config, run: RunDir, dry_run: bool = False, console: Console | None = None) -> RunDir:
    """Read every configured source into data/train.jsonl (+ data/rejects.jsonl); skipped when train.jsonl exists.

    Sources are concatenated in config order; with cfg.data.dedupe, duplicate examples (within and across sources)
    go to rejects. Ids are made unique ("<source>:<id>" on collision). rejects.jsonl is written before
    train.jsonl, so an existing train.jsonl means the step finished. The examples stream from the sources into the
    file (`data.stream_source`, `data.combine_streams`: the ids and a digest per example in memory; with
    `sit.source`, `sit.mix.mix_stream` appends the sequential examples, holding the originals only for
    sit.source=offline, which composes from their texts).

    Raises:
        PhasedIFTError: no sources configured, an unreadable source, or every record rejected.
    """
    if run.train_data.is_file():
        return run
    if not cfg.data.train:
        raise PhasedIFTError("config: data.train lists no sources. Add one, e.g. `data: {train: [{name: "
                             "alpagasus/random_9k, limit: 1000}]}` (named sources: `phased-ift data sources`), or "
                             "a file with `path:`.")
    streams = [stream_source(ds, dedupe=cfg.data.dedupe) for ds in cfg.data.train]
    originals, rejects = combine_streams(streams, dedupe=cfg.data.dedupe)
    examples, mixed = mix_stream(originals, cfg.sit, run)  # sit.source: the sequential mix, none: as they come
    n = _write_data(run, examples, lambda: rejects + mixed.rejects)
    rejects += mixed.rejects
    if console is not None:
        results = [r for _, r in streams]
        sampled = "".join(f"; {d.name or d.path}: a seeded sample of {d.limit} of {r.total - len(r.rejects)} "
                          f"usable records" for d, r in zip(cfg.data.train, results) if d.limit)
        console.print(f"data: {n} examples from {len(results)} source(s){sampled}; {len(rejects)} "
                      f"records rejected (reasons in {run.rejects}) -> {run.train_data}" + mixed.note,
                      highlight=False)
    return run


def _write_data(run: RunDir, examples: Iterable[Example], rejects: Callable[[], list[dict[str, Any]]]) -> int:
    """Stream `examples` into data/train.jsonl; once the last is written, write `rejects()` (complete by then) to
    data/rejects.jsonl, then put train.jsonl in place (`runio.write_jsonl`'s before_replace): rejects first, so an
    existing train.jsonl means the step finished. Returns the examples written.

    Raises:
        PhasedIFTError: no example at all (every record rejected): neither file is written.
    """
    n = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal n
        for e in examples:
            n += 1
            yield e.to_dict()

    def rejects_first() -> None:
        found = rejects()
        if not n:
            reasons = sorted({r["reason"].split(":", 1)[0] for r in found})
            raise PhasedIFTError(f"data: every record of the configured sources was rejected ({len(found)} "
                                 f"rejects; reasons: {', '.join(reasons) or 'none'}). Run `phased-ift data check "
                                 f"FILE` on each source to see why, and fix the files or their `format:`.")
        write_jsonl(run.rejects, found)

    write_jsonl(run.train_data, rows(), before_replace=rejects_first)
    return n


def _generate(cfg: Config, run: RunDir, dry_run: bool = False, console: Console | None = None) -> None:
    generate_all(cfg, run, console=console)


def _pairwise(cfg: Config, run: RunDir, dry_run: bool = False, console: Console | None = None) -> None:
    judge_all(cfg, run, dry_run=dry_run, console=console)


def _evaluate(cfg: Config, run: RunDir, dry_run: bool = False, console: Console | None = None) -> None:
    evaluate_all(cfg, run, dry_run=dry_run, console=console)


def _report(cfg: Config, run: RunDir, dry_run: bool = False, console: Console | None = None) -> dict:
    return build_report(run, cfg, console=console)


# ---------------------------------------------------------------------------------------------------------------
# What each step needs first (only asked when the step is a command's step or needed by one)
# ---------------------------------------------------------------------------------------------------------------


def _split_needs(cfg: Config, run: RunDir, dry_run: bool) -> list[str]:
    """The score step, while scores/<scorer>.jsonl is missing."""
    return [] if run.scores(cfg.scoring.scorer).is_file() else ["score"]


def _train_needs(cfg: Config, run: RunDir, dry_run: bool) -> list[str]:
    """The split; a training plan (dry_run) before anything is scored needs only the data: a plan must not start
    scoring (API calls, model loads), it assumes K equal phases of the data instead."""
    if dry_run and not run.phases_manifest.is_file() and not run.scores(cfg.scoring.scorer).is_file():
        return [] if run.train_data.is_file() else ["data"]
    return ["split"]


def _pairwise_needs(cfg: Config, run: RunDir, dry_run: bool) -> list[str]:
    """The generations, when a judge is configured (a dry run must not train or generate)."""
    return ["generate"] if cfg.judge.enabled and not dry_run else []


def _evaluate_needs(cfg: Config, run: RunDir, dry_run: bool) -> list[str]:
    """What its benchmarks read (`evals.step.evaluate_needs`): the checkpoints for the reference loss, the answers
    for IFEval and the graded benchmarks (not in a dry run)."""
    return evaluate_needs(cfg, run, dry_run)


# ---------------------------------------------------------------------------------------------------------------
# Plan rows (inputs from `_plan_inputs`)
# ---------------------------------------------------------------------------------------------------------------


def _score_row(cfg: Config, p: dict) -> tuple[str, str, str]:
    return (cfg.scoring.scorer, f"{p['score_requests']:,} judge requests" if p["score_requests"] else
            "offline, no requests", f"scores/{cfg.scoring.scorer}.jsonl")


def _train_row(cfg: Config, p: dict) -> tuple[str, str, str]:
    seeds = len(cfg.train.seeds)
    return (f"{', '.join(cfg.train.arms)} x seeds {cfg.train.seeds} ({cfg.train.method})",
            f"~{sum(p['training_tokens'].values()) * seeds:,} tokens, "
            f"{sum(p['steps'].values()) * seeds:,} optimizer steps", "checkpoints/")


def _generate_row(cfg: Config, p: dict) -> tuple[str, str, str]:
    g = cfg.generate
    budgets = ", ".join(f"{k} <= {g.budget(k)}" for k in p["prompts"])
    return (", ".join(f"{k} ({v})" for k, v in p["prompts"].items()),
            f"{p['answers']:,} answers; new tokens: {budgets}", "generations/")


def _evaluate_row(cfg: Config, p: dict) -> tuple[str, str, str]:
    return evaluate_row(cfg, p["prompts"], p["checkpoints"], p["grades"])


STEPS: list[Step] = [
    Step("sit", generate_step, plan_row),  # Seq-Instruct generation, a no-op unless sit.source=generated
    Step("data", _data, lambda cfg, p: (", ".join(d.name or d.path for d in cfg.data.train),
                                        f"{p['examples']:,} examples", "data/train.jsonl"),
         needs=lambda cfg, run, dry_run: ["sit"] if cfg.sit.source == "generated" else []),
    Step("score", score_step, _score_row, needs=lambda cfg, run, dry_run: ["data"], spread=True),
    Step("split", split_step, lambda cfg, p: (f"{cfg.phases.k} phases by {cfg.phases.method}", "", "phases/"),
         needs=_split_needs, main_process_first=True),
    Step("train", train_step, _train_row, needs=_train_needs),
    Step("generate", _generate, _generate_row, needs=lambda cfg, run, dry_run: ["train"]),
    Step("pairwise", _pairwise, lambda cfg, p: (cfg.judge.model or "not configured (judge.base_url)",
                                          _pairwise_size(p), "judgements/"), needs=_pairwise_needs),
    Step("evaluate", _evaluate, _evaluate_row, needs=_evaluate_needs),
    Step("report", _report, lambda cfg, p: ("win rates, CIs, lengths, plots", "", "report/"),
         needs=lambda cfg, run, dry_run: ["generate", "pairwise", "evaluate"]),
]


# ---------------------------------------------------------------------------------------------------------------
# Running steps
# ---------------------------------------------------------------------------------------------------------------


def get_step(name: str) -> Step:
    """The step called `name` in `STEPS`.

    Raises:
        ValueError: no such step (a programming error).
    """
    for step in STEPS:
        if step.name == name:
            return step
    raise ValueError(f"no pipeline step {name!r}; steps: {', '.join(s.name for s in STEPS)}")


def steps_for(name: str, cfg: Config, dry_run: bool = False) -> list[Step]:
    """The steps the command of step `name` runs, in STEPS order: the step itself and, transitively, the earlier
    steps it needs (`Step.needs`, asked before anything runs; dry_run is passed to the step itself only).

    Raises:
        ValueError: no such step.
    """
    run = RunDir(cfg.run_dir)
    target = get_step(name)
    needed = {name}
    for step in reversed(STEPS[:STEPS.index(target) + 1]):
        if step.name in needed:
            needed.update(step.needs(cfg, run, dry_run and step is target))
    return [s for s in STEPS if s.name in needed]


def run_steps(cfg: Config, steps: Sequence[Step], dry_run_step: str | None = None,
              console: Console | None = None) -> dict[str, Any]:
    """Run `steps` once each, in the given order; the step named `dry_run_step` gets dry_run=True. The steps up to
    and including the last one with `main_process_first` run inside `modeling.main_process_first()`, except a
    `spread` step among them, which every rank runs at once (the steps before and after it form their own blocks).

    Returns:
        {step name: the body's result}.
    """
    cfg = resolve_config_precision(cfg)[0]  # "auto" -> the concrete autocast (a no-op when already resolved)
    run = RunDir(cfg.run_dir)
    first = max((i + 1 for i, s in enumerate(steps) if s.main_process_first), default=0)
    results: dict[str, Any] = {}

    def _run(group: Sequence[Step]) -> None:
        for step in group:
            shutdown.check(f"before the {step.name} step")
            results[step.name] = step.run(cfg, run, step.name == dry_run_step, console)
            modeling.release_memory()  # the next step's peak does not stack on this one's freed heap

    for spread, group in itertools.groupby(steps[:first], key=lambda s: s.spread):
        if spread:
            _run(list(group))
        else:
            with modeling.main_process_first():
                _run(list(group))
    _run(steps[first:])
    return results


def run_command(name: str, cfg: Config, dry_run: bool = False, console: Console | None = None) -> Any:
    """`phased-ift <name> CONFIG [--dry-run]`: run `steps_for(name)` once each; returns step `name`'s result."""
    return run_steps(cfg, steps_for(name, cfg, dry_run), name if dry_run else None, console)[name]


def step_data(cfg: Config, console: Console | None = None) -> RunDir:
    """The data step (see `_data`): data/train.jsonl + data/rejects.jsonl. Returns the run dir."""
    return run_command("data", cfg, console=console)


def step_score(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """The score step and the data step first (`scoring.step.score_step`): scores/<scorer>.jsonl."""
    run_command("score", cfg, dry_run=dry_run, console=console)


def step_split(cfg: Config, console: Console | None = None) -> None:
    """The split step (`phases.step.split_step`), after data and score while scores/<scorer>.jsonl is missing, inside
    `modeling.main_process_first()` (under `accelerate launch` only the main process writes; the others wait)."""
    run_command("split", cfg, console=console)


def step_train(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """The train step after the split (`train.train_step`; dry_run prints the plan without scoring): checkpoints/."""
    run_command("train", cfg, dry_run=dry_run, console=console)


def step_generate(cfg: Config, console: Console | None = None) -> None:
    """The generate step after training (`generate.generate_all`): generations/."""
    run_command("generate", cfg, console=console)


def step_pairwise(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """The pairwise judge step (`judge.judge_all`), after generate when a judge is configured and not dry_run:
    judgements/."""
    run_command("pairwise", cfg, dry_run=dry_run, console=console)


def step_evaluate(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """The evaluate step (`evals.step.evaluate_all`: every benchmark of `evals.BENCHMARKS`), after what its
    benchmarks read (`evals.step.evaluate_needs`): evaluation/, grades/. dry_run: the graded benchmarks' request
    estimates; nothing is computed or sent."""
    run_command("evaluate", cfg, dry_run=dry_run, console=console)


def step_report(cfg: Config, console: Console | None = None) -> dict:
    """The report step after generate, pairwise and evaluate (each skips finished work): report/report.md,
    report.html, PNGs and summary.json, always rebuilt. Returns the summary dict (`report.build_report`)."""
    return run_command("report", cfg, console=console)


# ---------------------------------------------------------------------------------------------------------------
# Checks, plan, the whole run
# ---------------------------------------------------------------------------------------------------------------


def plan_run(cfg: Config, console: Console, missing: Sequence[str] = (), precision: dict | None = None,
             estimate: bool = False) -> dict:
    """Print the plan: one row per step of `STEPS` (examples, estimated training tokens, generation and judge
    requests), the precision (`precision`: the record of `modeling.resolve_config_precision`; made here when
    None) and the disk line (`preflight.check_disk_space`: the estimate, a warning when the run dir's filesystem
    has less free space). Reads the data (running the data step while data/train.jsonl is missing) but trains,
    scores and sends nothing; named sources in `missing` (see `preflight`) are planned with stand-in examples of
    their upstream size. `estimate` (a dry run's plan): the training tokens may be estimated from a sample of the
    data (`train.plan_training`, train.plan_sample).

    Returns:
        {"examples", "training_tokens": {arm: tokens}, "steps": {arm: optimizer steps}, "prompts": {test set: n},
         "answers", "judge_requests" (pairwise, both orders), "grade_requests" (single-answer grading: MT-Bench
         one per turn, SeqEval two per answer, per checkpoint), "grades": {grader label: requests},
         "score_requests", "disk_bytes": what training still writes (None: unknown)}.
    """
    from rich.table import Table

    run = RunDir(cfg.run_dir)
    for name in missing:
        console.print(f"[yellow]note:[/] {name} ({SOURCES[name].path}) is not in the data home {data_home()}; the "
                      f"plan assumes its {SOURCES[name].records:,} upstream records. Put the file there before a real "
                      f"run.", highlight=False)
    stand_in = _stand_in_run(cfg) if missing else None
    if stand_in is None and not run.train_data.is_file():
        run_steps(cfg, [get_step("data")], console=console)
    try:
        p = _plan_inputs(cfg, stand_in or run, estimate)
        table = Table("step", "what", "size", "output", title=f"plan for {run.root}", title_justify="left")
        for step in STEPS:
            table.add_row(step.name, *step.plan(cfg, p))
        console.print(table)
        console.print(p.pop("note"), highlight=False)
        console.print(describe_precision(precision or resolve_config_precision(cfg)[1]), highlight=False)
        need = check_disk_space(cfg, console)  # what training still writes; a warning when it does not fit
        p["disk_bytes"] = need.total if need is not None else None
        del p["checkpoints"]
    finally:
        if stand_in is not None:
            shutil.rmtree(stand_in.root, ignore_errors=True)
    return p


def _plan_inputs(cfg: Config, train_run: RunDir, estimate: bool = False) -> dict:
    """The numbers of the plan, from the data in `train_run` (`train.plan_training`; `estimate`: tokens from a
    sample, a dry run's) and the test sets."""
    tplan = plan_training(cfg, train_run, estimate=estimate)
    n_examples = tplan["examples"]  # the data once (an arm such as replay trains some examples twice)
    tokens = {arm: sum(r["tokens_trained"] for r in rows) for arm, rows in tplan["arms"].items()}
    g = cfg.generate
    sets = {testset_key(n): load_test_set(n, limit=g.limit, seed=g.seed) for n in g.test_sets}
    prompts = {k: len(v) for k, v in sets.items()}
    turns = sum(len(v) + sum(len(e.meta.get("later_turns") or ()) for e in v) for v in sets.values())
    n_ckpt = len(evaluation_cells(cfg))
    pairwise = sum(prompts[k] for k in pairwise_test_sets(cfg))
    n_judge = 2 * pairwise * len(judge_jobs(cfg)) if cfg.judge.enabled else 0
    # single-answer grading (the graded benchmarks: MT-Bench one request per turn, SeqEval two per answer)
    grades = grade_requests(cfg, sets, n_ckpt)
    score_req = n_examples * cfg.scoring.samples if cfg.scoring.scorer == "judge" else 0
    return {"examples": n_examples, "training_tokens": tokens, "steps": tplan["total_steps"], "prompts": prompts,
            "answers": n_ckpt * turns, "judge_requests": n_judge,
            "grade_requests": sum(grades.values()), "grades": grades,
            "score_requests": score_req,
            "checkpoints": n_ckpt, "note": tplan["note"]}


def _pairwise_size(p: dict) -> str:
    """The judge row's size: the pairwise requests (both orders)."""
    return f"{p['judge_requests']:,} pairwise requests (both orders)" if p["judge_requests"] else ""


def _stand_in_run(cfg: Config) -> RunDir:
    """A temporary run dir whose data/train.jsonl stands in for sources missing from the data home (dry runs only):
    alpagasus/random_9k (a uniform random sample of Alpaca 52K) repeated to each missing source's upstream size."""
    import tempfile

    tmp = RunDir(tempfile.mkdtemp(prefix="phased-ift-plan-"))
    sample = load_source(DataSource(name="alpagasus/random_9k")).examples
    out: list[Example] = []
    for ds in cfg.data.train:
        try:
            out += load_source(ds).examples
        except PhasedIFTError:
            if not (ds.name in SOURCES and SOURCES[ds.name].records):
                raise
            n = SOURCES[ds.name].records
            out += [Example(f"{ds.name}:{i}", sample[i % len(sample)].messages) for i in range(n)]
    write_examples(tmp.train_data, out)
    return tmp


def _config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def run_pipeline(cfg: Config, dry_run: bool = False, console: Console | None = None,
                 before_writing: Callable[[], Any] | None = None) -> dict | None:
    """data -> score -> split -> train -> generate -> pairwise -> evaluate -> report: every step of `STEPS` once, in
    order; each skips finished work, so the same command resumes after kill -9 or Ctrl-C. Prints the plan after
    the data step (it reads the data); `dry_run` prints the plan and stops. `before_writing` is called once after
    `preflight`, before the first write (not in a dry run): the CLI takes the run-dir lock there (`runlock`), so a
    config that fails its checks leaves no run dir behind.

    Returns:
        The report summary (see `report.build_report`), or the plan dict in a dry run.
    Raises:
        PhasedIFTError: see `preflight` and the steps.
    """
    import time

    console = console or Console(stderr=True)
    missing = preflight(cfg, dry_run=dry_run)
    cfg, precision = resolve_config_precision(cfg)
    run = RunDir(cfg.run_dir)
    if dry_run:
        return plan_run(cfg, console, missing, precision, estimate=True)
    if before_writing is not None:
        before_writing()
    _warn_changed_config(cfg, run, console)
    save_config(cfg, run.config, header=describe_precision(precision))
    n_first = STEPS.index(get_step("data")) + 1  # the plan reads the data (and sit/, with sit.source=generated)
    results = run_steps(cfg, STEPS[:n_first], console=console)
    plan_run(cfg, console, precision=precision)
    t0 = time.time()
    results.update(run_steps(cfg, STEPS[n_first:], console=console))
    summary = results["report"]
    console.rule(f"done in {time.time() - t0:.0f} s")
    for line in verdict_lines(summary):
        console.print(line, highlight=False)
    rd = run.report_dir
    console.print(f"report: {rd / 'report.md'}  {rd / 'report.html'}  {rd / 'summary.json'}", highlight=False)
    return summary


def _warn_changed_config(cfg: Config, run: RunDir, console: Console) -> None:
    """Warn when the run dir's config.yaml differs from `cfg` (outputs made with the old values are kept)."""
    import yaml

    if run.config.is_file():
        changed = _config_changes(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}, config_to_dict(cfg))
        if changed:
            console.print(f"[yellow]warning:[/] {run.config} differs in {', '.join(changed)}; outputs already in "
                          f"the run dir were made with the old values and are kept. Use a new run_dir to redo them.",
                          highlight=False)
