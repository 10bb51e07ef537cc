"""Batched greedy generation of answers on test sets, per checkpoint, resumable per test set.

    phased-ift generate configs/quickstart.yaml generate.test_sets=[vicuna,koala] generate.limit=20

Owns: the generation backends, prompt batching, the resumable generations files and their settings, and
`generate_all` (every checkpoint of `design.evaluation_cells` x every test set). Models are loaded and run through
`modeling` (`load_checkpoint`, `generate_greedy`); only the vLLM backend imports its own package.

Prompts are rendered with `modeling.render` (exactly as in training), tokenised, sorted by length (less padding),
left-padded into batches and decoded greedily until the tokenizer's EOS or the chat template's end-of-turn token,
or `max_new_tokens`. Rows are appended per batch to `generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl`, so a
killed run resumes by skipping the ids already there; `<testset>.settings.json` is written when a test set is
complete. After SIGTERM / SIGINT generation stops once the batch in flight is written (`shutdown.check`). Greedy
decoding is deterministic: batched and one-at-a-time outputs agree (up to float rounding, see
benchmarks/bench_generate.py).

Backends live in a small registry (`BACKENDS`): "hf" (transformers `generate`, CPU or GPU), "vllm" (GPU, when
the vllm package is installed) and "server" (an OpenAI-compatible inference server that serves each checkpoint
under its `serving.served_name`, through `llm_client.LLMClient`; no weights are loaded here). All receive the same
token ids and stop ids and return the same row fields.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from phased_ift import modeling, shutdown
from phased_ift.config import Config
from phased_ift.config_choices import testset_key
from phased_ift.data import Example, load_test_set
from phased_ift.design import evaluation_cells
from phased_ift.errors import PhasedIFTError
from phased_ift.llm_client import LLMClient
from phased_ift.modeling import (generate_greedy, inference_dtype, is_adapter, load_checkpoint_tokenizer, render,
                                 tokenize_example, weights_fingerprint)
from phased_ift.phasedir import PhaseDir
from phased_ift.progress import LoggedProgress
from phased_ift.rundir import RunDir
from phased_ift.runio import AppendLog, atomic_write_json, read_jsonl
from phased_ift.serving import served_checkpoints

# Longest prompt kept (its end, like tokenize_example); longer test prompts are rare (koala has a few).
MAX_PROMPT_TOKENS = 2048


@dataclass
class Completion:
    """One generated answer: token ids without the stop token, and why generation ended ("stop" | "length").

    `text`: the answer as a server decoded it (the row's output; None: the row decodes `token_ids`); `n_tokens`: the
    row's output_tokens when not len(token_ids). `error`: why this prompt got no answer; its row is not written, so
    the test set stays unfinished and a re-run asks again."""

    token_ids: list[int]
    finish_reason: str
    text: str | None = None
    n_tokens: int | None = None
    error: str | None = None


class Backend(Protocol):
    """A generation backend: greedy completions for a batch of tokenised prompts.

    Optional, on the factory (class): `loads_weights = False` (only the tokenizer is loaded; the factory gets
    model=None) and `options(cfg, run, cell) -> dict` (keyword arguments of the factory for one checkpoint; its
    str/number values are recorded in settings.json). On the instance: `prompts_per_call` (prompts per `complete`
    call instead of generate.batch_size batches) and `close()`.
    """

    def complete(self, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int]) -> list[Completion]:
        ...


BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Add a backend factory `factory(model, tokenizer, model_dir, **options) -> Backend`; names are unique."""
    if name in BACKENDS:
        raise ValueError(f"generation backend {name!r} is already registered")
    BACKENDS[name] = factory


def load_for_backend(backend: str, model_dir_or_name: str | Path, dtype: str = "float32"):
    """What `backend` needs of a checkpoint: (model, tokenizer) (`load_for_inference`), or (None, tokenizer) for a
    backend whose factory sets `loads_weights = False` (a server holds the weights)."""
    if getattr(BACKENDS[backend], "loads_weights", True):
        return load_for_inference(model_dir_or_name, dtype=dtype)

    return None, load_checkpoint_tokenizer(model_dir_or_name)


def load_for_inference(model_dir_or_name: str | Path, dtype: str = "float32"):
    """Load (model, tokenizer) for generation/evaluation: a named model, a full checkpoint dir, or a PEFT adapter
    dir (base model from hparams.json + adapter, merged for speed): `modeling.load_checkpoint(trainable=False)`.
    The model is in eval mode, on `modeling.inference_device()` (the GPU when there is one).

    Raises:
        PhasedIFTError: the checkpoint or its base model cannot be found.
    """
    model = modeling.load_checkpoint(model_dir_or_name, trainable=False, dtype=dtype)
    return model, modeling.load_checkpoint_tokenizer(model_dir_or_name)


def stop_token_ids(tokenizer, template: str) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS plus the chat template's end-of-turn token.

    The end-of-turn token is found by rendering a one-turn conversation and taking the first token after the
    answer text (e.g. `<|im_end|>` for ChatML, `<end_of_turn>` for Gemma), so no per-model list is needed.
    """
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


class ServerBackend:
    """An OpenAI-compatible server (vLLM, llama.cpp, ...) that serves this checkpoint as `served_model`, asked
    through `llm_client.LLMClient` (`generate.server`: concurrency, retries, the run's response cache): one text
    completion per prompt at temperature 0 with the hf backend's budget and stop tokens.

    The prompt is the hf backend's: with `prompt: text` the text sent is the decoded prompt ids (the rendered
    prompt, with the BOS `tokenize_example` adds and its truncation), checked to tokenise back to exactly those
    ids, sent with `add_special_tokens: false` (vLLM; llama.cpp parses the special tokens in the text), and the
    server's `usage.prompt_tokens` must equal their count; with `prompt: token_ids` the ids themselves. Sampling
    knobs that would change greedy decoding are neutralised (llama.cpp's repeat_penalty 1.1 default, vLLM's
    repetition_penalty). The answer is the server's text; `output_tokens` counts it re-tokenised (servers count the
    stop token differently), or is the budget when the server says "length". Cache keys include the checkpoint's `weights_fingerprint`: retrained weights served
    under the same name are asked again.
    """

    loads_weights = False

    def __init__(self, model, tokenizer, model_dir: str = "", *, server: Any, served_model: str,
                 cache_path: str | Path) -> None:
        self.tokenizer, self.server, self.served_model = tokenizer, server, served_model
        self.fingerprint = weights_fingerprint(model_dir) if model_dir else None
        self._expected: dict[str, int] = {}
        self.prompts_per_call = 4 * server.concurrency
        self.client = LLMClient(server.endpoint(served_model, 1), cache_path, check=self._check)

    @classmethod
    def options(cls, cfg: Config, run: RunDir, cell: Any) -> dict:
        """The factory's keyword arguments for one checkpoint of the grid (its served name, the run's cache)."""
        by_cell = {(s.arm, s.seed, s.phase): s.name for s in served_checkpoints(cfg, run)}
        return {"server": cfg.generate.server, "served_model": by_cell[(cell.arm, cell.seed, cell.phase)],
                "cache_path": run.llm_cache}

    def _check(self, canon: dict, data: dict) -> str | None:
        """A reply whose prompt is not the hf backend's (the server tokenised the text differently: most often a
        BOS of its own) stops the run before it is cached."""
        got = (data.get("usage") or {}).get("prompt_tokens")
        key = canon["prompt"] if isinstance(canon["prompt"], str) else json.dumps(canon["prompt"])
        want = self._expected.get(key)
        if not got or want is None or got == want:
            return None
        return (f"{self.server.base_url} read the prompt of {self.served_model!r} as {got} tokens, the hf backend's "
                f"prompt has {want}: the server tokenises the text differently (e.g. adds its own BOS token). For "
                "llama.cpp serve the GGUF with --kv_overrides tokenizer.ggml.add_bos_token=bool:false (`phased-ift "
                "serve-command --server llama-cpp` does); for vLLM set generate.server.prompt=token_ids.")

    def _request(self, ids: list[int], max_new_tokens: int, stop_ids: Sequence[int]) -> dict:
        if self.server.prompt == "token_ids":
            prompt: Any = list(ids)
            self._expected[json.dumps(prompt)] = len(ids)
        else:
            prompt = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if self.tokenizer(prompt, add_special_tokens=False)["input_ids"] != list(ids):
                raise PhasedIFTError(f"the prompt {prompt[:80]!r}... does not tokenise back to the hf backend's "
                                     "prompt ids, so a text prompt would differ; set generate.server.prompt="
                                     "token_ids (vLLM).")
            self._expected[prompt] = len(ids)
        extra = {"stop_token_ids": list(stop_ids), "repeat_penalty": 1.0, "repetition_penalty": 1.0,
                 "add_special_tokens": False, "skip_special_tokens": True, **self.server.extra_body}
        return {"prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0.0, "seed": 0, "extra_body": extra,
                "cache_extra": self.fingerprint}

    def complete(self, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int]) -> list[Completion]:
        requests = [self._request(list(p), max_new_tokens, stop_ids) for p in prompts]
        out = []
        for r in self.client.chat_many(requests, desc=f"server {self.served_model}", report=False):
            if not r.ok:
                out.append(Completion([], "stop", error=r.error or "no answer"))
                continue
            ids = self.tokenizer(r.text, add_special_tokens=False)["input_ids"]
            if r.finish_reason == "length":  # the server generated exactly the budget
                out.append(Completion(ids, "length", text=r.text, n_tokens=max_new_tokens))
            else:
                out.append(Completion(ids, "stop", text=r.text))
        return out

    def close(self) -> None:
        self.client.console.print(self.client.summary(f"server {self.served_model}"), highlight=False)
        self.client.close()


register_backend("hf", HFBackend)
register_backend("vllm", VLLMBackend)
register_backend("server", ServerBackend)


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


def checkpoint_dir(run: RunDir, arm: str, k: int, seed: int) -> Path:
    """A finished checkpoint dir (DONE marker present).

    Raises:
        PhasedIFTError: the phase has not finished training.
    """
    d = run.checkpoint(arm, k, seed)
    if not PhaseDir(d).done:
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
        PhasedIFTError: a checkpoint has not finished training (`checkpoint_dir`), see also `generate_answers`.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    g = cfg.generate
    testsets = {testset_key(n): load_test_set(n, limit=g.limit, seed=g.seed) for n in g.test_sets}
    dtype = inference_dtype(cfg.model.dtype, cfg.model.autocast)
    options_of = getattr(BACKENDS.get(g.backend), "options", None)
    for c in evaluation_cells(cfg, run):
        ckpt, loaded = checkpoint_dir(run, c.arm, c.phase, c.seed), None
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
