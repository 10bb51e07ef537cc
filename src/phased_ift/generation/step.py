"""The generate step: batched greedy answers on the test sets, per checkpoint, resumable per test set.

    phased-ift generate configs/quickstart.yaml generate.test_sets=[vicuna,koala] generate.limit=20

Owns: prompt batching (`plan_batches`), the resumable generations files and their settings (`generate_answers`),
multi-turn test sets (`turn_count`, `next_turn_examples`) and `generate_all` (every checkpoint of
`design.evaluation_cells` x every test set). The backends are `generation.backends`'; the file format later steps
read is `generation.answers`'. Models are loaded through `modeling` (`load_for_inference`).

Prompts are rendered with `modeling.render` (exactly as in training), tokenised, sorted by length (less padding),
left-padded into batches and decoded greedily until the tokenizer's EOS or the chat template's end-of-turn token,
or `max_new_tokens`. Rows are appended per batch to `generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl`, so a
killed run resumes by skipping the ids already there; `<testset>.settings.json` is written when a test set is
complete. After SIGTERM / SIGINT generation stops once the batch in flight is written (`shutdown.check`). Greedy
decoding is deterministic: batched and one-at-a-time outputs agree (up to float rounding, see
benchmarks/bench_generate.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from phased_ift import shutdown
from phased_ift.config import Config
from phased_ift.config_choices import testset_key
from phased_ift.data import Example, load_test_set
from phased_ift.phases.design import evaluation_cells
from phased_ift.errors import PhasedIFTError
from phased_ift.generation.answers import read_generations, settings_path, turn_key
from phased_ift.generation.backends import BACKENDS, Backend, load_for_backend, stop_token_ids
from phased_ift.modeling import inference_dtype, render, tokenize_example
from phased_ift.phasedir import finished_checkpoint
from phased_ift.progress import LoggedProgress
from phased_ift.rundir import RunDir
from phased_ift.runio import AppendLog, atomic_write_json

# Longest prompt kept (its end, like tokenize_example); longer test prompts are rare (koala has a few).
MAX_PROMPT_TOKENS = 2048


# ---------------------------------------------------------------------------------------------------------------
# Generation with resume
# ---------------------------------------------------------------------------------------------------------------


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int = 0) -> list[list[int]]:
    """Group prompt indices into batches, longest first, so similar lengths share a batch.

    A batch closes at `batch_size` prompts, or earlier when one more prompt would make the padded prompt block
    (rows x longest prompt) exceed `max_batch_tokens` (0 = no cap). Why: test sets have outliers (a koala prompt
    of 2048 tokens next to a median of 57); padding 15 short prompts to it made a batch cost 8x its real tokens
    and batched generation slower than one prompt at a time.

    Returns:
        Lists of indices into `lengths`; every index exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        too_wide = bool(cur) and bool(max_batch_tokens) and (len(cur) + 1) * lengths[cur[0]] > max_batch_tokens
        if cur and (len(cur) >= batch_size or too_wide):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def generate_answers(model_dir_or_name: str | Path, examples: Sequence[Any], max_new_tokens: int, batch_size: int,
                     template: str, out_path: str | Path, console: Any = None, backend: str = "hf",
                     dtype: str = "float32", loaded: tuple[Any, Any] | None = None,
                     max_batch_tokens: int = 4096, backend_options: dict | None = None) -> Path:
    """Generate one greedy answer per prompt and append rows to `out_path` (resumable).

    Args:
        model_dir_or_name: checkpoint dir (full model or adapter), named model or hub id.
        examples: prompt-only `data.Example`s (meta["testset"] names the test set; ids unique).
        max_new_tokens: answer budget in tokens; answers that hit it get finish_reason "length".
        batch_size: prompts per batch (sorted by prompt length, left padded).
        max_batch_tokens: cap on padded prompt tokens per batch (`plan_batches`); 0 = no cap.
        template: "chat" or "paper", as in training (`modeling.render`).
        backend: a name in `BACKENDS` ("hf", "vllm", "server").
        loaded: an already loaded (model, tokenizer) to reuse across test sets (skips loading; `load_for_backend`).
        backend_options: keyword arguments of the backend's factory (`Backend.options`, e.g. the served model).
    Returns:
        out_path. Rows: {"id", "testset", "instruction" (the first user turn), "output", "output_tokens",
        "finish_reason"}, plus "turn" and "question" (that turn's user message) for a later turn;
        `<testset>.settings.json` (model, template, max_new_tokens, batch_size, backend, n, and the plain values
        of backend_options) is written last.
    Raises:
        PhasedIFTError: unknown backend; existing settings that differ (stale answers would be mixed in);
            duplicate example ids; prompts the backend could not answer (the others are saved; run again).
    """
    from rich.console import Console

    if backend not in BACKENDS:
        raise PhasedIFTError(f"generate.backend = {backend!r} is not one of {sorted(BACKENDS)}.")
    out_path = Path(out_path)
    testset = out_path.name.removesuffix(".jsonl")
    ids = [str(e.id) for e in examples]
    if len(set(ids)) != len(ids):
        raise PhasedIFTError(f"test set {testset}: duplicate prompt ids; ids must be unique to resume.")
    options = backend_options or {}
    settings = {"model": str(model_dir_or_name), "template": template, "max_new_tokens": max_new_tokens,
                "backend": backend, "greedy": True, "n": len(examples),
                **{k: v for k, v in options.items() if isinstance(v, (str, int, float, bool))}}
    sp = settings_path(out_path)
    _check_settings(sp, settings, out_path)
    console = console or Console(stderr=True)
    with AppendLog(out_path) as log:  # a torn last line (kill -9) is cut off; the ids already answered are known
        todo = [e for e in examples if str(e.id) not in log.done]
        if todo:
            model, tok = loaded if loaded is not None else load_for_backend(backend, model_dir_or_name, dtype)
            engine = BACKENDS[backend](model, tok, str(model_dir_or_name), **options)
            try:
                failed = _generate_rows(engine, tok, todo, template, _stops(tok, template, model_dir_or_name),
                                        max_new_tokens, batch_size, max_batch_tokens, log, testset, console)
            finally:
                if hasattr(engine, "close"):
                    engine.close()
            if failed:
                raise PhasedIFTError(
                    f"test set {testset}: {len(failed)} of {len(todo)} prompts got no answer from the {backend} "
                    f"backend (first: prompt {failed[0][0]!r}: {failed[0][1]}); the other answers are saved in "
                    f"{out_path}. Fix the cause and run the same command again: it asks only the prompts left.")
    if not sp.is_file():
        atomic_write_json(sp, {**settings, "batch_size": batch_size})
    return out_path


