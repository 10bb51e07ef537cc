"""Batched greedy generation of answers on test sets, per checkpoint, resumable per test set.

    phased-ift generate configs/quickstart.yaml generate.test_sets=[vicuna,koala] generate.limit=20

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
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from phased_ift.errors import PhasedIFTError

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


# ---------------------------------------------------------------------------------------------------------------
# Loading a checkpoint (full model or PEFT adapter) for inference
# ---------------------------------------------------------------------------------------------------------------


def base_model_of(adapter_dir: Path) -> str:
    """The base model of an adapter checkpoint: hparams.json `base_model` (set by training), else the adapter's
    `base_model_name_or_path`."""
    hp = adapter_dir / "hparams.json"
    if hp.is_file():
        base = json.loads(hp.read_text(encoding="utf-8")).get("base_model")
        if base:
            return str(base)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise PhasedIFTError(f"{adapter_dir}: an adapter without hparams.json `base_model` or adapter_config.json "
                             "`base_model_name_or_path`; cannot tell which base model it adapts.")
    return str(base)


def load_for_inference(model_dir_or_name: str | Path, dtype: str = "float32"):
    """Load (model, tokenizer) for generation/evaluation: a named model, a full checkpoint dir, or a PEFT adapter
    dir (base model from hparams.json + adapter, merged for speed). The model is in eval mode, on
    `modeling.inference_device()` (the GPU when there is one).

    Raises:
        PhasedIFTError: the checkpoint or its base model cannot be found.
    """
    from phased_ift import modeling

    p = Path(model_dir_or_name)
    if (p / "adapter_config.json").is_file():
        from peft import PeftModel

        base = base_model_of(p)
        model = modeling.load_model(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(p)).merge_and_unload()
        has_tok = any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tok = modeling.load_tokenizer(str(p) if has_tok else base)
    else:
        model = modeling.load_model(str(model_dir_or_name), dtype=dtype)
        tok = modeling.load_tokenizer(str(model_dir_or_name))
    model.to(modeling.inference_device()).eval()
    return model, tok


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
        import torch
        from transformers import GenerationConfig

        from phased_ift.modeling import pad_batch

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        feats = [{"input_ids": p, "attention_mask": [1] * len(p)} for p in prompts]
        batch = pad_batch(feats, pad_id, side="left")
        gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                   eos_token_id=list(stop_ids), pad_token_id=pad_id)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            out = self.model.generate(input_ids=batch["input_ids"].to(device),
                                      attention_mask=batch["attention_mask"].to(device), generation_config=gen_cfg)
        new = out[:, batch["input_ids"].shape[1]:].tolist()
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
        if not path or (Path(path) / "adapter_config.json").is_file() or not (Path(path) / "config.json").is_file():
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


def drop_torn_tail(path: Path) -> None:
    """Truncate an unparseable last line (an append cut by kill -9), so rows appended next stay on their own
    lines. Only the last line is ever removed; a bad line elsewhere is left for `read_jsonl` to report."""
    if not path.is_file():
        return
    data = path.read_bytes()
    body, _, last = data.rstrip(b"\n").rpartition(b"\n")
    try:
        json.loads(last) if last.strip() else None
        if data and not data.endswith(b"\n"):
            with open(path, "ab") as f:
                f.write(b"\n")
    except ValueError:
        with open(path, "r+b") as f:
            f.truncate(len(body) + 1 if body else 0)


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
        out_path. Rows: {"id", "testset", "instruction", "output", "output_tokens", "finish_reason"};
        `<testset>.settings.json` (model, template, max_new_tokens, batch_size, backend, n) is written last.
    Raises:
        PhasedIFTError: unknown backend; existing settings that differ (stale answers would be mixed in);
            duplicate example ids.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from phased_ift.data import append_jsonl, read_jsonl
    from phased_ift.modeling import render, tokenize_example
    from phased_ift.progress import LoggedProgress

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
    if sp.is_file():
        old = json.loads(sp.read_text(encoding="utf-8"))
        diff = [k for k in ("model", "template", "max_new_tokens") if old.get(k) != settings[k]]
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in diff)
            raise PhasedIFTError(
                f"{out_path} was generated with different settings ({changes}); delete {out_path.parent} to "
                "regenerate, or restore the settings."
            )
    drop_torn_tail(out_path)
    done = {r["id"] for r in read_jsonl(out_path)} if out_path.is_file() else set()
    todo = [e for e in examples if str(e.id) not in done]
    console = console or Console(stderr=True)
    if todo:
        model, tok = loaded if loaded is not None else load_for_inference(model_dir_or_name, dtype=dtype)
        engine = BACKENDS[backend](model, tok, str(model_dir_or_name))
        stops = stop_token_ids(tok, template)
        if not stops:
            raise PhasedIFTError(f"the tokenizer of {model_dir_or_name} has no EOS token; generation cannot stop.")
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
                    append_jsonl(out_path, {
                        "id": str(e.id), "testset": e.meta.get("testset", testset), "instruction": e.instruction,
                        "output": tok.decode(c.token_ids, skip_special_tokens=True).strip(),
                        "output_tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                    })
                progress.advance(task, len(idx))
    if not sp.is_file():
        sp.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=sp.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**settings, "batch_size": batch_size}, f, indent=1)
        os.replace(tmp, sp)
    return out_path


def read_generations(path: str | Path) -> list[dict]:
    """Generation rows of one test set, in file order.

    Raises:
        PhasedIFTError: the file is missing or incomplete (no settings file yet).
    """
    from phased_ift.data import read_jsonl

    path = Path(path)
    if not path.is_file() or not settings_path(path).is_file():
        raise PhasedIFTError(f"{path} is missing or incomplete; run `phased-ift generate` first.")
    return list(read_jsonl(path, tolerate_torn_tail=True))


# ---------------------------------------------------------------------------------------------------------------
# What to generate for a config
# ---------------------------------------------------------------------------------------------------------------


def final_phase(cfg: Any, arm: str) -> int:
    """The phase whose checkpoint is an arm's final model: 1 for one-off (one phase), else phases.k."""
    return 1 if arm == "one-off" else int(cfg.phases.k)


def checkpoint_phases(cfg: Any, arm: str) -> list[int]:
    """Phases to evaluate for an arm: the final one, or every phase when generate.every_phase."""
    last = final_phase(cfg, arm)
    return list(range(1, last + 1)) if cfg.generate.every_phase else [last]


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
