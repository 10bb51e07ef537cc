"""The bundle that travels to a GPU machine without network: what `gpu_check.sh` needs there besides the working tree.

Owns the layout of `benchmarks/gpu_bundle/` (git-ignored; built here by `gpu_wheelhouse.sh`, sent with the device
tool's `carry`, at most 64 MiB):
    wheels/          the wheels the GPU machine lacks (`WHEELS`: trl, datasets and their dependencies that are not
                     on a box with torch, transformers, peft, accelerate, pyarrow, scikit-learn, matplotlib, rich;
                     bitsandbytes for train.method=qlora, trimmed to its CUDA 12.6+ kernels by `trim_bitsandbytes`)
    models/<name>/   config.json, tokenizer files, tokenizer.json as tokenizer.json.xz: the *architecture* of a
                     model, never its weights (Gemma-3-270M is 536 MB in bf16, 253 MB as a q4 GGUF: neither fits);
                     `gpu_check.py` builds random weights from the config there (MFU does not depend on the values)
    data/            synthetic stand-ins for the data-home files the check reads (`DATA_FILES`, same names and
                     formats): seeded random words with the word counts of the real records, so token lengths
                     (what MFU, IFD and generation speed depend on) match; no text of the CC BY-NC data travels
    MANIFEST.json    {"wheels": {file: bytes}, "requirements": [pinned names], "models": {...}, "data": [...],
                     "bytes": total}; written last (its presence means the bundle is complete)

    python benchmarks/gpu_bundle.py models BUNDLE     # models/ and data/ (wheels: gpu_wheelhouse.sh)
    python benchmarks/gpu_bundle.py trim WHEEL        # drop bitsandbytes kernels older than CUDA 12.6
    python benchmarks/gpu_bundle.py manifest BUNDLE
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import sys
import zipfile
from pathlib import Path

# Pinned to the versions this project's tests run with (the local venv), except bitsandbytes (not installed here:
# the latest release with CUDA 12.6-13.x kernels). `gpu_wheelhouse.sh` downloads exactly these, --no-deps.
WHEELS = ["trl", "datasets", "dill", "multiprocess", "xxhash", "pandas", "fsspec"]
BITSANDBYTES = "bitsandbytes==0.50.2"
# The named models whose architecture travels (source: `modeling.resolve_model_path(name)` here).
MODELS = {"gemma-3-270m": "gemma-3-270m", "smollm2-135m": "smollm2-135m-instruct"}
TOKENIZER_FILES = ["tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json",
                   "config.json"]
DATA_FILES = ["alpagasus/random_9k.json", "alpagasus/vicuna_test_set.jsonl", "alpagasus/koala_test_set.jsonl"]
# bitsandbytes ships one kernel library per CUDA/ROCm/XPU version (43 MB); torch 2.11's CUDA builds are 12.6+.
KEEP_BNB = re.compile(r"libbitsandbytes_(cuda12[6-9]|cuda1[3-9]\d|cpu)")


def pinned(names: list[str]) -> list[str]:
    """name==version of each package as installed in this interpreter's environment."""
    from importlib.metadata import version

    return [f"{n}=={version(n)}" for n in names]


def add_model(bundle: Path, name: str, source: Path) -> dict:
    """Copy a checkpoint's config and tokenizer (not its weights) to bundle/models/<name>/, tokenizer.json
    xz-compressed. Returns {"files": [...], "bytes": int}."""
    out = bundle / "models" / name
    out.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        if (source / f).is_file():
            shutil.copy2(source / f, out / f)
    (out / "tokenizer.json.xz").write_bytes(lzma.compress((source / "tokenizer.json").read_bytes(), preset=9))
    files = sorted(p.name for p in out.iterdir())
    return {"source": str(source), "files": files, "bytes": sum(p.stat().st_size for p in out.iterdir())}


def _stand_in(text: str, rng, vocab: list[str]) -> str:
    """Seeded random words, as many as `text` has (0 stays empty)."""
    return " ".join(rng.choice(vocab) for _ in text.split())


