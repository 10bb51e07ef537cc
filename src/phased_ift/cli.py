"""`phased-ift` command line: thin subcommands over the library.

    phased-ift data check PATH [--format F]        validate a data file, count records read and rejected
    phased-ift data sources                        list the named data sources and where they resolve
    phased-ift new CONFIG --model M --data D [--gpus N]   a commented starter config for your model and data
    phased-ift config [CONFIG] [key=value ...]     print every config key with its default and help
    phased-ift sit-generate CONFIG [key=value ...] Seq-Instruct data (sit.source=generated) -> <run_dir>/sit/
    phased-ift score CONFIG [key=value ...]        difficulty scores -> <run_dir>/scores/<scorer>.jsonl
    phased-ift split CONFIG [key=value ...]        phases -> <run_dir>/phases/
    phased-ift train CONFIG [key=value ...]        train every configured arm, phase by phase
    phased-ift generate CONFIG [key=value ...]     answers on the test sets
    phased-ift pairwise CONFIG [key=value ...]     pairwise judging of arms in both orders (win rates)
    phased-ift evaluate CONFIG [key=value ...]     the benchmarks: reference loss, IFEval, MT-Bench, SeqEval grading
    phased-ift report CONFIG [key=value ...]       report.md/html, plots, summary.json
    phased-ift run CONFIG [key=value ...]          all of the above, resumable
    phased-ift ifeval RESPONSES.jsonl [--inputs F] IFEval's four numbers and per-group table of any response file
    phased-ift judge-check CONFIG [--annotations F] [--limit N]   the configured judge against GPT-4's preferences
    phased-ift serve-command CONFIG [--server vllm|llama-cpp]      the server command for generate.backend=server
    phased-ift export-gguf CHECKPOINT OUT.gguf [--outtype f32]     a checkpoint (adapter merged) as a GGUF file
    phased-ift export CONFIG --to llama-factory|axolotl|hf OUT_DIR  the split's phases for other training tools
(the choices of --to, --server and --outtype are `config_choices`' names, as every registry's)

User errors print one paragraph (no traceback) and exit with status 2; Ctrl-C exits with 130 and the same
command resumes. The commands that write a run dir (sit-generate, score, split, train, generate, pairwise, evaluate, report,
run, judge-check; not with --dry-run) hold its lock (`runlock`): while another process holds it they stop at once
with status 75, or wait for it with --wait. While they hold it, SIGTERM (SLURM preemption, scancel) and SIGINT
(Ctrl-C) stop them gracefully (`shutdown`): training at the end of the current optimizer step with a Trainer
checkpoint, scoring / generation / judging after the item in flight; one line, status 143 (SIGTERM) or 130
(SIGINT), and the same command resumes; a second signal exits at once. A write the disk refuses (full, quota,
read-only, permission) is one line naming the file and the free space, status 74 (`diskerrors`). Out of memory:
status 3.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from typing import Callable

from rich.console import Console

from phased_ift import __version__
from phased_ift.config_choices import (EXPORT_TARGETS, FORMAT_CHOICES, GGUF_TYPES, NAMED_MODELS, SERVERS, described,
                                      listing)  # help texts and choices from the registry names
from phased_ift.errors import PhasedIFTError

console = Console(stderr=True)


def _load(args: argparse.Namespace):
    from phased_ift.config import load_config

    cfg = load_config(args.config, args.overrides)
    args.run_dir = cfg.run_dir  # where a write error that names no file happened (`main`)
    return cfg


def _locked(args: argparse.Namespace):
    """The config, with the run dir's lock held until `main` returns (`_lock`), except in a dry run."""
    cfg = _load(args)
    if not getattr(args, "dry_run", False):
        _lock(args, cfg.run_dir)
    return cfg


