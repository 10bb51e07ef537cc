"""The pipeline: data -> score -> split -> train -> generate -> judge -> report, in one run dir.

Each `step_*` reads its inputs from the run dir, skips work whose outputs already exist, and writes its outputs
atomically, so `phased-ift run CONFIG` after kill -9 or Ctrl-C resumes where it stopped.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from rich.console import Console

from phased_ift.config import Config, save_config
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir


def _not_yet(step: str) -> None:
    raise PhasedIFTError(f"`{step}` is not yet available in this version of phased-ift.")


def step_data(cfg: Config, console: Console | None = None) -> RunDir:
    """Read every configured source into data/train.jsonl (+ data/rejects.jsonl); skipped when train.jsonl exists.

    Sources are concatenated in config order; with cfg.data.dedupe, duplicate examples (within and across sources)
    go to rejects. Ids are made unique ("<source>:<id>" on collision). rejects.jsonl is written before
    train.jsonl, so an existing train.jsonl means the step finished.

    Raises:
        PhasedIFTError: no sources configured, an unreadable source, or every record rejected.
    """
    from phased_ift.data import combine_results, load_source, write_examples, write_jsonl

    run = RunDir(cfg.run_dir)
    if run.train_data.is_file():
        return run
    if not cfg.data.train:
        raise PhasedIFTError("config: data.train lists no sources. Add one, e.g. `data: {train: [{name: "
                             "alpagasus/random_9k, limit: 1000}]}` (named sources: `phased-ift data sources`), or "
                             "a file with `path:`.")
    results = [load_source(ds, dedupe=cfg.data.dedupe) for ds in cfg.data.train]
    examples, rejects = combine_results(results, dedupe=cfg.data.dedupe)
    if not examples:
        reasons = sorted({r["reason"].split(":", 1)[0] for r in rejects})
        raise PhasedIFTError(f"data: every record of the configured sources was rejected ({len(rejects)} rejects; "
                             f"reasons: {', '.join(reasons) or 'none'}). Run `phased-ift data check FILE` on each "
                             f"source to see why, and fix the files or their `format:`.")
    write_jsonl(run.rejects, rejects)
    write_examples(run.train_data, examples)
    if console is not None:
        sampled = "".join(f"; {d.name or d.path}: a seeded sample of {d.limit} of {r.total - len(r.rejects)} "
                          f"usable records" for d, r in zip(cfg.data.train, results) if d.limit)
        console.print(f"data: {len(examples)} examples from {len(results)} source(s){sampled}; {len(rejects)} "
                      f"records rejected (reasons in {run.rejects}) -> {run.train_data}", highlight=False)
    return run


def step_score(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """Score difficulty with cfg.scoring.scorer -> scores/<scorer>.jsonl (resumes: scored ids are skipped).

    dry_run prints what would be scored (for the judge: requests and estimated tokens) and sends nothing.
    Failed examples get a row with score null and the reason; they are counted, never given a made-up score.
    """
    from phased_ift.data import read_examples
    from phased_ift.scoring import dry_run_score, score_examples

    step_data(cfg, console=console)
    run = RunDir(cfg.run_dir)
    if not run.train_data.is_file():
        raise PhasedIFTError(f"{run.train_data} is missing; run `phased-ift data` / the data step first.")
    examples = read_examples(run.train_data)
    cache_dir = run.llm_cache.parent
    if dry_run:
        dry_run_score(examples, cfg, cache_dir, console=console)
        return
    s = score_examples(examples, cfg, run.scores(cfg.scoring.scorer), cache_dir=cache_dir, console=console)
    if console is not None:
        extra = "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in s.stats.items()
                        if k in ("padding_fraction", "cv_auc", "cv_spearman", "n_labelled"))
        console.print(f"score {s.scorer}: {s.total} examples, {s.reused} already scored, {s.scored} scored "
                      f"({s.examples_per_s:.1f} ex/s), {s.failed} failed{extra} -> {s.path}", highlight=False)


def step_split(cfg: Config, console: Console | None = None) -> None:
    """Split scored data into phases (+ random/reverse controls) -> phases/ (manifest.json written last).

    Calls `step_score` first unless scores/<scorer>.jsonl exists. Under `accelerate launch` only the main process
    writes; the others wait (accelerate's `main_process_first`)."""
    from accelerate import PartialState

    from phased_ift.design import controls
    from phased_ift.phases import write_split

    import torch

    run = RunDir(cfg.run_dir)
    # cpu=True on a machine without CUDA, else accelerate does not see a gloo multi-process launch.
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        if not run.scores(cfg.scoring.scorer).is_file():
            step_score(cfg, console=console)
        write_split(run, cfg.scoring.scorer, cfg.phases.k, cfg.phases.method, cfg.phases.thresholds,
                    cfg.phases.seed, controls(cfg.train.arms), console=console)


def step_train(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """Train every configured arm and seed, phase by phase -> checkpoints/ (or print the plan with dry_run)."""
    from phased_ift.train import print_plan, train_phases

    run = RunDir(cfg.run_dir)
    if dry_run and not run.phases_manifest.is_file() and not run.scores(cfg.scoring.scorer).is_file():
        # A plan must not start scoring (API calls, model loads): it assumes K equal phases of the data instead.
        if not run.train_data.is_file():
            step_data(cfg, console=console)
    else:
        step_split(cfg, console=console)
    if dry_run:
        print_plan(cfg, run, console=console)
        return
    train_phases(cfg, run, console=console)


def step_generate(cfg: Config, console: Console | None = None) -> None:
    """Generate answers on the test sets for every arm x seed x final phase (every phase when
    generate.every_phase) -> generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl. Calls `step_train` first;
    finished test sets (settings file present) are skipped without loading the model."""
    from phased_ift.data import load_test_set
    from phased_ift.generate import (checkpoint_dir, checkpoint_phases, generate_answers, load_for_inference,
                                     settings_path, testset_key)

    step_train(cfg, console=console)
    console = console or Console(stderr=True)
    run, g = RunDir(cfg.run_dir), cfg.generate
    testsets = {testset_key(n): load_test_set(n, limit=g.limit, seed=g.seed) for n in g.test_sets}
    for arm in cfg.train.arms:
        for seed in cfg.train.seeds:
            for k in checkpoint_phases(cfg, arm):
                ckpt, loaded = checkpoint_dir(run, arm, k, seed), None
                for name, examples in testsets.items():
                    out = run.generations(arm, k, name, seed)
                    if not settings_path(out).is_file() and loaded is None:
                        loaded = load_for_inference(ckpt, dtype=cfg.model.dtype)  # once per checkpoint
                    generate_answers(ckpt, examples, g.max_new_tokens, g.batch_size, cfg.model.template, out,
                                     console=console, backend=g.backend, dtype=cfg.model.dtype, loaded=loaded,
                                     max_batch_tokens=g.max_batch_tokens)
                    console.print(f"generate: {arm} seed {seed} phase {k} {name} ({len(examples)} prompts) -> {out}",
                                  highlight=False)


def step_judge(cfg: Config, dry_run: bool = False, console: Console | None = None) -> None:
    """Judge arm pairs in both answer orders -> judgements/<a>__vs__<b>/seed_<s>/[phase_<k>/]<testset>.jsonl.

    Calls `step_generate` first (not in dry_run: a plan must not train or generate). No judge endpoint → logs how
    to set one and returns. Pairs: judge.pairs, or every arm against one-off (the first arm when one-off is not
    trained); with generate.every_phase also phase k of each arm against the baseline's final model (the trend).
    dry_run prints the request count and estimated tokens and sends nothing. Ends with sent / cache hits /
    failures / tokens."""
    from phased_ift.data import load_reference_answers
    from phased_ift.generate import read_generations, settings_path, testset_key
    from phased_ift.judge import judge_jobs, judge_pairs, load_template, plan_requests
    from phased_ift.llm_client import LLMClient

    console = console or Console(stderr=True)
    if not cfg.judge.judge.enabled:
        console.print("judge: not configured (set judge.judge.base_url and judge.judge.model, e.g. "
                      "judge.judge.base_url=https://api.openai.com/v1 judge.judge.model=gpt-4-0613)", highlight=False)
        return
    if not dry_run:
        step_generate(cfg, console=console)
    run, j = RunDir(cfg.run_dir), cfg.judge
    template = load_template(j.template)
    refs = load_reference_answers(cfg.evaluation.reference) if template.needs_reference else None
    client = LLMClient(j.judge, run.llm_cache, console=console)
    planned: list[dict] = []
    missing = 0
    try:
        for job in judge_jobs(cfg):
            for name in (testset_key(n) for n in cfg.generate.test_sets):
                ga = run.generations(job["arm_a"], job["phase_a"], name, job["seed"])
                gb = run.generations(job["arm_b"], job["phase_b"], name, job["seed"])
                out = run.judgements(job["arm_a"], job["arm_b"], name, job["seed"], job["phase"])
                if dry_run:
                    if settings_path(ga).is_file() and settings_path(gb).is_file():
                        planned += plan_requests(read_generations(ga), read_generations(gb), template, refs,
                                                 j.judge.temperature, j.judge.max_tokens)
                    else:
                        missing += 1
                    continue
                res = judge_pairs(client, read_generations(ga), read_generations(gb), job["arm_a"], job["arm_b"],
                                  out, template, name, references=refs, temperature=j.judge.temperature,
                                  max_tokens=j.judge.max_tokens, console=console)
                wr = "n/a" if res["win_rate"] is None else f"{res['win_rate']:.3f}"
                console.print(
                    f"judge: {job['arm_a']} vs {job['arm_b']} seed {job['seed']}"
                    f"{'' if job['phase'] is None else ' phase ' + str(job['phase'])} {name}: {res['wins']}W "
                    f"{res['ties']}T {res['losses']}L {res['unparseable']} unparseable"
                    f"{', ' + str(res['no_reference']) + ' without reference' if res['no_reference'] else ''}"
                    f"{', ' + str(res['failed']) + ' FAILED (re-run to retry)' if res['failed'] else ''}, "
                    f"win rate {wr} -> {out}", highlight=False)
        if dry_run:
            est = client.estimate(planned)
            console.print(
                f"judge (dry run): {est['requests']} distinct requests, {est['cached']} cached, {est['to_send']} to "
                f"send, ~{est['prompt_tokens']} prompt + <= {est['completion_tokens']} completion tokens"
                f"{f'; {missing} test sets not generated yet (not counted)' if missing else ''}", highlight=False)
            return
        s = client.stats
        console.print(f"judge: sent {s['sent']}, cache hits {s['cache_hits']}, failures {s['failures']}, tokens "
                      f"{s['prompt_tokens']} prompt + {s['completion_tokens']} completion", highlight=False)
    finally:
        client.close()


def step_evaluate(cfg: Config, console: Console | None = None) -> None:
    """Offline evaluation: loss of the GPT-4 reference answers per checkpoint ->
    evaluation/<arm>/seed_<s>/phase_<k>/reference_loss.json. Prompts: those of generate.test_sets that have a
    reference (matched by normalised instruction, counts logged), or a seeded evaluation.limit sample of
    alpaca_eval. Calls `step_train` first; existing files are skipped."""
    import json

    from phased_ift.data import load_reference_answers, load_test_set
    from phased_ift.evaluation import attach_references, reference_loss
    from phased_ift.generate import checkpoint_dir, checkpoint_phases, load_for_inference, testset_key

    console = console or Console(stderr=True)
    ev = cfg.evaluation
    if not ev.reference_loss:
        console.print("evaluate: evaluation.reference_loss is false; skipped", highlight=False)
        return
    step_train(cfg, console=console)
    run, g = RunDir(cfg.run_dir), cfg.generate
    refs = load_reference_answers(ev.reference)
    if ev.limit:
        sets = {"alpaca_eval": load_test_set("alpaca_eval", limit=ev.limit, seed=cfg.seed)}
    else:
        sets = {testset_key(n): load_test_set(n, limit=g.limit, seed=g.seed) for n in g.test_sets}
    matched = {name: attach_references(ex, refs) for name, ex in sets.items()}
    for name, ex in sets.items():
        console.print(f"evaluate: {name}: {len(matched[name])} of {len(ex)} prompts have a reference answer "
                      f"({ev.reference})", highlight=False)
    if not any(matched.values()):
        raise PhasedIFTError(f"evaluate: none of the prompts of {list(sets)} has a reference answer in "
                             f"{ev.reference}; add vicuna/oasst/helpful_base/alpaca_eval to generate.test_sets or "
                             "set evaluation.limit=N to use a sample of alpaca_eval.")
    for arm in cfg.train.arms:
        for seed in cfg.train.seeds:
            for k in checkpoint_phases(cfg, arm):
                out = run.evaluation(arm, k, seed)
                if out.is_file():
                    continue
                ckpt = checkpoint_dir(run, arm, k, seed)
                loaded = load_for_inference(ckpt, dtype=cfg.model.dtype)
                result = {"arm": arm, "phase": k, "seed": seed, "reference": ev.reference, "testsets": {}}
                for name, ex in matched.items():
                    r = reference_loss(ckpt, ex, cfg.model.template, ev.batch_size, ev.max_length, loaded=loaded)
                    result["testsets"][name] = {**r, "n_prompts": len(sets[name])}
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
                tmp.replace(out)
                means = ", ".join(f"{n} {t['mean_loss']:.3f}" for n, t in result["testsets"].items() if t["n"])
                console.print(f"evaluate: {arm} seed {seed} phase {k}: reference loss {means} -> {out}",
                              highlight=False)


def step_report(cfg: Config, console: Console | None = None) -> dict:
    """Write report/report.md, report.html, PNGs and summary.json; returns the summary dict.

    Runs the generation, judge and offline-evaluation steps first (each skips finished work); the report itself is
    always rebuilt, as it is cheap and must reflect the latest files.
    """
    from phased_ift.report import build_report

    step_generate(cfg, console=console)  # answer lengths are reported even without a judge
    step_judge(cfg, console=console)
    step_evaluate(cfg, console=console)
    return build_report(RunDir(cfg.run_dir), cfg, console=console)


def preflight(cfg: Config, dry_run: bool = False) -> list[str]:
    """Check what can be checked cheaply before any heavy work: data sources, test sets, the model, the scorer,
    the judge endpoint.

    Returns:
        Named sources missing from the data home that a dry run plans with their upstream size (dry runs only).

    Raises:
        PhasedIFTError: a missing data file (says where to put it), an unknown test set, a missing model package,
            an unknown scorer, an unreachable judge (not in dry runs).
    """
    from phased_ift.data import SOURCES, load_test_set, source_path
    from phased_ift.modeling import NAMED_MODELS, gguf_path, resolve_model_path
    from phased_ift.scoring import SCORERS

    missing: list[str] = []
    for ds in cfg.data.train:
        if ds.name:
            try:
                source_path(ds.name)
            except PhasedIFTError:
                info = SOURCES.get(ds.name)
                if not (dry_run and info is not None and info.records):
                    raise
                missing.append(ds.name)
        elif _looks_local(ds.path) and not Path(ds.path).exists():
            raise PhasedIFTError(f"data source path {ds.path} does not exist; fix data.train[].path or use a named "
                                 f"source (`phased-ift data sources`).")
    for name in cfg.generate.test_sets:
        load_test_set(name, limit=1)  # unknown names / missing files raise here, before training
    if cfg.model.name_or_path in NAMED_MODELS:
        gguf_path(cfg.model.name_or_path)  # the package is installed (conversion happens later, once)
    else:
        resolve_model_path(cfg.model.name_or_path)  # a local path must exist; hub ids pass
    if cfg.scoring.scorer not in SCORERS:
        raise PhasedIFTError(f"config: scoring.scorer={cfg.scoring.scorer!r} is not one of {sorted(SCORERS)}.")
    if cfg.scoring.scorer == "judge" and not cfg.scoring.judge.enabled:
        raise PhasedIFTError("config: scoring.scorer=judge needs scoring.judge.base_url and scoring.judge.model.")
    if not dry_run:
        for what, ep in (("scoring.judge", cfg.scoring.judge), ("judge.judge", cfg.judge.judge)):
            if ep.enabled and (what == "judge.judge" or cfg.scoring.scorer == "judge"):
                _check_reachable(what, ep.base_url)
    return missing


def _looks_local(path: str) -> bool:
    """A file path rather than a Hugging Face hub id (which has no suffix and does not start with . / ~)."""
    return path.startswith((".", "/", "~")) or bool(Path(path).suffix)


def _check_reachable(what: str, base_url: str) -> None:
    """Fail fast (5 s) when nothing answers at an endpoint; any HTTP answer, even an error, counts as reachable."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=5.0).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        raise PhasedIFTError(f"{what}.base_url {base_url} is unreachable ({e}). Start the server "
                             f"(e.g. `python -m llama_cpp.server --model FILE.gguf --port 8000`) or fix the URL; "
                             f"or remove the endpoint to run without it.") from None


def plan_run(cfg: Config, console: Console, missing: Sequence[str] = ()) -> dict:
    """Print the plan: steps, examples, estimated training tokens, generation and judge requests. Reads the data
    (cheap) but trains, scores and sends nothing; named sources in `missing` (see `preflight`) are planned with
    stand-in examples of their upstream size. Returns the plan as a dict."""
    from rich.table import Table

    from phased_ift.data import load_test_set
    from phased_ift.generate import checkpoint_phases, testset_key
    from phased_ift.judge import judge_jobs
    from phased_ift.train import plan_training

    run = RunDir(cfg.run_dir)
    from phased_ift.data import SOURCES, data_home

    for name in missing:
        console.print(f"[yellow]note:[/] {name} ({SOURCES[name].path}) is not in the data home {data_home()}; the "
                      f"plan assumes its {SOURCES[name].records:,} upstream records. Put the file there before a real "
                      f"run.", highlight=False)
    stand_in = None
    if missing:
        stand_in = _stand_in_run(cfg)
        train_run = stand_in
    else:
        step_data(cfg, console=console)
        train_run = run
    tplan = plan_training(cfg, train_run)
    n_examples = max((sum(r["examples"] for r in rows) for rows in tplan["arms"].values()), default=0)
    tokens = {arm: sum(r["tokens_trained"] for r in rows) for arm, rows in tplan["arms"].items()}
    g = cfg.generate
    prompts = {testset_key(n): len(load_test_set(n, limit=g.limit, seed=g.seed)) for n in g.test_sets}
    n_ckpt = sum(len(checkpoint_phases(cfg, arm)) for arm in cfg.train.arms) * len(cfg.train.seeds)
    gen_answers = n_ckpt * sum(prompts.values())
    n_judge = 0
    if cfg.judge.judge.enabled:
        n_judge = 2 * sum(prompts.values()) * len(list(judge_jobs(cfg)))
    score_req = n_examples * cfg.scoring.samples if cfg.scoring.scorer == "judge" else 0
    table = Table("step", "what", "size", "output", title=f"plan for {run.root}", title_justify="left")
    table.add_row("data", ", ".join(d.name or d.path for d in cfg.data.train), f"{n_examples:,} examples",
                  "data/train.jsonl")
    table.add_row("score", cfg.scoring.scorer, f"{score_req:,} judge requests" if score_req else "offline, no requests",
                  f"scores/{cfg.scoring.scorer}.jsonl")
    table.add_row("split", f"{cfg.phases.k} phases by {cfg.phases.method}", "", "phases/")
    table.add_row("train", f"{', '.join(cfg.train.arms)} x seeds {cfg.train.seeds} ({cfg.train.method})",
                  f"~{sum(tokens.values()) * len(cfg.train.seeds):,} tokens, "
                  f"{sum(tplan['total_steps'].values()) * len(cfg.train.seeds):,} optimizer steps", "checkpoints/")
    table.add_row("generate", ", ".join(f"{k} ({v})" for k, v in prompts.items()),
                  f"{gen_answers:,} answers x <= {g.max_new_tokens} new tokens", "generations/")
    table.add_row("evaluate", "reference-answer loss" if cfg.evaluation.reference_loss else "off",
                  f"{n_ckpt} checkpoints" if cfg.evaluation.reference_loss else "", "evaluation/")
    table.add_row("judge", cfg.judge.judge.model or "not configured (judge.judge.base_url)",
                  f"{n_judge:,} requests (both orders)" if n_judge else "", "judgements/")
    table.add_row("report", "win rates, CIs, lengths, plots", "", "report/")
    console.print(table)
    console.print(tplan["note"], highlight=False)
    if stand_in is not None:
        shutil.rmtree(stand_in.root, ignore_errors=True)
    return {"examples": n_examples, "training_tokens": tokens, "steps": tplan["total_steps"], "prompts": prompts,
            "answers": gen_answers, "judge_requests": n_judge, "score_requests": score_req}


def _stand_in_run(cfg: Config) -> RunDir:
    """A temporary run dir whose data/train.jsonl stands in for sources missing from the data home (dry runs only):
    alpagasus/random_9k (a uniform random sample of Alpaca 52K) repeated to each missing source's upstream size."""
    import tempfile

    from phased_ift.config import DataSource
    from phased_ift.data import SOURCES, Example, load_source, write_examples

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


def run_pipeline(cfg: Config, dry_run: bool = False, console: Console | None = None) -> dict | None:
    """data -> score -> split -> train -> generate -> judge -> evaluate -> report; each step skips finished work,
    so the same command resumes after kill -9 or Ctrl-C. Prints the plan first; `dry_run` stops there.

    Returns:
        The report summary (see `report.build_report`), or the plan dict in a dry run.
    """
    import time

    import yaml

    from phased_ift.config import config_to_dict
    from phased_ift.report import verdict_lines

    console = console or Console(stderr=True)
    missing = preflight(cfg, dry_run=dry_run)
    run = RunDir(cfg.run_dir)
    if dry_run:
        return plan_run(cfg, console, missing)
    if run.config.is_file():
        changed = _config_changes(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}, config_to_dict(cfg))
        if changed:
            console.print(f"[yellow]warning:[/] {run.config} differs in {', '.join(changed)}; outputs already in "
                          f"the run dir were made with the old values and are kept. Use a new run_dir to redo them.",
                          highlight=False)
    save_config(cfg, run.config)
    plan_run(cfg, console)
    t0 = time.time()
    step_data(cfg, console=console)
    step_score(cfg, console=console)
    step_split(cfg, console=console)
    step_train(cfg, console=console)
    summary = step_report(cfg, console=console)  # runs generate, judge and evaluate first
    console.rule(f"done in {time.time() - t0:.0f} s")
    for line in verdict_lines(summary):
        console.print(line, highlight=False)
    rd = run.report_dir
    console.print(f"report: {rd / 'report.md'}  {rd / 'report.html'}  {rd / 'summary.json'}", highlight=False)
    return summary