def add_data(bundle: Path, data_home: Path, seed: int = 0) -> list[str]:
    """Write synthetic stand-ins of `DATA_FILES` into bundle/data/ (same relative paths, formats and record counts;
    every text field replaced by seeded random words of the same word count), plus a PROVENANCE.md saying so.
    Only the word counts of the real records are read; none of their text is written."""
    import random

    rng = random.Random(seed)
    vocab = [w for w in (Path(__file__).read_text(encoding="utf-8").split()) if w.isalpha()][:400]
    out = bundle / "data"
    for rel in DATA_FILES:
        src, dst = data_home / rel, out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".json"):
            rows = [{k: _stand_in(v, rng, vocab) for k, v in r.items()} for r in json.loads(src.read_text())]
            dst.write_text(json.dumps(rows), encoding="utf-8")
        else:
            rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
            dst.write_text("".join(json.dumps({k: _stand_in(v, rng, vocab) if k in ("text", "prompt") else v
                                               for k, v in r.items()}) + "\n" for r in rows), encoding="utf-8")
    (out / "PROVENANCE.md").write_text(
        "Synthetic stand-ins written by benchmarks/gpu_bundle.py: the record counts and per-field word counts of the "
        "data home's files of the same names, every word replaced by a seeded random word. No text of the original "
        "data is here; results on it measure speed, not quality.\n", encoding="utf-8")
    return list(DATA_FILES) + ["PROVENANCE.md"]


def unpack_model(bundle_model: Path, out: Path) -> Path:
    """A loadable tokenizer dir from bundle/models/<name>/ (tokenizer.json decompressed) at `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for p in bundle_model.iterdir():
        if p.name == "tokenizer.json.xz":
            if not (out / "tokenizer.json").is_file():
                (out / "tokenizer.json").write_bytes(lzma.decompress(p.read_bytes()))
        else:
            shutil.copy2(p, out / p.name)
    return out


def trim_bitsandbytes(wheel: Path) -> tuple[int, int]:
    """Rewrite a bitsandbytes wheel in place without the kernel libraries `KEEP_BNB` does not match (and their
    RECORD lines). Returns (bytes before, bytes after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        drop = {n for n in src.namelist() if "libbitsandbytes_" in n and not KEEP_BNB.search(n)}
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if line.split(",", 1)[0] not in drop).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def write_manifest(bundle: Path, requirements: list[str]) -> dict:
    wheels = {p.name: p.stat().st_size for p in sorted((bundle / "wheels").glob("*.whl"))}
    models = {d.name: sorted(p.name for p in d.iterdir()) for d in sorted((bundle / "models").iterdir())}
    data = sorted(str(p.relative_to(bundle / "data")) for p in (bundle / "data").rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    manifest = {"wheels": wheels, "requirements": requirements, "models": models, "data": data, "bytes": total}
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str]) -> None:
    cmd, target = argv[0], Path(argv[1] if len(argv) > 1 else ".")
    if cmd == "models":
        import os

        from phased_ift.modeling import resolve_model_path

        for name, source in MODELS.items():
            print(name, add_model(target, name, Path(resolve_model_path(source)))["bytes"], "bytes")
        data_home = Path(os.environ.get("PHASED_IFT_DATA_HOME", Path(__file__).resolve().parents[2] / "shared/data"))
        add_data(target, data_home)
    elif cmd == "trim":
        before, after = trim_bitsandbytes(target)
        print(f"{target.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    elif cmd == "pins":
        print("\n".join(pinned(WHEELS) + [BITSANDBYTES]))
    elif cmd == "manifest":
        reqs = [line for line in (target / "wheels" / "requirements.txt").read_text().split() if line]
        m = write_manifest(target, reqs)
        print(f"bundle {target}: {m['bytes'] / 2**20:.1f} MiB ({len(m['wheels'])} wheels, models {list(m['models'])})")
    else:
        sys.exit(f"unknown command {cmd!r}: models | trim | pins | manifest")


if __name__ == "__main__":
    main(sys.argv[1:])
