"""Weight files that are whole, and weights a finished phase vouches for.

Owns two checks, both cheap next to loading the weights:

  * `complete(file)`: a weight file is whole. A safetensors file's header must describe exactly the bytes the
    file holds (`safetensors.safe_open` refuses a file "not fully covered": zero bytes or cut short); a torch.save
    file (`.pt`, `.pth`, `.bin`: a zip archive) must end with its zip directory.
    `train.loop.last_complete_checkpoint` skips a Trainer checkpoint with a torn weight file, so an unfinished
    phase retrains from the previous complete checkpoint (or from its start) instead of failing in the resume.
  * A phase's `DONE` records its weight files (`record`, written by `phasedir.PhaseDir.write`):
    `"weights": {name: {"bytes": size, "sha256": hex or null}}` for every `*.safetensors`, `*.bin`, `*.pt`,
    `*.pth` and `*.index.json` in the phase dir (not the Trainer's `training_args.bin`); the sha256 of each file
    up to `HASH_MAX_BYTES` (adapters, an adapter's optimizer.pt, small full models), only the size (and `complete`)
    above it. `verify` checks them before the weights load (`modeling.load_checkpoint`: training the next phase,
    generation, evaluation, export) and raises a `PhasedIFTError` naming the file that changed: an edited or
    half-copied finished phase is never loaded silently. A DONE written before the field (no "weights") loads as
    before, unchecked. The `server` generation backend loads no weights here, so nothing is checked for it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

from phased_ift.errors import PhasedIFTError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
NOT_WEIGHTS = {"training_args.bin"}  # the Trainer's pickled arguments: saved beside the weights, never loaded
HASH_MAX_BYTES = 1 << 30  # 1 GiB: hashing it takes about a second; bigger files (full 1B+ models) keep their size
_CHUNK = 1 << 22
DONE = "DONE"  # the marker a finished folder writes last (a phase dir, `phasedir.PhaseDir`; the converted-model cache)


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files directly in `folder` (see `WEIGHT_SUFFIXES`; not `NOT_WEIGHTS`), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and p.name not in NOT_WEIGHTS)


def sha256_of(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def complete(path: str | Path) -> str | None:
    """None when the weight file is whole, else why not ("0 bytes", "cut short: ...").

    A safetensors file: its header must cover the file exactly. A zip (torch.save's format): its end record must be
    there. Any other file: not empty.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size == 0:
        return "0 bytes"
    if path.name.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy"):
                return None
        except Exception as e:  # SafetensorError: "header too small", "incomplete metadata, file not fully covered"
            return f"not a whole safetensors file ({str(e).strip()})"
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        return "cut short (a torch.save zip archive without its end record)"
    return None


def record(folder: str | Path) -> dict[str, dict[str, Any]]:
    """DONE's "weights" field for the weight files in `folder`: {name: {"bytes", "sha256" (None above
    HASH_MAX_BYTES)}}."""
    out: dict[str, dict[str, Any]] = {}
    for p in weight_files(folder):
        size = p.stat().st_size
        out[p.name] = {"bytes": size, "sha256": sha256_of(p) if size <= HASH_MAX_BYTES else None}
    return out


def read_done(folder: str | Path) -> Any:
    """The parsed `folder`/DONE marker (a finished phase's, `phasedir.PhaseDir`, or the converted-model cache's), or
    None when it is missing or not JSON: the one reader of DONE files."""
    try:
        return json.loads((Path(folder) / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def recorded(folder: str | Path) -> dict[str, dict[str, Any]] | None:
    """The "weights" field of `folder`/DONE, or None: no DONE, a DONE that is not a JSON object (the converted-model
    cache's marker is one without the field), or one written before the field existed."""
    done = read_done(folder)
    weights = done.get("weights") if isinstance(done, dict) else None
    return weights if isinstance(weights, dict) else None


def problem(path: Path, expected: dict[str, Any]) -> str | None:
    """Why `path` is not the file DONE recorded (`expected`: {"bytes", "sha256"}), or None when it is."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != expected.get("bytes"):
        return f"has {size} bytes, DONE recorded {expected.get('bytes')}"
    if expected.get("sha256"):
        if sha256_of(path) != expected["sha256"]:
            return f"has the recorded size but not the recorded sha256 ({expected['sha256'][:12]}...)"
        return None
    why = complete(path)
    return f"is {why}" if why else None


def verify(folder: str | Path) -> None:
    """Check the weight files of a finished phase against its DONE (`recorded`); nothing to check without the field.

    Raises:
        PhasedIFTError: naming the first file that is missing, has another size or another sha256, or (big files)
            is not whole, and the fix.
    """
    folder = Path(folder)
    weights = recorded(folder)
    for name, expected in sorted((weights or {}).items()):
        why = problem(folder / name, expected if isinstance(expected, dict) else {})
        if why:
            raise PhasedIFTError(
                f"{folder / name} {why}: this phase finished (its DONE vouches for the file), so the file was changed "
                f"or cut short since (edited, or a half copy of the run dir). It is not loaded. Copy the phase dir "
                f"again from where it was trained, or move {folder} away (and the later phases of its arm and "
                f"seed, which were trained from it) and run `phased-ift train CONFIG` to train it again.")