def _lock(args: argparse.Namespace, run_dir: str) -> None:
    """Take the run dir's lock (`runlock.run_lock`: --wait, notes on the console) and hold it until `main` returns;
    from then on SIGTERM / SIGINT stop the command gracefully (`shutdown.handling`)."""
    from phased_ift import shutdown
    from phased_ift.runlock import run_lock

    args.exit_stack.enter_context(run_lock(
        run_dir, wait=args.wait, command=shlex.join(["phased-ift", *args.argv]),
        note=lambda text: console.print(f"[yellow]note:[/] {text}", highlight=False, soft_wrap=True)))
    args.exit_stack.enter_context(shutdown.handling())


# ---------------------------------------------------------------------------------------------------------------
# Handlers: each loads what it needs lazily so `phased-ift --help` stays fast.
# ---------------------------------------------------------------------------------------------------------------


def cmd_data_check(args: argparse.Namespace) -> int:
    return print_check(args.path, fmt=args.format, rejects=args.rejects, console=console)


def cmd_data_sources(args: argparse.Namespace) -> int:
    return print_sources(console=console)


def cmd_ifeval(args: argparse.Namespace) -> int:
    """`phased-ift ifeval FILE`: score {prompt, response} records as google-research's evaluation_main does
    (`ifeval.score_file`), print the four numbers and the per-group table, write the per-prompt JSON."""
    from phased_ift.evals.ifeval import format_table, score_file

    metrics, out = score_file(args.responses, args.inputs, args.out, seed=args.seed)
    for line in format_table(metrics):
        console.print(line, highlight=False)
    if metrics["rejects"]:
        console.print(f"{metrics['rejects']} records were not scored (no matching IFEval prompt or a repeated one); "
                      f"they are listed with their reasons under \"rejects\" in {out}", highlight=False)
    console.print(f"per-prompt results -> {out}", highlight=False)
    return 0


def cmd_judge_check(args: argparse.Namespace) -> int:
    """`phased-ift judge-check CONFIG`: the configured pairwise judge on pairs with known GPT-4 preferences
    (`pairwise.check.run_judge_check`); prints agreement, kappa, position and length bias with CIs, anchor and cost."""
    from phased_ift.pairwise.check import format_check, run_judge_check

    result = run_judge_check(_locked(args), args.annotations, args.limit, args.seed, console=console)
    for line in format_check(result):
        console.print(line, highlight=False)
    return 0


def print_check(path: str, fmt: str = "auto", rejects: str | None = None, console: Console | None = None) -> int:
    """`phased-ift data check`: validate a data file (`data.check_file`) and print what was read: file, format,
    records, read, rejected (+ reason histogram), kept duplicates, where the rejects were written.

    Returns:
        0 (rejected records are reported, not fatal).

    Raises:
        PhasedIFTError: unreadable file (the CLI prints it and exits with status 2).
    """
    from phased_ift.data import check_file

    console = console or Console(stderr=True)
    report = check_file(path, fmt=fmt, rejects=rejects)
    result = report.result
    console.print(f"file      {report.target}", highlight=False)
    console.print(f"format    {result.format}", highlight=False)
    console.print(f"records   {result.total}", highlight=False)
    console.print(f"read      {len(result.examples)}", highlight=False)
    console.print(f"rejected  {len(result.rejects)}", highlight=False)
    for reason, n in result.reason_counts().items():
        console.print(f"  {n:>6}  {reason}", highlight=False)
    if result.duplicates:
        pairs = ", ".join(f"{a} = {b}" for a, b in result.duplicates[:10])
        console.print(f"kept {len(result.duplicates)} duplicate example(s) (not rejected: "
                      f"{'test-set prompts' if result.format == 'testset' else 'dedupe off'}): {pairs}",
                      highlight=False)
    if report.rejects_path is not None:
        console.print(f"rejects written to {report.rejects_path}", highlight=False)
    if not result.examples:
        console.print("[bold red]warning:[/] no usable record in this file.")
    return 0


