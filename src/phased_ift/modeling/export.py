"""Exporting a checkpoint for an inference server that does not read HF checkpoints: one GGUF file for llama.cpp
(`export_gguf`), written by llama.cpp's own converter (`convert_hf_to_gguf.py`, `llama_cpp_converter`) from the
checkpoint, a PEFT adapter merged into its base first (`load_checkpoint(trainable=False)` merges it).

The converter is not a Python package: `scripts/install.sh --test` extracts it from the llama-cpp-python sdist of
the version the tests serve with (`LLAMA_CPP_VERSION`, vendor/llama.cpp: the script, its `conversion/` package and
its own `gguf-py`) to <cache>/llama.cpp-<version>/; `$PHASED_IFT_LLAMA_CPP` points at another llama.cpp checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from phased_ift.config_choices import GGUF_TYPES  # the names the CLI offers
from phased_ift.errors import PhasedIFTError
from phased_ift.modeling.hub import cache_home, resolve_model_path
from phased_ift.modeling.loading import is_adapter, load_checkpoint, load_checkpoint_tokenizer

LLAMA_CPP_VERSION = "0.3.36"  # llama-cpp-python, as in scripts/install.sh and pyproject's test extra


def llama_cpp_converter() -> Path:
    """llama.cpp's `convert_hf_to_gguf.py`: in `$PHASED_IFT_LLAMA_CPP` when set, else in
    <cache>/llama.cpp-<LLAMA_CPP_VERSION>/.

    Raises:
        PhasedIFTError: the script is not there (the message says how to get it).
    """
    root = Path(os.environ.get("PHASED_IFT_LLAMA_CPP") or cache_home() / f"llama.cpp-{LLAMA_CPP_VERSION}")
    script = root / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise PhasedIFTError(
            f"llama.cpp's converter {script} is missing. `scripts/install.sh --test` puts it there (from the "
            f"llama-cpp-python {LLAMA_CPP_VERSION} sdist's vendor/llama.cpp), or set PHASED_IFT_LLAMA_CPP to a "
            "llama.cpp checkout.")
    return script


def export_gguf(checkpoint: str | Path, out: str | Path, outtype: str = "f32") -> Path:
    """Write a checkpoint (full model dir, PEFT adapter dir or named model) as one GGUF file.

    An adapter is merged into its base and saved with the tokenizer to a temporary dir first; a full checkpoint is
    converted as it is. The file appears at `out` only when the converter succeeded (temp file, then rename).

    Args:
        outtype: the GGUF tensor type: f32 (the default: the same weights as the hf backend's float32 model, so
            greedy answers match up to kernel rounding), f16, bf16 or q8_0 (smaller, answers drift).
    Returns:
        `out`.
    Raises:
        PhasedIFTError: unknown outtype, missing converter (`llama_cpp_converter`), the converter failed (its
            last output lines are shown, e.g. an architecture llama.cpp does not know).
    """
    if outtype not in GGUF_TYPES:
        raise PhasedIFTError(f"GGUF type {outtype!r} is not one of {list(GGUF_TYPES)}.")
    script, out = llama_cpp_converter(), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="phased_ift_gguf_") as tmp:
        src = Path(resolve_model_path(str(checkpoint))) if not is_adapter(checkpoint) else Path(tmp) / "merged"
        if is_adapter(checkpoint):
            load_checkpoint(checkpoint, trainable=False).to("cpu").save_pretrained(src)
            load_checkpoint_tokenizer(checkpoint).save_pretrained(src)
        part = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, str(script), str(src), "--outfile", str(part), "--outtype", outtype],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not part.is_file():
            part.unlink(missing_ok=True)
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise PhasedIFTError(f"llama.cpp's converter could not export {checkpoint} (exit {proc.returncode}):\n"
                                 f"{tail}")
        os.replace(part, out)
    return out
