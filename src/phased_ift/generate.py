"""Batched greedy generation of answers on test sets, per checkpoint, resumable per test set.

    phased-ift generate configs/quickstart.yaml generate.test_sets=[vicuna,koala] generate.limit=20

Owns: the generation backends, prompt batching, the resumable generations files and their settings, and
`generate_all` (every checkpoint of `design.evaluation_cells` x every test set). Models are loaded and run through
`modeling` (`load_checkpoint`, `generate_greedy`); only the vLLM backend imports its own package.

Prompts are rendered with `modeling.render` (exactly as in training), tokenised, sorted by length (less padding),
left-padded into batches and decoded greedily until the tokenizer's EOS or the chat template's end-of-turn token,
or `max_new_tokens`. Rows are appended per batch to `generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl`, so a
killed run resumes by skipping the ids already there; `<testset>.settings.json` is written when a test set is
complete. Greedy decoding is deterministic: batched and one-at-a-time outputs agree (up to float rounding, see
benchmarks/bench_generate.py).

Backends live in a small registry (`BACKENDS`): "hf" (transformers `generate`, CPU or GPU) and "vllm" (GPU, when
the vllm package is installed). Both receive the same token ids and stop ids and return the same row fields.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from phased_ift.errors import PhasedIFTError
from phased_ift.runio import AppendLog, atomic_write_json, read_jsonl

# Longest prompt kept (its end, like tokenize_example); longer test prompts are rare (koala has a few).
MAX_PROMPT_TOKENS = 2048


@dataclass
class Completion:
    """One generated answer: token ids without the stop token, and why generation ended ("stop" | "length")."""

    token_ids: list[int]
    finish_reason: str


class Backend(Protocol):
    """A generation backend: greedy completions for a batch of tokenised prompts."""

    def complete(self, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int]) -> list[Completion]:
        ...


BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Add a backend factory `factory(model, tokenizer, model_dir) -> Backend`; names are unique."""
    if name in BACKENDS:
        raise ValueError(f"generation backend {name!r} is already registered")
    BACKENDS[name] = factory


def load_for_inference(model_dir_or_name: str | Path, dtype: str = "float32"):
    """Load (model, tokenizer) for generation/evaluation: a named model, a full checkpoint dir, or a PEFT adapter
    dir (base model from hparams.json + adapter, merged for speed): `modeling.load_checkpoint(trainable=False)`.
    The model is in eval mode, on `modeling.inference_device()` (the GPU when there is one).

    Raises:
        PhasedIFTError: the checkpoint or its base model cannot be found.
    """
    from phased_ift import modeling

    model = modeling.load_checkpoint(model_dir_or_name, trainable=False, dtype=dtype)
    return model, modeling.load_checkpoint_tokenizer(model_dir_or_name)


