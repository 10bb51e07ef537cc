"""What a training run will do, before any weights load: per-phase hyperparameters, tokenisation, the plan.

Owns:
  * `PhaseHparams`: the resolved hyperparameters of one phase of one arm, built from the config and the arm's
    `design.Arm.schedule`; `dataclasses.asdict` of it opens every checkpoint's `hparams.json`.
  * `tokenize_examples` (the rows a phase trains on, rendered and tokenised in batches), `steps_per_phase`
    (optimizer steps as transformers counts them), the token counter (each example of the run's data counted once
    and cached: `tokencounts`), and the dry-run plan (`plan_training`, `print_plan`).

Imports no torch / transformers at module level: a plan loads a tokenizer at most.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Container, Sequence

from phased_ift import modeling
from phased_ift.config import Config
from phased_ift.data import Example, example_head_key, row_head
from phased_ift.phases.design import assumed_phases, get_arm, phase_count
from phased_ift.phases.split import read_manifest
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir
from phased_ift.runio import no_cycle_collection, read_lines
from phased_ift.sit.mix import is_sequential
from phased_ift.train.tokencounts import CHUNK, RunCounts, estimated_tokens, run_counts


@dataclass(frozen=True)
class PhaseHparams:
    """Resolved hyperparameters of phase `phase` (1-based) of `arm`; the field order is hparams.json's key order.

    `epochs` and `learning_rate` come from the arm's `Arm.schedule` (train.phase_epochs / phase_learning_rates by
    position for arms with a phase schedule, else train.epochs / train.learning_rate: the equal budget when the
    per-phase values are not set). `lora` is `asdict(train.lora)` with method=lora or qlora, else None; the other
    fields are copied from the `train` and `model` sections under the same names (`model` = model.name_or_path);
    `sampler` is the arm's (`Arm.sampler`: "" = train.order / train.batching decide) and `arm_params` the train
    fields the arm reads (`Arm.params`, e.g. {"replay_ratio": 0.1}).
    """

    arm: str
    phase: int
    epochs: float
    learning_rate: float
    method: str
    lora: dict | None
    batch_size: int
    grad_accum: int
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    adam_beta2: float
    max_grad_norm: float
    carry_optimizer: bool
    order: str
    batching: str
    max_steps: int
    model: str
    template: str
    max_length: int
    dtype: str
    autocast: str
    lm_head: str
    max_batch_tokens: int
    math_attention_max_len: int
    sampler: str
    arm_params: dict


def phase_hparams(cfg: Config, arm: str, k: int) -> PhaseHparams:
    """The hyperparameters of phase k (1-based) of an arm under the config (see `PhaseHparams`)."""
    t, m = cfg.train, cfg.model
    a = get_arm(arm)
    epochs, lr = a.schedule(t, k)
    return PhaseHparams(
        arm=arm, phase=k, epochs=epochs, learning_rate=lr, method=t.method,
        lora=asdict(t.lora) if t.method in ("lora", "qlora") else None, batch_size=t.batch_size, grad_accum=t.grad_accum,
        lr_scheduler=t.lr_scheduler, warmup_ratio=t.warmup_ratio, weight_decay=t.weight_decay,
        adam_beta2=t.adam_beta2, max_grad_norm=t.max_grad_norm, carry_optimizer=t.carry_optimizer, order=t.order,
        batching=t.batching, max_steps=t.max_steps, model=m.name_or_path, template=m.template,
        max_length=m.max_length, dtype=m.dtype, autocast=m.autocast, lm_head=t.lm_head,
        max_batch_tokens=t.max_batch_tokens, math_attention_max_len=t.math_attention_max_len, sampler=a.sampler,
        arm_params=a.arm_params(t),
    )


def tokenize_examples(tokenizer, examples: Sequence[Example], template: str, max_length: int,
                      chunk: int = CHUNK) -> list[dict]:
    """Render and tokenise examples, `chunk` at a time (`modeling.render_batch` + `tokenize_batch`: the rows of
    `modeling.render` + `tokenize_example` per example, labels -100 on the prompt).

    Returns:
        One dict per example: input_ids [T], labels [T], attention_mask [T] (T <= max_length), length (= T).
    Raises:
        PhasedIFTError: as `modeling.render` (unknown template, no chat template).
    """
    rows = []
    for i in range(0, len(examples), chunk):
        part = examples[i:i + chunk]
        pairs = modeling.render_batch(tokenizer, [e.messages for e in part], template)
        rows += modeling.tokenize_batch(tokenizer, pairs, max_length)
    for row in rows:
        row["length"] = len(row["input_ids"])
    return rows


def steps_per_phase(n_examples: int, epochs: float, batch_size: int, grad_accum: int, world_size: int = 1,
                    max_steps: int = -1) -> int:
    """Optimizer steps of one phase as transformers' (5.x) Trainer counts them: ceil(n / (batch x processes))
    batches per process and epoch, ceil(batches / grad_accum) steps per epoch (the last one takes the remainder),
    ceil(epochs x steps per epoch) in all; `max_steps` > 0 instead when given."""
    import math

    if max_steps > 0:
        return max_steps
    batches = math.ceil(n_examples / (batch_size * world_size))
    per_epoch = max(math.ceil(batches / grad_accum), 1)
    return math.ceil(per_epoch * epochs)


def token_counter(cfg: Config, run: RunDir | None = None) -> tuple[Callable[[Sequence[Example]], int], str]:
    """(count(examples) -> tokens, note). Uses the tokenizer when it loads offline, else chars/4 (said so).

    With `run`, each example of its data/train.jsonl is counted once and the counts are kept in
    cache/token_counts.json (`tokencounts.run_counts`: read back while its key matches, else counted again and the
    note says why); `count` looks examples up by id and counts the others.
    Raises:
        PhasedIFTError: as `modeling.render`; DiskWriteError: the disk refused the cache file.
    """
    count, note, _ = _token_counter(cfg, run)
    return (lambda examples: count(examples)[0]), note


def _token_counter(cfg: Config, run: RunDir | None, estimate: bool = False
                   ) -> tuple[Callable[[Sequence[Example]], tuple[int, float | None]], str, Container[str]]:
    """`token_counter` whose count gives (tokens, 95% half-width; None when counted), and the ids whose count is
    known or estimated without their text (the run's cached counts, or every row of the data when `estimate` draws
    a sample: `tokencounts.sample_counts`, train.plan_sample examples)."""
    try:
        tok = modeling.load_tokenizer(cfg.model.name_or_path)
    except Exception as e:  # offline / unknown hub id: estimate, and say so
        def chars(examples):
            return sum((len(e.instruction) + len(e.response)) // 4 + 1 for e in examples), None

        return chars, f"tokens estimated as characters/4 (tokenizer of {cfg.model.name_or_path!r} not " \
                      f"available offline: {type(e).__name__})", frozenset()

    template, max_length = cfg.model.template, cfg.model.max_length
    sample = cfg.train.plan_sample if estimate else 0
    cached = run_counts(run, tok, template, max_length, sample, cfg.seed) if run is not None else RunCounts()

    def count(examples):
        return estimated_tokens(cached, tok, examples, template, max_length)

    known = cached.sample.position.keys() if cached.sample is not None else cached.counts.keys()
    return count, f"tokens counted with the {cfg.model.name_or_path} tokenizer, truncated to {max_length}" \
                  f"{cached.note}", known


# the meta an arm reads while it builds its phases (`design.Arm.assemble`): all a plan's stand-in keeps
_STAND_IN_META = ("score", "sequential", "replaces")


def _plan_reader(known: Container[str]) -> Callable[[Path], list[Example]]:
    """A reader of phase files (and data/train.jsonl) for the plan, each file read once however many arms read
    it: an example whose token count is `known` becomes a stand-in (its id and the meta of `_STAND_IN_META`, no
    messages: a few hundred bytes instead of its text; one object for a row met again with the same id and meta,
    as in a control arm's files, found by its bytes without the messages, `data.row_head`, and not decoded
    again: `data.example_head_key`), any other stays whole (it is counted from its text)."""
    files: dict[Path, list[Example]] = {}
    stand_ins: dict[str, Example] = {}
    by_head: dict[bytes, Example] = {}

    def example(line: bytes) -> Example:
        head = row_head(line)
        if head is not None and (seen := by_head.get(head)) is not None:
            return seen
        rid, meta, head = example_head_key(line)  # the messages are decoded only when they are needed
        if rid not in known:
            return Example.from_dict(json.loads(line))
        meta = {k: meta[k] for k in _STAND_IN_META if k in meta}
        seen = stand_ins.get(rid)
        if seen is None or seen.meta != meta:
            seen = stand_ins[rid] = Example(rid, [], meta)
        if head is not None:
            by_head[head] = seen
        return seen

    def read(path: Path) -> list[Example]:
        if path not in files:
            files[path] = list(read_lines(path, example))
        return files[path]

    return read


def _planned_phases(cfg: Config, run: RunDir, read: Callable[[Path], list[Example]]
                    ) -> tuple[dict[str, list[list[Example]]], int, str]:
    """({arm: its phases}, N examples of the split, note): the split's phases (`Arm.phase_data`, seed 0) once
    `phases/` exists, else K equal-size phases of data/train.jsonl (`design.assumed_phases`, in the arm's file
    order, through `Arm.assemble`: single-phase arms get the whole data, replay its extra examples).

    Raises:
        PhasedIFTError: neither the split nor data/train.jsonl exists; a control arm's files are missing.
    """
    if run.phases_manifest.is_file():
        k = phase_count(cfg, run)
        phases_of = {arm: get_arm(arm).phase_data(run, k, 0, cfg.train, read=read) for arm in cfg.train.arms}
        # the split's sizes, not a second read; its sequential examples (sit.source) are no part of one-off's N
        n = sum(int(p["count"]) - int(p.get("sequential", 0)) for p in read_manifest(run)["phases"])
        return phases_of, n, ""
    if not run.train_data.is_file():
        raise PhasedIFTError(f"train --dry-run: neither {run.phases_manifest} nor {run.train_data} exists; run "
                             f"`phased-ift score CONFIG` (or at least the data step) first.")
    data = read(run.train_data)
    k = cfg.phases.k
    eq = assumed_phases(data, k)
    phases_of = {arm: get_arm(arm).assemble([eq[i - 1] for i in get_arm(arm).file_order(k)], 0, cfg.train)
                 for arm in cfg.train.arms}
    n = sum(not is_sequential(e) for e in data)
    return phases_of, n, f"; phases not split yet: assumed {k} equal-size phases of data/train.jsonl"


def _budget_note(cfg: Config) -> str:
    """Says when train.phase_epochs differ from train.epochs, which arms without a phase schedule use."""
    t = cfg.train
    plain = [a for a in t.arms if not get_arm(a).phase_schedule]
    if not plain or all(float(e) == t.epochs for e in t.phase_epochs):
        return ""
    return (f"; train.phase_epochs {t.phase_epochs} differ from train.epochs={t.epochs:g}, which "
            f"{', '.join(plain)} use{'s' if len(plain) == 1 else ''}: compare tokens_trained, the budgets are not "
            f"equal")


def _example_epochs_note(cfg: Config, budget: dict[str, float], n: int) -> str:
    """Each arm's budget in example-epochs against one-off's (N x train.epochs), with what makes it differ."""
    ref = n * cfg.train.epochs
    parts = []
    for arm, b in budget.items():
        part = f"{arm} {b:g}"
        if ref and abs(b - ref) > 1e-9:
            params = get_arm(arm).arm_params(cfg.train)
            why = ", ".join(f"train.{k}={v}" for k, v in params.items()) or "train.phase_epochs"
            part += f" ({b - ref:+g}, {(b - ref) / ref:+.1%}: {why})"
        parts.append(part)
    capped = f"; train.max_steps={cfg.train.max_steps} stops every phase early, so fewer are seen" \
        if cfg.train.max_steps > 0 else ""
    return (f"; budget in example-epochs (examples x epochs; one-off's: {n} x {cfg.train.epochs:g} = {ref:g}): "
            + ", ".join(parts) + capped)


def plan_training(cfg: Config, run: RunDir, world_size: int | None = None, estimate: bool = False) -> dict:
    """Examples, tokens, example-epochs and optimizer steps per phase per arm, without loading model weights.

    Args:
        cfg: the config (train, model, phases sections).
        run: the run dir; phases come from phases/ when split, else the data is assumed cut into K equal phases
            (said in the returned note).
        world_size: data-parallel processes (default: $WORLD_SIZE or 1).
        estimate: a dry run's plan: with no valid token-count cache and more than train.plan_sample examples,
            the tokens are estimated from a seeded sample of them (`tokencounts.estimated_tokens`, said in the
            note; nothing cached). Examples, example-epochs and steps are exact either way.

    Returns:
        {"note": str, "world_size": int, "examples": N (examples of the split, the one-off union), "arms": {arm:
        [{"phase", "examples", "sequential", "tokens", "tokens_ci95" (an estimate's 95% half-width in tokens; None
        when counted), "epochs", "learning_rate", "steps", "tokens_trained", "example_epochs"}]},
        "total_steps": {arm: int}, "example_epochs": {arm: float}}. example_epochs = examples x epochs (a phase's
        nominal budget; one-off: N x train.epochs); the note lists every arm's total against one-off's.
    Raises:
        PhasedIFTError: see `_planned_phases`.
    """
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    with no_cycle_collection():  # millions of stand-ins at scale (`runio.no_cycle_collection`)
        return _plan(cfg, run, world_size, estimate)


def _plan(cfg: Config, run: RunDir, world_size: int, estimate: bool) -> dict:
    """`plan_training`'s body."""
    count, note, known = _token_counter(cfg, run, estimate)
    phases_of, n, split_note = _planned_phases(cfg, run, _plan_reader(known))
    note += split_note + _budget_note(cfg)
    plan: dict[str, Any] = {"note": note, "world_size": world_size, "examples": n, "arms": {}, "total_steps": {},
                            "example_epochs": {}}
    for arm, phases in phases_of.items():
        rows = []
        for i, ph in enumerate(phases, 1):
            hp = phase_hparams(cfg, arm, i)
            tokens, ci95 = count(ph)
            steps = steps_per_phase(len(ph), hp.epochs, cfg.train.batch_size, cfg.train.grad_accum, world_size,
                                    cfg.train.max_steps)
            rows.append({"phase": i, "examples": len(ph), "sequential": sum(is_sequential(e) for e in ph),
                         "tokens": tokens, "tokens_ci95": None if ci95 is None else round(ci95),
                         "epochs": hp.epochs,
                         "learning_rate": hp.learning_rate, "steps": steps,
                         "tokens_trained": int(tokens * hp.epochs), "example_epochs": len(ph) * hp.epochs})
        plan["arms"][arm] = rows
        plan["total_steps"][arm] = sum(r["steps"] for r in rows)
        plan["example_epochs"][arm] = sum(r["example_epochs"] for r in rows)
    plan["note"] += _example_epochs_note(cfg, plan["example_epochs"], n)
    return plan


