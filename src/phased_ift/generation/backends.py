"""Generation backends: what turns token ids into greedy answers, in a small registry (`BACKENDS`).

"hf" (transformers `generate` through `modeling.generate_greedy`, CPU or GPU), "vllm" (GPU, when the vllm package is
installed; adapters merged and saved to a temporary dir first) and "server" (an OpenAI-compatible inference server
that serves each checkpoint under its `serving.served_name`, through `llm_client.LLMClient`; no weights are loaded
here). All receive the same token ids and stop ids and return the same `Completion`s.

Owns `Completion`, the `Backend` protocol, `BACKENDS` / `register_backend` (keyed by `config_choices.GENERATE_BACKENDS`),
what a backend loads of a checkpoint (`load_for_backend`), the stop ids of a tokenizer and template
(`stop_token_ids`, `trim_at_stop`) and the three backends.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from phased_ift.config import Config
from phased_ift.config_choices import GENERATE_BACKENDS, require_declared
from phased_ift.errors import PhasedIFTError
from phased_ift.generation.serving import served_checkpoints
from phased_ift.llm_client import LLMClient
from phased_ift import modeling  # modeling.load_for_inference: tests patch it
from phased_ift.modeling import generate_greedy, is_adapter, load_checkpoint_tokenizer, render, weights_fingerprint
from phased_ift.rundir import RunDir

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
    """Add a backend factory `factory(model, tokenizer, model_dir, **options) -> Backend`.

    Raises:
        ValueError: a name not declared in `config_choices.GENERATE_BACKENDS`, or registered already.
    """
    require_declared(name, GENERATE_BACKENDS, "generation backend", "GENERATE_BACKENDS")
    if name in BACKENDS:
        raise ValueError(f"generation backend {name!r} is already registered")
    BACKENDS[name] = factory


def load_for_backend(backend: str, model_dir_or_name: str | Path, dtype: str = "float32"):
    """What `backend` needs of a checkpoint: (model, tokenizer) (`modeling.load_for_inference`), or (None, tokenizer) for a
    backend whose factory sets `loads_weights = False` (a server holds the weights)."""
    if getattr(BACKENDS[backend], "loads_weights", True):
        return modeling.load_for_inference(model_dir_or_name, dtype=dtype)

    return None, load_checkpoint_tokenizer(model_dir_or_name)


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
