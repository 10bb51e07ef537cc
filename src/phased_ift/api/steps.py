"""The API's run-dir verbs: phases in memory written as a split run dir (`write_run`), the export for other
training tools (`export_phases`), phased training (`train_phases`), answers (`generate_answers`), judge-free
evaluation (`evaluate`), the report (`write_report`) and the whole pipeline (`run`).

Each takes phases in memory (from `api.inputs.split`) or a config / run dir, and a verb that writes a run dir holds
its lock (`runlock.run_lock`), as the CLI does. Sources: `phases.write_phases`, `export.export_run`,
`pipeline.run_command` (-> `train.train_phases`, `generate.generate_all`, `evals.step.evaluate_all`,
`report.build_report`), `generate.generate_answers`, `evals.reference_loss.reference_loss`, `pipeline.run_pipeline`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Iterator

from phased_ift.api.inputs import ConfigLike, DataLike, configure, load_data
from phased_ift.config import Config, save_config
from phased_ift.data import Example, read_examples, write_examples
from phased_ift.phases.design import controls, training_cells
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.reference_loss import reference_loss
from phased_ift.export import export_run
from phased_ift.generation import generate_answers as _generate, read_generations
from phased_ift.phases.split import write_phases
from phased_ift.pipeline import run_command, run_pipeline
from phased_ift.rundir import RunDir
from phased_ift.runio import write_jsonl
from phased_ift.runlock import run_lock
from phased_ift.scoring import score_row

DEFAULT_EXPORT_ARMS = ("phased",)  # what export_phases writes for phases in memory unless arms= says otherwise


# ---------------------------------------------------------------------------------------------------------------
# Phases in a run dir; export and training
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(run_dir: str, verb: str) -> Iterator[None]:
    """Hold the run dir's lock (`runlock.run_lock`) for the block, as the CLI does for its writing commands.

    Raises:
        PhasedIFTError (`runlock.RunDirBusy`): another process holds it.
    """
    with run_lock(run_dir, command=f"phased_ift.{verb} (Python API), run dir {run_dir}"):
        yield


def _phases_config(phases: Sequence[Sequence[Example]], config: ConfigLike, run_dir: str | os.PathLike,
                   overrides: Mapping[str, Any]) -> Config:
    """The config of a run dir that holds `phases`: its data is the run's own train.jsonl, its phases section and
    scorer say how the phases were made (`Phases` attributes; a plain list: quantiles, scorer meta)."""
    run = Path(run_dir)
    scorer = getattr(phases, "scorer", "meta")
    settings = {"run_dir": str(run), "data.train": [{"path": str(run / "data" / "train.jsonl"), "format": "messages"}],
                "scoring.scorer": scorer, "phases.k": len(phases),
                "phases.method": getattr(phases, "method", "quantiles"),
                "phases.thresholds": list(getattr(phases, "thresholds", [])), "phases.seed": getattr(phases, "seed", 0)}
    if scorer == "meta":
        settings["scoring.meta_key"] = "score"
    return configure(config, {**overrides, **settings})


def write_run(phases: Sequence[Sequence[Example]], run_dir: str | os.PathLike, *, config: ConfigLike = None,
              model: str | None = None, arms: Sequence[str] | None = None,
              overrides: Mapping[str, Any] | None = None) -> Config:
    """Write phases held in memory as a split run dir, the state `phased-ift split` leaves, so that every later
    step (`phased-ift train / export / run CONFIG`, `train_phases`, `export_phases`) runs on them.

    Writes data/train.jsonl (the union, phase by phase), data/rejects.jsonl (empty), scores/<scorer>.jsonl (each
    example's meta["score"]), phases/phase_<k>.jsonl, the control files of `arms` (e.g. phases/random/), then
    phases/manifest.json, and config.yaml: the returned config.

    Args:
        phases: `split`'s result (or K lists of Examples with meta["score"], easy -> hard).
        run_dir: the run dir (created). Refused when it holds checkpoints/ trained on other data.
        config, overrides: the rest of the config (training, generation, ...), as `configure`.
        model: model.name_or_path (the base model the phases are trained from).
        arms: train.arms (default: the config's; docs/training.md lists the arms).

    Returns:
        The run dir's config (also written to <run_dir>/config.yaml).

    Raises:
        PhasedIFTError: an example without meta["score"], duplicate ids, a run dir with other checkpoints, a bad key.
    Source: `phases.write_phases`, `design.controls`.
    """
    extra = {"model.name_or_path": model, "train.arms": list(arms) if arms is not None else None,
             **(overrides or {})}
    cfg = _phases_config(phases, config, run_dir, extra)
    with _locked(cfg.run_dir, "write_run"):
        _write_phases_run(phases, cfg)
    return cfg


def _write_phases_run(phases: Sequence[Sequence[Example]], cfg: Config) -> None:
    """The files of `write_run` (the caller holds the lock)."""
    run = RunDir(cfg.run_dir)
    union = [e for ph in phases for e in ph]
    unscored = next((e.id for e in union if not isinstance(e.meta.get("score"), (int, float))), None)
    if unscored is not None:
        raise PhasedIFTError(f"write_run: example {unscored!r} has no numeric meta['score']; pass the phases that "
                             f"`phased_ift.split` returns.")
    if len({e.id for e in union}) != len(union):
        raise PhasedIFTError("write_run: an example id occurs in more than one phase (or twice); ids must be unique.")
    if (run.root / "checkpoints").is_dir() and run.train_data.is_file() and \
            [e.to_dict() for e in read_examples(run.train_data)] != [e.to_dict() for e in union]:
        raise PhasedIFTError(f"write_run: {run.root} holds checkpoints trained on other data; pass a new run_dir.")
    write_jsonl(run.rejects, [])
    write_examples(run.train_data, union)
    write_jsonl(run.scores(cfg.scoring.scorer), (score_row(e.id, float(e.meta["score"])) for e in union))
    write_phases(run, phases, controls(cfg.train.arms), scorer=cfg.scoring.scorer, method=cfg.phases.method,
                 thresholds=cfg.phases.thresholds, seed=cfg.phases.seed,
                 n_failed=len(getattr(phases, "left_out", ())))
    save_config(cfg, run.config, header="written by phased_ift.write_run (the Python API): phases made in memory")


def _is_phases(obj: Any) -> bool:
    return isinstance(obj, list) and all(isinstance(p, (list, tuple)) for p in obj)


def export_phases(phases_or_config: Sequence[Sequence[Example]] | ConfigLike, out_dir: str | os.PathLike, *,
                  to: str = "llama-factory", model: str | None = None, config: ConfigLike = None,
                  run_dir: str | os.PathLike | None = None, arms: Sequence[str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> list[Path]:
    """Write phases for another training tool: LLaMA-Factory, Axolotl, or a Hugging Face `DatasetDict`.

    Args:
        phases_or_config: `split`'s result, or a config / run dir that has been split (`phased-ift split`).
        out_dir: the folder to write (created; files of an earlier export are replaced, others kept).
        to: a name in `export.TARGETS`: "llama-factory" (data/dataset_info.json, data/<arm>/phase_<k>.jsonl in
            Alpaca columns, configs/<arm>/seed_<s>/phase_<k>.yaml chained stage to stage, run.sh), "axolotl",
            "hf" (a DatasetDict saved with save_to_disk, and its dataset card).
        model: the base model the stages start from (model.name_or_path: a named model is written as its converted
            local checkpoint, a local dir as its absolute path, a hub id as is).
        config: for phases in memory, the training settings of the stages (train.method, learning_rate, epochs,
            lora ...), as `configure`.
        run_dir: where in-memory phases are written as a run dir first (`write_run`); default
            <out_dir>/phased-ift-run. Ignored for a config.
        arms: the arms to export (default for phases in memory: only "phased"; for a config: its train.arms).
        overrides: more dotted config keys, e.g. {"train.method": "full"}.

    Returns:
        The files written.

    Raises:
        PhasedIFTError: an unknown target, out_dir a file or inside the run dir's phases/, the split missing; see
            `export.export_run`.
    Source: `export.export_run` (docs/export.md: formats, the stage chain, the measured LLaMA-Factory run).
    """
    if _is_phases(phases_or_config):
        arms = list(arms) if arms is not None else (None if config is not None else list(DEFAULT_EXPORT_ARMS))
        where = run_dir if run_dir is not None else Path(out_dir) / "phased-ift-run"
        cfg = write_run(phases_or_config, where, config=config, model=model, arms=arms, overrides=overrides)
    else:
        cfg = configure(phases_or_config, {"model.name_or_path": model, "train.arms": list(arms) if arms else None,
                                           **(overrides or {})})
    return export_run(cfg, to, out_dir)


def _run_config(source: ConfigLike | Sequence[Sequence[Example]], run_dir: str | os.PathLike | None,
                config: ConfigLike, extra: Mapping[str, Any], verb: str) -> Config:
    """The config a run-dir verb works on: in-memory phases written to run_dir first (`write_run`; run_dir
    required), else `source` (a config or a run dir) with the overrides."""
    if _is_phases(source):
        if run_dir is None:
            raise PhasedIFTError(f"{verb}: pass run_dir= for phases held in memory (checkpoints and outputs are "
                                 f"written there).")
        return write_run(source, run_dir, config=config, overrides=extra)
    return configure(source, {**extra, "run_dir": str(run_dir) if run_dir is not None else None})


def train_phases(phases_or_config: Sequence[Sequence[Example]] | ConfigLike, *,
                 run_dir: str | os.PathLike | None = None, model: str | None = None, config: ConfigLike = None,
                 arms: Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None,
                 console: Any = None) -> dict[str, Path]:
    """Train phase by phase: each phase one fresh Trainer run from the previous phase's weights, its learning-rate
    schedule restarted (train.*), for every arm of train.arms and seed of train.seeds; resumes finished phases.

    Args:
        phases_or_config: `split`'s result (written to run_dir first, `write_run`), or a config / run dir
            (its own data, score and split steps run first when their files are missing).
        run_dir: the run dir (required for phases in memory; for a config it replaces run_dir).
        model: the base model (model.name_or_path). config: for phases in memory, the rest of the config;
            overrides: dotted keys (train.method = lora / full / qlora, train.epochs, learning_rate, batch_size ...),
            as `configure`. arms: train.arms (default the config's: phased, one-off, random).
        console: a rich Console for progress and log lines; None = stderr.

    Returns:
        {"<arm>/seed_<s>/phase_<k>": the checkpoint dir (model or LoRA adapter, hparams.json, losses.jsonl, DONE)}.

    Raises:
        PhasedIFTError: see `train.train_phases` (an unsupported train.method here, a model that cannot load, ...);
            `runlock.RunDirBusy`: another process writes the run dir.
    Source: `pipeline.run_command("train")` -> `train.train_phases` (docs/training.md).
    """
    extra = {"model.name_or_path": model, "train.arms": list(arms) if arms is not None else None,
             **(overrides or {})}
    cfg = _run_config(phases_or_config, run_dir, config, extra, "train_phases")
    with _locked(cfg.run_dir, "train_phases"):
        run_command("train", cfg, console=console)
    run = RunDir(cfg.run_dir)
    return {f"{c.arm}/seed_{c.seed}/phase_{c.phase}": run.checkpoint(c.arm, c.phase, c.seed)
            for c in training_cells(cfg, run)}


# ---------------------------------------------------------------------------------------------------------------
# Generate, evaluate, report, run
# ---------------------------------------------------------------------------------------------------------------


def _prompt_examples(prompts: Sequence[str | Example] | Any) -> list[Example]:
    """Prompt-only Examples of strings (ids "prompt-<i>") or Examples (their turns before the last answer)."""
    items = list(prompts)
    if not items:
        raise PhasedIFTError("generate_answers: no prompts given.")
    return [Example(f"prompt-{i}", [{"role": "user", "content": p}], {"testset": "prompts"}) if isinstance(p, str)
            else Example(p.id, p.prompt_messages, {**p.meta, "testset": "prompts"}) for i, p in enumerate(items)]


def generate_answers(model_or_config: str | os.PathLike | ConfigLike, prompts: Sequence[str | Example] | None = None,
                     *, template: str = "chat", max_new_tokens: int = 256, batch_size: int = 8,
                     dtype: str = "float32", overrides: Mapping[str, Any] | None = None,
                     console: Any = None) -> list[str] | list[Path]:
    """Greedy answers: of one model to your prompts, or of every checkpoint of a run dir to its test sets.

    Args:
        model_or_config: with `prompts`: a model (named model, checkpoint dir of `train_phases`, hub id in the
            local cache); without: a config / run dir (`generate.test_sets` for each final checkpoint).
        prompts: strings (one user turn each) or Examples (their turns before the last answer).
        template: "chat" (the tokenizer's chat template) or "paper" (the PhasedSFT template), as in training.
        max_new_tokens: the answer budget in tokens (an answer that hits it ends there).
        batch_size: prompts per batch (left padded). dtype: float32, bfloat16 or float16 weights.
        overrides: for a config, more dotted keys (generate.test_sets, generate.limit, ...).

    Returns:
        With prompts: the answers, in prompt order. Without: the generations files written (jsonl rows {"id",
        "instruction", "output", "output_tokens", "finish_reason"}).

    Raises:
        PhasedIFTError: a model that cannot load offline, unfinished checkpoints; see `generate.generate_answers`.
    Source: `generate.generate_answers` / `pipeline.run_command("generate")` (docs/evaluation.md).
    """
    if prompts is None:
        return _run_step("generate", model_or_config, overrides, console)
    examples = _prompt_examples(prompts)
    with tempfile.TemporaryDirectory(prefix="phased-ift-generate-") as tmp:
        out = _generate(str(model_or_config), examples, max_new_tokens, batch_size, template,
                        Path(tmp) / "prompts.jsonl", console=console, dtype=dtype)
        answers = {r["id"]: r["output"] for r in read_generations(out)}
    return [answers[e.id] for e in examples]


def evaluate(model_or_config: str | os.PathLike | ConfigLike, examples: DataLike | None = None, *,
             template: str = "chat", batch_size: int = 8, max_length: int = 1024,
             overrides: Mapping[str, Any] | None = None, console: Any = None) -> dict | list[Path]:
    """Judge-free evaluation: the loss of reference answers under one model, or every metric of a run dir.

    Args:
        model_or_config: with `examples`: a model or checkpoint dir; without: a config / run dir (the evaluate
            step: the reference-answer loss of AlpacaEval's GPT-4 answers, IFEval when it is a test set).
        examples: data whose last turn is the reference answer (anything `load_data` takes).
        template: "chat" or "paper", as in training. batch_size: examples per forward pass. max_length: tokens of
            prompt + answer (a longer answer loses its tail, counted in "truncated").

    Returns:
        With examples: {"mean_loss" (nats per answer token, averaged over examples; lower = closer to the
        references), "token_mean_loss", "n", "per_example", "answer_tokens", "truncated", "ids"}. Without: the
        evaluation files written (evaluation/<arm>/seed_<s>/phase_<k>/*.json).

    Raises:
        PhasedIFTError: an example without an answer, a model that cannot load; see `evals.step.evaluate_all`.
    Source: `evals.reference_loss.reference_loss` / `pipeline.run_command("evaluate")` (docs/evaluation.md).
    """
    if examples is None:
        return _run_step("evaluate", model_or_config, overrides, console)
    return reference_loss(str(model_or_config), load_data(examples), template, batch_size=batch_size,
                          max_length=max_length)


def _run_step(step: str, config: ConfigLike, overrides: Mapping[str, Any] | None, console: Any) -> list[Path]:
    """Run pipeline step `step` (and the earlier steps it needs) on a run dir, under its lock; the files of the
    step's output folder."""
    cfg = configure(config, overrides)
    with _locked(cfg.run_dir, step):
        run_command(step, cfg, console=console)
    folder = Path(cfg.run_dir) / {"generate": "generations", "evaluate": "evaluation"}[step]
    return sorted(p for p in folder.rglob("*") if p.is_file())


def write_report(config: ConfigLike, *, overrides: Mapping[str, Any] | None = None, console: Any = None) -> dict:
    """The report of a run dir: report/report.md, report.html (self-contained), summary.json and the plots,
    after the generate, pairwise and evaluate steps (each skips finished work).

    Returns:
        The summary (the numbers of summary.json: win rates with CIs, the effect of each arm against the
        baseline, IFEval, reference loss, phase statistics, "verdicts" one sentence each).

    Raises:
        PhasedIFTError: a malformed run-dir file (named); see `report.build_report`.
    Source: `pipeline.run_command("report")` -> `report.build_report` (docs/report.md).
    """
    cfg = configure(config, overrides)
    with _locked(cfg.run_dir, "write_report"):
        return run_command("report", cfg, console=console)


def run(config: ConfigLike, *, dry_run: bool = False, overrides: Mapping[str, Any] | None = None,
        console: Any = None) -> dict | None:
    """`phased-ift run CONFIG`: the checks, then data -> score -> split -> train -> generate -> pairwise -> evaluate
    -> report, each step skipping finished work (resumable).

    Returns:
        The report summary, or the plan (dry_run: nothing is written).

    Raises:
        PhasedIFTError: see `preflight` and the steps; `runlock.RunDirBusy`: another process writes the run dir.
    Source: `pipeline.run_pipeline`.
    """
    cfg = configure(config, overrides)
    with contextlib.ExitStack() as stack:  # the lock after the checks, as the CLI: a failed check writes nothing
        return run_pipeline(cfg, dry_run=dry_run, console=console,
                            before_writing=lambda: stack.enter_context(_locked(cfg.run_dir, "run")))