def stop_token_ids(tokenizer, template: str) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS plus the chat template's end-of-turn token.

    The end-of-turn token is found by rendering a one-turn conversation and taking the first token after the
    answer text (e.g. `<|im_end|>` for ChatML, `<end_of_turn>` for Gemma), so no per-model list is needed.
    """
    from phased_ift.modeling import render

    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if template == "chat" and getattr(tokenizer, "chat_template", None):
        marker = "XQZMARKER"
        _, response = render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                             template)
        tail = response.split(marker, 1)[1] if marker in response else ""
        tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
        if tail_ids and tail_ids[0] in set(tokenizer.all_special_ids):
            ids.append(tail_ids[0])
    return sorted(set(ids))


def trim_at_stop(ids: Sequence[int], stop_ids: Sequence[int], max_new_tokens: int) -> Completion:
    """Cut generated ids at the first stop id ("stop"); without one the answer hit the budget ("length")."""
    stops = set(stop_ids)
    for i, t in enumerate(ids):
        if t in stops:
            return Completion(list(ids[:i]), "stop")
    return Completion(list(ids), "length" if len(ids) >= max_new_tokens else "stop")


# ---------------------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------------------


class HFBackend:
    """transformers `generate`: greedy, left padding, stops per row at any stop id."""

    def __init__(self, model, tokenizer, model_dir: str = "") -> None:
        self.model, self.tokenizer = model, tokenizer

    def complete(self, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int]) -> list[Completion]:
        from phased_ift.modeling import generate_greedy

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        new = generate_greedy(self.model, prompts, max_new_tokens, stop_ids, pad_id)
        return [trim_at_stop(row, stop_ids, max_new_tokens) for row in new]


class VLLMBackend:
    """vLLM (GPU): the same prompts as token ids, temperature 0, the same stop ids. Adapters are merged and saved
    to a temporary dir first, because vLLM loads weights from disk."""

    def __init__(self, model, tokenizer, model_dir: str = "") -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise PhasedIFTError("generate.backend=vllm but the vllm package is not installed; install it on a GPU "
                                 "machine with `pip install phased-ift[vllm]`, or set generate.backend=hf.") from None
        from phased_ift.modeling import is_adapter

        path = model_dir
        if not path or is_adapter(path) or not (Path(path) / "config.json").is_file():
            path = tempfile.mkdtemp(prefix="phased_ift_vllm_")
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
        self.llm = LLM(model=path, dtype="auto", seed=0)

    def complete(self, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int]) -> list[Completion]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=list(stop_ids))
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [trim_at_stop(list(o.outputs[0].token_ids), stop_ids, max_new_tokens) for o in outs]


register_backend("hf", HFBackend)
register_backend("vllm", VLLMBackend)


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


def settings_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name.removesuffix(".jsonl") + ".settings.json")


def generate_answers(model_dir_or_name: str | Path, examples: Sequence[Any], max_new_tokens: int, batch_size: int,
                     template: str, out_path: str | Path, console: Any = None, backend: str = "hf",
                     dtype: str = "float32", loaded: tuple[Any, Any] | None = None,
                     max_batch_tokens: int = 4096) -> Path:
    """Generate one greedy answer per prompt and append rows to `out_path` (resumable).

    Args:
        model_dir_or_name: checkpoint dir (full model or adapter), named model or hub id.
        examples: prompt-only `data.Example`s (meta["testset"] names the test set; ids unique).
        max_new_tokens: answer budget in tokens; answers that hit it get finish_reason "length".
        batch_size: prompts per batch (sorted by prompt length, left padded).
        max_batch_tokens: cap on padded prompt tokens per batch (`plan_batches`); 0 = no cap.
        template: "chat" or "paper", as in training (`modeling.render`).
        backend: a name in `BACKENDS` ("hf", "vllm").
        loaded: an already loaded (model, tokenizer) to reuse across test sets (skips loading).
    Returns:
        out_path. Rows: {"id", "testset", "instruction" (the first user turn), "output", "output_tokens",
        "finish_reason"}, plus "turn" and "question" (that turn's user message) for a later turn;
        `<testset>.settings.json` (model, template, max_new_tokens, batch_size, backend, n) is written last.
    Raises:
        PhasedIFTError: unknown backend; existing settings that differ (stale answers would be mixed in);
            duplicate example ids.
    """
    from rich.console import Console

    if backend not in BACKENDS:
        raise PhasedIFTError(f"generate.backend = {backend!r} is not one of {sorted(BACKENDS)}.")
    out_path = Path(out_path)
    testset = out_path.name.removesuffix(".jsonl")
    ids = [str(e.id) for e in examples]
    if len(set(ids)) != len(ids):
        raise PhasedIFTError(f"test set {testset}: duplicate prompt ids; ids must be unique to resume.")
    settings = {"model": str(model_dir_or_name), "template": template, "max_new_tokens": max_new_tokens,
                "backend": backend, "greedy": True, "n": len(examples)}
    sp = settings_path(out_path)
    _check_settings(sp, settings, out_path)
    console = console or Console(stderr=True)
    with AppendLog(out_path) as log:  # a torn last line (kill -9) is cut off; the ids already answered are known
        todo = [e for e in examples if str(e.id) not in log.done]
        if todo:
            model, tok = loaded if loaded is not None else load_for_inference(model_dir_or_name, dtype=dtype)
            engine = BACKENDS[backend](model, tok, str(model_dir_or_name))
            stops = stop_token_ids(tok, template)
            if not stops:
                raise PhasedIFTError(f"the tokenizer of {model_dir_or_name} has no EOS token; generation cannot "
                                     "stop.")
            _generate_rows(engine, tok, todo, template, stops, max_new_tokens, batch_size, max_batch_tokens, log,
                           testset, console)
    if not sp.is_file():
        atomic_write_json(sp, {**settings, "batch_size": batch_size})
    return out_path


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
                   console: Any) -> None:
    """Render, tokenise and batch the prompts (`plan_batches`), complete each batch and append its rows to `log`."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from phased_ift.modeling import render, tokenize_example
    from phased_ift.progress import LoggedProgress

    enc = [tokenize_example(tok, render(tok, e.prompt_messages, template)[0], "", MAX_PROMPT_TOKENS)["input_ids"]
           for e in todo]
    batches = plan_batches([len(x) for x in enc], batch_size, max_batch_tokens)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with LoggedProgress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"generate {testset}", total=len(todo))
        for idx in batches:
            outs = engine.complete([enc[i] for i in idx], max_new_tokens, stops)
            for i, c in zip(idx, outs):
                e = todo[i]
                row = {
                    "id": str(e.id), "testset": e.meta.get("testset", testset), "instruction": e.instruction,
                    "output": tok.decode(c.token_ids, skip_special_tokens=True).strip(),
                    "output_tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                }
                if e.meta.get("turn"):  # a later turn of a multi-turn test set: its own question
                    row.update(turn=e.meta["turn"], question=e.prompt_messages[-1]["content"])
                log.append(row)
            progress.advance(task, len(idx))


def read_generations(path: str | Path) -> list[dict]:
    """Generation rows of one test set, in file order.

    Raises:
        PhasedIFTError: the file is missing or incomplete (no settings file yet).
    """
    path = Path(path)
    if not path.is_file() or not settings_path(path).is_file():
        raise PhasedIFTError(f"{path} is missing or incomplete; run `phased-ift generate` first.")
    return list(read_jsonl(path, tolerate_torn_tail=True))


# ---------------------------------------------------------------------------------------------------------------
# What to generate for a config
# ---------------------------------------------------------------------------------------------------------------


def testset_key(name_or_path: str) -> str:
    """File-name key of a test set: the name for named sets, the file stem for a path."""
    p = Path(name_or_path)
    return p.stem if (p.suffix or "/" in name_or_path) else name_or_path


def checkpoint_dir(run: Any, arm: str, k: int, seed: int) -> Path:
    """A finished checkpoint dir (DONE marker present).

    Raises:
        PhasedIFTError: the phase has not finished training.
    """
    d = run.checkpoint(arm, k, seed)
    if not (d / "DONE").is_file():
        raise PhasedIFTError(f"{d} has no DONE marker: arm {arm!r} phase {k} seed {seed} has not finished "
                             "training; run `phased-ift train` (it resumes) before generating.")
    return d


def turn_key(testset: str, turn: int) -> str:
    """File key of turn `turn` (1-based) of a multi-turn test set: the test set's own key for turn 1,
    "<testset>_turn<t>" after it (mt_bench.jsonl, mt_bench_turn2.jsonl)."""
    return testset if turn == 1 else f"{testset}_turn{turn}"


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
    from phased_ift.data import Example

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


def generate_all(cfg: Any, run: Any, console: Any = None) -> None:
    """Generate answers on every test set of `generate.test_sets` for every checkpoint of
    `design.evaluation_cells` (each arm x seed's final phase, every phase with generate.every_phase)
    -> generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl. A multi-turn test set (MT-Bench) gets one file per
    turn (`turn_key`), each turn asked after the model's own earlier answers (`next_turn_examples`). A
    checkpoint's model is loaded once, and only when one of its files is unfinished (no settings file);
    finished files are skipped. The answer budget of a test set is `generate.budget(name)`.

    Args:
        cfg: the config (`generate`, `model`, `train` sections); run: the `RunDir`.
    Raises:
        PhasedIFTError: a checkpoint has not finished training (`checkpoint_dir`), see also `generate_answers`.
    """
    from rich.console import Console

    from phased_ift.data import load_test_set
    from phased_ift.design import evaluation_cells
    from phased_ift.modeling import inference_dtype

    console = console or Console(stderr=True)
    g = cfg.generate
    testsets = {testset_key(n): load_test_set(n, limit=g.limit, seed=g.seed) for n in g.test_sets}
    dtype = inference_dtype(cfg.model.dtype, cfg.model.autocast)
    for c in evaluation_cells(cfg, run):
        ckpt, loaded = checkpoint_dir(run, c.arm, c.phase, c.seed), None
        for name, examples in testsets.items():
            prompts, out = examples, None  # out: the previous turn's file
            for turn in range(1, turn_count(examples) + 1):
                if turn > 1:
                    prompts = next_turn_examples(prompts, read_generations(out), turn)
                out = run.generations(c.arm, c.phase, turn_key(name, turn), c.seed)
                if not settings_path(out).is_file() and loaded is None:
                    loaded = load_for_inference(ckpt, dtype=dtype)  # once per checkpoint
                generate_answers(ckpt, prompts, g.budget(name), g.batch_size, cfg.model.template, out,
                                 console=console, backend=g.backend, dtype=dtype, loaded=loaded,
                                 max_batch_tokens=g.max_batch_tokens)
                console.print(f"generate: {c.arm} seed {c.seed} phase {c.phase} {turn_key(name, turn)} "
                              f"({len(prompts)} prompts) -> {out}", highlight=False)


# Kept importable for pipeline.py and judge.py until they read the grid from `design` (the lead migrates them).


