"""Judge scoring throughput: concurrent vs sequential requests, side by side, fresh caches each.

Two servers:
  * fake    the in-process fake server of tests/ with a fixed per-request latency (default 200 ms): isolates the
            client's concurrency (ideal ratio = the concurrency);
  * llama   a real llama.cpp server (`python -m llama_cpp.server`, SmolLM2-135M-Instruct GGUF, 1 and 2 threads)
            scoring real Alpaca instructions from alpagasus/random_9k.json. The server evaluates one request at a
            time, so expect a ratio near 1 with 1 thread. With 2 threads on an oversubscribed 2-core machine the
            sequential run was measured ~3x slower than the concurrent one: server-side prompt evaluation itself
            slowed to 100-400 ms/token between back-to-back requests (llama.cpp's worker threads wait on each
            other when the OS deschedules one), an artifact of the shared machine, not client-side concurrency.

A third comparison, `--stream-n` requests to the fake server with a spread of latencies (log-normal, median
`--stream-median` s, sigma `--stream-sigma`, fixed per request so both arms see the same ones) at `--concurrency`:
    chunked   `LLMClient.chat_many` on 64 requests at a time, as the score step asked the judge before 2026-11-21
              (every chunk waits for its slowest request while the other workers idle)
    streamed  one `LLMClient.iter_chat` stream over all requests (what the score step does now)
next to the ideal sum(latencies) / concurrency.

Run (from the repo root; small check first, then the numbers for the README):
    python benchmarks/bench_judge.py --n 4 --fake-n 16 --repeats 1  # quick check, ~1 min
    python benchmarks/bench_judge.py --n 32 --fake-n 64 --concurrency 4

Prints one row per (server, concurrency): requests, scored rows (min over repeats), mean seconds over --repeats
runs (alternating which setting goes first), requests/s, and the ratio concurrent / sequential.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rich.console import Console  # noqa: E402

from fake_llm_server import FakeLLMServer  # noqa: E402
from phased_ift.config import EndpointConfig  # noqa: E402
from phased_ift.data import Example, data_home, read_file  # noqa: E402
from phased_ift.llm_client import LLMClient  # noqa: E402
from phased_ift.modeling import gguf_path  # noqa: E402
from phased_ift.scoring.judge import score_with_judge  # noqa: E402


def timed_run(examples: list[Example], base_url: str, concurrency: int, timeout: float) -> tuple[float, int]:
    """Score with a fresh cache; returns (seconds, rows with a score)."""
    ep = EndpointConfig(base_url=base_url, model="smollm2-135m-instruct", concurrency=concurrency, timeout=timeout,
                        max_tokens=4)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rows = score_with_judge(examples, ep, Path(d) / "llm.sqlite", console=Console(quiet=True))
        dt = time.perf_counter() - t0
    return dt, sum(r["score"] is not None for r in rows)


def chunked_vs_streamed(n: int, concurrency: int, median: float, sigma: float, repeats: int) -> None:
    """Time `n` requests asked 64 at a time (chat_many per chunk) and as one iter_chat stream, fresh caches, with
    the same per-request latencies; prints one table row per arm and the ratio."""
    import hashlib
    import math
    import statistics

    def latency(body: dict) -> float:  # log-normal, fixed by the request's text
        u = int(hashlib.sha256(body["messages"][0]["content"].encode()).hexdigest()[:12], 16) / 16**12
        return median * math.exp(sigma * statistics.NormalDist().inv_cdf(min(max(u, 1e-9), 1 - 1e-9)))

    reqs = [{"messages": [{"role": "user", "content": f"Instruction {i}."}]} for i in range(n)]
    ideal = sum(latency(r) for r in reqs) / concurrency
    times: dict[str, list[float]] = {"chunked": [], "streamed": []}
    with FakeLLMServer(reply="3", latency=latency) as srv:
        ep = EndpointConfig(base_url=srv.base_url, model="fake", concurrency=concurrency, max_tokens=4)
        for r in range(repeats):
            for arm in (("chunked", "streamed") if r % 2 == 0 else ("streamed", "chunked")):
                with tempfile.TemporaryDirectory() as d:
                    client = LLMClient(ep, Path(d) / "llm.sqlite", console=Console(quiet=True))
                    t0 = time.perf_counter()
                    if arm == "chunked":
                        for i in range(0, n, 64):
                            client.chat_many(reqs[i:i + 64], report=False)
                    else:
                        for _ in client.iter_chat(reqs, report=False):
                            pass
                    times[arm].append(time.perf_counter() - t0)
                    client.close()
    label = f"fake (log-normal, median {median * 1000:.0f} ms, sigma {sigma}), concurrency {concurrency}"
    mean = {arm: sum(t) / len(t) for arm, t in times.items()}
    for arm in ("chunked", "streamed"):
        print(f"| {label} | {arm} | {n} | {n} | {mean[arm]:.2f} | {n / mean[arm]:.2f} |")
    print(f"| {label} | ideal (sum of latencies / concurrency) | {n} | | {ideal:.2f} | {n / ideal:.2f} |")
    print(f"| {label} | ratio streamed / chunked | | | | {mean['chunked'] / mean['streamed']:.2f}x |")


def start_llama_server(threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path("smollm2-135m-instruct")),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
           "--logits_all", "true", "--verbose", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"llama.cpp server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=2):
                return proc, base_url
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise SystemExit("llama.cpp server not up after 180 s")
            time.sleep(0.5)


def alternate(examples: list[Example], base_url: str, concurrency: int, timeout: float,
              repeats: int) -> tuple[tuple[float, int], tuple[float, int]]:
    """Mean (seconds, scored) of sequential and concurrent runs, alternating which goes first, so that a load
    change on a shared machine hits both sides alike."""
    times: dict[int, list[tuple[float, int]]] = {1: [], concurrency: []}
    for r in range(repeats):
        for c in ((1, concurrency) if r % 2 == 0 else (concurrency, 1)):
            times[c].append(timed_run(examples, base_url, c, timeout))

    def mean(runs: list[tuple[float, int]]) -> tuple[float, int]:
        return sum(t for t, _ in runs) / len(runs), min(ok for _, ok in runs)

    return mean(times[1]), mean(times[concurrency])


def report(name: str, n: int, seq: tuple[float, int], conc: tuple[float, int], concurrency: int) -> None:
    for label, (dt, ok) in (("1", seq), (str(concurrency), conc)):
        print(f"| {name} | {label} | {n} | {ok} | {dt:.2f} | {n / dt:.2f} |")
    print(f"| {name} | ratio {concurrency} / 1 | | | | {seq[0] / conc[0]:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description="judge scoring: concurrency vs sequential")
    ap.add_argument("--n", type=int, default=16, help="Alpaca instructions scored by the llama.cpp server")
    ap.add_argument("--fake-n", type=int, default=32, help="requests to the fake server")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.2, help="fake server seconds per request")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="llama.cpp server thread counts to run (one server each)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating the order (mean shown)")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--stream-n", type=int, default=512, help="requests of the chunked-vs-streamed comparison (0: skip)")
    ap.add_argument("--stream-concurrency", type=int, default=8)
    ap.add_argument("--stream-median", type=float, default=0.2, help="median seconds per request")
    ap.add_argument("--stream-sigma", type=float, default=0.8, help="log-normal sigma of the latencies")
    a = ap.parse_args()

    from machine import machine_facts

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} (other processes share the CPUs);"
          f" {machine_facts()['hardware']} (the llama.cpp server picks its own kernels: no torch precision here)")
    print("| server | concurrency | requests | scored | seconds | requests/s |")
    print("|---|---|---|---|---|---|")
    fake_examples = [Example(f"f{i}", [{"role": "user", "content": f"Instruction {i}."},
                                       {"role": "assistant", "content": "ok"}]) for i in range(a.fake_n)]
    with FakeLLMServer(reply="3", latency=a.latency) as srv:
        seq, conc = alternate(fake_examples, srv.base_url, a.concurrency, 30, a.repeats)
    report(f"fake ({a.latency * 1000:.0f} ms/request)", a.fake_n, seq, conc, a.concurrency)
    if a.stream_n:
        chunked_vs_streamed(a.stream_n, a.stream_concurrency, a.stream_median, a.stream_sigma, a.repeats)

    if a.skip_llama:
        return
    examples = read_file(data_home() / "alpagasus" / "random_9k.json", "alpaca").examples
    alpaca, warm = examples[: a.n], examples[a.n: a.n + 3]
    for threads in a.threads:
        proc, base_url = start_llama_server(threads)
        try:
            # Warm-up, not timed: the first requests after a start are 5-10x slower (measured: 17 s, 10 s, ~1.7 s).
            timed_run(warm, base_url, 1, 300)
            seq, conc = alternate(alpaca, base_url, a.concurrency, 300, a.repeats)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        report(f"llama.cpp SmolLM2-135M ({threads} threads)", len(alpaca), seq, conc, a.concurrency)


if __name__ == "__main__":
    main()