def _stops(tok, template: str, model: Any) -> list[int]:
    stops = stop_token_ids(tok, template)
    if not stops:
        raise PhasedIFTError(f"the tokenizer of {model} has no EOS token; generation cannot stop.")
    return stops


def _check_settings(sp: Path, settings: dict, out_path: Path) -> None:
    """Refuse to add to answers generated with another model, template or answer budget."""
    if not sp.is_file():
        return
    old = json.loads(sp.read_text(encoding="utf-8"))
    diff = [k for k in ("model", "template", "max_new_tokens") if old.get(k) != settings[k]]
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in diff)
        raise PhasedIFTError(
            f"{out_path} was generated with different settings ({changes}); delete {out_path.parent} to "
            "regenerate, or restore the settings."
        )


def _generate_rows(engine: Backend, tok, todo: Sequence[Any], template: str, stops: Sequence[int],
                   max_new_tokens: int, batch_size: int, max_batch_tokens: int, log: AppendLog, testset: str,
                   console: Any) -> list[tuple[str, str]]:
    """Render, tokenise and batch the prompts (`plan_batches`; `engine.prompts_per_call` prompts per call when the
    backend sets it), complete each batch and append its rows to `log`. Returns (id, error) of the prompts the
    backend could not answer (no row written)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    enc = [tokenize_example(tok, render(tok, e.prompt_messages, template)[0], "", MAX_PROMPT_TOKENS)["input_ids"]
           for e in todo]
    per_call = getattr(engine, "prompts_per_call", 0)
    batches = plan_batches([len(x) for x in enc], per_call or batch_size, 0 if per_call else max_batch_tokens)
    failed: list[tuple[str, str]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with LoggedProgress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"generate {testset}", total=len(todo))
        for idx in batches:
            outs = engine.complete([enc[i] for i in idx], max_new_tokens, stops)
            for i, c in zip(idx, outs):
                e = todo[i]
                if c.error is not None:
                    failed.append((str(e.id), c.error))
                    continue
                text = c.text if c.text is not None else tok.decode(c.token_ids, skip_special_tokens=True)
                row = {
                    "id": str(e.id), "testset": e.meta.get("testset", testset), "instruction": e.instruction,
                    "output": text.strip(),
                    "output_tokens": len(c.token_ids) if c.n_tokens is None else c.n_tokens,
                    "finish_reason": c.finish_reason,
                }
                if e.meta.get("turn"):  # a later turn of a multi-turn test set: its own question
                    row.update(turn=e.meta["turn"], question=e.prompt_messages[-1]["content"])
                log.append(row)
            progress.advance(task, len(idx))
            shutdown.check(f"generating {testset} after the batch in flight: {len(log)} answers are in {log.path}")
    return failed


# ---------------------------------------------------------------------------------------------------------------
# What to generate for a config
# ---------------------------------------------------------------------------------------------------------------


def turn_count(examples: Sequence[Any]) -> int:
    """Turns of a test set: 1 + the longest meta["later_turns"] (MT-Bench: 2)."""
    return 1 + max((len(e.meta.get("later_turns") or ()) for e in examples), default=0)


def next_turn_examples(examples: Sequence[Any], rows: Sequence[dict], turn: int) -> list[Any]:
    """The prompts of turn `turn` (>= 2) of a multi-turn test set: each example's conversation so far, the
    model's own answer to the previous turn (`rows`, matched by id), then the next question
    (meta["later_turns"][turn - 2]), as FastChat's gen_model_answer asks MT-Bench's second turn.

    Args:
        examples: the prompts of turn - 1 (for turn 2: the test set's prompt-only Examples).
        rows: the generation rows of turn - 1.
        turn: the turn to build (2-based).
    Returns:
        Examples (same ids, meta["turn"] = turn) for the examples that have that many turns.
    Raises:
        PhasedIFTError: an example has no answer for the previous turn (the previous file is incomplete).
    """
    answers = {str(r["id"]): r["output"] for r in rows}
    out = []
    for e in examples:
        later = e.meta.get("later_turns") or []
        if len(later) < turn - 1:
            continue
        if str(e.id) not in answers:
            raise PhasedIFTError(f"turn {turn} of {e.meta.get('testset')}: prompt {e.id!r} has no answer for turn "
                                 f"{turn - 1}; re-run `phased-ift generate` to finish that turn first.")
        messages = [*e.prompt_messages, {"role": "assistant", "content": answers[str(e.id)]},
                    {"role": "user", "content": later[turn - 2]}]
        out.append(Example(e.id, messages, {**e.meta, "turn": turn}))
    return out


def generate_all(cfg: Config, run: RunDir, console: Any = None) -> None:
    """Generate answers on every test set of `generate.test_sets` for every checkpoint of
    `design.evaluation_cells` (each arm x seed's final phase, every phase with generate.every_phase)
    -> generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl. A multi-turn test set (MT-Bench) gets one file per
    turn (`turn_key`), each turn asked after the model's own earlier answers (`next_turn_examples`). A
    checkpoint's model is loaded once, and only when one of its files is unfinished (no settings file);
    finished files are skipped. The answer budget of a test set is `generate.budget(name)`.

    Args:
        cfg: the config (`generate`, `model`, `train` sections); run: the `RunDir`.
    Raises:
        PhasedIFTError: a checkpoint has not finished training (`phasedir.finished_checkpoint`), see also `generate_answers`.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    g = cfg.generate
    testsets = {testset_key(n): load_test_set(n, limit=g.limit, seed=g.seed) for n in g.test_sets}
    dtype = inference_dtype(cfg.model.dtype, cfg.model.autocast)
    options_of = getattr(BACKENDS.get(g.backend), "options", None)
    for c in evaluation_cells(cfg, run):
        ckpt, loaded = finished_checkpoint(run, c.arm, c.phase, c.seed), None
        options = options_of(cfg, run, c) if options_of else None
        for name, examples in testsets.items():
            prompts, previous = examples, None
            for turn in range(1, turn_count(examples) + 1):
                if previous is not None:  # a later turn: asked after this model's answers to the turn before
                    prompts = next_turn_examples(prompts, read_generations(previous), turn)
                out = previous = run.generations(c.arm, c.phase, turn_key(name, turn), c.seed)
                if not settings_path(out).is_file() and loaded is None:
                    loaded = load_for_backend(g.backend, ckpt, dtype=dtype)  # once per checkpoint
                generate_answers(ckpt, prompts, g.budget(name), g.batch_size, cfg.model.template, out,
                                 console=console, backend=g.backend, dtype=dtype, loaded=loaded,
                                 max_batch_tokens=g.max_batch_tokens, backend_options=options)
                console.print(f"generate: {c.arm} seed {c.seed} phase {c.phase} {turn_key(name, turn)} "
                              f"({len(prompts)} prompts) -> {out}", highlight=False)
