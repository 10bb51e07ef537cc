"""Scale benchmark (issue 29 item 4): wall time and peak RSS of each CLI step at N synthetic Alpaca rows.

For each size N (`--sizes`, default 2000,10000: quick) a fresh run dir under /tmp gets a JSON array of N synthetic
Alpaca records (seeded random words from a 5,000-word vocabulary: instructions 5-25 words, a third with a 3-15-word
input, responses 10-200 words; `bench_token_counts.synthetic_alpaca`, generated on the fly, not timed), and these
commands run one after another, each as a child process whose wall time (s), peak RSS (MiB, `os.wait4`'s
ru_maxrss of that child; it includes the parent's pages at fork, so this process keeps no rows) and peak summed PSS
of the child and its worker processes (`timed`; the length scorer forks one per core) are recorded:
  score        `phased-ift score CFG` with scoring.scorer=length (includes the data step: read, convert, dedupe,
               write data/train.jsonl)
  split        `phased-ift split CFG` (3 quantile phases; the control arms' phase files)
  plan_cold    `phased-ift run CFG --dry-run` without cache/token_counts.json (SmolLM2-135M-Instruct's tokenizer,
               chat template, max_length 256; arms phased, one-off, random): above train.plan_sample (20,000)
               examples the tokens are estimated from a seeded sample of them, nothing cached
  plan_exact   `phased-ift run CFG --dry-run train.plan_sample=0`: every example counted and the counts cached
               (what the first plan of a run that trains pays)
  plan_warm    `phased-ift run CFG --dry-run` again (the counts cached by plan_exact: what every resume pays)
  judge        `phased-ift score CFG scoring.scorer=judge` on the first J = round(N * judge_ratio) rows (default
               0.2: 200K requests at 1M rows) in a second run dir, against tests/'s FakeLLMServer (in this process,
               no latency, reply "3") at concurrency 32; its data/train.jsonl is copied in, so the data step is
               skipped and the time is the judge client's.
Then, per step over the sizes run, the growth exponent b of time ~ a * N^b (least squares on log-log; judge against
J) and of peak RSS, also of time minus the startup (a child that only imports the pipeline: ~10-20 s on a loaded
core, which hides the growth at small N). Writes JSON (`--out`, default benchmarks/results/scale.json) and prints a markdown table.

    OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
        python benchmarks/bench_scale.py --sizes 10000,100000 --out benchmarks/results/scale.json

Errors: a step that exits non-zero stops the benchmark with its stderr tail (RuntimeError).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from fake_llm_server import FakeLLMServer  # noqa: E402

STEPS = ("score", "split", "plan_cold", "plan_exact", "plan_warm", "judge")


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("phased-ift")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "phased_ift.cli"]


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` as a child; {"wall_s", "peak_rss_mib", "peak_tree_pss_mib"}: the child's own peak RSS
    (`os.wait4`'s ru_maxrss: the largest of the child and the processes it waited for, never their sum) and the peak
    of the summed PSS of the child and every process below it (worker processes included; PSS splits a shared page
    among the processes that map it, so the pages a forked worker shares with its parent count once), sampled every
    0.25 s from /proc/<pid>/smaps_rollup (a peak shorter than that can be missed). Raises RuntimeError on failure."""
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        peak = [0.0]
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_tree_pss, args=(proc.pid, peak, stop), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
            "peak_tree_pss_mib": round(peak[0], 1)}


def _sample_tree_pss(root: int, peak: list[float], stop: threading.Event) -> None:
    while not stop.wait(0.25):
        peak[0] = max(peak[0], sum(_pss_mib(p) for p in _tree(root)))


