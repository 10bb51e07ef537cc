"""A model's tensor shapes and side files without loading its weights, for estimates made before a run
(`train.disk`).

Owns `weight_shapes`: {tensor name: shape} read from the headers of a checkpoint's safetensors files (the 8-byte
little-endian header length, then the JSON header: safetensors' format, https://github.com/huggingface/safetensors),
or from a named model's GGUF tensor infos while its plain checkpoint is not converted yet (names mapped to the
Hugging Face module names LoRA targets), and the bytes of the tokenizer / config files that every saved phase copies.
No tensor data is read and nothing is converted or downloaded: a hub id is looked up in the local Hugging Face cache
only.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from phased_ift.modeling.hub import NAMED_MODELS, converted_dir, gguf_path

# Files next to the weights that a phase's save writes again (tokenizer, chat template, configs).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "config.json",
              "generation_config.json")
# llama.cpp's tensor names (gguf-py constants.py, TENSOR_NAMES) -> the Hugging Face module names
_GGUF_MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "attn_qkv": "self_attn.qkv_proj", "ffn_gate": "mlp.gate_proj",
                 "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GGUF_TOP = {"token_embd": "model.embed_tokens", "output": "lm_head", "output_norm": "model.norm"}


@dataclass(frozen=True)
class WeightShapes:
    """The tensors of a checkpoint as saved (a tied LM head counted once, as `save_pretrained` writes it).

    Attributes:
        shapes: {tensor name (Hugging Face naming): shape}.
        side_bytes: bytes of the tokenizer / config files (`SIDE_FILES`) found next to the weights; None when
            unknown (a GGUF not yet converted: its tokenizer is inside the GGUF).
        source: what was read (a file or folder), for messages.
    """

    shapes: dict[str, tuple[int, ...]]
    side_bytes: int | None
    source: str

    @property
    def params(self) -> int:
        """The number of parameters (elements of every tensor)."""
        return sum(math.prod(s) for s in self.shapes.values())


def weight_shapes(name_or_path: str) -> WeightShapes | None:
    """The tensor shapes of `model.name_or_path` read from file headers (see the module docstring), or None when no
    header is at hand (a hub id not in the local cache, a checkpoint of .bin files only, a PEFT adapter dir).
    Never raises for a missing or unreadable file: the estimate is then unknown."""
    try:
        if name_or_path in NAMED_MODELS:
            converted = converted_dir(name_or_path)
            return _from_dir(converted) if converted is not None else _from_gguf(gguf_path(name_or_path))
        p = Path(name_or_path).expanduser()
        if p.is_dir():
            return _from_dir(p)
        return _from_hub_cache(name_or_path)
    except Exception:  # an unreadable or missing header makes the estimate unknown, never a failure
        return None


def _from_dir(d: Path) -> WeightShapes | None:
    """Shapes from the safetensors files of a local checkpoint dir (every shard of a sharded one)."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({d / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    else:
        files = sorted(d.glob("*.safetensors"))
    if not files or (d / "adapter_config.json").is_file():
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(safetensors_shapes(f))
    side = sum(f.stat().st_size for f in (d / n for n in SIDE_FILES) if f.is_file())
    return WeightShapes(shapes, side, str(d))


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's header (its first 8 + N bytes; no tensor data is read).

    Raises:
        OSError: the file cannot be read. ValueError / struct.error: not a safetensors file.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise ValueError(f"{path}: header of {n} bytes is not a safetensors header")
        header = json.loads(f.read(n))
    return {k: tuple(int(x) for x in v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _from_hub_cache(repo_id: str) -> WeightShapes | None:
    """Shapes of a hub id from the local Hugging Face cache (`huggingface_hub.try_to_load_from_cache`: no request)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> Path | None:
        p = try_to_load_from_cache(repo_id, name)
        return Path(p) if isinstance(p, str) else None

    index = cached("model.safetensors.index.json")
    names = (sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())) if index
             else ["model.safetensors"])
    files = [cached(n) for n in names]
    if not files or any(f is None for f in files):
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(safetensors_shapes(f))
    side = sum(f.stat().st_size for f in map(cached, SIDE_FILES) if f is not None)
    return WeightShapes(shapes, side, repo_id)


def _from_gguf(path: Path) -> WeightShapes:
    """Shapes from a GGUF's tensor infos (gguf-py's `GGUFReader`, memory-mapped), renamed to Hugging Face module
    names (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`). Element counts do not depend on the
    quantisation: the plain checkpoint has the same tensors in the training dtype."""
    from gguf import GGUFReader

    shapes: dict[str, tuple[int, ...]] = {}
    for t in GGUFReader(path).tensors:
        shapes[_hf_name(t.name)] = tuple(int(x) for x in reversed(t.shape))  # GGUF lists ne0 (columns) first
    return WeightShapes(shapes, None, str(path))


def _hf_name(gguf_name: str) -> str:
    """A llama.cpp tensor name in Hugging Face naming where the module is known (else unchanged)."""
    m = re.fullmatch(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)", gguf_name)
    if m and m.group(2) in _GGUF_MODULES:
        return f"model.layers.{m.group(1)}.{_GGUF_MODULES[m.group(2)]}.{m.group(3)}"
    head, _, kind = gguf_name.rpartition(".")
    return f"{_GGUF_TOP[head]}.{kind}" if head in _GGUF_TOP else gguf_name
