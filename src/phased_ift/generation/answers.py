"""The generations file of one test set and checkpoint, as later steps read it.

`generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl` holds one row per prompt ({"id", "testset", "instruction",
"output", ...}); `<testset>.settings.json` beside it is written when the file is complete (`settings_path`). A
multi-turn test set has one file per turn (`turn_key`: mt_bench.jsonl, mt_bench_turn2.jsonl).

Owns `settings_path`, `read_generations` (the rows of a complete file) and `turn_key`; writing them is
`generation.step`'s.
"""

from __future__ import annotations

from pathlib import Path

from phased_ift.errors import PhasedIFTError
from phased_ift.runio import read_jsonl


def settings_path(out_path: Path) -> Path:
    """The settings file beside a generations file (<testset>.settings.json), written when it is complete."""
    return out_path.with_name(out_path.name.removesuffix(".jsonl") + ".settings.json")


def read_generations(path: str | Path) -> list[dict]:
    """Generation rows of one test set, in file order.

    Raises:
        PhasedIFTError: the file is missing or incomplete (no settings file yet).
    """
    path = Path(path)
    if not path.is_file() or not settings_path(path).is_file():
        raise PhasedIFTError(f"{path} is missing or incomplete; run `phased-ift generate` first.")
    return list(read_jsonl(path, tolerate_torn_tail=True))


def turn_key(testset: str, turn: int) -> str:
    """File key of turn `turn` (1-based) of a multi-turn test set: the test set's own key for turn 1,
    "<testset>_turn<t>" after it (mt_bench.jsonl, mt_bench_turn2.jsonl)."""
    return testset if turn == 1 else f"{testset}_turn{turn}"