def _tree(root: int) -> list[int]:
    """root and every process below it (/proc/<pid>/task/<tid>/children)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:  # the process ended meanwhile
            pass
    return out


def _pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:")) / 1024  # kB
    except (OSError, StopIteration, ValueError):
        return 0.0


def write_config(path: Path, run_dir: Path, data: Path) -> None:
    cfg = {"run_dir": str(run_dir), "seed": 0,
           "data": {"train": [{"path": str(data), "format": "alpaca"}]},
           "model": {"name_or_path": "smollm2-135m-instruct", "template": "chat", "max_length": 256},
           "scoring": {"scorer": "length"}, "phases": {"k": 3, "method": "quantiles"},
           "train": {"arms": ["phased", "one-off", "random"]}}
    path.write_text(json.dumps(cfg, indent=1))  # YAML is a superset of JSON


def run_size(n: int, judge_ratio: float, concurrency: int, keep: bool, steps: set[str]) -> dict:
    """The steps at n rows in a fresh /tmp dir (score always: the others need its run dir); the dict of step ->
    timing (+ n, judge_n, startup: `import phased_ift.pipeline` in a child, the fixed cost inside every step)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    log = tmp / "log.txt"
    data = tmp / "alpaca.json"
    # generated in a child: a forked step's ru_maxrss counts the parent's pages before exec, so the parent stays
    # small (holding the rows here added ~250 MiB to every step's peak at 100K)
    subprocess.run([sys.executable, "-c", f"import json, sys; sys.path.insert(0, {str(HERE)!r}); "
                    f"from bench_token_counts import synthetic_alpaca; "
                    f"open({str(data)!r}, 'w').write(json.dumps(synthetic_alpaca({n})))"], check=True)
    cfg, run = tmp / "cfg.yaml", tmp / "run"
    write_config(cfg, run, data)
    cli = _cli()
    out: dict = {"n": n, "data_mib": round(data.stat().st_size / 2**20, 1)}
    out["score"] = timed(cli + ["score", str(cfg)], log)
    if "split" in steps or "plan_cold" in steps:
        out["split"] = timed(cli + ["split", str(cfg)], log)
    if "plan_cold" in steps:
        out["plan_cold"] = timed(cli + ["run", str(cfg), "--dry-run"], log)
        out["plan_exact"] = timed(cli + ["run", str(cfg), "--dry-run", "train.plan_sample=0"], log)
        out["plan_warm"] = timed(cli + ["run", str(cfg), "--dry-run"], log)
    out["startup"] = timed([sys.executable, "-c", "import phased_ift.pipeline"], log)
    j = max(1, round(n * judge_ratio))
    out["judge_n"] = j
    if "judge" not in steps:
        return _done(out, tmp, keep)
    jrun = tmp / "judge-run"
    (jrun / "data").mkdir(parents=True)
    with open(run / "data" / "train.jsonl", encoding="utf-8") as src, \
            open(jrun / "data" / "train.jsonl", "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= j:
                break
            dst.write(line)
    with FakeLLMServer(reply="3") as srv:
        out["judge"] = timed(cli + ["score", str(cfg), f"run_dir={jrun}", "scoring.scorer=judge",
                                    f"scoring.judge.base_url={srv.base_url}", "scoring.judge.model=fake",
                                    f"scoring.judge.concurrency={concurrency}"], log)
        out["judge"]["requests"] = srv.count
    return _done(out, tmp, keep)


def _done(out: dict, tmp: Path, keep: bool) -> dict:
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        out["dir"] = str(tmp)
    print(json.dumps(out), flush=True)
    return out


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope b of log y = log a + b log x; None with fewer than two distinct sizes."""
    pts = [(math.log(x), math.log(max(y, 1e-3))) for x, y in zip(xs, ys)]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts), 3)


def table(rows: list[dict], fits: dict) -> str:
    head = "| step | " + " | ".join(f"{r['n']:,} rows" for r in rows) + " | b (time) | b (time - startup) | b (RSS) |"
    lines = [head, "|---" * (len(rows) + 4) + "|"]
    for s in ("startup",) + STEPS:
        if not all(s in r for r in rows):
            continue
        cells = [f"{r[s]['wall_s']:.1f} s, {_memory(r[s])}" for r in rows]
        f = fits.get(s, {})
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {f.get('time')} | {f.get('time_net')} | {f.get('rss')} |")
    return "\n".join(lines)


def _memory(step: dict) -> str:
    """Peak RSS (MiB); with worker processes (a tree PSS above it), "RSS / tree PSS"."""
    tree = step.get("peak_tree_pss_mib")
    return f"{step['peak_rss_mib']:.0f} MiB" + (f" / {tree:.0f} MiB" if tree and tree > step["peak_rss_mib"] else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,10000", help="comma-separated row counts, e.g. 10000,100000,1000000")
    ap.add_argument("--judge-ratio", type=float, default=0.2, help="judge requests per row (0.2: 200K at 1M)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ",".join(STEPS)
                    + " (score always runs; plan_cold runs split, plan_exact and plan_warm too)")
    ap.add_argument("--keep", action="store_true", help="keep the /tmp run dirs")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    a = ap.parse_args()
    steps = set(a.steps.split(","))
    rows = [run_size(int(s), a.judge_ratio, a.concurrency, a.keep, steps) for s in a.sizes.split(",")]
    fits = {}
    for s in STEPS:
        if not all(s in r for r in rows):
            continue
        xs = [r["judge_n"] if s == "judge" else r["n"] for r in rows]
        fits[s] = {"time": exponent(xs, [r[s]["wall_s"] for r in rows]),
                   "time_net": exponent(xs, [r[s]["wall_s"] - r["startup"]["wall_s"] for r in rows]),
                   "rss": exponent(xs, [r[s]["peak_rss_mib"] for r in rows])}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
              "affinity": sorted(os.sched_getaffinity(0)), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
              "note": a.note, "sizes": rows, "exponents": fits}
    try:
        result["cpu"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows, fits))


if __name__ == "__main__":
    main()
