"""The tables of docs/study-cpu.md from a finished study's report/summary.json (markdown on stdout).

    .venv/bin/python benchmarks/study_tables.py runs/study-cpu/report/summary.json

Prints: per arm and seed (final checkpoints) the reference-answer loss and the IFEval accuracies with their CIs;
the mean words of each final checkpoint's IFEval answers; the training table (per arm, seed and phase: optimizer
steps, first / last / mean logged loss). The effects table and the verdicts are the report's own "Did it help?"
section (runs/study-cpu/report/report.md), copied as printed. Reads only the summary; raises SystemExit with one
line when the file is missing or is not a report summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ci(ci: list | None, digits: int) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def per_arm_seed(s: dict) -> list[str]:
    """One row per final (arm, seed): reference loss [CI], IFEval prompt strict [CI], instruction strict, prompt
    loose."""
    final = {(e["arm"], e["seed"]): e for e in s["ifeval"] if e["final"]}
    ref = {(e["arm"], e["seed"], e["phase"]): e for e in s["reference_loss"]}
    out = ["| arm | seed | reference loss (nats/token) [95% CI] | IFEval prompt-level strict [95% CI] | "
           "IFEval instruction-level strict | IFEval prompt-level loose |", "|---|---|---|---|---|---|"]
    for arm in s["run"]["config"]["arms"]:
        for seed in s["run"]["config"]["seeds"]:
            e = final.get((arm, seed))
            if e is None:
                continue
            r = ref.get((arm, seed, e["phase"]))
            loss = f"{r['mean']:.4f} {_ci(r['ci'], 3)}" if r else "—"
            ps = e["prompt_level_strict"]
            out.append(f"| {arm} | {seed} | {loss} | {ps['mean']:.3f} {_ci(ps['ci'], 3)} | "
                       f"{e['inst_level_strict']['value']:.3f} | {e['prompt_level_loose']['mean']:.3f} |")
    return out


def mean_words(s: dict) -> list[str]:
    """Mean words of the final checkpoints' IFEval answers, per arm, seeds in order."""
    final = {(e["arm"], e["seed"]): e["phase"] for e in s["ifeval"] if e["final"]}
    words: dict[str, list[str]] = {}
    for g in s["lengths"]:
        if g["testset"] == "ifeval" and final.get((g["arm"], g["seed"])) == g["phase"]:
            words.setdefault(g["arm"], []).append(f"{g['mean_words']:.1f}")
    return [", ".join(f"{arm} {' / '.join(w)}" for arm, w in words.items())]


def training(s: dict) -> list[str]:
    """One row per arm, seed and phase: steps, first, last and mean logged training loss."""
    out = ["| arm | seed | phase | steps | first loss | last loss | mean loss |", "|---|---|---|---|---|---|---|"]
    for arm, seeds in s["training"].items():
        for seed, phases in sorted(seeds.items(), key=lambda kv: int(kv[0])):
            for p in phases:
                out.append(f"| {arm} | {seed} | {p['phase']} | {p['steps']} | {p['first_loss']:.3f} | "
                           f"{p['last_loss']:.3f} | {p['mean_loss']:.3f} |")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit("usage: study_tables.py runs/study-cpu/report/summary.json")
    path = Path(argv[0])
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
        blocks = [per_arm_seed(s), mean_words(s), training(s)]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise SystemExit(f"{path}: not a finished report summary ({e!r}); run `phased-ift report CONFIG` first.")
    print("\n\n".join("\n".join(b) for b in blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
