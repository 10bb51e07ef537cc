"""Shared fixtures. Expensive ones (model conversion, tiny model dirs, the llama.cpp server) are session-scoped.

Environment: HF_HUB_OFFLINE=1 always; PHASED_IFT_DATA_HOME defaults to ../shared/data next to the repo.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
# Absolute, so tests that chdir (monkeypatch.chdir) still find it when the README's relative ../shared/data is given.
os.environ["PHASED_IFT_DATA_HOME"] = str(Path(os.environ.get("PHASED_IFT_DATA_HOME",
                                                             REPO.parent / "shared" / "data")).resolve())
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


@contextlib.contextmanager
def llama_server_at(gguf: Path, log_dir: Path, *args: str):
    """A real llama.cpp OpenAI-compatible server (`python -m llama_cpp.server`) on `gguf` at 127.0.0.1:<free port>
    while the block runs; yields its base_url (".../v1"; any model name works). Extra server `args` follow the
    defaults (n_ctx 2048, 2 threads). Log: <log_dir>/llama_server.log."""
    import importlib.util
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama_server needs llama-cpp-python: pip install 'llama-cpp-python[server]>=0.3' "
                    "(see .ci/run)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(log_dir) / "llama_server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048", "--n_threads", "2", "--verbose", "false", *args]
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"llama.cpp server not up after 180 s:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real llama.cpp OpenAI-compatible server (`python -m llama_cpp.server`) with the SmolLM2-135M-Instruct GGUF
    on 127.0.0.1:<free port>, started once per session. Yields its base_url (".../v1"); any model name works.

    `--logits_all true` makes /v1/chat/completions return logprobs/top_logprobs. Log: <tmp>/llama_server.log."""
    from phased_ift.modeling import gguf_path

    with llama_server_at(gguf_path("smollm2-135m-instruct"), tmp_path_factory.mktemp("llama_server"),
                         "--logits_all", "true") as base_url:
        yield base_url