def print_sources(console: Console | None = None) -> int:
    """`phased-ift data sources`: a table of the named sources and test sets (`data.source_status`): format,
    path under the data home, present?, records read/rejected.

    Returns:
        0. Raises PhasedIFTError only when there is no data home at all.
    """
    from rich.table import Table

    from phased_ift.data import DATA_HOME_ENV, data_home, source_status

    console = console or Console(stderr=True)
    home = data_home()
    table = Table("name", "kind", "format", "present", "read", "rejected", "file (under the data home)",
                  title=f"data home: {home}  (set {DATA_HOME_ENV} to change)")
    for row in source_status(home):
        read = "-" if row.read is None else str(row.read)
        rejected = "-" if row.rejected is None else str(row.rejected)
        table.add_row(row.name, row.kind, row.format, "yes" if row.present else "NO", read, rejected, row.file)
    console.print(table)
    return 0


def cmd_serve_command(args: argparse.Namespace) -> int:
    """`phased-ift serve-command CONFIG`: print the commands that serve the run's evaluation checkpoints under the
    names generate.backend=server asks for (`serving.serve_commands`)."""
    from phased_ift.rundir import RunDir
    from phased_ift.generation.serving import serve_commands

    cfg = _load(args)
    for line in serve_commands(cfg, RunDir(cfg.run_dir), args.server, args.port, args.gguf_dir):
        print(line)
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from phased_ift.modeling import export_gguf

    console.print(f"wrote {export_gguf(args.checkpoint, args.out, args.outtype)}", highlight=False)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`phased-ift export CONFIG --to TARGET OUT_DIR`: the split run's phases in another tool's format
    (`export.export_run`); reads the run dir, writes only OUT_DIR (no run-dir lock)."""
    from phased_ift.export import export_run

    files = export_run(_load(args), args.to, args.out_dir)
    console.print(f"export --to {args.to}: wrote {len(files)} files to {args.out_dir}", highlight=False)
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    """`phased-ift new CONFIG --model M --data D [--gpus N]`: write a starter config (`starter.write_starter`,
    never over an existing file) and print the two commands to run next."""
    from phased_ift.data import SOURCES
    from phased_ift.starter import next_commands, write_starter

    path = write_starter(args.path, args.model, args.data, args.gpus, args.run_dir)
    hub_id = args.data.count("/") == 1 and not os.path.splitext(args.data)[1]  # e.g. tatsu-lab/alpaca
    if args.data not in SOURCES and not os.path.exists(args.data) and not hub_id:
        console.print(f"[yellow]note:[/] {args.data} does not exist (yet); the config names it as given, relative to "
                      f"the folder you run phased-ift from.", highlight=False, soft_wrap=True)
    print(f"wrote {path}\nnext:")
    for command in next_commands(path, args.gpus):
        print(f"  {command}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from rich.table import Table

    from phased_ift.config import config_to_dict, describe

    if args.config:
        import yaml

        cfg = _load(args)
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    table = Table("key", "default", "help", show_lines=False)
    for key, default, help_text in describe():
        table.add_row(key, default, help_text)
    Console().print(table)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    if args.against:
        from phased_ift.scoring.agreement import format_table, run_agreement

        if args.against != "paper":
            raise PhasedIFTError(f"--against {args.against!r}: only 'paper' (the paper's released GPT-4 scores, "
                                 "from PHASED_IFT_DATA_HOME) is supported.")
        cfg = _locked(args)
        scorers = [s for s in (args.scorers or cfg.scoring.scorer).split(",") if s]
        rows = run_agreement(cfg, scorers, limit=args.limit, seed=args.seed, console=console, dry_run=args.dry_run)
        if rows:
            print(format_table(rows))
        return 0
    from phased_ift.pipeline import step_score

    step_score(_locked(args), dry_run=args.dry_run, console=console)
    return 0


def cmd_sit_generate(args: argparse.Namespace) -> int:
    """`phased-ift sit-generate CONFIG [--dry-run]`: the Seq-Instruct pipeline (`sit.generation.generate_step`)."""
    from phased_ift.pipeline import run_command

    cfg = _load(args)
    if cfg.sit.source != "generated":
        raise PhasedIFTError(f"sit-generate writes <run_dir>/sit/sequential.jsonl for sit.source=generated, but "
                             f"sit.source is {cfg.sit.source!r}; run it with sit.source=generated (and "
                             f"sit.generator.base_url / sit.generator.model set).")
    if not args.dry_run:
        _lock(args, cfg.run_dir)
    run_command("sit", cfg, dry_run=args.dry_run, console=console)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from phased_ift.pipeline import step_split

    step_split(_locked(args), console=console)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from phased_ift.pipeline import step_train

    step_train(_locked(args), dry_run=args.dry_run, console=console)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from phased_ift.pipeline import step_generate

    step_generate(_locked(args), console=console)
    return 0


def cmd_pairwise(args: argparse.Namespace) -> int:
    from phased_ift.pipeline import step_pairwise

    step_pairwise(_locked(args), dry_run=args.dry_run, console=console)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from phased_ift.pipeline import step_evaluate

    step_evaluate(_locked(args), dry_run=args.dry_run, console=console)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from phased_ift.pipeline import step_report
    from phased_ift.report import verdict_lines

    summary = step_report(_locked(args), console=console)
    for line in verdict_lines(summary):
        console.print(line, highlight=False)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from phased_ift.pipeline import run_pipeline

    cfg = _load(args)  # the lock after preflight: a config that fails its checks leaves no run dir behind
    run_pipeline(cfg, dry_run=args.dry_run, console=console, before_writing=lambda: _lock(args, cfg.run_dir))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------------------


def _config_args(p: argparse.ArgumentParser, dry_run: bool = False) -> None:
    p.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=2")
    if dry_run:
        p.add_argument("--dry-run", action="store_true", help="print the plan (counts, tokens, requests) and stop")


def _wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="when another process holds the run dir's lock, wait for it "
                   "to finish instead of stopping at once (exit status 75)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phased-ift",
        description="Phased Instruction Fine-Tuning: score difficulty, split into phases, train phase by phase "
        "against the one-off IFT baseline and control arms, judge pairwise in both orders, report honestly.",
    )
    parser.add_argument("--version", action="version", version=f"phased-ift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("data", help="check data files, list named sources")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="validate a data file; print records read and rejected")
    c.add_argument("path", help="file or named source (e.g. alpagasus/random_9k)")
    c.add_argument("--format", default="auto", help=listing(FORMAT_CHOICES))
    c.add_argument("--rejects", default=None, help="write rejected records here (default: ./<file stem>"
                   ".rejects.jsonl in the current directory; written only when a record is rejected)")
    c.set_defaults(func=cmd_data_check)
    s = dsub.add_parser("sources", help="list named data sources and whether they are present")
    s.set_defaults(func=cmd_data_sources)

    _add_new_command(sub)
    p = sub.add_parser("config", help="show every config key with its help, or the resolved CONFIG")
    p.add_argument("config", nargs="?", default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_config)

    commands: list[tuple[str, str, Callable, bool]] = [
        ("sit-generate", "write sequential instructions with an LLM (Seq-Instruct; sit.source=generated)",
         cmd_sit_generate, True),
        ("score", "score instruction difficulty (judge, ifd, loss, length, learned, meta)", cmd_score, True),
        ("split", "split scored data into phases of increasing difficulty (+ controls)", cmd_split, False),
        ("train", "train every configured arm (train.arms) phase by phase", cmd_train, True),
        ("generate", "generate answers on the test sets for every arm", cmd_generate, False),
        ("pairwise", "judge arm pairs in both answer orders (win rates)", cmd_pairwise, True),
        ("evaluate", "every benchmark on every checkpoint: reference loss, IFEval, MT-Bench and SeqEval grading",
         cmd_evaluate, True),
        ("report", "write report.md/html, plots and summary.json", cmd_report, False),
        ("run", "the whole pipeline, resumable", cmd_run, True),
    ]
    for name, help_text, func, dry in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _config_args(p, dry_run=dry)
        _wait_arg(p)
        p.set_defaults(func=func)
    p = sub.choices["score"]
    p.add_argument("--against", default=None, metavar="LABELS",
                   help="instead of scoring the run's data, score the reference set and report agreement with "
                   "LABELS ('paper': the paper's GPT-4 scores): ROC-AUC (>= 3.5), Spearman in stage 3, examples/s")
    p.add_argument("--scorers", default="", help="with --against: comma-separated scorers (default scoring.scorer)")
    p.add_argument("--limit", type=int, default=0, help="with --against: stratified sample size (0 = all ~23k)")
    p.add_argument("--seed", type=int, default=0, help="with --against: seed of the sample and CV folds")
    _add_check_commands(sub)
    _add_server_commands(sub)
    _add_export_command(sub)
    return parser


def _add_new_command(sub: argparse._SubParsersAction) -> None:
    """`phased-ift new CONFIG --model M --data D [--gpus N] [--run-dir R]` (docs/api.md, `starter`)."""
    p = sub.add_parser("new", help="write a commented starter config for your model and data",
                       description="Writes CONFIG (never over an existing file) for your model and data, sized for "
                       "--gpus, and prints the two commands to run next.")
    p.add_argument("path", metavar="CONFIG", help="the YAML file to write, e.g. my-run.yaml")
    p.add_argument("--model", required=True, help=f"named model ({listing(NAMED_MODELS, ', ')}), checkpoint dir or "
                   "hub id")
    p.add_argument("--data", required=True, help="your data file (json, jsonl, parquet, csv), a datasets folder or "
                   "hub id, or a named source")
    p.add_argument("--gpus", type=int, default=0, help="0 = CPU (default), 1 = one GPU, N > 1 = N GPUs of one "
                   "machine (accelerate launch)")
    p.add_argument("--run-dir", default=None, help="run_dir (default runs/<CONFIG stem>)")
    p.set_defaults(func=cmd_new)


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    """`phased-ift export CONFIG --to TARGET OUT_DIR [key=value ...]` (docs/export.md)."""
    p = sub.add_parser("export", help="write the split's phases for LLaMA-Factory, Axolotl or as a HF dataset",
                       description="Reads the run dir after `phased-ift split` and writes OUT_DIR: llama-factory / "
                       "axolotl: data files, one training config per arm x seed x phase chained as phased-ift "
                       "chains phases, run.sh; hf: a datasets.DatasetDict (save_to_disk) and its dataset card.")
    p.add_argument("config", help="YAML config of the run, e.g. configs/quickstart.yaml")
    p.add_argument("--to", required=True, choices=list(EXPORT_TARGETS), metavar="TARGET",
                   help=described(EXPORT_TARGETS))
    p.add_argument("out_dir", help="folder to write (created; files of an earlier export are replaced)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.seeds=[0,1]")
    p.set_defaults(func=cmd_export)


def _add_server_commands(sub: argparse._SubParsersAction) -> None:
    """`phased-ift serve-command CONFIG` and `phased-ift export-gguf CHECKPOINT OUT`: serving checkpoints to
    generate.backend=server (docs/evaluation.md)."""
    p = sub.add_parser("serve-command", help="print the server command that serves the run's checkpoints for "
                       "generate.backend=server", description="One served model name per checkpoint of the "
                       "evaluation grid (generate.server.model_template): vLLM with one LoRA module per adapter "
                       "checkpoint, or llama.cpp over GGUF exports.")
    _config_args(p)
    p.add_argument("--server", choices=list(SERVERS), default=SERVERS[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gguf-dir", default=None, help="llama-cpp: where the GGUF files go (default <run_dir>/gguf)")
    p.set_defaults(func=cmd_serve_command)
    p = sub.add_parser("export-gguf", help="write a checkpoint (a LoRA adapter merged into its base) as a GGUF file "
                       "for llama.cpp", description="Runs llama.cpp's convert_hf_to_gguf.py (see docs/evaluation.md).")
    p.add_argument("checkpoint", help="checkpoint dir (full model or adapter) or named model")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--outtype", default=GGUF_TYPES[0], choices=list(GGUF_TYPES))
    p.set_defaults(func=cmd_export_gguf)


def _add_check_commands(sub: argparse._SubParsersAction) -> None:
    """`phased-ift ifeval FILE` and `phased-ift judge-check CONFIG`: checks that need no pipeline run."""
    p = sub.add_parser("ifeval", help="score a {prompt, response} file with IFEval's checks (no judge)",
                       description="IFEval (Zhou et al. 2023): prompt- and instruction-level accuracy, strict and "
                       "loose, with 95%% bootstrap CIs over prompts, and the per-group table.")
    p.add_argument("responses", help="JSON lines of {prompt, response} (google-research's format; {instruction, "
                   "output} rows of phased-ift's generations also work)")
    p.add_argument("--inputs", default=None, help="IFEval's input_data.jsonl (default: the data home's "
                   "ifeval/input_data.jsonl)")
    p.add_argument("--out", default=None, help="results JSON (default: ./<responses stem>.ifeval.json in the current "
                   "directory)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_ifeval)
    p = sub.add_parser("judge-check", help="check the configured pairwise judge against GPT-4's preferences",
                       description="Judge AlpacaEval answer pairs whose GPT-4 preference is known, in both orders: "
                       "agreement, Cohen's kappa, position consistency, first-position and longer-answer win rates, "
                       "unparseable rate, each with a bootstrap CI; alpaca-7b's win rate as a published anchor.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--annotations", default=None, help="AlpacaEval annotations.json (default: the data home's "
                   "alpaca_eval/alpaca-7b/alpaca_eval_gpt4/annotations.json, 805 pairs)")
    p.add_argument("--limit", type=int, default=0, help="a seeded sample of this many pairs (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    _wait_arg(p)
    p.set_defaults(func=cmd_judge_check)


def main(argv: list[str] | None = None) -> int:
    """The `phased-ift` command. Returns the exit status: 0; 2 a user error (`PhasedIFTError`, one paragraph);
    3 out of memory; 74 a write the disk refused (`diskerrors`); 75 the run dir is locked by another process
    (`runlock`); 143 / 130 stopped by SIGTERM / SIGINT (`shutdown`), or 130 Ctrl-C before the handlers are in."""
    from phased_ift.diskerrors import write_error
    from phased_ift.shutdown import Stopped

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["judge"]:  # the pairwise step's old command
        console.print("[bold red]error:[/] `phased-ift judge` was renamed `phased-ift pairwise` (pairwise judging of "
                      "arms); run `phased-ift pairwise CONFIG`.", highlight=False, soft_wrap=True)
        return 2
    parser = build_parser()
    # key=value overrides may also follow options (`run CONFIG --dry-run a.b=1`), which argparse alone rejects.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # Our own rich bars report progress; transformers' tqdm bars ("Loading weights") would clutter the log.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args.argv = argv
    try:
        with contextlib.ExitStack() as args.exit_stack:  # the run-dir lock of `_locked`, released on the way out
            return int(args.func(args) or 0)
    except Stopped as e:
        console.print(f"[yellow]stopped:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except PhasedIFTError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except Exception as e:
        if (err := write_error(e, where=getattr(args, "run_dir", None))) is not None:  # a library's own write
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            return err.exit_code
        if not isinstance(e, MemoryError) and not (isinstance(e, RuntimeError) and "out of memory" in str(e).lower()):
            raise
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        console.print(f"[bold red]out of memory[/] ({first}). Lower train.batch_size (and raise "
                      "train.grad_accum to keep the batch), model.max_length, generate.batch_size or "
                      "scoring.batch_size, or set train.gradient_checkpointing=true; then run the same command to "
                      "resume.", highlight=False, soft_wrap=True)
        return 3
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished work is saved; run the same command again to resume.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
