"""generate.backend=server vs the hf backend on the same checkpoint and prompts, in one invocation.

    # llama.cpp, started here on an f32 GGUF export of the checkpoint (modeling.export_gguf; needs the converter
    # that scripts/install.sh --test extracts):
    python benchmarks/bench_server.py --checkpoint smollm2-135m-instruct --llama-cpp --n 16 --max-new-tokens 64
    # any running OpenAI-compatible server that serves the checkpoint as --served-model (e.g. vLLM):
    python benchmarks/bench_server.py --checkpoint DIR --base-url http://127.0.0.1:8000/v1 --served-model NAME

Both runs go through `generate.generate_answers`, the code the pipeline runs: the hf backend with the model loaded
before the clock starts (generate.batch_size prompts per batch), the server backend through `llm_client` with
`--concurrency` requests in flight and an empty response cache. The hf pass runs first and the server is started
after it (llama.cpp), so the two never share the CPU. Reports generated tokens/s of each (output_tokens summed over
the answers / wall seconds), the ratio server / hf, and how many answers are identical (greedy on both sides).
Prints one JSON object; --out also writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@contextlib.contextmanager
def llama_cpp_server(gguf: Path, port: int, threads: int, log: Path):
    """`python -m llama_cpp.server` on `gguf` with llama.cpp's own BOS off (the prompt text carries it)."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "4096", "--n_threads", str(threads), "--verbose", "false",
           "--kv_overrides", "tokenizer.ggml.add_bos_token=bool:false"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"llama.cpp server exited:\n{log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("llama.cpp server not up after 300 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _tokens_per_s(path: Path, seconds: float) -> tuple[dict, float]:
    from phased_ift.runio import read_jsonl

    rows = {r["id"]: r for r in read_jsonl(path)}
    return rows, sum(r["output_tokens"] for r in rows.values()) / seconds


def run(args: argparse.Namespace) -> dict:
    from phased_ift.config import ServerConfig
    from phased_ift.data import load_test_set
    from phased_ift.generation import generate_answers
    from phased_ift.modeling import load_for_inference
    from phased_ift.modeling import export_gguf

    import torch

    if args.hf_threads:
        torch.set_num_threads(args.hf_threads)
    half = args.n // 2
    prompts = load_test_set("vicuna", limit=half, seed=0) + load_test_set("koala", limit=args.n - half, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_server_"))
    loaded = load_for_inference(args.checkpoint)
    t = time.perf_counter()
    out = generate_answers(args.checkpoint, prompts, args.max_new_tokens, args.batch_size, args.template,
                           tmp / "hf" / "t.jsonl", loaded=loaded)
    hf_s = time.perf_counter() - t
    hf_rows, hf_tps = _tokens_per_s(out, hf_s)
    del loaded
    server = contextlib.nullcontext(args.base_url)
    if args.llama_cpp:
        server = llama_cpp_server(export_gguf(args.checkpoint, tmp / "model.gguf"), args.port, args.threads,
                                  tmp / "server.log")
    with server as url:
        opts = {"server": ServerConfig(base_url=url, concurrency=args.concurrency, timeout=1200),
                "served_model": args.served_model, "cache_path": tmp / "llm.sqlite"}
        t = time.perf_counter()
        out = generate_answers(args.checkpoint, prompts, args.max_new_tokens, args.batch_size, args.template,
                               tmp / "server" / "t.jsonl", backend="server", backend_options=opts)
        srv_s = time.perf_counter() - t
    srv_rows, srv_tps = _tokens_per_s(out, srv_s)
    same = sum(hf_rows[i]["output"] == srv_rows[i]["output"] for i in hf_rows)
    return {"checkpoint": str(args.checkpoint), "server": "llama.cpp (f32 GGUF)" if args.llama_cpp else url,
            "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
            "concurrency": args.concurrency, "hf_threads": args.hf_threads or torch.get_num_threads(), "hf_seconds": round(hf_s, 2), "hf_tokens_per_s": round(hf_tps, 2),
            "server_seconds": round(srv_s, 2), "server_tokens_per_s": round(srv_tps, 2),
            "ratio_server_over_hf": round(srv_tps / hf_tps, 2), "identical_answers": same,
            "cpu_count": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="smollm2-135m-instruct", help="checkpoint dir or named model")
    ap.add_argument("--template", default="chat", choices=["chat", "paper"])
    ap.add_argument("--llama-cpp", action="store_true", help="export the checkpoint to GGUF and serve it here")
    ap.add_argument("--base-url", default="", help="a running server instead of --llama-cpp")
    ap.add_argument("--served-model", default="bench", help="the checkpoint's name on the server")
    ap.add_argument("--port", type=int, default=8031)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--hf-threads", type=int, default=0, help="torch threads of the hf pass (0 = torch's default; "
                    "1 is faster on an oversubscribed CPU, docs/evaluation.md)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="hf backend prompts per batch")
    ap.add_argument("--concurrency", type=int, default=4, help="server requests in flight")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if bool(args.llama_cpp) == bool(args.base_url):
        ap.error("give exactly one of --llama-cpp and --base-url")
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
