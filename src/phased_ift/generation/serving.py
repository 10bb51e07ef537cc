"""Serving a run's checkpoints for `generate.backend=server`: one served model name per checkpoint, and the server
commands that serve them under those names (`phased-ift serve-command CONFIG`).

Owns: the name of each checkpoint of `design.evaluation_cells` on the server (`served_name`: the template
`generate.server.model_template` over arm, seed and phase; `served_checkpoints` refuses two checkpoints with one
name), and the commands that serve exactly those names: `vllm serve BASE --enable-lora --lora-modules NAME=DIR ...`
for adapter checkpoints (`vllm_commands`), and llama.cpp's server over GGUF exports (`llama_cpp_commands`). The
backend that sends the prompts is `generate.ServerBackend`; the GGUF export is `modeling.export_gguf`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from phased_ift.config import Config
from phased_ift.config_choices import SERVERS  # the names the CLI offers
from phased_ift.phases.design import evaluation_cells
from phased_ift.errors import PhasedIFTError
from phased_ift.modeling import base_model_of, is_adapter, resolve_model_path
from phased_ift.phasedir import PhaseDir
from phased_ift.rundir import RunDir

# vLLM's --max-lora-rank accepts these values only (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_NAME_OK = re.compile(r"[A-Za-z0-9._:/-]+")


@dataclass(frozen=True)
class Served:
    """One checkpoint of the evaluation grid on the server: its cell, its dir, its served model name, whether it
    has finished training (`DONE`) and whether it is a PEFT adapter."""

    arm: str
    seed: int
    phase: int
    path: Path
    name: str
    done: bool
    adapter: bool


def served_name(template: str, arm: str, seed: int, phase: int) -> str:
    """The served model name of one checkpoint: `template.format(arm=, seed=, phase=)`.

    Raises:
        PhasedIFTError: the name is empty or holds a character a `--lora-modules NAME=DIR` argument cannot (only
            letters, digits and . _ : / - are allowed).
    """
    name = template.format(arm=arm, seed=seed, phase=phase)
    if not _NAME_OK.fullmatch(name):
        raise PhasedIFTError(f"generate.server.model_template = {template!r} gives the served name {name!r}; use "
                             "only letters, digits and . _ : / - (a vLLM --lora-modules NAME=DIR name).")
    return name


def served_checkpoints(cfg: Config, run: RunDir) -> list[Served]:
    """Every checkpoint of `design.evaluation_cells` with its served name, in grid order.

    Raises:
        PhasedIFTError: two checkpoints get the same name (the server would answer both with one model): put
            {arm}, {seed} and {phase} in `generate.server.model_template`.
    """
    out, seen = [], {}
    for c in evaluation_cells(cfg, run):
        d = run.checkpoint(c.arm, c.phase, c.seed)
        name = served_name(cfg.generate.server.model_template, c.arm, c.seed, c.phase)
        if name in seen:
            raise PhasedIFTError(f"generate.server.model_template = {cfg.generate.server.model_template!r} names "
                                 f"both {seen[name]} and {d} {name!r}; put {{arm}}, {{seed}} and {{phase}} in it so "
                                 "each checkpoint has its own served model.")
        seen[name] = d
        out.append(Served(c.arm, c.seed, c.phase, d, name, PhaseDir(d).done, is_adapter(d)))
    return out


def _lora_rank(served: list[Served]) -> int:
    """The smallest `--max-lora-rank` value vLLM accepts that holds every adapter's rank."""
    r = max(int(json.loads((s.path / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16))
            for s in served)
    return next((v for v in VLLM_LORA_RANKS if v >= r), r)


def vllm_commands(served: list[Served], port: int = 8000) -> list[str]:
    """`vllm serve` command lines for finished checkpoints: one server per base model holding every adapter on it
    as a LoRA module named by its served name, and one server per full checkpoint (`--served-model-name`, ports
    counting up from `port`). `--generation-config vllm` keeps the model's generation_config.json (e.g. a
    repetition penalty) out of the sampling, so greedy decoding is plain argmax as in the hf backend."""
    lines: list[str] = []
    by_base: dict[str, list[Served]] = {}
    for s in served:
        if s.adapter:
            by_base.setdefault(resolve_model_path(base_model_of(s.path)), []).append(s)
    for base, group in by_base.items():
        mods = " ".join(shlex.quote(f"{s.name}={s.path.resolve()}") for s in group)
        lines.append(f"vllm serve {shlex.quote(base)} --port {port} --generation-config vllm --enable-lora "
                     f"--max-lora-rank {_lora_rank(group)} --max-loras {min(len(group), 8)} --max-cpu-loras "
                     f"{len(group)} --lora-modules {mods}")
        port += 1
    for s in served:
        if not s.adapter:
            lines.append(f"vllm serve {shlex.quote(str(s.path.resolve()))} --port {port} --generation-config vllm "
                         f"--served-model-name {shlex.quote(s.name)}")
            port += 1
    return lines


def llama_cpp_commands(served: list[Served], gguf_dir: Path, port: int = 8000, n_ctx: int = 4096) -> list[str]:
    """Command lines for llama.cpp: export each finished checkpoint to GGUF (`phased-ift export-gguf`, an adapter
    merged into its base), write the server's config file (one model per served name, swapped in on request) and
    start `python -m llama_cpp.server`. The prompt text carries its own BOS token where the model uses one, so the
    config turns off llama.cpp's own BOS (`tokenizer.ggml.add_bos_token=bool:false`)."""
    gguf_dir = Path(gguf_dir)
    models = [{"model": str((gguf_dir / f"{s.name.replace('/', '_')}.gguf").resolve()), "model_alias": s.name,
               "n_ctx": n_ctx, "kv_overrides": ["tokenizer.ggml.add_bos_token=bool:false"]} for s in served]
    config = {"host": "127.0.0.1", "port": port, "models": models}
    lines = [f"phased-ift export-gguf {shlex.quote(str(s.path))} {shlex.quote(m['model'])}"
             for s, m in zip(served, models)]
    path = gguf_dir / "llama_cpp_server.json"
    lines.append(f"cat > {shlex.quote(str(path))} <<'EOF'\n{json.dumps(config, indent=2)}\nEOF")
    lines.append(f"python -m llama_cpp.server --config_file {shlex.quote(str(path))}")
    return lines


def serve_commands(cfg: Config, run: RunDir, server: str = "vllm", port: int = 8000,
                   gguf_dir: str | Path | None = None) -> list[str]:
    """The commands that serve a run's evaluation checkpoints under the names `generate.backend=server` asks for,
    with `#` comment lines first: the base_url to set, and the checkpoints left out because they have not
    finished training.

    Args:
        server: "vllm" or "llama-cpp".
        gguf_dir: llama-cpp only: where the GGUF exports go (default <run_dir>/gguf).
    Raises:
        PhasedIFTError: unknown server; no checkpoint has finished training; duplicate served names.
    """
    if server not in SERVERS:
        raise PhasedIFTError(f"unknown server {server!r}; use one of {list(SERVERS)}.")
    served = served_checkpoints(cfg, run)
    ready = [s for s in served if s.done]
    if not ready:
        raise PhasedIFTError(f"no checkpoint of {run.root} has finished training (DONE); run `phased-ift train` "
                             "first.")
    head = [f"# generate.backend=server generate.server.base_url=http://127.0.0.1:{port}/v1 "
            f"generate.server.model_template={shlex.quote(cfg.generate.server.model_template)}"]
    head += [f"# not trained yet, left out: {s.name} ({s.path})" for s in served if not s.done]
    if server == "vllm":
        return head + vllm_commands(ready, port)
    return head + llama_cpp_commands(ready, Path(gguf_dir) if gguf_dir else run.root / "gguf", port)
