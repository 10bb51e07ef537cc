"""IFD scoring on one process against the same scoring spread over N processes (torchrun, CPU gloo or one GPU each).

The quickstart's scoring workload (configs/quickstart.yaml: a seeded sample of alpagasus/random_9k, SmolLM2-135M-
Instruct, the chat template, scoring.batch_size 8, max_length 256), scored twice from the same data/train.jsonl
in two fresh run dirs, each with its own loss cache:
    one      `phased-ift score CONFIG` in one process
    spread   `python -m torch.distributed.run --standalone --nproc_per_node N -m phased_ift.cli score CONFIG`:
             rank r scores the examples i with i % N == r, the main process merges (`scoring.score_examples`)
Checks: the same ids in the same order with the same keys and token counts; the largest relative difference of
score / loss_cond / loss_uncond (batches hold other examples on N processes, so padding and summation order differ:
the batched-vs-loop tolerance applies, 1e-4 on the tiny test model, 1e-3 on this one in fp32, bench_ifd.py) and the
Spearman correlation of the scores. Times: each command's wall time (start-up, model load and merge included) and
the scorer's own rate as the score step prints it.

    PHASED_IFT_DATA_HOME=../shared/data python benchmarks/bench_sharded_scoring.py --n 120 --nproc 2 \
        --out benchmarks/results/sharded_scoring_n120.json

Options: --autocast (scoring.autocast, default none: fp32, where the two runs must agree within 1e-3), --workdir
(default a temp dir), --threads (OMP_NUM_THREADS of each process, default 1). On a machine with fewer free cores
than processes the spread run is no faster: the point there is equality, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--autocast", default="none")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--out", default="")
    return ap.parse_args()


def prepare(root: Path, args: argparse.Namespace) -> list[Path]:
    """Two run dirs ("one", "spread") with the same data/train.jsonl and a config each; returns their configs."""
    from phased_ift.config import load_config, save_config
    from phased_ift.pipeline import step_data

    configs = []
    for name in ("one", "spread"):
        cfg = load_config(REPO / "configs/quickstart.yaml", [f"run_dir={root / name}", f"data.train.0.limit={args.n}",
                                                               f"scoring.autocast={args.autocast}"])
        if name == "one":
            step_data(cfg)
        else:
            (root / name / "data").mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "one" / "data" / "train.jsonl", root / name / "data" / "train.jsonl")
        configs.append(save_config(cfg, root / f"{name}.yaml"))
    return configs


def score(config: Path, nproc: int, threads: int) -> dict:
    """Run `phased-ift score` on `nproc` processes: {"wall_s", "examples_per_s" (the step's own line)}."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
                if nproc > 1 else [sys.executable, "-m"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "COLUMNS": "300"}
    t0 = time.perf_counter()
    p = subprocess.run([*launcher, "phased_ift.cli", "score", str(config)], cwd=REPO, env=env, capture_output=True,
                       text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"score on {nproc} process(es) failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    rate = re.search(r"\(([\d.]+) ex/s\)", p.stdout + p.stderr)
    return {"processes": nproc, "wall_s": wall, "examples_per_s": float(rate.group(1)) if rate else None}


def compare(a: Path, b: Path) -> dict:
    """The checks of the module docstring on two scores files."""
    from phased_ift.runio import read_jsonl
    from phased_ift.scoring.metrics import spearman

    one, spread = list(read_jsonl(a)), list(read_jsonl(b))
    same = [r["id"] for r in one] == [r["id"] for r in spread] and all(
        list(x) == list(y) and x.get("n_tokens") == y.get("n_tokens") for x, y in zip(one, spread))
    rel = {k: max((abs(x[k] - y[k]) / abs(y[k]) for x, y in zip(spread, one) if x[k] is not None and y[k]),
                  default=0.0) for k in ("score", "loss_cond", "loss_uncond")}
    scores = [(x["score"], y["score"]) for x, y in zip(spread, one) if x["score"] is not None and y["score"] is not None]
    return {"n": len(one), "same_ids_keys_tokens": same, "max_rel_diff": rel,
            "spearman": spearman([s for s, _ in scores], [t for _, t in scores]),
            "failed": sum(r["score"] is None for r in one)}


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import machine_facts

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_sharded_"))
    one_cfg, spread_cfg = prepare(root, args)
    runs = {"one": score(one_cfg, 1, args.threads), "spread": score(spread_cfg, args.nproc, args.threads)}
    out = {"setup": vars(args), "machine": machine_facts(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
           "runs": runs, "agreement": compare(root / "spread" / "scores" / "ifd.jsonl",
                                              root / "one" / "scores" / "ifd.jsonl")}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    ok = out["agreement"]["same_ids_keys_tokens"] and max(out["agreement"]["max_rel_diff"].values()) <= 1e-3
    sys.exit(0 if ok or args.autocast != "none" else 1)


if __name__ == "__main__":
    main()