def print_plan(cfg: Config, run: RunDir, console=None, estimate: bool = True) -> dict:
    """Print `plan_training` (a dry run's: `estimate`) as a rich table (to the console) and return it."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    plan = plan_training(cfg, run, estimate=estimate)
    seq = any(r["sequential"] for rows in plan["arms"].values() for r in rows)
    table = Table("arm", "phase", "examples", *(["sequential"] if seq else []), "tokens", "epochs", "example-epochs",
                  "lr", "optimizer steps",
                  title=f"training plan ({cfg.train.method}, batch {cfg.train.batch_size} x accum "
                        f"{cfg.train.grad_accum} x {plan['world_size']} processes, seeds {cfg.train.seeds})")
    for arm, rows in plan["arms"].items():
        for r in rows:
            share = [f"{r['sequential']} ({r['sequential'] / max(r['examples'], 1):.0%})"] if seq else []
            table.add_row(arm, str(r["phase"]), str(r["examples"]), *share, _tokens_cell(r), f"{r['epochs']:g}",
                          f"{r['example_epochs']:g}", f"{r['learning_rate']:g}", str(r["steps"]))
    console.print(table)
    console.print(plan["note"] + f"; steps for {plan['world_size']} data-parallel process(es): under "
                  f"N processes use `WORLD_SIZE=N phased-ift train CONFIG --dry-run`")
    return plan


def _tokens_cell(row: dict) -> str:
    """A plan row's tokens: the count, or the estimate with its 95% interval as a share of it."""
    if row["tokens_ci95"] is None:
        return str(row["tokens"])
    return f"~{row['tokens']} ±{row['tokens_ci95'] / max(row['tokens'], 1):.1%}"
