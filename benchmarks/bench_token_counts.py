"""Time the training plan's token counting (`train.plan_training`) on N synthetic Alpaca-format rows.

Rows: seeded random words (instructions 5-25 words, a third with a 3-15-word input, responses 10-200 words),
converted by the Alpaca reader (`data.read_file`) into a fresh run dir's data/train.jsonl, not split (the plan of a
`run --dry-run` before scoring: K equal phases assumed). Config: the quickstart's model (SmolLM2-135M-Instruct,
chat template, max_length 256) and arms (phased, one-off, random). Imports and a first tokenizer load are timed
apart (`setup_s`: what every new process pays before its plan). Each repeat then times the plan twice: cold (no
cache/token_counts.json; the code before it had none, so every plan is cold) and warm (the cache written by the
cold plan: a resume's plan).

    OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python benchmarks/bench_token_counts.py --n 20000 --out x.json

To time another checkout (e.g. the per-example counting before this script's commit) run its copy of the package
first on the path: PYTHONPATH=/tmp/old/src python benchmarks/bench_token_counts.py ... The JSON records each plan's
tokens per arm and phase, so two outputs can be compared for equal counts.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def synthetic_alpaca(n: int, seed: int = 0) -> list[dict]:
    """n Alpaca records {"instruction", "input", "output"} of seeded random words (a 5,000-word vocabulary)."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    return [{"instruction": words(5, 25), "input": words(3, 15) if rng.random() < 1 / 3 else "",
             "output": words(10, 200)} for _ in range(n)]


def _plan(cfg, run) -> tuple[float, dict]:
    from phased_ift.train import plan_training

    t0 = time.perf_counter()
    plan = plan_training(cfg, run, world_size=1)
    return time.perf_counter() - t0, plan


def main() -> None:
    import phased_ift
    from phased_ift.config import config_from_dict
    from phased_ift.data import read_file, write_examples
    from phased_ift.rundir import RunDir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-token-counts-"))
    src = tmp / "alpaca.json"
    src.write_text(json.dumps(synthetic_alpaca(args.n)))
    t0 = time.perf_counter()  # imports and the first tokenizer load, outside the plans' times
    from phased_ift.modeling import load_tokenizer
    load_tokenizer("smollm2-135m-instruct")
    setup_s = time.perf_counter() - t0
    runs = []
    for r in range(args.repeats):
        run = RunDir(tmp / f"run{r}")
        write_examples(run.train_data, read_file(src).examples)
        cfg = config_from_dict({"run_dir": str(run.root), "model": {"name_or_path": "smollm2-135m-instruct",
                                                                    "template": "chat", "max_length": 256},
                                "phases": {"k": 3}, "train": {"arms": ["phased", "one-off", "random"]}})
        cold, plan = _plan(cfg, run)
        warm, plan2 = _plan(cfg, run)
        assert plan2["arms"] == plan["arms"]
        runs.append({"cold_s": round(cold, 2), "warm_s": round(warm, 2), "note": plan["note"],
                     "tokens": {a: [p["tokens"] for p in rows] for a, rows in plan["arms"].items()}})
        print(json.dumps(runs[-1]), flush=True)
    out = {"n": args.n, "package": str(Path(phased_ift.__file__).parent), "setup_s": round(setup_s, 2), "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
