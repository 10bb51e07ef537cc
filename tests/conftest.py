"""Shared fixtures. Expensive ones (model conversion, tiny model dirs, the llama.cpp server) are session-scoped.

Environment: HF_HUB_OFFLINE=1 always; PHASED_IFT_DATA_HOME defaults to ../shared/data next to the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PHASED_IFT_DATA_HOME", str(REPO.parent / "shared" / "data"))
DATA_HOME = Path(os.environ["PHASED_IFT_DATA_HOME"])


@pytest.fixture(scope="session")
def data_home() -> Path:
    if not DATA_HOME.is_dir():
        pytest.fail(f"data home {DATA_HOME} missing: set PHASED_IFT_DATA_HOME to the shared/data folder")
    return DATA_HOME


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real SmolLM2-135M-Instruct as a plain checkpoint (GGUF converted once, cached across sessions)."""
    from phased_ift.modeling import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_path) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer, saved so the real
    `from_pretrained` path runs. Steps take milliseconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_model")
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
